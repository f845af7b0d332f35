"""Where a halving step's slices run: one after another in this process, or side by side on a Ray cluster.

A *slice* is one trial's share of a step: load its checkpoint (or build its model), probe it (first step), train,
validate, save the new checkpoint. :class:`~appliance.automl.halving.SuccessiveHalving` owns the store and every
decision (shares, survivors, replacements, retries); an executor only runs :class:`SliceTask`\\ s with
:func:`run_slice` and hands back :class:`SliceOutcome`\\ s, so the store keeps a single writer on the head node. The
in-process :class:`LocalExecutor` has one slot; the Ray executor (:mod:`appliance.automl.cluster`) one per device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from appliance.automl.last_stretch import Part, train_in_parts
from appliance.errors import ApplianceError
from appliance.pipeline.config import PipelineConfig


class DoesNotFit(ApplianceError):
    """The probe step ran out of memory under the cap."""

    def __init__(self, peak_memory_mb: float | None, message: str):
        self.peak_memory_mb = peak_memory_mb
        super().__init__(message)


class TrialFailed(ApplianceError):
    """Training stopped for a reason that drops the trial (e.g. CUDA out of memory mid-training)."""


@dataclass(frozen=True)
class TrainedSlice:
    seconds: float  # trained in this slice
    total_seconds: float
    optimizer_steps: int  # in total
    work_mp: float  # megapixels of patches in total


@dataclass(frozen=True)
class Validation:
    """A trial's validation: the network classes' mean foreground IoU and, for a set whose task has its own metric
    (objects: AP@0.5), that metric as ``score``. Survivors are chosen by ``score``, ties by ``mean_iou``."""

    mean_iou: float | None  # None: not validated (a last step with one trial, too short to validate in parts)
    per_class: list[float | None] | None
    score: float | None = None  # None: the task's metric is the mean IoU itself

    @property
    def selection_score(self) -> float | None:
        return self.mean_iou if self.score is None else self.score


class TrialBackend(Protocol):
    """What successive halving needs from training; :class:`~appliance.automl.backend.TorchBackend` is the real one."""

    def start(self, config: PipelineConfig) -> Any: ...
    def load(self, path: Path) -> Any: ...
    def save(self, trainer: Any, path: Path) -> None: ...
    def probe(self, trainer: Any) -> float | None: ...
    def train(
        self,
        trainer: Any,
        seconds: float,
        *,
        cooldown: float = 0.0,
        part: tuple[float, float] = (0.0, 1.0),
        rate: float = 1.0,
    ) -> TrainedSlice: ...
    def restore(self, trainer: Any, path: Path) -> None: ...  # back to a checkpoint's weights, counters kept
    def validate(self, trainer: Any) -> Validation: ...
    def peak_memory_mb(self) -> float | None: ...


class SliceStatus(StrEnum):
    TRAINED = "trained"
    DOES_NOT_FIT = "does_not_fit"  # the probe step ran out of memory under the cap
    FAILED = "failed"  # training stopped for a reason that drops the trial
    LOST = "lost"  # the worker running it died or hung: nothing of the slice was recorded, it runs again


@dataclass(frozen=True)
class SliceTask:
    """One trial's slice of one step, as the head hands it to a worker (plain data: it crosses processes)."""

    run_id: str
    rank: int
    config: dict
    step: int
    checkpoint: str | None  # the trial's checkpoint after the previous step; None: build the model
    share: float  # wall seconds for the whole slice, loading and saving included
    overhead: float  # of the share, the seconds expected outside training (load, validation, save)
    validate: bool
    path: str  # where the slice saves its checkpoint (storage every worker can reach)
    cooldown: float = 0.0  # last fraction of the slice over which the learning rate decays to zero (the winner's last)
    parts: int = 0  # >= 2: trained in parts, validated after each, the best kept (the winner's last: last_stretch)
    reference: float | None = None  # with parts: the validation score of ``checkpoint``, the point to beat
    hand_over: bool = False  # with parts: a runner-up waits, so a collapse ends the slice early (last_stretch)
    attempt: int = 0  # earlier attempts were lost with their worker

    @property
    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig.from_dict(self.config)


@dataclass(frozen=True)
class SliceOutcome:
    rank: int
    status: SliceStatus
    reason: str | None = None
    trained: TrainedSlice | None = None
    validation: Validation | None = None
    validation_seconds: float = 0.0
    wall_seconds: float = 0.0
    probe_peak_memory_mb: float | None = None
    peak_memory_mb: float | None = None
    node: str | None = None  # which node trained it (None: this process)
    parts: tuple[Part, ...] = ()  # a slice trained in parts: each part's validation and what followed


