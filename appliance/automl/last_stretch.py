"""The winner's last slice: trained in parts, validated after each, rolled back after a fall; its best point is kept.

Nothing is decided after the last slice of a race, so its weights are the model, and a race cannot see what a
configuration does after the rung that chose it. On usiigaci at T = 15 min (docs/measurements.md) the winner validated
0.671 after its first slice; trained alone it validated 0.656, 0.665, 0.335, 0.546, 0.312 at steps 200-1,000 while its
training loss kept falling, and its last slice ended at 0.212. So the last slice is trained in :data:`PARTS` equal parts
with a validation after each (within :data:`VALIDATION_SHARE` of the slice, else fewer parts, else none). A part that
validates more than :data:`ROLLBACK_MARGIN` below the best point so far (the previous step's weights count) is a fall:
training goes back to the best weights (and Adam's state) and goes on at :data:`ROLLBACK_RATE` times the rate it had,
with new batches; the time spent counts as spent. A smaller dip is validation noise on a curve still rising: training
goes on from where it is (the best point stays saved). The best part's checkpoint is what the slice saves, and the job
exports it or the previous step's weights, whichever validated better (:func:`appliance.automl.job.exported_weights`).
The cooldown of the slice (:mod:`appliance.pipeline.learning_rate`) runs on across the parts. That is the
validation-based checkpoint choice of nnU-Net's ``checkpoint_best`` and Keras' ``restore_best_weights``, with the
roll-back-and-lower-the-rate of ``ReduceLROnPlateau`` (and a margin like its ``min_delta``), applied where a lab's model
is made.

A race judges its configurations early, and a configuration that learns fast at first can be judged at a peak it
never reaches again: on dsb2018_fluo at T = 15 min (seed 1) a patch-64 winner validated 0.878 at 375 steps, then
0.756, 0.581, 0.752 and 0.721 in its last slice at ×1, ×0.5, ×0.25 and ×0.125 the rate, while the paper default it
had beaten (0.802 at 68 steps) reached 0.900 trained alone. So when the halving kept the runner-up's weights
(``task.hand_over``), a part whose slice's best so far is more than :data:`COLLAPSE_MARGIN` below the score that won
the race ends the slice: the rest of the step goes to the runner-up (:mod:`appliance.automl.halving`), and the
better of the two by its best validated point is the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.automl.executors import SliceTask, TrainedSlice, TrialBackend, Validation

PARTS = 4
"""Validations of the winner's last slice, one after each equal part (the last at its end)."""
VALIDATION_SHARE = 0.1
"""At most this fraction of the last slice goes to validating it part-way; fewer parts when validation is slow."""
ROLLBACK_RATE = 0.5
"""After a fall, training goes on from the best weights at this times the learning rate it had."""
ROLLBACK_MARGIN = 0.02
"""A part is a fall when it validates more than this below the best point (validation score, 0-1). The falls the
parts exist for were 0.23-0.46 (usiigaci, docs/measurements.md); the three roll-backs of the 15-minute CPU cells were
dips of 0.002, 0.017 and 0.002 on 2-5 validation images, each followed by a higher part."""
COLLAPSE_MARGIN = 0.05
"""The winner's last slice hands the rest of its step to the runner-up when the slice's best part so far validates
more than this below the score that won the race. The dips that later parts recovered from were 0.002-0.026 (five, in
the 15-minute CPU cells); the falls no lower rate recovered from were 0.12 (dsb2018_fluo) and 0.23-0.46 (usiigaci)."""


def planned_parts(train_seconds: float, validation_seconds: float) -> int:
    """How many parts a last slice of ``train_seconds`` of training is validated in, when one validation takes
    ``validation_seconds``: :data:`PARTS`, fewer when their validations would take more than
    :data:`VALIDATION_SHARE` of it, 0 (trained in one go, validated by the job) when not even two fit.

    >>> planned_parts(500.0, 8.0), planned_parts(200.0, 8.0), planned_parts(100.0, 8.0), planned_parts(60.0, 0.0)
    (4, 2, 0, 4)
    """
    if train_seconds <= 0:
        return 0
    parts = PARTS if validation_seconds <= 0 else min(PARTS, int(VALIDATION_SHARE * train_seconds / validation_seconds))
    return parts if parts >= 2 else 0


