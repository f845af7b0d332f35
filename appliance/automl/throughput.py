"""How fast each memory group trains on the device the appliance runs on: the table the budget-aware race plans with.

Throughput (optimiser steps per second, and megapixels of training patches per second) depends on the patch
size, the batch size and the encoder (the memory groups of :mod:`appliance.automl.memory`) and on the device:
on a GPU a small configuration is bound by the time of a step, not by its pixels (an H100 ran patch 64 / batch 4
at 0.8 MPix/s but patch 256 / batch 8 at 18 MPix/s), while a CPU's time grows with the pixels.

The table lives in the store, per device name and code version (:meth:`~appliance.store.Store.throughput`).
Values come from two sources: ``probe`` (:func:`measure_group`: one warm-up step, then timed steps on random
patches) and ``training`` (what a real halving slice achieved, which includes batch preparation; it replaces the
probe's value, and a slower later slice lowers it halfway: :func:`record_training_throughput`). A group not
measured yet is estimated by interpolating seconds per step over pixels per step (log-log) through the measured
groups of its encoder (:meth:`ThroughputTable.get`); :func:`ensure_reference_measurements` measures two or three
groups per encoder and the prediction speed of each encoder (which prices validation), once per device and code
version. A linear cost model fitted to two small groups
was tried first: on the 2-core CPU it put the paper default at 0.89 steps/s; it trains at 0.47–0.52.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from appliance.automl.memory import MemoryGroup, memory_groups
from appliance.errors import ApplianceError
from appliance.pipeline.config import PAPER_DEFAULT, PipelineConfig
from appliance.pipeline.device import device_name
from appliance.store import Store
from appliance.version import code_version

PROBE = "probe"
TRAINING = "training"
ESTIMATE = "estimate"
TRAIN, PREDICT = "train", "predict"  # what a row of the store's table measures
PREDICT_TILE = 512

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
    """Measured training steps per second of memory groups, and prediction speed per encoder, on one device and code
    version, with estimates for the rest."""

    def __init__(
        self,
        device: str,
        version: str,
        measured: dict[MemoryGroup, tuple[float, str]],
        prediction: dict[str, float] | None = None,
    ):
        self.device = device
        self.version = version
        self.measured = dict(measured)
        self.prediction = dict(prediction or {})  # encoder -> MPix/s of sliding-window prediction tiles

    def record(self, group: MemoryGroup, steps_per_second: float, source: str) -> None:
        self.measured[group] = (steps_per_second, source)

    @classmethod
    def load(cls, store: Store, device: torch.device | str, *, version: str | None = None) -> ThroughputTable:
        """The table of ``device`` (or a device's name, e.g. a cluster worker's) for ``version`` (default: this
        code's)."""
        name = device if isinstance(device, str) else device_name(device)
        version = version or code_version()
        rows = store.throughput(name, version)
        return cls(
            name,
            version,
            {
                MemoryGroup(r.patch_size, r.batch_size, r.encoder): (r.steps_per_second, r.source)
                for r in rows
                if r.kind == TRAIN
            },
            {r.encoder: r.steps_per_second * r.patch_size**2 * r.batch_size / 1e6 for r in rows if r.kind == PREDICT},
        )

    def get(self, item: MemoryGroup | PipelineConfig) -> Throughput:
        group = group_of(item) if isinstance(item, PipelineConfig) else item
        if group in self.measured:
            steps_per_second, source = self.measured[group]
            return Throughput(group, steps_per_second, source)
        return Throughput(group, 1.0 / self._seconds_per_step(group.encoder, _pixels(group)), ESTIMATE)

    def prediction_mpix_per_second(self, encoder: str) -> float:
        """Megapixels of tiles a second that sliding-window prediction runs at; unmeasured: 4× the encoder's
        training speed at the paper default's batch (prediction was 4.1–4.3× on the 2-core CPU)."""
        if encoder in self.prediction:
            return self.prediction[encoder]
        return 4 * self.get(MemoryGroup(128, 16, encoder)).mpix_per_second

    def _seconds_per_step(self, encoder: str, pixels: int) -> float:
        """Interpolated in log(seconds) over log(pixels) through this encoder's measured groups. Outside them, the
        curve's shape comes from the other encoder where that one was measured further (the shape is the device's:
        flat where a step's fixed cost dominates, proportional to pixels where compute does), anchored at this
        encoder's nearest measured group; else along the nearest segment's slope, kept within 0.5–1.5. No measured
        group: the other encoder's curve × :data:`RESNET50_COST` (or its inverse)."""
        own = self._points(encoder)
        other = self._points("resnet50" if encoder == "resnet18" else "resnet18")
        if len(own) >= 2 and own[0][0] <= pixels <= own[-1][0]:
            return _log_interpolate(own, pixels)
        if own and len(other) >= 2:
            above = pixels > own[-1][0]
            anchor_pixels, anchor_seconds = own[-1] if above else own[0]
            if (other[-1][0] > anchor_pixels) if above else (other[0][0] < anchor_pixels):
                return anchor_seconds * _log_interpolate(other, pixels) / _log_interpolate(other, anchor_pixels)
        if own:
            return _log_interpolate(own, pixels) if len(own) >= 2 else own[0][1] * pixels / own[0][0]
        if not other:
            raise ThroughputUnknown(
                f"no training throughput measured on {self.device} (code {self.version}) to estimate {encoder} from; "
                "measure the reference groups first (ensure_reference_measurements)"
            )
        ratio = RESNET50_COST if encoder == "resnet50" else 1 / RESNET50_COST
        if len(other) >= 2:
            return ratio * _log_interpolate(other, pixels)
        return ratio * other[0][1] * pixels / other[0][0]

    def _points(self, encoder: str) -> list[tuple[int, float]]:
        """``(pixels per step, seconds per step)`` of the measured groups, one per pixel count (the mean), sorted."""
        by_pixels: dict[int, list[float]] = {}
        for group, (steps_per_second, _) in self.measured.items():
            if group.encoder == encoder:
                by_pixels.setdefault(_pixels(group), []).append(1.0 / steps_per_second)
        return sorted((pixels, float(np.mean(seconds))) for pixels, seconds in by_pixels.items())

    def rows(self) -> list[Throughput]:
        """Every memory group, measured or estimated (patch size slowest)."""
        return [self.get(group) for group in memory_groups()]


def _pixels(group: MemoryGroup) -> int:
    return group.patch_size**2 * group.batch_size


def _log_interpolate(points: list[tuple[int, float]], pixels: int) -> float:
    """Seconds per step at ``pixels``, piecewise linear in log-log through ``points``; beyond them along the nearest
    segment's slope, kept within 0.5–1.5 (a step never gets cheaper with more pixels, nor much dearer than
    proportionally)."""
    if len(points) == 1:
        return points[0][1] * pixels / points[0][0]
    xs = np.log([p for p, _ in points])
    ys = np.log([s for _, s in points])
    x = math.log(pixels)
    if xs[0] <= x <= xs[-1]:
        return float(math.exp(np.interp(x, xs, ys)))
    i, j = (0, 1) if x < xs[0] else (-2, -1)
    slope = min(1.5, max(0.5, (ys[j] - ys[i]) / (xs[j] - xs[i])))
    return float(math.exp(ys[i if x < xs[0] else j] + slope * (x - xs[i if x < xs[0] else j])))


def probe_trainer(group: MemoryGroup, device: torch.device, *, augmentation: bool = False, speedups=None):
    """A fresh trainer of ``group`` (every augmentation at p = 0.5 when ``augmentation``) and random training
    patches for it: two one-channel images of twice the patch size. Close the trainer after use."""
    from appliance.pipeline.patches import make_training_patches
    from appliance.pipeline.trainer import Trainer

    rng = np.random.default_rng(0)
    side = 2 * group.patch_size
    images = [rng.random((side, side, 1), dtype=np.float32) for _ in range(2)]
    masks = [rng.integers(0, 2, (side, side), dtype=np.uint8) for _ in range(2)]
    patches = make_training_patches(images, masks, patch_size=group.patch_size, num_classes=1)
    config = group.config()
    if augmentation:
        config = replace(config, flip=0.5, brightness_blur=0.5, grid_distortion=0.5)
    trainer = Trainer(config, in_channels=1, num_classes=1, seed=0, device=device, speedups=speedups)
    return trainer, patches


def measure_group(
    group: MemoryGroup,
    device: torch.device,
    *,
    min_seconds: float = PROBE_SECONDS,
    max_steps: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Steps per second of ``group``'s trainer on random patches: one warm-up step, then timed steps."""
    trainer, patches = probe_trainer(group, device)
    with trainer:
        trainer.train(patches, max_steps=1)
        started, steps = clock(), 0
        while steps < 2 or (clock() - started < min_seconds and steps < max_steps):
            trainer.train(patches, max_steps=1)  # each slice ends waiting for the device
            steps += 1
        return steps / (clock() - started)


@dataclass(frozen=True)
class RealAndResident:
    """Training speed of one memory group with batches prepared as in training (``real``: sampling, crop,
    augmentation, the copy to the device) and on one batch already on the device (``resident``), in steps/s."""

    group: MemoryGroup
    real: float
    resident: float
    first_step: float  # seconds of the trainer's first step (a compiled trainer compiles in it)

    @property
    def ratio(self) -> float:
        return self.real / self.resident

    def mpix_per_second(self, steps_per_second: float) -> float:
        return steps_per_second * _pixels(self.group) / 1e6


def measure_real_and_resident(
    group: MemoryGroup,
    device: torch.device,
    *,
    min_seconds: float = 1.0,
    chunk_seconds: float = 0.5,
    max_steps: int = 200,
    speedups=None,
) -> RealAndResident:
    """Real against device-resident training speed of ``group`` with every augmentation on, from one trainer:
    a warm-up step, then alternating chunks of real steps (:meth:`~appliance.pipeline.trainer.Trainer.train`, so
    batch preparation, its workers and the slice's final synchronisation count) and as many resident ones
    (:meth:`~appliance.pipeline.trainer.Trainer.train_resident` on random tensors of the batch's shape), until each
    side has at least ``min_seconds`` or ``max_steps``. Alternating lets a passing load hit both alike."""
    trainer, patches = probe_trainer(group, device, augmentation=True, speedups=speedups)
    with trainer:
        warm_up = trainer.train(patches, max_steps=1).seconds
        chunk = max(1, min(max_steps, round(chunk_seconds / warm_up)))
        generator = torch.Generator().manual_seed(0)
        shape = (group.batch_size, 1, group.patch_size, group.patch_size)
        images = torch.randn(shape, generator=generator)
        masks = torch.randint(0, 2, (shape[0], *shape[2:]), generator=generator)
        real_seconds = resident_seconds = 0.0
        steps = 0
        while steps == 0 or (min(real_seconds, resident_seconds) < min_seconds and steps < max_steps):
            real_seconds += trainer.train(patches, max_steps=chunk).seconds
            resident_seconds += trainer.train_resident(images, masks, steps=chunk)
            steps += chunk
    return RealAndResident(group, steps / real_seconds, steps / resident_seconds, warm_up)


def measure_prediction(encoder: str, device: torch.device, *, repeats: int = 2) -> float:
    """Megapixels a second of sliding-window prediction tiles (:data:`PREDICT_TILE` px, one at a time) with a
    randomly initialised U-Net of ``encoder``, after one warm-up tile."""
    from appliance.pipeline.inference import torch_runner
    from appliance.pipeline.model import build_model

    model = build_model(PipelineConfig(encoder=encoder), in_channels=1, num_classes=1).to(device)
    run = torch_runner(model, device=device)
    tile = np.random.default_rng(0).random((1, 1, PREDICT_TILE, PREDICT_TILE), dtype=np.float32)
    run(tile)
    started = time.perf_counter()
    for _ in range(repeats):
        run(tile)
    return repeats * PREDICT_TILE**2 / 1e6 / (time.perf_counter() - started)


def reference_groups(table: ThroughputTable, encoder: str) -> Iterable[MemoryGroup]:
    """The groups measured for ``encoder``: the smallest, then the largest whose step the smallest's per-pixel cost
    puts at about :data:`REFERENCE_STEP_SECONDS` but with at least :data:`REFERENCE_MIN_RATIO` times its pixels
    (a CPU gets patch 128 / batch 4, a GPU a large one), and for resnet18 the paper default's group (it always
    races; a CPU's cost per pixel still grows between those two and it)."""
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
    default = MemoryGroup(PAPER_DEFAULT.patch_size, PAPER_DEFAULT.batch_size, PAPER_DEFAULT.encoder)
    if encoder == default.encoder:
        yield default


def measure_every_group(
    store: Store, device: torch.device | DeviceProbe, *, log: Callable[[str], None] = lambda message: None
) -> ThroughputTable:
    """Probe every memory group this device and code version has no measured value for (slow on a CPU: the largest
    resnet50 group takes about a minute there; seconds on a GPU)."""
    probe = _as_probe(device)
    table = ThroughputTable.load(store, probe.name)
    for group in memory_groups():
        if group not in table.measured:
            _probe(store, table, group, probe, log)
    return table


class DeviceProbe(Protocol):
    """Measures a device's speed where that device is: :class:`LocalProbe` here, a cluster worker's remotely."""

    @property
    def name(self) -> str: ...  # device_name() of the device

    def training(self, group: MemoryGroup) -> float: ...  # steps per second

    def prediction(self, encoder: str) -> float: ...  # MPix/s of prediction tiles


@dataclass(frozen=True)
class LocalProbe:
    device: torch.device

    @property
    def name(self) -> str:
        return device_name(self.device)

    def training(self, group: MemoryGroup) -> float:
        return measure_group(group, self.device)

    def prediction(self, encoder: str) -> float:
        return measure_prediction(encoder, self.device)


def _probe(store: Store, table: ThroughputTable, group: MemoryGroup, probe: DeviceProbe, log) -> None:
    started = time.perf_counter()
    steps_per_second = probe.training(group)
    store.record_throughput(table.device, table.version, group, steps_per_second, source=PROBE)
    table.record(group, steps_per_second, PROBE)
    log(
        f"throughput of patch {group.patch_size}, batch {group.batch_size}, {group.encoder} on {table.device}: "
        f"{steps_per_second:.2f} steps/s (measured in {time.perf_counter() - started:.1f} s)"
    )


def _as_probe(device: torch.device | DeviceProbe) -> DeviceProbe:
    return LocalProbe(device) if isinstance(device, torch.device) else device


def ensure_reference_measurements(
    store: Store, device: torch.device | DeviceProbe, *, log: Callable[[str], None] = lambda message: None
) -> ThroughputTable:
    """Measure the reference groups of both encoders that this device (here, or a cluster worker's through its
    probe) and code version lack; return the table."""
    probe = _as_probe(device)
    table = ThroughputTable.load(store, probe.name)
    for encoder in ("resnet18", "resnet50"):
        for group in reference_groups(table, encoder):
            if group not in table.measured:
                _probe(store, table, group, probe, log)
        if encoder not in table.prediction:
            mpix_per_second = probe.prediction(encoder)
            tiles = MemoryGroup(PREDICT_TILE, 1, encoder)
            store.record_throughput(
                table.device, table.version, tiles, mpix_per_second * 1e6 / PREDICT_TILE**2, source=PROBE, kind=PREDICT
            )
            table.prediction[encoder] = mpix_per_second
            log(f"prediction speed of {encoder} on {table.device}: {mpix_per_second:.2f} MPix/s of tiles")
    return table


def record_training_throughput(
    store: Store, table: ThroughputTable, config: PipelineConfig, *, steps: int, seconds: float
) -> None:
    """Keep what a real training slice achieved (at least 3 steps): it replaces a probe's value and a slower slice's;
    a slower slice than the last one moves the value only halfway (geometric mean). A slice slowed by a passing
    load (another job, a test run beside a benchmark) must not make its group look slow for good: the race passes a
    slow-looking group over, so it would rarely be measured again (cpm15, 15 min on the 2-core CPU: the paper
    default recorded at 0.14 steps/s under load instead of ~0.5 left no race at all)."""
    if steps < 3 or seconds <= 0:
        return
    group = group_of(config)
    steps_per_second = steps / seconds
    previous = table.measured.get(group)
    if previous is not None and previous[1] == TRAINING and steps_per_second < previous[0]:
        steps_per_second = math.sqrt(previous[0] * steps_per_second)
    store.record_throughput(table.device, table.version, group, steps_per_second, source=TRAINING)
    table.record(group, steps_per_second, TRAINING)
