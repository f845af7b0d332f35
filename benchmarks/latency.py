"""Latency of the running service: an image file landing in the inbox → its mask, overlay and CSV row written.

Starts a real ``appliance run`` (no page) on a temporary data dir whose project ``bench`` already has an active
model (a U-Net trained a few seconds on the bundled sample and exported to ONNX), then writes N real microscopy
images into ``inbox/images/bench/`` one after the other, each only after the previous one's results exist. The
latency of an image is from the moment its file is closed to the moment its row is in ``measurements.csv`` (which is
written after the mask and the overlay). It includes the wait for the file to stay unchanged for ``stable_seconds``
(the guard against reading half-written files), detection (file events or polling) and ONNX Runtime inference.

    python benchmarks/latency.py [--images 20] [--stable-seconds 2] [--polling]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from appliance.data.labelled_set import load_labelled_set
from appliance.data.splits import split_stems
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.workflow import train_configuration
from appliance.service.activation import activate_by_hand
from appliance.settings import Settings
from appliance.store import Store

PROJECT = "bench"


def prepare(data_dir: Path, model_seconds: float) -> str:
    """Train and export a small model, register it and activate it for the project; returns its id."""
    set_dir = Path(str(files("appliance") / "demo_data" / "labelled" / "usiigaci_phase_cells_demo"))
    labelled_set = load_labelled_set(set_dir)
    store = Store(data_dir / "appliance.sqlite")
    split = split_stems(labelled_set.stems, seed=0)
    run_id = store.create_run(set_name=labelled_set.name, set_dir=str(set_dir), split=split.to_dict())
    model_id = store.register_model(run_id=run_id, set_name=labelled_set.name, path="")
    model_dir = Settings(data_dir=data_dir).trained_models_dir / model_id
    config = PipelineConfig(patch_size=128, batch_size=8, learning_rate=0.001, encoder="resnet18", flip=0.5)
    train_configuration(labelled_set, config, seconds=model_seconds, out_dir=model_dir, progress=False)
    store.finish_export(run_id, model_id, str(model_dir))
    # what is measured is inference, not the model: activated whatever the quality gate would say of it
    activate_by_hand(store, project=PROJECT, model_id=model_id, note="latency benchmark")
    store.close()
    return model_id


def csv_has(path: Path, relative: str) -> bool:
    try:
        with open(path, newline="") as handle:
            return any(row["image"] == relative for row in csv.DictReader(handle))
    except (FileNotFoundError, KeyError):
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--stable-seconds", type=float, default=2.0)
    parser.add_argument("--polling", action="store_true", help="Poll the inbox instead of file events.")
    parser.add_argument("--model-seconds", type=float, default=10.0, help="Training time of the benchmark model.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Give up on one image after this long.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="appliance-latency-"))
    data_dir = work / "data"
    print(f"preparing a model in {data_dir} ...", flush=True)
    model_id = prepare(data_dir, args.model_seconds)
    environment = {
        **os.environ,
        "APPLIANCE_DATA_DIR": str(data_dir),
        "APPLIANCE_STABLE_SECONDS": str(args.stable_seconds),
        "APPLIANCE_POLLING": "true" if args.polling else "false",
        "APPLIANCE_DISK_RESERVE_GB": "0",
    }
    environment.pop("APPLIANCE_CONFIG", None)
    log = open(work / "service.log", "wb")
    service = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "run", "--no-page"], env=environment, stdout=log, stderr=log
    )
    inbox = data_dir / "inbox" / "images" / PROJECT
    results_csv = data_dir / "results" / PROJECT / "measurements.csv"
    sources = sorted(Path(str(files("appliance") / "demo_data" / "images" / "phase-demo")).glob("*.tif"))
    latencies = []
    try:
        while not inbox.parent.is_dir():
            time.sleep(0.1)
        time.sleep(3)  # let the watcher start
        inbox.mkdir(parents=True, exist_ok=True)
        for index in range(args.images):
            relative = f"image-{index:03d}.tif"
            shutil.copyfile(sources[index % len(sources)], inbox / relative)
            landed = time.time()
            deadline = landed + args.timeout
            while not csv_has(results_csv, relative):
                if time.time() > deadline or service.poll() is not None:
                    raise SystemExit(f"{relative}: no result after {args.timeout} s; see {work / 'service.log'}")
                time.sleep(0.01)
            latencies.append(time.time() - landed)
            print(f"  {relative}: {latencies[-1]:.2f} s", flush=True)
    finally:
        service.terminate()
        service.wait(60)
        log.close()
    store = Store(data_dir / "appliance.sqlite")
    inference = [row.processed_time - row.landed_at for row in store.images(PROJECT) if row.processed_time is not None]
    mode = "polling every 1 s" if args.polling else "file events"
    print(f"\nlatency, file landed → results written, {len(latencies)} images of 384×384 px, 16-bit, CPU:")
    print(f"  watch: {mode}; stable_seconds {args.stable_seconds:g} (included); model {model_id}")
    print(
        f"  p50 {percentile(latencies, 50):.2f} s   p95 {percentile(latencies, 95):.2f} s   "
        f"max {max(latencies):.2f} s   mean {statistics.mean(latencies):.2f} s"
    )
    print(
        f"  of which after the file was seen stable (hash, queue, read, ONNX, write): "
        f"p50 {percentile(inference, 50):.2f} s   p95 {percentile(inference, 95):.2f} s"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
