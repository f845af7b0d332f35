"""How fast each memory group trains on the device the appliance runs on: the table the budget-aware race plans with.

Throughput (optimiser steps per second, and megapixels of training patches per second) depends on the patch
size, the batch size and the encoder (the memory groups of :mod:`appliance.automl.memory`) and on the device:
on a GPU a small configuration is bound by the time of a step, not by its pixels (an H100 ran patch 64 / batch 4
at 0.8 MPix/s but patch 256 / batch 8 at 18 MPix/s), while a CPU's time grows with the pixels.

The table lives in the store, per device name and code version (:meth:`~appliance.store.Store.throughput`).
Values come from two sources: ``probe`` (:func:`measure_group`: one warm-up step, then timed steps on random
patches) and ``training`` (what a real halving slice achieved, which includes batch preparation; it replaces the
probe's value). A group not measured yet is estimated with a per-encoder cost model ``seconds per step =
a + b · pixels per step`` fitted to the measured groups (:meth:`ThroughputTable.get`), so two measured groups per
encoder estimate all 24; :func:`ensure_reference_measurements` measures those, once per device and code version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from appliance.automl.memory import MemoryGroup, memory_groups
from appliance.errors import ApplianceError
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import device_name, synchronize
from appliance.store import Store
from appliance.version import code_version

PROBE = "probe"
TRAINING = "training"
ESTIMATE = "estimate"

PROBE_SECONDS = 0.3  # timed steps of a probe run until at least this long (at least 2 steps, at most 20)
REFERENCE_STEP_SECONDS = 1.0  # the larger reference group of an encoder: the largest with a step of about this,
REFERENCE_MIN_RATIO = 4  # and at least this many times the smallest group's pixels, for a usable slope
RESNET50_COST = 2.1  # resnet50 / resnet18 step time, used only while one encoder has no measurement at all
"""From the meta-base's own CPU timings (432 runs, every memory group): the median ratio is 2.0–2.3."""


class ThroughputUnknown(ApplianceError):
    """No measurement on this device to estimate from."""


@dataclass(frozen=True)
class Throughput:
    group: MemoryGroup
    steps_per_second: float
    source: str  # PROBE, TRAINING or ESTIMATE

    @property
    def pixels_per_step(self) -> int:
        return self.group.patch_size**2 * self.group.batch_size

    @property
    def mpix_per_second(self) -> float:
        return self.steps_per_second * self.pixels_per_step / 1e6


def group_of(config: PipelineConfig) -> MemoryGroup:
    return MemoryGroup(config.patch_size, config.batch_size, config.encoder)


class ThroughputTable:
    """Measured steps per second of memory groups on one device and code version, with estimates for the rest."""

    def __init__(self, device: str, version: str, measured: dict[MemoryGroup, tuple[float, str]]):
        self.device = device
        self.version = version
        self.measured = dict(measured)
        self._models: dict[str, tuple[float, float]] = {}

    def record(self, group: MemoryGroup, steps_per_second: float, source: str) -> None:
        self.measured[group] = (steps_per_second, source)
        self._models.clear()

    @classmethod
    def load(cls, store: Store, device: torch.device, *, version: str | None = None) -> ThroughputTable:
        name, version = device_name(device), version or code_version()
        rows = store.throughput(name, version)
        return cls(
            name,
            version,
            {
                MemoryGroup(r["patch_size"], r["batch_size"], r["encoder"]): (r["steps_per_second"], r["source"])
                for r in rows
            },
        )

    def get(self, item: MemoryGroup | PipelineConfig) -> Throughput:
        group = group_of(item) if isinstance(item, PipelineConfig) else item
        if group in self.measured:
            steps_per_second, source = self.measured[group]
            return Throughput(group, steps_per_second, source)
        if group.encoder not in self._models:
            self._models[group.encoder] = self._cost_model(group.encoder)
        fixed, per_pixel = self._models[group.encoder]
        seconds = fixed + per_pixel * group.patch_size**2 * group.batch_size
        return Throughput(group, 1.0 / seconds, ESTIMATE)

    def _cost_model(self, encoder: str) -> tuple[float, float]:
        """``(a, b)`` of ``seconds per step = a + b · pixels`` for ``encoder``, both ≥ 0."""
        own = self._points(encoder)
        if len({pixels for pixels, _ in own}) >= 2:
            return _fit_cost(own)
        other = self._points("resnet50" if encoder == "resnet18" else "resnet18")
        if not own and not other:
            raise ThroughputUnknown(
                f"no training throughput measured on {self.device} (code {self.version}) to estimate {encoder} from; "
                "measure the reference groups first (ensure_reference_measurements)"
            )
        if len({pixels for pixels, _ in other}) >= 2:
            fixed, per_pixel = _fit_cost(other)
        else:
            fixed, per_pixel = 0.0, float(np.mean([seconds / pixels for pixels, seconds in other or own]))
        if not own:
            return fixed, per_pixel * (RESNET50_COST if encoder == "resnet50" else 1 / RESNET50_COST)
        # one measured group of this encoder: the other encoder's fixed cost, the per-pixel cost through that point
        pixels, seconds = own[0]
        fixed = min(fixed, seconds)
        return fixed, (seconds - fixed) / pixels

    def _points(self, encoder: str) -> list[tuple[int, float]]:
        return [
            (g.patch_size**2 * g.batch_size, 1.0 / sps) for g, (sps, _) in self.measured.items() if g.encoder == encoder
        ]

    def rows(self) -> list[Throughput]:
        """Every memory group, measured or estimated (patch size slowest)."""
        return [self.get(group) for group in memory_groups()]


