"""The budget-aware race: how many configurations race, which ones, and how the budget is split among the steps.

The paper races n = 50 configurations with every step getting ``T / steps``: the 50 first slices get ``T / 300``
each and the winner 27 % of ``T``. On a 2-core CPU at T = 5 min that is one second, less than one optimiser step of
most configurations; on a GPU at T = 2 min the slices are long enough but the meta-model's favourites (the
configurations that learn most per pixel) are the slowest per second there. The race therefore follows from
``T`` and the device's measured throughput (:mod:`appliance.automl.throughput`):

1. **Order by what a configuration reaches in its time, not per pixel.** The meta-model scores quality per unit
   of training work (it learned from learning curves in megapixels of patches). A configuration that trains
   twice as many megapixels a second on this device gets one more doubling of work in the same time. So each
   configuration's value is ``ρ · z + β · log₂(MPix/s ÷ median MPix/s)``: ``z`` is its score standardised over
   the 576, ``ρ`` the meta-model's leave-one-set-out Pearson correlation with IoU (a standardised score predicts
   ``ρ`` standard deviations of IoU), ``β`` the meta-base's IoU gain per doubling of work (0.36 standard deviations
   on the shipped meta-base). Both terms are in within-set standard deviations of IoU.
   A *fidelity-aware* meta-model is asked directly: each configuration is scored after the MP it would train
   here as the winner (its MPix/s × the winner's share of ``T``), and only the doublings beyond the largest
   amount the model learned from are added as ``β · log₂(MP ÷ that amount)``: within its learning curves the
   model knows how each configuration gains with training, beyond them it knows nothing better than ``β``.
   (When every configuration gets more than the model knows, this is the first rule with the scores at that
   amount.)
2. **n and the steps from T.** The largest ``n ≤ max_trials`` for which every trial's first slice, after its
   estimated overheads (model, checkpoint, validation), still trains at least ``floor_steps`` optimiser steps,
   with the steps' budgets growing by the smallest factor ``g ≥ 1`` (0.05 grid) that gives the winner at least
   ``min_winner_share`` of ``T``. Configurations too slow for the floor at that n are passed over. The paper
   default always races (the trial with the lowest value gives way to it). Then ``g`` grows further for as long
   as every first slice still reaches the floor: a decision needs the floor, the rest of ``T`` is better spent on
   the configurations that go on. When not even two trials fit, there is no search: the paper default trains for
   all of ``T`` (the best-valued configuration when the default need not race): a pick nothing tested is no
   better bet than the configuration a lab would train without us. Whether any race fits depends on which
   configurations reach the floor, not on their order, so the job plans with the prior first and computes the
   meta-features only when a race fits (:func:`appliance.automl.job.train_set`).

Why a floor of 60 optimiser steps: a decision compares configurations, which says nothing about one that has not
started learning yet. In the long learning curves (``metabase/long.csv``: the paper default, patch 128 / batch 4 and
patch 64 / batch 4 trained to 32 MP on every shared set, ``benchmarks/long_curves.py``), half of the curves reach
half of their best validation IoU within 31 steps, three quarters within 62 and nine in ten within 86; the paper
default gets going within 16 steps on one set, 31 on five and 62 on three. At the old floor of 30, half of the
first slices ended before their configuration had got going.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from appliance.automl.ranking import Ranking
from appliance.automl.schedule import HalvingSchedule
from appliance.automl.throughput import Throughput, ThroughputTable
from appliance.pipeline.config import PAPER_DEFAULT, PipelineConfig
from appliance.settings import Settings

FLOOR_STEPS = Settings.race_floor_steps  # the settings' defaults: one place for each rule's number
MIN_WINNER_SHARE = Settings.race_min_winner_share
MAX_GROWTH = 4.0
WORK_DOUBLING_GAIN = 0.36
"""β when the meta-model does not carry its own: the shipped meta-base's value."""
SCORE_CORRELATION = 0.72
"""ρ when the meta-model does not carry its own: the shipped model's leave-one-set-out Pearson correlation."""


