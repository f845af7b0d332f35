"""Training memory of all 576 configurations, and the GPU memory cap at work.

The 576 configurations fall into 24 memory groups (patch size × batch size × encoder; the learning
rate and the augmentations do not change what a step holds). For every group this prints

* the estimate: peak tensor memory of one steady-state training step traced on fake tensors
  (``appliance.automl.memory``), under the GPU trainer's bfloat16 autocast and in the CPU trainer's
  float32; runs anywhere in seconds;
* on a CUDA machine, also the measurement: ``torch.cuda.max_memory_allocated`` / ``_reserved`` over three
  real training steps, the process capped to ``--gpu-memory-gb`` (default 8, the target card) exactly as
  the appliance caps itself. A group that runs out of memory under the cap is reported as not fitting.

With ``--demo-cap`` on CUDA it then shows the cap rule on a real set: the largest configuration is probed
by the appliance's own backend under a cap below its measured need, raising ``DoesNotFit`` (successive
halving records it and enters the next-ranked configuration instead).

    python benchmarks/gpu_memory.py                          # estimates only (CPU)
    python benchmarks/gpu_memory.py --write docs/memory.md   # and write the table to the docs
    python benchmarks/gpu_memory.py --demo-cap --write docs/memory.md   # on a GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from appliance.automl.memory import (
    MemoryEstimate,
    MemoryGroup,
    MemoryMeasurement,
    estimate_training_memory,
    measure_training_memory,
    memory_groups,
)
from appliance.pipeline.device import cap_gpu_memory, device_name, release_cached_memory, resolve_device
from appliance.settings import SHARED_DATASETS

DEFAULT_SET = SHARED_DATASETS / "dsb2018_fluo_nuclei"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, help="The cap (the appliance's gpu_memory_gb).")
    parser.add_argument("--in-channels", type=int, default=3, help="Image channels (3 = RGB, the larger case).")
    parser.add_argument("--demo-cap", action="store_true", help="On CUDA: show DoesNotFit on a real set.")
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="Labelled set for --demo-cap.")
    parser.add_argument("--write", type=Path, default=None, help="Write the results as Markdown here.")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = resolve_device("cuda" if cuda else "cpu")
    groups = memory_groups()
    started = time.perf_counter()
    estimates = {
        group: {p: estimate_training_memory(group, in_channels=args.in_channels, precision=p) for p in ("bf16", "fp32")}
        for group in groups
    }
    estimate_seconds = time.perf_counter() - started
    measurements: dict[MemoryGroup, MemoryMeasurement | str] = {}
    if cuda:
        cap_gpu_memory(device, args.gpu_memory_gb)
        for group in groups:
            try:
                measurements[group] = measure_training_memory(group, device, in_channels=args.in_channels)
            except torch.cuda.OutOfMemoryError:
                release_cached_memory(device)
                measurements[group] = f"does not fit {args.gpu_memory_gb:g} GB"
    demo = demonstrate_cap(args.set, measurements, device) if args.demo_cap and cuda else None

    machine = device_name(device)
    text = report(groups, estimates, measurements, demo, args, machine, estimate_seconds)
    print(text)
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")


def demonstrate_cap(set_dir: Path, measurements: dict, device: torch.device) -> str:
    """Probe the largest measured configuration under a cap of half its need, through the real backend."""
    from appliance.automl.backend import TorchBackend
    from appliance.automl.halving import DoesNotFit
    from appliance.data.labelled_set import load_labelled_set
    from appliance.data.splits import split_stems

    measured = {g: m for g, m in measurements.items() if isinstance(m, MemoryMeasurement)}
    group = max(measured, key=lambda g: measured[g].allocated_mb)
    cap_gb = measured[group].allocated_mb / 2 / 1024
    labelled_set = load_labelled_set(set_dir)
    split = split_stems(labelled_set.stems, seed=0)
    backend = TorchBackend(labelled_set, split, seed=0, device=device, gpu_memory_gb=cap_gb)
    trainer = backend.start(group.config())
    try:
        peak = backend.probe(trainer)
    except DoesNotFit as error:
        return (
            f"{group.config().id} ({_label(group)}) on {labelled_set.name}, capped to {cap_gb:.2f} GB "
            f"(half of its measured {measured[group].allocated_mb:.0f} MB): DoesNotFit, {error}"
        )
    return f"{group.config().id} fitted under {cap_gb:.2f} GB (peak {peak:.0f} MB): the cap did NOT work"


def _label(group: MemoryGroup) -> str:
    return f"patch {group.patch_size}, batch {group.batch_size}, {group.encoder}"


def report(groups, estimates, measurements, demo, args, machine: str, estimate_seconds: float) -> str:
    cap_mb = args.gpu_memory_gb * 1024
    lines = [
        "# Training memory of the 576 configurations",
        "",
        f"Written by `python benchmarks/gpu_memory.py` on {machine}, torch {torch.__version__}; "
        f"{args.in_channels}-channel images, 1 foreground class. The estimates took {estimate_seconds:.0f} s.",
        "",
        f"Each row is one memory group: the {len(next(iter(groups.values())))} configurations with that patch "
        f"size, batch size and encoder ({sum(map(len, groups.values()))} in {len(groups)} groups; "
        "learning rate × flip × brightness/blur × grid distortion vary within a group). "
        "*Estimate* is the peak tensor memory of one steady-state training step (weights, Adam state, "
        "activations, temporaries) traced on fake tensors; bf16 is the GPU trainer (autocast), fp32 the CPU "
        "trainer. A real CUDA device adds its context (about 0.5 GB, outside the per-process cap), cuDNN "
        "workspaces and allocator rounding, which the *measured* columns include.",
        "",
        "| patch | batch | encoder | estimate bf16 (MB) | estimate fp32 (MB) | measured allocated (MB) "
        f"| measured reserved (MB) | fits {args.gpu_memory_gb:g} GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        bf16: MemoryEstimate = estimates[group]["bf16"]
        fp32: MemoryEstimate = estimates[group]["fp32"]
        measured = measurements.get(group)
        if isinstance(measured, MemoryMeasurement):
            allocated, reserved = f"{measured.allocated_mb:.0f}", f"{measured.reserved_mb:.0f}"
            fits = "yes" if measured.reserved_mb <= cap_mb else "no"
        elif isinstance(measured, str):
            allocated, reserved, fits = "OOM", "OOM", "no"
        else:
            allocated, reserved = "not measured", "not measured"
            fits = f"{'yes' if bf16.total_mb <= cap_mb else 'no'} (estimate)"
        lines.append(
            f"| {group.patch_size} | {group.batch_size} | {group.encoder} | {bf16.total_mb:.0f} | "
            f"{fp32.total_mb:.0f} | {allocated} | {reserved} | {fits} |"
        )
    largest = max(groups, key=lambda g: estimates[g]["bf16"].total_mb)
    over = [g for g in groups if estimates[g]["bf16"].total_mb > cap_mb]
    lines += [
        "",
        f"Largest: {_label(largest)}, {estimates[largest]['bf16'].total_mb:.0f} MB estimated under bf16 "
        f"({estimates[largest]['bf16'].activations_mb:.0f} MB of it activations); the CPU trainer (fp32) needs "
        f"{estimates[largest]['fp32'].total_mb:.0f} MB of RAM for it. Small groups peak in the optimiser step "
        "(weights, gradients, Adam's two moments), so their size hardly depends on the batch.",
        "",
        f"By the estimate, {len(groups) - len(over)} of {len(groups)} groups fit {args.gpu_memory_gb:g} GB"
        + (
            f"; these do not: {', '.join(_label(g) for g in over)}."
            if over
            else ": on the 8 GB target card the guard is a safety net (for a card shared with other work or a "
            "`gpu_memory_gb` set lower), not a filter that removes configurations."
        ),
    ]
    if not measurements:
        lines += [
            "",
            "No CUDA device here, so nothing is measured and the cap is not demonstrated. On a GPU machine: "
            "`python benchmarks/gpu_memory.py --demo-cap --write docs/memory.md`.",
        ]
    if demo:
        lines += ["", "## The cap at work", "", demo]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
