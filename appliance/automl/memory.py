"""Training memory of a configuration, estimated without a GPU, and measured on one.

Only the patch size, batch size and encoder change what a training step holds in memory; the learning
rate and the augmentations (applied on the CPU before a batch is built) do not. The 576 configurations
therefore fall into 24 memory groups (:func:`memory_groups`).

:func:`estimate_training_memory` traces one steady-state training step (the second one, so Adam's two
moment buffers exist) on fake tensors: every tensor the step allocates is tracked by
``torch.distributed._tools.mem_tracker.MemTracker`` without any arithmetic being done, so the largest
configuration takes seconds on a CPU. The estimate counts tensors only: a CUDA device adds its context
(about 0.5 GB, outside the per-process cap), cuDNN workspaces and allocator rounding, which
:func:`measure_training_memory` sees on a real GPU.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from appliance.automl.search_space import search_space
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import (
    is_cuda,
    peak_memory_mb,
    peak_reserved_mb,
    release_cached_memory,
    reset_peak_memory,
    resolve_device,
)

PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class MemoryGroup:
    """Configurations sharing one memory footprint: same patch size, batch size and encoder."""

    patch_size: int
    batch_size: int
    encoder: str

    def config(self) -> PipelineConfig:
        return PipelineConfig(patch_size=self.patch_size, batch_size=self.batch_size, encoder=self.encoder)


@dataclass(frozen=True)
class MemoryEstimate:
    group: MemoryGroup
    precision: str
    parameters_mb: float
    optimizer_mb: float
    activations_mb: float
    temporary_mb: float

    @property
    def total_mb(self) -> float:
        return self.parameters_mb + self.optimizer_mb + self.activations_mb + self.temporary_mb


def memory_groups() -> dict[MemoryGroup, list[PipelineConfig]]:
    """All configurations of the search space, keyed by their memory group (patch size slowest, as in
    :func:`~appliance.automl.search_space.search_space`)."""
    groups: dict[MemoryGroup, list[PipelineConfig]] = defaultdict(list)
    for config in search_space():
        groups[MemoryGroup(config.patch_size, config.batch_size, config.encoder)].append(config)
    return dict(groups)


def estimate_training_memory(
    group: MemoryGroup, *, in_channels: int = 3, num_classes: int = 1, precision: str = "bf16", fake: bool = True
) -> MemoryEstimate:
    """Peak tensor memory of one steady-state training step of ``group``'s configurations.

    ``precision="bf16"`` traces the step under the autocast the trainer uses on a GPU (the CPU's
    bfloat16 autocast stands in for CUDA's, whose op lists match for convolutions, the bulk of the
    memory); ``"fp32"`` is the CPU trainer. ``fake=False`` runs the step on real tensors (slow for large
    groups; the tests use it to check that the fake trace counts the same bytes).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from appliance.pipeline.model import build_model, focal_loss

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    config = group.config()
    size = (group.batch_size, in_channels, group.patch_size, group.patch_size)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        torch.manual_seed(0)
        model = build_model(config, in_channels=in_channels, num_classes=num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        images = torch.randn(size)
        masks = torch.randint(0, num_classes + 1, (group.batch_size, group.patch_size, group.patch_size))

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(images)
            focal_loss(logits, masks).backward()
            optimizer.step()

        step()  # creates Adam's moment buffers; the second step is the steady state
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            step()
        peak = tracker.get_tracker_snapshot("peak")
    totals: dict[str, float] = defaultdict(float)
    for per_kind in peak.values():
        for kind, size_bytes in per_kind.items():
            totals[getattr(kind, "value", kind)] += size_bytes / 2**20  # "Parameter", "Activation", ..., "Total"
    return MemoryEstimate(
        group=group,
        precision=precision,
        parameters_mb=totals["Parameter"] + totals["Buffer"],
        optimizer_mb=totals["Optstate"],
        activations_mb=totals["Activation"] + totals["Gradient"],
        temporary_mb=totals["Temp"] + totals["Other"],
    )


@dataclass(frozen=True)
class MemoryMeasurement:
    group: MemoryGroup
    allocated_mb: float
    reserved_mb: float


def measure_training_memory(
    group: MemoryGroup, device: torch.device, *, in_channels: int = 3, num_classes: int = 1, steps: int = 3
) -> MemoryMeasurement:
    """Peak CUDA memory of ``steps`` real training steps of the trainer on random patches (GPU only)."""
    from appliance.pipeline.patches import make_training_patches
    from appliance.pipeline.trainer import Trainer

    if not is_cuda(device):
        raise ValueError("measuring training memory needs a CUDA device; use estimate_training_memory on a CPU")
    device = resolve_device(device)
    rng = np.random.default_rng(0)
    side = max(2 * group.patch_size, 256)
    images = [rng.random((side, side, in_channels), dtype=np.float32) for _ in range(2)]
    masks = [rng.integers(0, num_classes + 1, (side, side), dtype=np.uint8) for _ in range(2)]
    patches = make_training_patches(images, masks, patch_size=group.patch_size, num_classes=num_classes)
    trainer = Trainer(group.config(), in_channels=in_channels, num_classes=num_classes, seed=0, device=device)
    release_cached_memory(device)
    reset_peak_memory(device)
    try:
        trainer.train(patches, max_steps=steps)
        return MemoryMeasurement(group=group, allocated_mb=peak_memory_mb(device), reserved_mb=peak_reserved_mb(device))
    finally:
        del trainer
        release_cached_memory(device)
