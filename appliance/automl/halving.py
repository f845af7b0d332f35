"""Budgeted successive halving over the top-ranked configurations (paper §3.7), resumable after a kill.

For ``n`` trials and a total wall-clock budget ``T`` (:class:`~appliance.automl.schedule.HalvingSchedule`):
``⌊log₂ n⌋ + 1`` steps of ``T / steps`` each (the paper), or growing with ``growth`` (the budget-aware race of
:mod:`appliance.automl.race`). Within a step, every active trial gets an equal share of
the time left until the step's deadline; the share covers loading its checkpoint, training, evaluating
on the validation images and saving the checkpoint, so all of that counts against ``T``. Step ``s``
ends at ``start + s · T / steps`` and shares are recomputed before each trial, so a trial that overruns
(on a busy CPU one optimiser step can take longer than a share) is paid for by the trials after it, in
the same or a later step, not by the budget. After a step the better half by validation mean
foreground IoU continues (ties and missing scores broken by the meta-model rank); survivors continue
from their checkpoints, nothing is retrained. A last step with a single trial decides nothing, so it is
not validated inside the budget (the job validates and tests the winner afterwards).

Memory rule (GPU): before its first slice each trial runs one probe step with peak-memory tracking
under the process's memory cap. A trial that does not fit is marked ``does_not_fit`` and replaced by
the next-ranked configuration that is not yet a trial (in step 1 only). A CUDA out-of-memory error
later drops the trial as ``failed`` with the reason; the run goes on.

Resuming: every slice ends by saving the trial's checkpoint to a new file and then recording the
step result; a finished step is recorded with its survivors. After a kill the run restarts the
interrupted step, skipping trials whose result is recorded and continuing the others from their
previous step's checkpoint, with the step's budget minus what its recorded slices took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from appliance.automl.schedule import HalvingSchedule, select_survivors, selection_score
from appliance.errors import ApplianceError
from appliance.faults import fault_point
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.task import SELECTION_METRICS, SEMANTIC
from appliance.store import Store, Trial, TrialStatus

if TYPE_CHECKING:
    from appliance.automl.race import Candidate, RacePlan


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


IOU_METRIC = SELECTION_METRICS[SEMANTIC]


@dataclass(frozen=True)
class Validation:
    """A trial's validation: the network classes' mean foreground IoU and, for a set whose task has its own metric
    (objects: AP@0.5), that metric as ``score``. Survivors are chosen by ``score``, ties by ``mean_iou``."""

    mean_iou: float | None  # None: not validated (a last step with one trial)
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
    def train(self, trainer: Any, seconds: float) -> TrainedSlice: ...
    def validate(self, trainer: Any) -> Validation: ...
    def peak_memory_mb(self) -> float | None: ...


class SuccessiveHalving:
    """Runs (or resumes) the halving of one run recorded in the store; its trials must exist already."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        backend: TrialBackend,
        *,
        budget_seconds: float,
        run_dir: Path,
        growth: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
        on_slice: Callable[[dict], None] | None = None,
        overhead_estimate: Callable[[PipelineConfig], tuple[float, float]] | None = None,
        keep_dropped_checkpoints: bool = False,
    ):
        self.store = store
        self.run_id = run_id
        self.backend = backend
        self.budget_seconds = budget_seconds
        self.run_dir = Path(run_dir)
        self.growth = growth
        self.clock = clock
        self.on_slice = on_slice or (lambda result: None)
        # measured per trial: seconds of a slice spent outside training (loading, checkpointing) and validating;
        # before a trial's first measurement, the estimate (checkpoint, validation) for its configuration
        self.overheads: dict[int, float] = {}
        self.validation_seconds: dict[int, float] = {}
        self.overhead_estimate = overhead_estimate
        self.keep_dropped_checkpoints = keep_dropped_checkpoints  # a dropped trial's last checkpoint stays
        self.schedule: HalvingSchedule | None = None  # set by run()

    def run(self) -> dict:
        """Run every step not recorded yet; return the winning trial (at once when a resumed run has one)."""
        decided = self.store.trials(self.run_id, status=TrialStatus.WINNER)
        if decided:
            return decided[0]
        schedule = self.schedule = HalvingSchedule(self._initial_count(), self.budget_seconds, self.growth)
        finished = {row.step for row in self.store.finished_steps(self.run_id)}
        # Time already spent by recorded slices counts as spent, so a resumed run keeps the same deadlines.
        spent = sum(row.wall_seconds for row in self.store.step_results(self.run_id))
        started = self.clock() - spent
        for step in range(schedule.steps):
            if step in finished:
                continue
            self._run_step(step, schedule, deadline=started + schedule.deadline(step))
        active = self.store.trials(self.run_id, status=TrialStatus.ACTIVE)
        if not active:
            raise TrialFailed("every configuration failed or did not fit; see the run's events")
        winner = active[0]
        self.store.update_trial(self.run_id, winner.rank, status=TrialStatus.WINNER)
        return self.store.trials(self.run_id, status=TrialStatus.WINNER)[0]

    def _initial_count(self) -> int:
        """n of the schedule: the trials that entered step 1, counting replacements in place of misfits."""
        trials = self.store.trials(self.run_id)
        return max(1, len([t for t in trials if t.status != "does_not_fit"]))

    def _run_step(self, step: int, schedule: HalvingSchedule, *, deadline: float) -> None:
        done = {row.rank: row for row in self.store.step_results(self.run_id, step)}
        consumed = sum(row.wall_seconds for row in done.values())
        step_started = self.clock()
        queue = [t for t in self.store.trials(self.run_id, status=TrialStatus.ACTIVE) if t.rank not in done]
        self.store.event(self.run_id, f"step {step + 1}/{schedule.steps}: {len(queue)} trial(s) to train")
        decides = not (step == schedule.steps - 1 and len(queue) + len(done) == 1)
        while queue:
            trial = queue.pop(0)
            share = (deadline - self.clock()) / (len(queue) + 1)
            if not self._slice(trial, step, share, validate=decides) and step == 0:
                replacement = self._replacement()
                if replacement is not None:
                    queue.append(replacement)
        active = self.store.trials(self.run_id, status=TrialStatus.ACTIVE)
        results = {row.rank: row for row in self.store.step_results(self.run_id, step)}
        keep = schedule.active[step + 1] if step + 1 < schedule.steps else 1
        keep = min(keep, len(active))
        ranks = [t.rank for t in active]
        scores = [selection_score(results[r]) if r in results else None for r in ranks]
        ties = [results[r].validation_iou if r in results else None for r in ranks]
        chosen = select_survivors(scores, ranks, keep=keep, tiebreak=ties)
        survivors = [ranks[i] for i in chosen]
        self.store.finish_step(
            self.run_id, step, active=ranks, survivors=survivors, seconds=consumed + self.clock() - step_started
        )
        fault_point(f"halving-step-{step}")
        for trial in active:
            if trial.rank not in survivors and not self.keep_dropped_checkpoints:
                self._delete_checkpoints(trial.rank)
        best = max((score for score in scores if score is not None), default=None)
        metric = getattr(self.backend, "selection_metric", IOU_METRIC)
        self.store.event(
            self.run_id,
            f"step {step + 1}/{schedule.steps} done: {len(survivors)} of {len(ranks)} continue"
            + (
                f" (best validation {metric} {best:.3f})" if best is not None else " (not validated: nothing to decide)"
            ),
        )

    def _slice(self, trial: Trial, step: int, share: float, *, validate: bool = True) -> bool:
        """Train one trial for its share of the step (then validate it when the step decides something);
        False when it did not fit or failed."""
        rank, config = trial.rank, PipelineConfig.from_dict(trial.config)
        started = self.clock()
        previous = self.store.step_results(self.run_id, step - 1) if step > 0 else []
        checkpoint = next((row.checkpoint for row in previous if row.rank == rank), None)
        try:
            trainer = self.backend.load(Path(checkpoint)) if checkpoint else self.backend.start(config)
            if step == 0:
                peak = self.backend.probe(trainer)
                self.store.update_trial(self.run_id, rank, probe_peak_memory_mb=peak)
            overhead = self._expected_overhead(rank, config, validate)
            budget = max(0.0, share - overhead - (self.clock() - started))
            trained = self.backend.train(trainer, budget)
            validation_started = self.clock()
            validation = self.backend.validate(trainer) if validate else Validation(None, None)
            validation_seconds = self.clock() - validation_started
        except DoesNotFit as error:
            self.store.update_trial(
                self.run_id,
                rank,
                status=TrialStatus.DOES_NOT_FIT,
                reason=str(error),
                probe_peak_memory_mb=error.peak_memory_mb,
            )
            self.store.event(self.run_id, f"{config.id} (rank {rank}) does not fit: {error}", level="warning")
            return False
        except TrialFailed as error:
            self.store.update_trial(
                self.run_id, rank, status=TrialStatus.FAILED, reason=str(error), dropped_after_step=step
            )
            self.store.event(
                self.run_id, f"{config.id} (rank {rank}) failed in step {step + 1}: {error}", level="error"
            )
            return False
        path = self.run_dir / "trials" / f"rank-{rank:03d}" / f"step-{step}.pt"
        self.backend.save(trainer, path)
        wall = self.clock() - started
        self.overheads[rank] = max(0.0, wall - trained.seconds - validation_seconds)
        if validate:
            self.validation_seconds[rank] = validation_seconds
        result = {
            "config_id": config.id,
            "seconds_trained": trained.seconds,
            "total_seconds_trained": trained.total_seconds,
            "optimizer_steps": trained.optimizer_steps,
            "work_mp": trained.work_mp,
            "validation_iou": validation.mean_iou,
            "validation_iou_per_class": validation.per_class,
            "validation_score": validation.score,
            "peak_memory_mb": self.backend.peak_memory_mb(),
            "wall_seconds": wall,
            "checkpoint": str(path),
        }
        self.store.record_step_result(self.run_id, step, rank, **result)
        fault_point(f"halving-step-{step}-slice")
        if checkpoint and Path(checkpoint) != path:
            Path(checkpoint).unlink(missing_ok=True)
        self.on_slice(
            {"step": step, "steps": self.schedule.steps, "racing": self.schedule.active[step], "rank": rank, **result}
        )
        return True

    def _expected_overhead(self, rank: int, config: PipelineConfig, validate: bool) -> float:
        """Seconds this trial's slice will spend outside training: its own last measurement, else the estimate for
        its configuration, else the largest measured so far (the first slice of a run without an estimate: 0)."""
        estimate = self.overhead_estimate(config) if self.overhead_estimate else None
        parts = ((self.overheads, 0), (self.validation_seconds, 1)) if validate else ((self.overheads, 0),)
        total = 0.0
        for measured, index in parts:
            if rank in measured:
                total += measured[rank]
            elif estimate is not None:
                total += estimate[index]
            else:
                total += max(measured.values(), default=0.0)
        return total

    def _replacement(self) -> dict | None:
        """The best-ranked configuration that is not a trial yet, added as a new active trial."""
        taken = {t.config_id for t in self.store.trials(self.run_id)}
        for row in self.store.ranking(self.run_id):
            if row.config_id not in taken:
                self.store.add_trial(self.run_id, row.rank, row.config_id, row.config, row.predicted_score)
                self.store.event(
                    self.run_id, f"{row.config_id} (rank {row.rank}) replaces a configuration that does not fit"
                )
                return next(t for t in self.store.trials(self.run_id) if t.rank == row.rank)
        return None

    def _delete_checkpoints(self, rank: int) -> None:
        folder = self.run_dir / "trials" / f"rank-{rank:03d}"
        if folder.is_dir():
            for path in folder.glob("*.pt"):
                path.unlink(missing_ok=True)


def enter_trials(store: Store, run_id: str, configurations, scores, top_n: int) -> None:
    """Record the whole ranking of a run and enter its ``top_n`` best configurations as active trials."""
    store.save_ranking(run_id, [(c.id, c.to_dict(), s) for c, s in zip(configurations, scores, strict=True)])
    for rank, (config, score) in enumerate(zip(configurations[:top_n], scores[:top_n], strict=True), start=1):
        store.add_trial(run_id, rank, config.id, config.to_dict(), score)


def enter_race(store: Store, run_id: str, candidates: Sequence[Candidate], plan: RacePlan) -> None:
    """Record the time-aware order of every configuration (rank 1 = best value), the plan, and its trials."""
    rank = {c.config: position for position, c in enumerate(candidates, start=1)}
    store.enter_race(
        run_id,
        [(c.config.id, c.config.to_dict(), c.predicted_score) for c in candidates],
        [(rank[t.config], t.config.id, t.config.to_dict(), t.predicted_score) for t in plan.trials],
        plan.to_dict(),
    )
