"""The executor seam of halving, in-process: shares on several slots, slices that end out of order, lost workers."""

from __future__ import annotations

import pytest

from appliance.automl.executors import SliceOutcome, SliceStatus, Validation, fair_share, run_slice
from appliance.automl.halving import MAX_SLICE_ATTEMPTS, SuccessiveHalving
from appliance.store import TrialStatus
from tests.automl.test_halving import FakeBackend, FakeClock, _run


def _greedy_end(share: float, trials: int, free_in: list[float]) -> float:
    """When the last of ``trials`` slices of ``share`` ends, each started on the slot that frees first."""
    slots = sorted(free_in)
    for _ in range(trials):
        slots[0] += share
        slots.sort()
    return max(slots)


@pytest.mark.parametrize(
    "left, trials, slots, busy",
    [(90, 3, 1, []), (90, 3, 2, []), (90, 4, 2, [30.0]), (100, 7, 3, [10.0, 80.0]), (60, 1, 4, [5.0, 5.0, 5.0])],
)
def test_a_fair_share_lets_every_queued_slice_end_by_the_deadline_and_no_larger_one_would(left, trials, slots, busy):
    share = fair_share(left, trials=trials, slots=slots, busy=busy)
    free_in = [0.0] * (slots - len(busy)) + busy
    assert _greedy_end(share, trials, free_in) <= left + 1e-9
    assert _greedy_end(share * 1.01, trials, free_in) > left


def test_a_share_needs_a_free_slot():
    with pytest.raises(ValueError, match="a free slot"):
        fair_share(60, trials=1, slots=2, busy=[1.0, 2.0])


class Deferred:
    """Two slots in this process: slices run when waited for, the later-submitted first; ``lose`` names (rank, step)
    slices whose worker dies on their first ``times`` attempts."""

    slots = 2

    def __init__(self, backend, *, lose=(), times=1):
        self.backend, self.lose, self.times = backend, set(lose), times
        self.pending, self.count, self.lost = [], 0, []

    def submit(self, task):
        self.count += 1
        self.pending.append((self.count, task))
        return self.count

    def wait(self):
        """Run the pending slices side by side in fake time: each from the same instant, the clock then at the end
        of the longest."""
        done, self.pending = list(reversed(self.pending)), []
        outcomes, clock = [], self.backend.clock
        started = ended = clock.now
        for handle, task in done:
            clock.now = started
            if (task.rank, task.step) in self.lose and task.attempt < self.times:
                self.lost.append((task.rank, task.step, task.attempt))
                outcomes.append((handle, SliceOutcome(task.rank, SliceStatus.LOST, "its worker was lost (test)")))
            else:
                outcomes.append((handle, run_slice(self.backend, task, clock=clock, node=f"n{handle % 2}")))
            ended = max(ended, clock.now)
        clock.now = ended
        return outcomes

    def close(self):
        pass


class QualityBackend(FakeBackend):
    """Scores a trial's configuration once it has trained at all: decisions that do not depend on how a step's time
    was shared (one slot or two, in any order)."""

    def validate(self, trainer) -> Validation:
        score = self.quality(trainer["config_id"]) if trainer["seconds"] > 0 else 0.0
        return Validation(score, [score])


def _race(tmp_path, executor_for):
    clock = FakeClock()
    backend = QualityBackend(clock)
    store, run_id, _ = _run(tmp_path, backend, clock, top_n=8, budget=400.0)
    executor = executor_for(backend)
    halving = SuccessiveHalving(
        store, run_id, backend, budget_seconds=400.0, run_dir=tmp_path / run_id, clock=clock, executor=executor
    )
    winner = halving.run()
    return store, run_id, winner, executor


def test_slices_that_end_out_of_order_on_two_slots_make_the_same_decisions(tmp_path):
    store, run_id, winner, _ = _race(tmp_path / "two", Deferred)
    local_store, local_id, local_winner, _ = _race(tmp_path / "one", lambda backend: None)
    assert winner.config_id == local_winner.config_id
    assert [(s.active, s.survivors) for s in store.finished_steps(run_id)] == [
        (s.active, s.survivors) for s in local_store.finished_steps(local_id)
    ]
    assert {r.node for r in store.step_results(run_id)} == {"n0", "n1"}
    one = {(r.step, r.rank): r.seconds_trained for r in local_store.step_results(local_id)}
    racing = {s.step for s in store.finished_steps(run_id) if len(s.active) > 1}
    for row in store.step_results(run_id):  # two slots: every slice of two or more twice as long, in the same time
        assert row.seconds_trained == pytest.approx((2 if row.step in racing else 1) * one[(row.step, row.rank)])
    assert winner.config_id == max((t.config_id for t in store.trials(run_id)), key=QualityBackend(FakeClock()).quality)


def test_a_slice_lost_with_its_worker_runs_again_from_the_last_checkpoint_and_is_recorded_once(tmp_path):
    store, run_id, winner, executor = _race(tmp_path, lambda backend: Deferred(backend, lose={(1, 0), (1, 1)}))
    assert executor.lost == [(1, 0, 0), (1, 1, 0)]
    results = store.step_results(run_id)
    assert len(results) == len({(r.step, r.rank) for r in results})
    rank_1 = sorted((r for r in results if r.rank == 1), key=lambda r: r.step)
    assert rank_1[1].total_seconds_trained == pytest.approx(rank_1[0].seconds_trained + rank_1[1].seconds_trained)
    messages = [e.message for e in store.events(run_id)]
    assert sum("runs again from its last checkpoint (attempt 2 of 3)" in m for m in messages) == 2
    assert not store.trials(run_id, status=TrialStatus.FAILED)


def test_a_slice_lost_every_time_fails_its_trial_and_the_race_goes_on(tmp_path):
    store, run_id, winner, executor = _race(
        tmp_path, lambda backend: Deferred(backend, lose={(2, 0)}, times=MAX_SLICE_ATTEMPTS)
    )
    failed = store.trials(run_id, status=TrialStatus.FAILED)
    assert [t.rank for t in failed] == [2] and "lost with its worker 3 times in step 1" in failed[0].reason
    assert winner.rank != 2 and len(executor.lost) == MAX_SLICE_ATTEMPTS
    assert [len(s.active) for s in store.finished_steps(run_id)] == [7, 4, 2, 1]  # n = 8 planned, one failed
