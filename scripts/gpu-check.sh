#!/usr/bin/env bash
# The GPU checks of the AutoML issue, most valuable first, for one call of the device tool (15 minutes a session).
# Prepare here on the CPU machine first (the sets, and their leave-one-set-out meta-models fitted here, not on the
# device's clock):
#   bash ../shared/gpu/prepare.sh cpm15_he_nuclei dsb2018_fluo_nuclei
#   python benchmarks/automl.py --sets .gpu/data/cpm15_he_nuclei,.gpu/data/dsb2018_fluo_nuclei --prepare-only \
#     --work .gpu/bench
# then run on the device, carrying [".gpu"]:
#   source .gpu/env.sh && bash scripts/gpu-check.sh
# Everything it prints goes to $OUT/gpu-check.log; results files to $OUT.
# The GPU image has no pyradiomics: `appliance train` there says so and ranks with the fallback prior (the optical
# meta-features are the only part that needs it); the AutoML matrix ranks shared sets on the meta-base's cached
# meta-features instead and takes the seconds they took off ours' budget (benchmarks/automl.py).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
log="$OUT/gpu-check.log"
work=$(mktemp -d)
step() { echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$log"; }

step "1. the whole job on CUDA: throughput probe, race with the memory cap, export, ONNX Runtime"
timeout 240 python3 benchmarks/gpu_smoke.py --budget 45s --trials 3 --data-dir "$work/smoke" 2>&1 | tee -a "$log"

step "2. training throughput of all 24 memory groups on this GPU"
timeout 150 python3 -m appliance.cli throughput --measure --device cuda --data-dir "$work/smoke" 2>&1 | tee -a "$log"

step "3. the AutoML matrix at T = 2 min (ours, default, random; leave-one-set-out meta-model)"
sets=$(find .gpu/data -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sort | paste -sd, -)
if [ -n "$sets" ]; then
  timeout 420 python3 benchmarks/automl.py --sets "$sets" --budgets 2m \
    --out "$OUT/automl-gpu.jsonl" --work .gpu/bench 2>&1 | tee -a "$log"
else
  echo "no sets in .gpu/data (prepare.sh SET ...)" | tee -a "$log"
fi
step "done"