@dataclass(frozen=True)
class Candidate:
    """A configuration as the race sees it: its meta-model score, its value and its throughput here."""

    config: PipelineConfig
    predicted_score: float | None
    value: float
    throughput: Throughput
    predicted_at_mp: float | None = None  # the training amount its score is for (a fidelity-aware meta-model)


@dataclass(frozen=True)
class RacePlan:
    """The trials (in order), how the budget is split, and why."""

    schedule: HalvingSchedule
    trials: tuple[Candidate, ...]
    first_slice_steps: tuple[float, ...]  # expected optimiser steps of each trial's first slice
    floor_steps: int
    search: bool  # False: T was too small for any search; one configuration trains for all of it
    reason: str

    @property
    def n(self) -> int:
        return len(self.trials)

    def describe(self) -> str:
        schedule = self.schedule
        if not self.search:
            return (
                f"no search: {self.reason}; {self.trials[0].config.id} trains for all {schedule.budget_seconds:.0f} s"
            )
        steps = ", ".join(f"{s:.0f}" for s in schedule.step_seconds)
        workers = f" on {schedule.slots} workers at once" if schedule.slots > 1 else ""
        active = " → ".join(map(str, schedule.active))
        return (
            f"race of {self.n} configurations{workers} in {schedule.steps} steps ({active}), "
            f"step budgets {steps} s (growth {schedule.growth:g}); the winner trains "
            f"{schedule.winner_share:.0%} of {schedule.budget_seconds:.0f} s; first slices "
            f"≥ {min(self.first_slice_steps):.0f} optimiser steps; {self.reason}"
        )

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "search": self.search,
            "reason": self.reason,
            "floor_steps": self.floor_steps,
            "schedule": self.schedule.to_dict(),
            "trials": [
                {
                    "config_id": c.config.id,
                    "predicted_score": c.predicted_score,
                    "predicted_at_mp": c.predicted_at_mp,
                    "value": c.value,
                    "steps_per_second": c.throughput.steps_per_second,
                    "mpix_per_second": c.throughput.mpix_per_second,
                    "throughput_source": c.throughput.source,
                    "first_slice_steps": steps,
                }
                for c, steps in zip(self.trials, self.first_slice_steps, strict=True)
            ],
        }


def time_aware_order(
    ranking: Ranking, table: ThroughputTable, *, training_seconds: float | None = None
) -> list[Candidate]:
    """Every configuration of ``ranking`` as a :class:`Candidate`, best value first.

    ``training_seconds``: how long the winner will train; a fidelity-aware ranking is scored after what each
    configuration trains in that time (module docstring). A ranking without scores (the fallback prior, random
    baselines) keeps its order; its values are the negative positions.
    """
    throughputs = [table.get(config) for config in ranking.configurations]
    if any(score is None for score in ranking.scores):
        return [
            Candidate(config, score, -float(position), throughput)
            for position, (config, score, throughput) in enumerate(
                zip(ranking.configurations, ranking.scores, throughputs, strict=True)
            )
        ]
    mpix = np.array([t.mpix_per_second for t in throughputs])
    beta = WORK_DOUBLING_GAIN if ranking.work_doubling_gain is None else ranking.work_doubling_gain
    rho = SCORE_CORRELATION if ranking.score_correlation is None else ranking.score_correlation
    at_mp: np.ndarray | list[None]
    if ranking.score_at is not None and ranking.fidelity_range is not None and training_seconds is not None:
        low, high = ranking.fidelity_range
        training_mp = mpix * training_seconds
        at_mp = np.clip(training_mp, low, high)
        scores = np.array(ranking.score_at(at_mp), dtype=float)
        doublings = np.log2(np.maximum(training_mp / high, 1.0))
    else:
        at_mp = [None] * len(mpix)
        scores = np.array(ranking.scores, dtype=float)
        doublings = np.log2(mpix / np.median(mpix))
    z = (scores - scores.mean()) / (scores.std() or 1.0)
    values = rho * z + beta * doublings
    order = sorted(range(len(scores)), key=lambda i: (-values[i], i))
    return [
        Candidate(
            ranking.configurations[i],
            float(scores[i]),
            float(values[i]),
            throughputs[i],
            None if at_mp[i] is None else float(at_mp[i]),
        )
        for i in order
    ]