def _fit_cost(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of ``seconds = a + b · pixels`` with a, b ≥ 0."""
    pixels = np.array([p for p, _ in points], dtype=float)
    seconds = np.array([s for _, s in points], dtype=float)
    per_pixel, fixed = np.polyfit(pixels, seconds, 1)
    if per_pixel <= 0:
        return float(seconds.mean()), 0.0
    if fixed < 0:
        return 0.0, float((seconds * pixels).sum() / (pixels**2).sum())
    return float(fixed), float(per_pixel)


def measure_group(
    group: MemoryGroup,
    device: torch.device,
    *,
    min_seconds: float = PROBE_SECONDS,
    max_steps: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Steps per second of ``group``'s trainer on random patches: one warm-up step, then timed steps."""
    from appliance.pipeline.patches import make_training_patches
    from appliance.pipeline.trainer import Trainer

    rng = np.random.default_rng(0)
    side = 2 * group.patch_size
    images = [rng.random((side, side, 1), dtype=np.float32) for _ in range(2)]
    masks = [rng.integers(0, 2, (side, side), dtype=np.uint8) for _ in range(2)]
    patches = make_training_patches(images, masks, patch_size=group.patch_size, num_classes=1)
    trainer = Trainer(group.config(), in_channels=1, num_classes=1, seed=0, device=device)
    trainer.train(patches, max_steps=1)
    synchronize(device)
    started, steps = clock(), 0
    while steps < 2 or (clock() - started < min_seconds and steps < max_steps):
        trainer.train(patches, max_steps=1)
        steps += 1
    synchronize(device)
    return steps / (clock() - started)


def reference_groups(table: ThroughputTable, encoder: str) -> Iterable[MemoryGroup]:
    """The groups measured for ``encoder``: the smallest, then the largest whose step the smallest's per-pixel cost
    puts at about :data:`REFERENCE_STEP_SECONDS` but with at least :data:`REFERENCE_MIN_RATIO` times its pixels
    (a CPU gets patch 128 / batch 4, a GPU a large one)."""
    groups = sorted(
        (g for g in memory_groups() if g.encoder == encoder),
        key=lambda g: (g.patch_size**2 * g.batch_size, g.patch_size),
    )
    yield groups[0]
    small = table.get(groups[0])
    per_pixel = 1.0 / (small.steps_per_second * small.pixels_per_step)
    smallest = small.pixels_per_step
    larger = [g for g in groups if g.patch_size**2 * g.batch_size >= REFERENCE_MIN_RATIO * smallest]
    fitting = [g for g in larger if per_pixel * g.patch_size**2 * g.batch_size <= REFERENCE_STEP_SECONDS]
    yield fitting[-1] if fitting else larger[0]


def measure_every_group(
    store: Store, device: torch.device, *, log: Callable[[str], None] = lambda message: None
) -> ThroughputTable:
    """Probe every memory group this device and code version has no measured value for (slow on a CPU: the largest
    resnet50 group takes about a minute there; seconds on a GPU)."""
    table = ThroughputTable.load(store, device)
    for group in memory_groups():
        if group not in table.measured:
            _probe(store, table, group, device, log)
    return table


def _probe(store: Store, table: ThroughputTable, group: MemoryGroup, device: torch.device, log) -> None:
    started = time.perf_counter()
    steps_per_second = measure_group(group, device)
    store.record_throughput(table.device, table.version, group, steps_per_second, source=PROBE)
    table.record(group, steps_per_second, PROBE)
    log(
        f"throughput of patch {group.patch_size}, batch {group.batch_size}, {group.encoder} on {table.device}: "
        f"{steps_per_second:.2f} steps/s (measured in {time.perf_counter() - started:.1f} s)"
    )


def ensure_reference_measurements(
    store: Store, device: torch.device, *, log: Callable[[str], None] = lambda message: None
) -> ThroughputTable:
    """Measure the reference groups of both encoders that this device and code version lack; return the table."""
    table = ThroughputTable.load(store, device)
    for encoder in ("resnet18", "resnet50"):
        for group in reference_groups(table, encoder):
            if group not in table.measured:
                _probe(store, table, group, device, log)
    return table


def record_training_throughput(
    store: Store, table: ThroughputTable, config: PipelineConfig, *, steps: int, seconds: float
) -> None:
    """Keep what a real training slice achieved (at least 3 steps), replacing a probe's or an older slice's value."""
    if steps < 3 or seconds <= 0:
        return
    group = group_of(config)
    store.record_throughput(table.device, table.version, group, steps / seconds, source=TRAINING)
    table.record(group, steps / seconds, TRAINING)
