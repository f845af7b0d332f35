#!/usr/bin/env bash
# The GPU checks of the throughput issue (14), most valuable first, for one call of the device tool. Prepare here:
#   bash ../shared/gpu/prepare.sh usiigaci_phase_cells
# then run on the device, carrying [".gpu"]:
#   source .gpu/env.sh && bash scripts/gpu-throughput.sh
# (.gpu is then 51 MiB: the set 38, the wheels 14; with the tracked files, 10, under the 64 MiB a call carries.)
# A dry run here: DEVICE=cpu COMPILE=default ONLY="64x4" bash scripts/gpu-throughput.sh
# Everything it prints goes to $OUT/gpu-throughput.log. The GPU image's onnxruntime is the CPU build, so there the
# ONNX Runtime rows run on the CPU; the CUDA and TensorRT providers need onnxruntime-gpu (the appliance's image).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
log="$OUT/gpu-throughput.log"
device=${DEVICE:-cuda}
mode=${COMPILE:-reduce-overhead}
read -r -a groups <<< "${ONLY:-}"
only=()
[ ${#groups[@]} -gt 0 ] && only=(--groups "${groups[@]}")
[ ${#groups[@]} -gt 0 ] || groups=(64x4 64x8 64x16)
set_dir=.gpu/data/usiigaci_phase_cells
[ -d "$set_dir" ] || set_dir=../shared/datasets/usiigaci_phase_cells
step() { echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$log"; }

step "1. every memory group on CUDA: real against GPU-resident steps/s; inference MPix/s on one 768x1024 image"
timeout 300 python3 benchmarks/throughput.py --device "$device" "${only[@]}" --min-seconds 2 --rounds 5 --set "$set_dir" \
  2>&1 | tee -a "$log"

step "2. compiled training steps (CUDA graphs) against eager for the patch-64 groups: do they repay the compile?"
timeout 240 python3 benchmarks/throughput.py --device "$device" --groups "${groups[@]}" --encoders resnet18 \
  --skip-inference --min-seconds 2 --compile "$mode" --set "$set_dir" 2>&1 | tee -a "$log"
step "done"
