"""Training and inference throughput: does the device wait for the data?

For every memory group (patch x batch x encoder, :func:`appliance.automl.memory.memory_groups`), real training
(batches sampled, cropped and augmented with every augmentation at p = 0.5, moved to the device, as in a halving
slice) against training on one batch already on the device: steps/s, MPix/s and their ratio, from one trainer in
alternating chunks (:func:`appliance.automl.throughput.measure_real_and_resident`). Then sliding-window inference
on one real image (a 768 x 1024 crop): PyTorch with tiles blended on the device (``Trainer.logits``), PyTorch with
tiles blended on the host (the path before issue 14, still what ``torch_runner`` gives) and ONNX Runtime (the
service's predictor, TensorRT or CUDA when a GPU is present) both ways: bound to the device's tensors with the tiles
blended there (the GPU default) and with NumPy on the host (the CPU default), interleaved in rounds.

The CPU always, CUDA when present. The last line: ``min real/resident ratio <x> over <n> groups (<devices>)``.
About 6 minutes on the 2-core CPU (the largest resnet50 group alone takes a minute and a half).

    python benchmarks/throughput.py [--device cpu] [--groups 64x4 128x16] [--encoders resnet18] [--workers N]
                                    [--threads N] [--compile MODE]

``--compile MODE`` measures each group again with its training steps compiled (``Speedups.compile``): steps/s
against eager, the compile's seconds and the steps after which it has paid for itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from appliance.automl.memory import memory_groups
from appliance.automl.throughput import RealAndResident, measure_real_and_resident
from appliance.data.io import normalise
from appliance.data.labelled_set import load_labelled_set
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import device_name, resolve_device, synchronize
from appliance.pipeline.export import write_model_folder
from appliance.pipeline.inference import TileSettings, sliding_window_logits, torch_runner
from appliance.pipeline.predictor import CPU_PROVIDER, OnnxPredictor, default_providers
from appliance.pipeline.trainer import COMPILE_MODES, Speedups, Trainer
from appliance.settings import SHARED_DATASETS

DEFAULT_SET = SHARED_DATASETS / "usiigaci_phase_cells"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu, cuda (repeatable; default: cpu, and cuda if present)")
    parser.add_argument("--groups", nargs="*", help="only these PATCHxBATCH groups, e.g. 64x4 128x16")
    parser.add_argument("--encoders", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument("--workers", type=int, help="background batch workers (default: the device's, Speedups)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help="timed seconds per side and group, at least (1 s left the small groups at +-10 %% noise)",
    )
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="labelled set whose first image is cropped")
    parser.add_argument("--rounds", type=int, default=3, help="inference rounds")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="also measure every group with its training steps compiled in this torch.compile mode: the speed-up "
        "and how many steps repay the compile (for the small groups on a GPU, reduce-overhead: CUDA graphs)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [resolve_device(d) for d in args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])]

    minimum: list[tuple[float, str]] = []
    for device in devices:
        speedups = Speedups.for_device(device)
        if args.workers is not None:
            speedups = replace(speedups, workers=args.workers)
        measured = training_table(device, speedups, args)
        minimum += [(m.ratio, device_name(device)) for m in measured]
        if args.compile:
            compile_table(device, replace(speedups, compile=args.compile), args, eager=measured)
        if not args.skip_inference:
            inference_table(device, args)
    if not minimum:
        raise SystemExit("no memory group selected")
    print(
        f"min real/resident ratio {min(minimum)[0]:.2f} over {len(minimum)} groups "
        f"({', '.join(dict.fromkeys(name for _, name in minimum))})"
    )


def selected_groups(args) -> list:
    """The memory groups of ``--encoders`` (and ``--groups``, when given)."""
    chosen = [group for group in memory_groups() if group.encoder in args.encoders]
    return [g for g in chosen if not args.groups or f"{g.patch_size}x{g.batch_size}" in args.groups]


def training_table(device: torch.device, speedups: Speedups, args) -> list[RealAndResident]:
    print(
        f"training on {device_name(device)}: {speedups.workers} batch workers, prefetch {speedups.prefetch}, "
        f"channels_last {speedups.channels_last}, mixed precision {speedups.mixed_precision}, "
        f"fused Adam {speedups.fused_adam}"
    )
    print(
        f"  {'patch':>5} {'batch':>5} {'encoder':<9} {'real st/s':>9} {'resident st/s':>13} "
        f"{'real MPix/s':>11} {'resident MPix/s':>15} {'ratio':>6} {'took s':>6}"
    )
    table = []
    for group in selected_groups(args):
        started = time.perf_counter()
        measured = measure_real_and_resident(group, device, min_seconds=args.min_seconds, speedups=speedups)
        table.append(measured)
        print(
            f"  {group.patch_size:>5} {group.batch_size:>5} {group.encoder:<9} {measured.real:>9.3f} "
            f"{measured.resident:>13.3f} {measured.mpix_per_second(measured.real):>11.3f} "
            f"{measured.mpix_per_second(measured.resident):>15.3f} {measured.ratio:>6.2f} "
            f"{time.perf_counter() - started:>6.1f}",
            flush=True,
        )
    if table:
        ratios = [m.ratio for m in table]
        print(f"  min real/resident ratio on {device_name(device)}: {min(ratios):.2f} over {len(ratios)} groups")
    return table


def compile_table(device: torch.device, speedups: Speedups, args, *, eager: list[RealAndResident]) -> None:
    """The same groups with compiled training steps, against the eager ones just measured: real steps/s of both,
    the compile (the first step's extra seconds) and the real steps after which the compiled trainer is ahead."""
    print(f"training on {device_name(device)} compiled (torch.compile mode {speedups.compile}) against eager:")
    print(
        f"  {'patch':>5} {'batch':>5} {'encoder':<9} {'eager st/s':>10} {'compiled st/s':>13} {'speed-up':>8} "
        f"{'compile s':>9} {'repaid after steps':>18}"
    )
    for before in eager:
        group = before.group
        after = measure_real_and_resident(group, device, min_seconds=args.min_seconds, speedups=speedups)
        compile_seconds = max(0.0, after.first_step - before.first_step)
        saved_per_step = 1 / before.real - 1 / after.real
        repaid = f"{compile_seconds / saved_per_step:.0f}" if saved_per_step > 0 else "never"
        print(
            f"  {group.patch_size:>5} {group.batch_size:>5} {group.encoder:<9} {before.real:>10.3f} "
            f"{after.real:>13.3f} {after.real / before.real:>8.2f} {compile_seconds:>9.1f} {repaid:>18}",
            flush=True,
        )


def inference_table(device: torch.device, args) -> None:
    labelled_set = load_labelled_set(args.set)
    image = labelled_set.read(0)[0][:768, :1024]
    megapixels = image.shape[0] * image.shape[1] / 1e6
    tiles = TileSettings()
    trainer = Trainer(PipelineConfig(), in_channels=labelled_set.channels, num_classes=1, seed=0, device=device)
    normalised = normalise(image)
    host_runner = torch_runner(trainer.model, device=device)
    with tempfile.TemporaryDirectory() as folder:
        write_model_folder(
            folder,
            trainer.model,
            config=trainer.config,
            in_channels=labelled_set.channels,
            class_names=["cell"],
            tiles=tiles,
        )
        providers = default_providers() if device.type == "cuda" else [CPU_PROVIDER]
        predictor = OnnxPredictor(
            folder,
            providers=providers,
            threads=torch.get_num_threads(),
            engine_cache=Path(folder) / "engines",
            blend_device="cpu" if device.type == "cpu" else None,  # on CUDA: the GPU when ONNX Runtime has it
        )
        provider = predictor.provider.replace("ExecutionProvider", "")
        runs = {
            "pytorch, device blend": lambda: trainer.logits(image, tiles=tiles),
            "pytorch, host blend (before)": lambda: sliding_window_logits(normalised, host_runner, tiles=tiles),
            f"onnxruntime {provider}, device blend": lambda: predictor.logits(image),
            f"onnxruntime {provider}, host blend": lambda: sliding_window_logits(
                normalise(image), predictor.run_batch, tiles=tiles
            ),
        }
        for run in runs.values():  # warm-up
            run()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                synchronize(device)
                started = time.perf_counter()
                run()
                synchronize(device)
                seconds[name].append(time.perf_counter() - started)
    print(
        f"inference on {device_name(device)}: one {image.shape[0]}x{image.shape[1]} image of {labelled_set.name}, "
        f"U-Net resnet18, tile {tiles.tile_size}, overlap {tiles.overlap}, batch {tiles.batch_size}, "
        f"median of {args.rounds} rounds"
    )
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:<32} {median * 1000:8.0f} ms {megapixels / median:8.3f} MPix/s")


if __name__ == "__main__":
    main()
