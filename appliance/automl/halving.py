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
from their checkpoints, nothing is retrained. A last step with a single trial decides nothing: it
ends with the learning rate's cooldown (linear decay to zero over the last third of the trial's training:
:mod:`appliance.pipeline.learning_rate`), and is trained in parts validated on the way, going back to the best
weights at a lower rate after a fall and keeping its best part (:mod:`appliance.automl.last_stretch`), the parts'
validations planned inside the budget. The job exports the best part, or the weights the winner had after its last
decided slice when those validated better (:func:`appliance.automl.job.exported_weights`). The runner-up of the
decision before the last step keeps its checkpoint through that slice: when the winner's slice collapses more than
:data:`~appliance.automl.last_stretch.COLLAPSE_MARGIN` below the score that won the race, it ends there and the
runner-up comes back for the rest of the step (a last slice of its own, in parts); the one with the better best
validated point wins.

Where slices run: one after another in this process (:class:`~appliance.automl.executors.LocalExecutor`), or one
per device on a Ray cluster (:mod:`appliance.automl.cluster`): a trial's share is then the equal share that lets the
step's remaining slices end by its deadline on the executor's slots (:func:`~appliance.automl.executors.fair_share`).
Either way this process alone writes the store; a slice whose worker dies runs again from the trial's last
checkpoint, and only a slice that ended is recorded, so nothing is lost or counted twice.

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
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.automl.executors import (  # noqa: F401  (re-exported: the backends' and tests' names for them)
    DoesNotFit,
    LocalExecutor,
    SliceOutcome,
    SliceStatus,
    SliceTask,
    TrainedSlice,
    TrialBackend,
    TrialExecutor,
    TrialFailed,
    Validation,
    fair_share,
)
from appliance.automl.last_stretch import COLLAPSE_MARGIN, PARTS, ROLLBACK_RATE, best_score, collapsed, planned_parts
from appliance.automl.schedule import HalvingSchedule, select_survivors, selection_score
from appliance.faults import fault_point
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.learning_rate import COOLDOWN, cooldown_fraction
from appliance.pipeline.task import SELECTION_METRICS, SEMANTIC
from appliance.store import Store, Trial, TrialStatus

if TYPE_CHECKING:
    from appliance.automl.race import Candidate, RacePlan