@dataclass(frozen=True)
class Part:
    """One validated part of a last slice."""

    part: int  # 1-based
    steps: int  # the trial's optimiser steps at its end
    score: float | None  # validation selection score (the task's metric)
    rate: float  # the learning rate it trained at, as a fraction of the configured one (before the cooldown)
    kept: bool  # its weights are the best of the slice so far: the slice's checkpoint now
    rolled_back: bool  # it fell more than the margin below the best point: training went back to the best weights
    best: float | None  # the best score so far, the previous step's included
    handed_over: bool = False  # the slice collapsed below the race's score: it ends here, the runner-up goes on

    def describe(self, config_id: str, rank: int, parts: int) -> str:
        """The event line of this part."""
        score = "-" if self.score is None else f"{self.score:.3f}"
        line = (
            f"{config_id} (rank {rank}): last slice, part {self.part}/{parts} at {self.steps} steps: validation {score}"
        )
        if self.handed_over:
            return line + (
                f", more than {COLLAPSE_MARGIN:g} below the {self.best:.3f} that won the race: the slice ends here and "
                "the runner-up trains for the rest of the step"
            )
        if self.rolled_back:
            return line + (
                f", below its best {self.best:.3f}: back to those weights, learning rate ×{self.rate * ROLLBACK_RATE:g}"
            )
        if self.kept and self.best is not None and self.score is not None and self.score < self.best:
            return line + f" (this slice's best so far: saved; the previous step's {self.best:.3f} stays its best)"
        if self.kept:
            return line + " (its best so far: kept)"
        if self.best is None:
            return line
        if self.part == parts:
            return line + f", below its best {self.best:.3f} (that one is kept)"
        return line + f", within {ROLLBACK_MARGIN:g} of its best {self.best:.3f}: goes on from here"


@dataclass(frozen=True)
class StretchOutcome:
    trained: TrainedSlice  # the whole slice (its seconds, and the trial's totals at its end)
    validation: Validation  # of the best part: the weights the slice saved
    validation_seconds: float
    parts: tuple[Part, ...]


def train_in_parts(
    backend: TrialBackend,
    trainer: Any,
    task: SliceTask,
    seconds: float,
    *,
    clock: Callable[[], float],
    deadline: float,
) -> StretchOutcome:
    """Train ``task``'s last slice for ``seconds`` in ``task.parts`` parts, validating after each, rolling back after
    a fall (ending early after a collapse when ``task.hand_over``); the best part's weights are saved at
    ``task.path`` (whenever a part is the best so far, so a kill leaves a whole checkpoint).

    The first part trains for ``seconds / task.parts``; each part after it for its share of what is left before
    ``deadline`` (a ``clock`` time, the slice's end) once the remaining parts' costs beyond their training are paid
    for (validation, save, roll-back, a training call's start-up and last step), each costed at the average measured
    so far: the plan's estimate covers one save and a previous slice's validation, and a part's save (each better
    part is one) or a slower validation would otherwise make the slice overrun."""
    parts = task.parts
    reference = task.reference  # the previous step's score: its weights (task.checkpoint) are a point to go back to
    best_path = task.checkpoint if reference is not None else None
    best_validation: Validation | None = None
    rate, trained_seconds, validation_seconds = 1.0, 0.0, 0.0
    results: list[Part] = []
    last = None
    beyond_training: list[float] = []  # each part's seconds beyond the training asked of it
    for index in range(parts):
        if beyond_training:
            part_seconds = (deadline - clock()) / (parts - index) - sum(beyond_training) / len(beyond_training)
        else:
            part_seconds = seconds / parts
        part_seconds = max(1e-3, part_seconds)
        part_started = clock()
        last = backend.train(
            trainer,
            part_seconds,
            cooldown=task.cooldown,
            part=(index / parts, (index + 1) / parts),
            rate=rate,
        )
        trained_seconds += last.seconds
        started = clock()
        validation = backend.validate(trainer)
        validation_seconds += clock() - started
        score = validation.selection_score
        kept = best_validation is None or _better(score, best_validation.selection_score)
        if kept:
            best_validation = validation
            backend.save(trainer, Path(task.path))
        if kept and _better(score, reference):
            best_path = task.path
        best = best_score(reference, best_validation.selection_score)
        if task.hand_over and index < parts - 1 and collapsed(best_validation.selection_score, reference):
            results.append(Part(index + 1, last.optimizer_steps, score, rate, kept, False, best, handed_over=True))
            break
        fell = index < parts - 1 and best_path is not None and _fell(score, best)
        results.append(Part(index + 1, last.optimizer_steps, score, rate, kept, fell, best))
        if fell:
            backend.restore(trainer, Path(best_path))
            rate *= ROLLBACK_RATE
        beyond_training.append(clock() - part_started - part_seconds)
    assert last is not None and best_validation is not None
    return StretchOutcome(
        dataclasses.replace(last, seconds=trained_seconds), best_validation, validation_seconds, tuple(results)
    )


def collapsed(best_so_far: float | None, reference: float | None) -> bool:
    """A last slice whose best validated point ``best_so_far`` is more than :data:`COLLAPSE_MARGIN` below
    ``reference``, the score that won the race (both known)."""
    return best_so_far is not None and reference is not None and best_so_far < reference - COLLAPSE_MARGIN


def _fell(score: float | None, best: float | None) -> bool:
    """More than :data:`ROLLBACK_MARGIN` below the best; a missing score is a fall from any best."""
    return best is not None and (score is None or score < best - ROLLBACK_MARGIN)


def _better(score: float | None, than: float | None) -> bool:
    """Strictly better; a missing score is worse than any."""
    return score is not None and (than is None or score > than)


def best_score(*scores: float | None) -> float | None:
    """The highest of the known scores (None: none known)."""
    return max((s for s in scores if s is not None), default=None)