def schedule_for(
    trials: int, budget_seconds: float, *, min_winner_share: float = MIN_WINNER_SHARE, slots: int = 1
) -> HalvingSchedule:
    """The schedule of ``trials`` over ``budget_seconds`` on ``slots`` devices with the smallest step growth (0.05
    grid, at most 4) that gives the winner ``min_winner_share`` of the budget (growth 4 when none does)."""
    for hundredths in range(100, int(MAX_GROWTH * 100) + 1, 5):
        schedule = HalvingSchedule(trials, budget_seconds, hundredths / 100, slots)
        if schedule.winner_share >= min_winner_share:
            return schedule
    return HalvingSchedule(trials, budget_seconds, MAX_GROWTH, slots)


def plan_race(
    candidates: Sequence[Candidate],
    *,
    budget_seconds: float,
    overhead: Callable[[Candidate], float],
    max_trials: int = 50,
    floor_steps: int = FLOOR_STEPS,
    min_winner_share: float = MIN_WINNER_SHARE,
    trials: int | None = None,
    growth: float | None = None,
    include_default: bool = True,
    slots: int = 1,
) -> RacePlan:
    """Choose n, the trials and the step budgets for ``budget_seconds`` (see the module docstring).

    ``overhead(candidate)`` estimates the seconds of one slice spent outside training. ``trials`` fixes n, and
    ``growth`` with it the step budgets (then there is no floor: benchmarks race other configurations under the
    same plan). ``slots``: trials that train at once (a cluster's devices), so more of them fit the floor.
    """
    if not candidates:
        raise ValueError("the race needs at least one candidate configuration")
    overhead = _memoised(overhead)
    if trials is not None:
        return _fixed_n(candidates, trials, budget_seconds, overhead, floor_steps, min_winner_share, growth,
                        include_default, slots)  # fmt: skip
    for n in range(min(max_trials, len(candidates)), 1, -1):
        schedule = schedule_for(n, budget_seconds, min_winner_share=min_winner_share, slots=slots)
        first = schedule.slice_seconds[0]
        eligible = [c for c in candidates if _steps(c, first, overhead) >= floor_steps]
        chosen = _with_default(eligible, n, include_default)
        if chosen is not None and len(chosen) == n:
            schedule = _grow_while_the_floor_holds(schedule, chosen, overhead, floor_steps)
            passed_over = sum(1 for c in candidates[: candidates.index(chosen[-1])] if c not in chosen)
            reason = f"the largest n whose first slices reach {floor_steps} optimiser steps"
            if passed_over:
                reason += f" ({passed_over} better-valued configuration(s) passed over as too slow for that)"
            return _plan(schedule, chosen, overhead, floor_steps, True, reason)
    best = _fallback(candidates, include_default)
    schedule = HalvingSchedule(1, budget_seconds, slots=slots)
    reason = (
        f"{budget_seconds:.0f} s cannot give two configurations {floor_steps} optimiser steps each in a first "
        "step and still leave the winner its share"
    )
    return _plan(schedule, [best], overhead, floor_steps, False, reason)


def _fixed_n(
    candidates, trials, budget_seconds, overhead, floor_steps, min_winner_share, growth, include_default, slots
):
    """Exactly ``trials`` configurations, in the candidates' order, without the floor; but one whose first slice
    cannot hold a single optimiser step is passed over while enough others can, since a slice never stops before its
    first step: racing it would overrun the budget by that step (on a 2-core CPU a patch-256 / batch-32 resnet50
    step takes half a minute against a 10-s slice of a 60-s race of three)."""
    n = min(trials, len(candidates))
    if growth is None:
        schedule = schedule_for(n, budget_seconds, min_winner_share=min_winner_share, slots=slots)
    else:
        schedule = HalvingSchedule(n, budget_seconds, growth, slots)
    able = [c for c in candidates if _steps(c, schedule.slice_seconds[0], overhead) >= 1]
    chosen = _with_default(able, n, include_default) if len(able) >= n else None
    reason = f"n = {n} as asked"
    if chosen is None:
        chosen = _with_default(list(candidates), n, include_default) or list(candidates[:n])
    elif passed_over := sum(1 for c in candidates[: candidates.index(chosen[-1])] if c not in chosen):
        reason += f" ({passed_over} configuration(s) passed over: not one optimiser step fits their first slice)"
    return _plan(schedule, chosen, overhead, floor_steps, n > 1, reason)