IOU_METRIC = SELECTION_METRICS[SEMANTIC]
MAX_SLICE_ATTEMPTS = 3
"""Times a slice is tried when its workers die under it; then its trial fails (the run goes on without it)."""


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
        executor: TrialExecutor | None = None,
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
        self.executor = executor or LocalExecutor(backend, clock=clock)

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
        entered = self._entered(step)  # a runner-up brought back into the last step did not enter it by surviving
        contenders = [rank for rank in [t.rank for t in queue] + list(done) if entered is None or rank in entered]
        decides = not (step == schedule.steps - 1 and len(contenders) == 1)
        runner_up = None if decides else self._runner_up(step)
        if runner_up is not None and runner_up.status == TrialStatus.DROPPED and not queue:
            queue += self._bring_back(runner_up, step, schedule, deadline)  # resumed after the winner's slice ended
        running: dict[Hashable, tuple[Trial, SliceTask, float]] = {}  # handle -> trial, task, expected end
        attempts: dict[int, int] = {}
        while queue or running:
            while queue and len(running) < self.executor.slots:
                trial = queue.pop(0)
                now = self.clock()
                share = fair_share(
                    deadline - now,
                    trials=len(queue) + 1,
                    slots=self.executor.slots,
                    busy=[end - now for _, _, end in running.values()],
                )
                task = self._task(
                    trial,
                    step,
                    share,
                    validate=decides,
                    attempt=attempts.get(trial.rank, 0),
                    hand_over=runner_up is not None and trial.rank != runner_up.rank,
                )
                running[self.executor.submit(task)] = (trial, task, now + share)
            for handle, outcome in self.executor.wait():
                trial, task, _ = running.pop(handle)
                if outcome.status == SliceStatus.LOST:
                    attempts[trial.rank] = task.attempt + 1
                    if self._lost(trial, task, outcome):
                        queue.insert(0, trial)
                elif self._record(trial, task, outcome):
                    if task.hand_over:
                        queue += self._bring_back(runner_up, step, schedule, deadline)
                elif step == 0:
                    replacement = self._replacement()
                    if replacement is not None:
                        queue.append(replacement)
        active = self.store.trials(self.run_id, status=TrialStatus.ACTIVE)
        results = {row.rank: row for row in self.store.step_results(self.run_id, step)}
        keep = schedule.active[step + 1] if step + 1 < schedule.steps else 1
        keep = min(keep, len(active))
        ranks = [t.rank for t in active]
        scores = [selection_score(results[r]) if r in results else None for r in ranks]
        if not decides:  # a runner-up came back: each by its best validated point (the job exports that one)
            previous = {row.rank: selection_score(row) for row in self.store.step_results(self.run_id, step - 1)}
            scores = [best_score(score, previous.get(rank)) for score, rank in zip(scores, ranks, strict=True)]
        ties = [results[r].validation_iou if r in results else None for r in ranks]
        chosen = select_survivors(scores, ranks, keep=keep, tiebreak=ties)
        survivors = [ranks[i] for i in chosen]
        self.store.finish_step(
            self.run_id, step, active=ranks, survivors=survivors, seconds=consumed + self.clock() - step_started
        )
        fault_point(f"halving-step-{step}")
        kept = set(survivors)  # and the runner-up when the next step is the winner's last slice: its weights stay
        if step + 1 == schedule.steps - 1 and len(survivors) == 1 and (spare := self._runner_up(step + 1)):
            kept.add(spare.rank)
        for trial in active:
            if trial.rank not in kept and not self.keep_dropped_checkpoints:
                self._delete_checkpoints(trial.rank)
        if runner_up is not None and runner_up.rank not in ranks and not self.keep_dropped_checkpoints:
            self._delete_checkpoints(runner_up.rank)  # it was not needed
        best = max((score for score in scores if score is not None), default=None)
        metric = getattr(self.backend, "selection_metric", IOU_METRIC)
        self.store.event(
            self.run_id,
            f"step {step + 1}/{schedule.steps} done: {len(survivors)} of {len(ranks)} continue"
            + (
                f" (best validation {metric} {best:.3f})" if best is not None else " (not validated: nothing to decide)"
            ),
        )

    def _entered(self, step: int) -> set[int] | None:
        """The ranks that entered ``step`` by surviving the step before (None: the first step, every trial)."""
        if step == 0:
            return None
        before = next((row for row in self.store.finished_steps(self.run_id) if row.step == step - 1), None)
        return set(before.survivors or []) if before else None

    def _runner_up(self, step: int) -> Trial | None:
        """The best of the trials dropped by the decision before ``step``, the winner's last one, whose weights are
        still there (or it is back in the step)."""
        if step == 0:
            return None
        results = {row.rank: row for row in self.store.step_results(self.run_id, step - 1)}
        entered = self._entered(step) or set()
        candidates = [
            t
            for t in self.store.trials(self.run_id)
            if (t.dropped_after_step == step - 1 or (t.status == TrialStatus.ACTIVE and t.rank not in entered))
            and t.rank in results
            and selection_score(results[t.rank]) is not None
            and Path(results[t.rank].checkpoint or "").is_file()
        ]
        if not candidates:
            return None
        scores = [selection_score(results[t.rank]) for t in candidates]
        ties = [results[t.rank].validation_iou for t in candidates]
        (best,) = select_survivors(scores, [t.rank for t in candidates], keep=1, tiebreak=ties)
        return candidates[best]

    def _bring_back(self, runner_up: Trial, step: int, schedule: HalvingSchedule, deadline: float) -> list[Trial]:
        """The runner-up as an active trial again, for the rest of the last step, when the winner's slice has
        collapsed (its best part more than COLLAPSE_MARGIN below the score that won the race) and a part's worth of
        the step is left; else nothing."""
        previous = {row.rank: row for row in self.store.step_results(self.run_id, step - 1)}
        winner = next((row for row in self.store.step_results(self.run_id, step) if row.rank != runner_up.rank), None)
        won_with = selection_score(previous[winner.rank]) if winner and winner.rank in previous else None
        if winner is None or not collapsed(selection_score(winner), won_with):
            return []
        left = deadline - self.clock()
        if left < schedule.step_seconds[step] / PARTS:
            self.store.event(
                self.run_id,
                f"{winner.config_id} (rank {winner.rank}): its last slice fell below the {won_with:.3f} that won the "
                f"race, but only {max(left, 0.0):.0f} s of the step are left: the runner-up stays out",
                level="warning",
            )
            return []
        self.store.update_trial(self.run_id, runner_up.rank, status=TrialStatus.ACTIVE, dropped_after_step=None)
        self.store.event(
            self.run_id,
            f"{runner_up.config_id} (rank {runner_up.rank}), the runner-up of step {step} "
            f"({selection_score(previous[runner_up.rank]):.3f}), comes back for the last {left:.0f} s of the step: "
            f"{winner.config_id}'s last slice validated {selection_score(winner):.3f}, more than "
            f"{COLLAPSE_MARGIN:g} below the {won_with:.3f} that won the race",
            level="warning",
        )
        return [next(t for t in self.store.trials(self.run_id) if t.rank == runner_up.rank)]

    def _task(
        self, trial: Trial, step: int, share: float, *, validate: bool, attempt: int, hand_over: bool = False
    ) -> SliceTask:
        """What a worker needs to train ``trial``'s slice: where to continue from, for how long, where to save
        (``hand_over``: a runner-up waits, so a last slice trained in parts ends early when it collapses)."""
        config = PipelineConfig.from_dict(trial.config)
        previous = self.store.step_results(self.run_id, step - 1) if step > 0 else []
        before = next((row for row in previous if row.rank == trial.rank), None)
        outside, validation = self._expected_costs(trial.rank, config)
        overhead = outside + validation if validate else outside
        # the winner's last slice (nothing is decided after it: its weights are the model) ends with the cooldown,
        # trained in parts validated on the way (appliance.automl.last_stretch) when that fits
        trained = before.total_seconds_trained if before else 0.0
        cooldown = parts = 0
        if not validate:
            parts = planned_parts(share - overhead, validation)
            overhead += parts * validation
            cooldown = cooldown_fraction(trained, share - overhead)
            if attempt == 0:
                self.store.event(
                    self.run_id,
                    f"{trial.config_id} (rank {trial.rank}): last slice; its learning rate decays to zero over the "
                    f"last {cooldown:.0%} of it ({COOLDOWN:.0%} of the trial's training)"
                    + (
                        f"; validated after each of {parts} parts, back to the best weights at "
                        f"×{ROLLBACK_RATE:g} the rate after a fall"
                        if parts
                        else ""
                    ),
                )
        return SliceTask(
            run_id=self.run_id,
            rank=trial.rank,
            config=trial.config,
            step=step,
            checkpoint=before.checkpoint if before else None,
            share=share,
            overhead=overhead,
            validate=validate,
            cooldown=cooldown,
            parts=parts,
            reference=selection_score(before) if before else None,
            hand_over=hand_over and parts > 0,
            path=str(self.run_dir / "trials" / f"rank-{trial.rank:03d}" / f"step-{step}.pt"),
            attempt=attempt,
        )

    def _lost(self, trial: Trial, task: SliceTask, outcome: SliceOutcome) -> bool:
        """A worker died (or hung) mid-slice: nothing of the slice was recorded, so it runs again from the trial's
        last checkpoint on another worker, up to :data:`MAX_SLICE_ATTEMPTS` times; True when it goes back in the
        queue."""
        config_id, attempts = trial.config_id, task.attempt + 1
        if attempts < MAX_SLICE_ATTEMPTS:
            self.store.event(
                self.run_id,
                f"{config_id} (rank {trial.rank}): {outcome.reason}; step {task.step + 1} slice runs again "
                f"from its last checkpoint (attempt {attempts + 1} of {MAX_SLICE_ATTEMPTS})",
                level="warning",
            )
            return True
        reason = f"lost with its worker {attempts} times in step {task.step + 1} ({outcome.reason})"
        self.store.update_trial(
            self.run_id, trial.rank, status=TrialStatus.FAILED, reason=reason, dropped_after_step=task.step
        )
        self.store.event(self.run_id, f"{config_id} (rank {trial.rank}) failed: {reason}", level="error")
        return False

    def _record(self, trial: Trial, task: SliceTask, outcome: SliceOutcome) -> bool:
        """Record a slice's outcome in the store (the only writer); False when the trial did not fit or failed."""
        rank, step, config_id = trial.rank, task.step, trial.config_id
        if step == 0:
            self.store.update_trial(self.run_id, rank, probe_peak_memory_mb=outcome.probe_peak_memory_mb)
        if outcome.status == SliceStatus.DOES_NOT_FIT:
            self.store.update_trial(self.run_id, rank, status=TrialStatus.DOES_NOT_FIT, reason=outcome.reason)
            self.store.event(self.run_id, f"{config_id} (rank {rank}) does not fit: {outcome.reason}", level="warning")
            return False
        if outcome.status == SliceStatus.FAILED:
            self.store.update_trial(
                self.run_id, rank, status=TrialStatus.FAILED, reason=outcome.reason, dropped_after_step=step
            )
            self.store.event(
                self.run_id, f"{config_id} (rank {rank}) failed in step {step + 1}: {outcome.reason}", level="error"
            )
            return False
        trained, validation = outcome.trained, outcome.validation
        self.overheads[rank] = max(0.0, outcome.wall_seconds - trained.seconds - outcome.validation_seconds)
        if task.validate:
            self.validation_seconds[rank] = outcome.validation_seconds
        result = {
            "config_id": config_id,
            "seconds_trained": trained.seconds,
            "total_seconds_trained": trained.total_seconds,
            "optimizer_steps": trained.optimizer_steps,
            "work_mp": trained.work_mp,
            "validation_iou": validation.mean_iou,
            "validation_iou_per_class": validation.per_class,
            "validation_score": validation.score,
            "peak_memory_mb": outcome.peak_memory_mb,
            "wall_seconds": outcome.wall_seconds,
            "checkpoint": task.path,
            "node": outcome.node,
        }
        self.store.record_step_result(self.run_id, step, rank, **result)
        for part in outcome.parts:
            self.store.event(
                self.run_id,
                part.describe(config_id, rank, task.parts),
                level="warning" if part.rolled_back else "info",
            )
        fault_point(f"halving-step-{step}-slice")
        # The winner's last, undecided slice keeps the checkpoint it continued from: the job exports whichever of
        # the two validates better (appliance.automl.job.exported_weights).
        if task.checkpoint and Path(task.checkpoint) != Path(task.path) and task.validate:
            Path(task.checkpoint).unlink(missing_ok=True)
        self.on_slice(
            {
                "step": step,
                "steps": self.schedule.steps,
                "racing": len(self.store.trials(self.run_id, status=TrialStatus.ACTIVE)),  # a runner-up may be back
                "rank": rank,
                **result,
            }
        )
        return True

    def _expected_costs(self, rank: int, config: PipelineConfig) -> tuple[float, float]:
        """Seconds of one slice of this trial outside training (loading, checkpointing) and of one validation: each
        its own last measurement, else the estimate for its configuration, else the largest measured so far (the
        first slice of a run without an estimate: 0)."""
        estimate = self.overhead_estimate(config) if self.overhead_estimate else None
        costs = []
        for index, measured in enumerate((self.overheads, self.validation_seconds)):
            if rank in measured:
                costs.append(measured[rank])
            elif estimate is not None:
                costs.append(estimate[index])
            else:
                costs.append(max(measured.values(), default=0.0))
        return costs[0], costs[1]

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