def run_slice(
    backend: TrialBackend,
    task: SliceTask,
    *,
    clock: Callable[[], float] = time.perf_counter,
    node: str | None = None,
) -> SliceOutcome:
    """Train ``task``'s trial for its share and save its checkpoint; a misfit or a failure is an outcome, any other
    error (a kill, a bug) propagates."""
    started = clock()
    probe_peak = None
    try:
        trainer = backend.load(Path(task.checkpoint)) if task.checkpoint else backend.start(task.pipeline_config)
        if task.step == 0:
            probe_peak = backend.probe(trainer)
        budget = max(0.0, task.share - task.overhead - (clock() - started))
        parts: tuple[Part, ...] = ()
        if task.parts >= 2:  # saves its best part's checkpoint itself
            stretch = train_in_parts(backend, trainer, task, budget, clock=clock, deadline=started + task.share)
            trained, validation, validation_seconds, parts = (
                stretch.trained,
                stretch.validation,
                stretch.validation_seconds,
                stretch.parts,
            )
        else:
            trained = backend.train(trainer, budget, cooldown=task.cooldown)
            validation_started = clock()
            validation = backend.validate(trainer) if task.validate else Validation(None, None)
            validation_seconds = clock() - validation_started
    except DoesNotFit as error:
        return SliceOutcome(
            task.rank,
            SliceStatus.DOES_NOT_FIT,
            str(error),
            wall_seconds=clock() - started,
            probe_peak_memory_mb=error.peak_memory_mb,
            node=node,
        )
    except TrialFailed as error:
        return SliceOutcome(task.rank, SliceStatus.FAILED, str(error), wall_seconds=clock() - started, node=node)
    if not parts:
        backend.save(trainer, Path(task.path))
    return SliceOutcome(
        task.rank,
        SliceStatus.TRAINED,
        trained=trained,
        validation=validation,
        validation_seconds=validation_seconds,
        wall_seconds=clock() - started,
        probe_peak_memory_mb=probe_peak,
        peak_memory_mb=backend.peak_memory_mb(),
        node=node,
        parts=parts,
    )


class TrialExecutor(Protocol):
    """Runs slices: ``submit`` one per free slot, then ``wait`` for at least one to end."""

    @property
    def slots(self) -> int: ...  # slices that can run at once now (a lost worker lowers it)

    def submit(self, task: SliceTask) -> Hashable: ...

    def wait(self) -> list[tuple[Hashable, SliceOutcome]]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs each slice in this process as it is submitted (one slot: the trials of a step train one after another)."""

    slots = 1

    def __init__(self, backend: TrialBackend, *, clock: Callable[[], float] = time.perf_counter):
        self.backend = backend
        self.clock = clock
        self._finished: list[tuple[Hashable, SliceOutcome]] = []
        self._count = 0

    def submit(self, task: SliceTask) -> Hashable:
        self._count += 1
        self._finished.append((self._count, run_slice(self.backend, task, clock=self.clock)))
        return self._count

    def wait(self) -> list[tuple[Hashable, SliceOutcome]]:
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        pass


def fair_share(seconds_left: float, *, trials: int, slots: int, busy: Sequence[float] = ()) -> float:
    """Seconds for the slice that starts now on a free slot, when it and the ``trials - 1`` slices queued behind it
    all get the same and must end within ``seconds_left`` on ``slots`` slots, ``busy`` of which are taken for the
    given seconds more. One slot: ``seconds_left / trials`` (the paper's equal shares, recomputed before each trial so
    that an overrun is paid for by the trials after it).

    >>> fair_share(90, trials=3, slots=1), fair_share(90, trials=3, slots=2), fair_share(90, trials=2, slots=2)
    (30.0, 45.0, 90.0)
    >>> fair_share(45, trials=1, slots=2, busy=[1.0])  # the last of three on two slots gets the rest
    45.0
    """
    if trials < 1 or slots < 1 or len(busy) >= slots:
        raise ValueError(f"a share needs a free slot and a trial: {trials} trial(s), {slots} slot(s), {len(busy)} busy")
    if seconds_left <= 0 or slots == 1:
        return seconds_left / trials
    free_in = [0.0] * (slots - len(busy)) + [min(max(0.0, b), seconds_left) for b in busy]

    def fits(share: float) -> int:
        return sum(math.floor((seconds_left - free) / share + 1e-9) for free in free_in)

    # the largest share is (seconds_left - free_in[i]) / m for some slot i and some count m of slices on it
    candidates = sorted(
        {(seconds_left - free) / m for free in free_in for m in range(1, trials + 1) if seconds_left > free},
        reverse=True,
    )
    return next(share for share in candidates if fits(share) >= trials)
