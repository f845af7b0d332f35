"""Inference speed: the same model on the same real images, PyTorch eager vs ONNX Runtime.

Prints megapixels per second for both and their ratio (target: ONNX Runtime >= 1.5x PyTorch on CPU).
Both run whole-image sliding-window inference through the same code path
(:func:`appliance.pipeline.inference.sliding_window_logits`), with the same tiles and thread count,
interleaved in rounds so that noise on a shared machine hits both alike.

    python benchmarks/inference.py [--set DIR] [--encoder resnet18] [--images 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from appliance.data.io import normalise
from appliance.data.labelled_set import load_labelled_set
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.export import write_model_folder
from appliance.pipeline.inference import TileSettings, sliding_window_logits, torch_runner
from appliance.pipeline.model import build_model
from appliance.pipeline.predictor import OnnxPredictor
from appliance.settings import SHARED_DATASETS

DEFAULT_SET = SHARED_DATASETS / "usiigaci_phase_cells"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET)
    parser.add_argument("--encoder", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tile", type=int, default=512)
    args = parser.parse_args()

    labelled_set = load_labelled_set(args.set)
    images = [normalise(labelled_set.read(i)[0]) for i in range(min(args.images, len(labelled_set)))]
    megapixels = sum(image.shape[0] * image.shape[1] for image in images) / 1e6
    tiles = TileSettings(tile_size=args.tile, overlap=0.5, batch_size=4)
    threads = torch.get_num_threads()

    config = PipelineConfig(encoder=args.encoder)
    torch.manual_seed(0)
    model = build_model(config, in_channels=labelled_set.channels, num_classes=labelled_set.num_classes).eval()
    with tempfile.TemporaryDirectory() as folder:
        write_model_folder(
            folder,
            model,
            config=config,
            in_channels=labelled_set.channels,
            class_names=list(labelled_set.class_names),
            tiles=tiles,
        )
        predictor = OnnxPredictor(folder, threads=threads)
        runners = {"pytorch-eager": torch_runner(model, device="cpu"), "onnxruntime": predictor.run_batch}
        for runner in runners.values():  # warm-up
            sliding_window_logits(images[0], runner, tiles=tiles)
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                start = time.perf_counter()
                for image in images:
                    sliding_window_logits(image, runner, tiles=tiles)
                seconds[name].append(time.perf_counter() - start)

    print(
        f"set {labelled_set.name}: {len(images)} images, {megapixels:.2f} MP per round, {args.rounds} rounds, "
        f"U-Net {args.encoder}, tile {args.tile}, {threads} threads, ONNX Runtime on {predictor.provider}"
    )
    rates = {name: megapixels / statistics.median(values) for name, values in seconds.items()}
    for name, rate in rates.items():
        print(f"  {name:<14} {rate:7.3f} MP/s  (median of {args.rounds} rounds)")
    print(f"  ratio onnxruntime / pytorch-eager: {rates['onnxruntime'] / rates['pytorch-eager']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
