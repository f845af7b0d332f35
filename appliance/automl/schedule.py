"""The budget arithmetic of successive halving (paper §3.7, thesis §4.8), as plain data.

For ``n`` configurations and a total wall-clock budget ``T``: ``steps = ⌊log₂ n⌋ + 1``; the configurations
still active share a step's budget equally; after each step the better half (rounded down, at least one)
continues from its checkpoint. The paper gives every step ``T / steps`` (``growth`` 1): for n = 50 the active
counts are 50, 25, 12, 6, 3, 1 and the winner has received
``T/6 · (1/50 + 1/25 + 1/12 + 1/6 + 1/3 + 1) ≈ 27.4 %`` of ``T``.

With ``growth`` g > 1 step ``s`` (from 0) gets a budget proportional to ``g**s``, so later steps, where
fewer and better configurations train, get more of ``T``: the budget-aware race
(:mod:`appliance.automl.race`) chooses g so that the winner receives a guaranteed share of ``T``.

With ``slots`` > 1 (trials training side by side on a cluster's devices, :mod:`appliance.automl.executors`) a step's
``a`` active configurations train in ``⌈a / slots⌉`` rounds, each slice lasting the step's budget divided by that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.store.rows import StepResult


def step_count(configurations: int) -> int:
    """Steps of successive halving over ``configurations`` (at least 1): ``⌊log₂ n⌋ + 1``, 6 for the paper's 50.

    >>> step_count(50), step_count(4), step_count(1)
    (6, 3, 1)
    """
    return int(math.floor(math.log2(max(configurations, 1)))) + 1


@dataclass(frozen=True)
class HalvingSchedule:
    """Active configurations and seconds per configuration for every step of one halving run."""

    configurations: int
    budget_seconds: float
    growth: float = 1.0
    slots: int = 1  # trials that train at once (one per device of a cluster)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"successive halving needs at least 1 slot to train on, got {self.slots}")
        if self.configurations < 1:
            raise ValueError(f"successive halving needs at least 1 configuration, got {self.configurations}")
        if not self.budget_seconds > 0:
            raise ValueError(f"the budget must be positive, got {self.budget_seconds} s")
        if not 1.0 <= self.growth <= 16.0:
            raise ValueError(f"the step budget growth must be between 1 (the paper) and 16, got {self.growth}")

    @property
    def steps(self) -> int:
        """``⌊log₂ n⌋ + 1``."""
        return step_count(self.configurations)

    @property
    def step_seconds(self) -> list[float]:
        """Wall-clock budget of each step: ``T / steps`` each with growth 1, else proportional to ``growth**step``."""
        weights = [self.growth**step for step in range(self.steps)]
        return [self.budget_seconds * weight / sum(weights) for weight in weights]

    def deadline(self, step: int) -> float:
        """Seconds from the start of the race at which ``step`` (from 0) must end."""
        return sum(self.step_seconds[: step + 1])

    @property
    def active(self) -> list[int]:
        """Configurations active in each step (50 → 25 → 12 → 6 → 3 → 1 for n = 50)."""
        counts = [self.configurations]
        while len(counts) < self.steps:
            counts.append(survivors(counts[-1]))
        return counts

    @property
    def slice_seconds(self) -> list[float]:
        """Seconds each active configuration trains in each step."""
        return [
            seconds / math.ceil(count / self.slots)
            for seconds, count in zip(self.step_seconds, self.active, strict=True)
        ]

    @property
    def winner_share(self) -> float:
        """Fraction of ``T`` the last survivor has trained in all (≈ 0.274 for n = 50)."""
        return sum(self.slice_seconds) / self.budget_seconds

    def to_dict(self) -> dict:
        return {
            "configurations": self.configurations,
            "budget_seconds": self.budget_seconds,
            "growth": self.growth,
            "slots": self.slots,
            "active": self.active,
            "step_seconds": self.step_seconds,
            "slice_seconds": self.slice_seconds,
            "winner_share": self.winner_share,
        }

    @classmethod
    def from_dict(cls, data: dict) -> HalvingSchedule:
        return cls(
            int(data["configurations"]),
            float(data["budget_seconds"]),
            float(data.get("growth", 1.0)),
            int(data.get("slots", 1)),
        )


def survivors(active: int) -> int:
    """How many configurations continue after a step with ``active`` of them: half, rounded down,
    at least one."""
    return max(1, active // 2)


def selection_score(step_result: StepResult) -> float | None:
    """What a recorded slice is selected on: its task's validation score, else (a semantic set, or a row from before
    scores were recorded) its validation mean IoU."""
    score = step_result.validation_score
    return step_result.validation_iou if score is None else score


def select_survivors(
    scores: Sequence[float | None],
    ranks: Sequence[int],
    *,
    keep: int,
    tiebreak: Sequence[float | None] | None = None,
) -> list[int]:
    """Indices of the ``keep`` best configurations by validation score, ties (and missing scores,
    which count as worst) broken by ``tiebreak`` (higher first) when given, then by the meta-model rank (lower
    rank first)."""
    if len(scores) != len(ranks) or (tiebreak is not None and len(tiebreak) != len(ranks)):
        raise ValueError(f"got {len(scores)} scores but {len(ranks)} ranks")
    ties = tiebreak if tiebreak is not None else [None] * len(ranks)

    def worst_first(value: float | None) -> tuple[bool, float]:
        return value is None, -(value if value is not None else 0.0)

    order = sorted(range(len(scores)), key=lambda i: (*worst_first(scores[i]), *worst_first(ties[i]), ranks[i]))
    return sorted(order[:keep])