def _grow_while_the_floor_holds(
    schedule: HalvingSchedule, chosen: list[Candidate], overhead: Callable[[Candidate], float], floor_steps: int
) -> HalvingSchedule:
    """The same race with the step budgets grown (0.05 grid, at most :data:`MAX_GROWTH`) for as long as every first
    slice still reaches the floor: what the decision does not need goes to the configurations that go on."""
    growth = schedule.growth
    while growth + 0.05 <= MAX_GROWTH + 1e-9:
        grown = dataclasses.replace(schedule, growth=round(growth + 0.05, 2))
        if min(_steps(c, grown.slice_seconds[0], overhead) for c in chosen) < floor_steps:
            break
        schedule, growth = grown, grown.growth
    return schedule


def _memoised(overhead: Callable[[Candidate], float]) -> Callable[[Candidate], float]:
    known: dict[PipelineConfig, float] = {}

    def cached(candidate: Candidate) -> float:
        if candidate.config not in known:
            known[candidate.config] = overhead(candidate)
        return known[candidate.config]

    return cached


def _steps(candidate: Candidate, seconds: float, overhead: Callable[[Candidate], float]) -> float:
    return max(0.0, seconds - overhead(candidate)) * candidate.throughput.steps_per_second


def _fallback(candidates: Sequence[Candidate], include_default: bool) -> Candidate:
    """What trains alone when there is no race: the paper default when it must race, else the best-valued. An
    untested pick of the meta-model alone lost to the default (cpm15, 15 min on the 2-core CPU: 0.626 against
    0.710); without a race nothing checks it."""
    if include_default:
        default = next((c for c in candidates if c.config == PAPER_DEFAULT), None)
        if default is not None:
            return default
    return candidates[0]


def _with_default(eligible: list[Candidate], n: int, include_default: bool) -> list[Candidate] | None:
    """The first ``n`` of ``eligible``, with the paper default in place of the last unless it is among them;
    None when the default must race but is not eligible."""
    chosen = eligible[:n]
    if not include_default or any(c.config == PAPER_DEFAULT for c in chosen):
        return chosen
    default = next((c for c in eligible if c.config == PAPER_DEFAULT), None)
    if default is None:
        return None
    return chosen[: n - 1] + [default]


def _plan(schedule, chosen, overhead, floor_steps, search, reason) -> RacePlan:
    first = schedule.slice_seconds[0]
    steps = tuple(_steps(c, first, overhead) for c in chosen)
    return RacePlan(schedule, tuple(chosen), steps, floor_steps, search, reason)


CHECKPOINT_SECONDS = {"resnet18": 1.2, "resnet50": 2.2}
"""Saving, loading and rebuilding a trial's model and optimiser, measured on the development machine's disk."""


def slice_overheads(config: PipelineConfig, *, validation_pixels: float, table: ThroughputTable) -> tuple[float, float]:
    """Estimated seconds of one slice outside training: ``(checkpoint, validation)``. Validation predicts
    ``validation_pixels`` (the pixels of the tiles the sliding window runs) at the encoder's measured prediction
    speed."""
    validation = validation_pixels / 1e6 / table.prediction_mpix_per_second(config.encoder)
    return CHECKPOINT_SECONDS[config.encoder], validation


def slice_overhead(candidate: Candidate, *, validation_pixels: float, table: ThroughputTable) -> float:
    """:func:`slice_overheads` of a candidate, added up."""
    return sum(slice_overheads(candidate.config, validation_pixels=validation_pixels, table=table))
