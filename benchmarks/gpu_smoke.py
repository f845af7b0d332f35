"""GPU smoke run: the appliance's whole training job on CUDA, end to end, and what each part did.

Runs ``appliance.automl.job.train_set`` on a labelled set (the bundled demo set by default) with a short budget and
two or three configurations (``--trials``): the device's throughput probe, the race with the CUDA memory cap and
probe step, the winner's test, ONNX export, then ONNX Runtime prediction of the test images (the CUDA provider
when it is installed). It prints the device, the memory cap, each trial's slices (steps, MPix/s, peak memory,
validation IoU), the winner's test IoU, the ONNX provider and its agreement with PyTorch. It exits 1 when
something did not run on the device it should have.

    python benchmarks/gpu_smoke.py                      # on a GPU machine (run it first whenever one is lent)
    python benchmarks/gpu_smoke.py --device cpu --budget 60s   # the same path on a CPU, to check the script
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

from appliance.automl.job import train_set
from appliance.automl.throughput import ThroughputTable
from appliance.data.labelled_set import load_labelled_set
from appliance.pipeline.device import device_name, resolve_device
from appliance.pipeline.predictor import OnnxPredictor
from appliance.settings import Settings, parse_duration
from appliance.store import Store

DEMO_SET = Path(str(files("appliance") / "demo_data" / "labelled" / "usiigaci_phase_cells_demo"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=DEMO_SET)
    parser.add_argument("--budget", default="45s")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    settings = Settings(data_dir=data_dir, gpu_memory_gb=args.gpu_memory_gb, default_budget=parse_duration(args.budget))
    print(f"device {device} = {device_name(device)}; cap {args.gpu_memory_gb:g} GB; data {data_dir}")
    started = time.perf_counter()
    job = train_set(args.set, settings, device=str(device), trials=args.trials, log=lambda m: print(f"  {m}"))
    wall = time.perf_counter() - started
    store = Store(settings.store_path)
    plan = job.run.plan
    print(f"run {job.run_id} on {job.run.device}: {wall:.1f} s for a {settings.default_budget:.0f} s budget")
    print(f"  plan: n = {plan['n']}, steps {plan['schedule']['active']}, growth {plan['schedule']['growth']}")
    for row in job.step_results:
        iou = "—" if row.validation_iou is None else f"{row.validation_iou:.3f}"
        mpix = row.work_mp / max(row.total_seconds_trained, 1e-9)
        peak = "—" if row.peak_memory_mb is None else f"{row.peak_memory_mb:.0f} MB"
        print(
            f"  step {row.step + 1} rank {row.rank:>3} {row.config_id}: {row.optimizer_steps} steps, "
            f"{mpix:.2f} MPix/s, peak {peak}, validation IoU {iou}"
        )
    for trial in job.trials:
        print(f"  trial rank {trial.rank} {trial.config_id}: {trial.status} {trial.reason or ''}".rstrip())
    table = ThroughputTable.load(store, device)
    print(f"  throughput table on {table.device}: {len(table.measured)} measured groups")
    print(f"winner {job.run.winner_config_id}: test IoU {job.test.mean_foreground_iou:.3f}, model {job.model_dir}")

    predictor = OnnxPredictor(job.model_dir)
    labelled_set = load_labelled_set(args.set)
    split = job.run.split
    started = time.perf_counter()
    pixels = 0
    for stem in split["test"]:
        image, mask = labelled_set.read(labelled_set.stems.index(stem))
        labels = predictor.predict(image)
        assert labels.shape == mask.shape, (labels.shape, mask.shape)
        pixels += labels.size
    seconds = time.perf_counter() - started
    print(f"ONNX Runtime ({predictor.provider}): {len(split['test'])} test image(s), {pixels / 1e6 / seconds:.2f} MP/s")
    events = [e.message for e in store.events(job.run_id) if "parity" in e.message or "ONNX" in e.message]
    for message in events[-1:]:
        print(f"  {message}")

    problems = []
    if device.type == "cuda" and not str(job.run.device).startswith("cuda"):
        problems.append(f"the run trained on {job.run.device}, not CUDA")
    if device.type == "cuda" and not any(r.peak_memory_mb for r in job.step_results):
        problems.append("no CUDA peak memory was recorded")
    if not np.isfinite(job.test.mean_foreground_iou):
        problems.append("the winner's test IoU is not a number")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("gpu smoke: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
