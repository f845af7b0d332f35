"""Successive halving with a deterministic fake trainer and a fake clock: counts, budgets, resuming."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from appliance.automl.halving import DoesNotFit, SuccessiveHalving, TrainedSlice, TrialFailed, Validation, enter_trials
from appliance.automl.last_stretch import COLLAPSE_MARGIN, PARTS, ROLLBACK_MARGIN, Part
from appliance.automl.ranking import fallback_ranking
from appliance.pipeline.learning_rate import COOLDOWN
from appliance.store import Store


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Interrupt(Exception):
    """Stands in for a kill: raised from inside a slice."""


class FakeBackend:
    """Score = quality(rank) · (1 − e^(−learned/20)); training takes exactly the time it is given and learns that
    many seconds' worth (``learned``: the weights, which a roll-back restores; ``seconds``: the counter, which it
    keeps)."""

    def __init__(self, clock, *, eval_cost=0.0, save_cost=0.0, too_big=(), fail=(), flat=False, interrupt_at=None):
        self.clock = clock
        self.eval_cost, self.save_cost = eval_cost, save_cost
        self.too_big, self.fail, self.flat = set(too_big), set(fail), flat
        self.interrupt_at = interrupt_at
        self.trained: list[tuple[str, float]] = []
        self.cooldowns: list[tuple[str, float]] = []  # slices that ended with a learning-rate cooldown
        self.parts: list[tuple[str, tuple[float, float], float]] = []  # (config id, part, rate) of each train call
        self.restored: list[tuple[str, str]] = []  # (config id, checkpoint name) of each roll-back
        self.validations = 0

    def quality(self, config_id: str) -> float:
        return 0.5 if self.flat else (int(config_id[2:], 16) % 1000) / 1000

    def start(self, config):
        return {"config_id": config.id, "seconds": 0.0, "steps": 0, "learned": 0.0}

    def load(self, path: Path):
        return json.loads(Path(path).read_text())

    def save(self, trainer, path: Path) -> None:
        self.clock.advance(self.save_cost)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(trainer))

    def probe(self, trainer):
        if trainer["config_id"] in self.too_big:
            raise DoesNotFit(9000.0, "needs 9000 MB, cap 8192 MB")
        return 100.0

    def train(self, trainer, seconds: float, *, cooldown=0.0, part=(0.0, 1.0), rate=1.0) -> TrainedSlice:
        if cooldown and part[0] == 0.0:
            self.cooldowns.append((trainer["config_id"], cooldown))
        self.parts.append((trainer["config_id"], part, rate))
        if trainer["config_id"] in self.fail:
            raise TrialFailed("CUDA out of memory")
        if self.interrupt_at is not None and len(self.trained) == self.interrupt_at:
            raise Interrupt
        self.clock.advance(seconds)
        trainer["seconds"] += seconds
        trainer["learned"] += seconds
        trainer["steps"] += 1
        self.trained.append((trainer["config_id"], seconds))
        return TrainedSlice(seconds, trainer["seconds"], trainer["steps"], trainer["steps"] * 0.1)

    def validate(self, trainer) -> Validation:
        self.clock.advance(self.eval_cost)
        self.validations += 1
        score = self.quality(trainer["config_id"]) * (1 - math.exp(-trainer["learned"] / 20))
        return Validation(score, [score])

    def restore(self, trainer, path: Path) -> None:
        trainer["learned"] = self.load(path)["learned"]
        self.restored.append((trainer["config_id"], Path(path).name))

    def peak_memory_mb(self):
        return 100.0


def _run(tmp_path, backend, clock, *, top_n=50, budget=3000.0, store=None):
    store = store or Store(tmp_path / "state.sqlite")
    ranking = fallback_ranking()
    run_id = store.create_run(set_name="fake", budget_seconds=budget, top_n=top_n, seed=0)
    enter_trials(store, run_id, ranking.configurations, ranking.scores, top_n)
    halving = SuccessiveHalving(store, run_id, backend, budget_seconds=budget, run_dir=tmp_path / run_id, clock=clock)
    return store, run_id, halving


def _one_trial(tmp_path, backend, clock):
    """A 400-s run of one trial (its only slice is a last slice in parts), planned with 1 s per validation and
    nothing outside training."""
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=1, budget=400.0)
    halving.overhead_estimate = lambda config: (0.0, 1.0)  # (outside training, one validation) seconds
    return store, run_id, halving


def test_fifty_trials_halve_to_one_and_the_winner_gets_27_4_percent(tmp_path):
    clock = FakeClock()
    backend = FakeBackend(clock)
    store, run_id, halving = _run(tmp_path, backend, clock)
    start = clock()
    winner = halving.run()
    steps = store.finished_steps(run_id)
    assert [len(s.active) for s in steps] == [50, 25, 12, 6, 3, 1]
    assert [len(s.survivors) for s in steps] == [25, 12, 6, 3, 1, 1]
    assert clock() - start == pytest.approx(3000.0)
    results = [r for r in store.step_results(run_id) if r.rank == winner.rank]
    assert len(results) == 6
    assert results[-1].total_seconds_trained / 3000.0 == pytest.approx(0.2738, abs=1e-3)
    for step in range(6):  # each step's slices share T / 6 equally
        slices = [r.seconds_trained for r in store.step_results(run_id, step)]
        assert sum(slices) == pytest.approx(500.0)
        assert max(slices) - min(slices) < 1e-6


def test_survivors_continue_and_the_best_wins(tmp_path):
    clock = FakeClock()
    backend = FakeBackend(clock)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=8, budget=400.0)
    winner = halving.run()
    trials = store.trials(run_id)
    assert winner.rank == max(trials, key=lambda t: backend.quality(t.config_id)).rank
    results = store.step_results(run_id)
    winner_results = [r for r in results if r.rank == winner.rank]
    running = 0.0
    for row in winner_results:  # continued, never restarted: totals accumulate
        running += row.seconds_trained
        assert row.total_seconds_trained == pytest.approx(running)
    assert {t.status for t in trials} == {"winner", "dropped"}
    assert not list((tmp_path / run_id / "trials").glob("rank-*/step-[0-2].pt")) or all(
        p.parent.name == f"rank-{winner.rank:03d}" for p in (tmp_path / run_id / "trials").glob("*/*.pt")
    )


@pytest.mark.parametrize("keep", [False, True])
def test_dropped_trials_checkpoints_go_unless_kept(tmp_path, keep):
    clock = FakeClock()
    store, run_id, halving = _run(tmp_path, FakeBackend(clock), clock, top_n=8, budget=400.0)
    halving.keep_dropped_checkpoints = keep  # Settings.keep_checkpoints == "all"
    winner = halving.run()
    files = list((tmp_path / run_id / "trials").glob("*/*.pt"))
    left = {p.parent.name: p.name for p in files}
    # one per trial; the winner also keeps the one its last, undecided slice continued from (the job chooses)
    assert len(files) == len(left) + 1
    if keep:
        assert len(left) == 8
    else:
        assert list(left) == [f"rank-{winner.rank:03d}"]


def test_the_winners_last_undecided_slice_keeps_the_checkpoint_it_continued_from(tmp_path):
    clock = FakeClock()
    store, run_id, halving = _run(tmp_path, FakeBackend(clock), clock, top_n=4, budget=400.0)
    winner = halving.run()
    steps = store.step_results(run_id)
    assert [len(s.active) for s in store.finished_steps(run_id)] == [4, 2, 1]
    last, before = [r for r in steps if r.rank == winner.rank][-1], [r for r in steps if r.rank == winner.rank][-2]
    assert last.validation_iou is not None and before.validation_iou is not None  # the last one: its best part
    left = sorted(p.name for p in (tmp_path / run_id / "trials" / f"rank-{winner.rank:03d}").glob("*.pt"))
    assert left == ["step-1.pt", "step-2.pt"]  # the job exports whichever validated better


def test_only_the_winners_last_undecided_slice_cools_down_over_a_third_of_its_training(tmp_path):
    clock = FakeClock()
    backend = FakeBackend(clock)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=4, budget=400.0)
    winner = halving.run()
    assert len(backend.trained) == 4 + 2 + PARTS  # the last slice in parts
    assert [config_id for config_id, _ in backend.cooldowns] == [winner.config_id]
    last_parts = backend.parts[-PARTS:]
    assert {config_id for config_id, _, _ in last_parts} == {winner.config_id}
    assert [part for _, part, _ in last_parts] == [(k / PARTS, (k + 1) / PARTS) for k in range(PARTS)]
    assert all(part == (0.0, 1.0) for _, part, _ in backend.parts[:-PARTS])
    trained = sum(seconds for config_id, seconds in backend.trained if config_id == winner.config_id)
    last = sum(seconds for _, seconds in backend.trained[-PARTS:])
    assert backend.cooldowns[0][1] * last == pytest.approx(COOLDOWN * trained, rel=0.01)
    events = [e.message for e in store.events(run_id) if "decays to zero" in e.message]
    assert events == [
        f"{winner.config_id} (rank {winner.rank}): last slice; its learning rate decays to zero over the last "
        f"{backend.cooldowns[0][1]:.0%} of it (33% of the trial's training); validated after each of {PARTS} parts, "
        "back to the best weights at ×0.5 the rate after a fall"
    ]


def test_a_single_trial_cools_down_over_the_last_third_of_its_one_slice(tmp_path):
    clock = FakeClock()
    backend = FakeBackend(clock)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=1, budget=100.0)
    winner = halving.run()
    assert backend.cooldowns == [(winner.config_id, pytest.approx(COOLDOWN))] and len(backend.trained) == PARTS
    assert backend.restored == [] and backend.validations == PARTS  # it only improves: every part is kept
    (result,) = store.step_results(run_id)
    assert result.validation_iou == pytest.approx(backend.validate(backend.load(Path(result.checkpoint))).mean_iou)
    assert result.seconds_trained == pytest.approx(100.0)


def test_a_last_slice_too_short_for_two_validations_is_trained_in_one_go(tmp_path):
    clock = FakeClock()
    backend = FakeBackend(clock, eval_cost=6.0)  # 2 validations would take more than a tenth of the last ~44 s
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=2, budget=100.0)
    halving.run()
    assert len(backend.trained) == 2 + 1 and backend.validations == 2
    assert store.step_results(run_id, 1)[0].validation_iou is None  # the job validates it
    assert not [e for e in store.events(run_id) if "validated after each" in e.message]


class Peaked(FakeBackend):
    """Validation = what the weights learned / 1000, until training at the full rate takes them past ``peak`` seconds'
    worth: then they have fallen (validation 0: a constant learning rate's collapse). At half the rate they do not."""

    def __init__(self, clock, *, peak, **kwargs):
        super().__init__(clock, **kwargs)
        self.peak = peak

    def train(self, trainer, seconds, *, cooldown=0.0, part=(0.0, 1.0), rate=1.0):
        result = super().train(trainer, seconds, cooldown=cooldown, part=part, rate=rate)
        trainer["fallen"] = trainer.get("fallen", False) or (rate > 0.5 and trainer["learned"] > self.peak)
        return result

    def restore(self, trainer, path: Path) -> None:
        super().restore(trainer, path)
        trainer["fallen"] = self.load(path).get("fallen", False)

    def validate(self, trainer) -> Validation:
        self.clock.advance(self.eval_cost)
        self.validations += 1
        score = 0.0 if trainer.get("fallen") else trainer["learned"] / 1000
        return Validation(score, [score])


def test_a_fall_in_the_last_slice_rolls_back_to_the_best_weights_at_half_the_rate(tmp_path):
    from appliance.automl.job import exported_weights

    clock = FakeClock()
    backend = Peaked(clock, peak=120.0, eval_cost=1.0)
    store, run_id, halving = _one_trial(tmp_path, backend, clock)
    start = clock()
    winner = halving.run()
    assert clock() - start <= 400.0 + 1e-6  # the parts' validations were planned inside the budget
    assert [rate for _, _, rate in backend.parts] == [1.0, 1.0, 0.5, 0.5]  # 99 s each: the second passes the peak
    assert backend.restored == [(winner.config_id, "step-0.pt")]  # back to the first part's weights
    (result,) = store.step_results(run_id)
    best = backend.load(Path(result.checkpoint))
    assert result.validation_iou == pytest.approx(backend.validate(best).mean_iou) == pytest.approx(0.297)
    assert result.seconds_trained == pytest.approx(sum(seconds for _, seconds in backend.trained))
    assert result.optimizer_steps == 4 and best["steps"] == 4  # the best part is the last one, after the roll-back
    messages = [e.message for e in store.events(run_id) if "last slice, part" in e.message][::-1]  # newest first
    assert len(messages) == PARTS
    assert messages[0].endswith("part 1/4 at 1 steps: validation 0.099 (its best so far: kept)")
    assert messages[1].endswith(
        "part 2/4 at 2 steps: validation 0.000, below its best 0.099: back to those weights, learning rate ×0.5"
    )
    weights, iou = exported_weights(store, run_id, winner, backend)  # no earlier step: the best part
    assert weights["learned"] == best["learned"] and iou == pytest.approx(result.validation_iou)


class Overshooting(FakeBackend):
    """Each training call takes ``over`` seconds more than it was given (start-up, a last step), unreported."""

    def __init__(self, clock, *, over, **kwargs):
        super().__init__(clock, **kwargs)
        self.over = over

    def train(self, trainer, seconds, *, cooldown=0.0, part=(0.0, 1.0), rate=1.0):
        trained = super().train(trainer, seconds, cooldown=cooldown, part=part, rate=rate)
        self.clock.advance(self.over)
        return trained


@pytest.mark.parametrize(
    ("make_backend", "later_parts"),
    [
        # every part is better, so saved, and a save takes 5 s (the plan costs one): 420 s without paying for them
        (lambda clock: FakeBackend(clock, eval_cost=1.0, save_cost=5.0), (400.0 - 105.0) / 3 - 6.0),
        # each training call runs 3 s over what it was given: 412 s without paying for it
        (lambda clock: Overshooting(clock, over=3.0, eval_cost=1.0), (400.0 - 103.0) / 3 - 4.0),
    ],
    ids=["a save per better part", "training calls that overrun"],
)
def test_the_parts_pay_for_what_the_plan_did_not_cost_and_the_slice_ends_within_its_share(
    tmp_path, make_backend, later_parts
):
    clock = FakeClock()
    backend = make_backend(clock)
    store, run_id, halving = _one_trial(tmp_path, backend, clock)
    start = clock()
    halving.run()
    assert clock() - start <= 400.0 + 1e-6
    (result,) = store.step_results(run_id)
    assert result.wall_seconds <= 400.0 + 1e-6
    seconds = [seconds for _, seconds in backend.trained]
    assert seconds[0] == pytest.approx(99.0)  # as planned: (400 s - 4 validations) / 4 parts
    assert seconds[1:] == pytest.approx([later_parts] * (PARTS - 1))  # each pays what the first part measured
    assert result.seconds_trained == pytest.approx(sum(seconds))


def test_a_part_that_is_the_slices_best_but_below_the_previous_step_says_which_weights_are_best():
    below = Part(1, 40, 0.45, 1.0, kept=True, rolled_back=False, best=0.50)
    assert below.describe("c-1", 2, 4).endswith(
        "validation 0.450 (this slice's best so far: saved; the previous step's 0.500 stays its best)"
    )
    above = dataclasses.replace(below, score=0.55, best=0.55)
    assert above.describe("c-1", 2, 4).endswith("validation 0.550 (its best so far: kept)")


class Scripted(FakeBackend):
    """Each validation returns the next of ``scores``."""

    def __init__(self, clock, scores, **kwargs):
        super().__init__(clock, **kwargs)
        self.scores = list(scores)

    def validate(self, trainer) -> Validation:
        self.clock.advance(self.eval_cost)
        self.validations += 1
        score = self.scores.pop(0)
        return Validation(score, [score])


@pytest.mark.parametrize(
    ("scores", "rates", "restored", "second_part"),
    [
        # 0.01 below the best: validation noise on a rising curve, training goes on from there at the same rate
        ((0.50, 0.49, 0.52, 0.40), [1.0] * 4, 0, "validation 0.490, within 0.02 of its best 0.500: goes on from here"),
        # 0.03 below: a fall, back to the best weights at half the rate
        ((0.50, 0.47, 0.52, 0.40), [1.0, 1.0, 0.5, 0.5], 1, "validation 0.470, below its best 0.500: back to those"),
    ],
)
def test_a_part_rolls_back_only_when_it_falls_more_than_the_margin(tmp_path, scores, rates, restored, second_part):
    assert ROLLBACK_MARGIN == 0.02
    clock = FakeClock()
    backend = Scripted(clock, scores, eval_cost=1.0)
    store, run_id, halving = _one_trial(tmp_path, backend, clock)
    halving.run()
    assert [rate for _, _, rate in backend.parts] == rates and len(backend.restored) == restored
    (result,) = store.step_results(run_id)
    assert result.validation_iou == 0.52 and backend.load(Path(result.checkpoint))["steps"] == 3  # the best part
    messages = [e.message for e in store.events(run_id) if "last slice, part" in e.message][::-1]
    assert second_part in messages[1]
    assert messages[3].endswith("part 4/4 at 4 steps: validation 0.400, below its best 0.520 (that one is kept)")


class ScriptedByTrial(FakeBackend):
    """Each trial's validations return the next of its own scores (by meta-model rank); a trial out of scores
    validates at its last one."""

    def __init__(self, clock, scores: dict[int, list[float]], **kwargs):
        super().__init__(clock, **kwargs)
        self.scores = {rank: list(values) for rank, values in scores.items()}
        self.rank_of: dict[str, int] = {}

    def validate(self, trainer) -> Validation:
        self.clock.advance(self.eval_cost)
        self.validations += 1
        left = self.scores[self.rank_of[trainer["config_id"]]]
        score = left.pop(0) if len(left) > 1 else left[0]
        return Validation(score, [score])


def _race_of_two(tmp_path, scores, **kwargs):
    """Two trials, two steps: rank 1 and rank 2 race in step 1, the better one's last slice is step 2."""
    clock = FakeClock()
    backend = ScriptedByTrial(clock, scores, eval_cost=1.0, **kwargs)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=2, budget=400.0)
    backend.rank_of = {t.config_id: t.rank for t in store.trials(run_id)}
    halving.overhead_estimate = lambda config: (0.0, 1.0)
    return clock, backend, store, run_id, halving


def test_a_collapsed_last_slice_hands_the_rest_of_the_step_to_the_runner_up(tmp_path):
    from appliance.automl.job import exported_weights

    # rank 1 wins the race at 0.80 and collapses to 0.60 in its last slice; the runner-up (0.70) goes on to 0.83
    clock, backend, store, run_id, halving = _race_of_two(
        tmp_path, {1: [0.80, 0.60], 2: [0.70, 0.72, 0.78, 0.83, 0.82]}
    )
    trials = {t.rank: t for t in store.trials(run_id)}
    start = clock()
    winner = halving.run()
    assert clock() - start <= 400.0 + 1e-6  # the runner-up had what the winner's slice left of the budget
    assert winner.rank == 2 and store.trials(run_id, status="dropped")[0].rank == 1
    last = {row.rank: row for row in store.step_results(run_id, 1)}
    assert last[1].validation_iou == 0.60 and last[2].validation_iou == 0.83
    assert last[1].seconds_trained < last[2].seconds_trained / 2  # one part of four, then the rest of the step
    rank_one_parts = [part for config_id, part, _ in backend.parts if config_id == trials[1].config_id][1:]
    assert rank_one_parts == [(0.0, 0.25)]  # the winner's slice ended after its first part, no roll-back
    assert store.finished_steps(run_id)[-1].active == [1, 2]
    messages = [e.message for e in store.events(run_id)][::-1]
    assert any(
        "part 1/4" in m and "more than 0.05 below the 0.800 that won the race: the slice ends here" in m
        for m in messages
    )
    assert any(
        m.startswith(f"{trials[2].config_id} (rank 2), the runner-up of step 1 (0.700), comes back") for m in messages
    )
    weights, iou = exported_weights(store, run_id, winner, backend)
    assert iou == 0.83 and weights["config_id"] == trials[2].config_id
    assert not list((tmp_path / run_id / "trials" / "rank-001").glob("*.pt"))  # the loser's weights went


def test_a_runner_up_that_does_not_beat_the_score_that_won_the_race_leaves_the_winner_its_earlier_weights(tmp_path):
    from appliance.automl.job import exported_weights

    clock, backend, store, run_id, halving = _race_of_two(tmp_path, {1: [0.80, 0.60], 2: [0.70, 0.72, 0.74, 0.75]})
    winner = halving.run()
    assert winner.rank == 1  # its 0.80 after step 1 is the best validated point of the two
    weights, iou = exported_weights(store, run_id, winner, backend)
    assert iou == 0.80 and weights["seconds"] == store.step_results(run_id, 0)[0].total_seconds_trained
    assert not list((tmp_path / run_id / "trials" / "rank-002").glob("*.pt"))


@pytest.mark.parametrize("dip", [0.03, 0.049])
def test_a_dip_within_the_collapse_margin_keeps_the_winner_training_and_drops_the_runner_ups_weights(tmp_path, dip):
    assert COLLAPSE_MARGIN == 0.05
    clock, backend, store, run_id, halving = _race_of_two(tmp_path, {1: [0.80, 0.80 - dip, 0.82], 2: [0.70]})
    assert halving.run().rank == 1
    assert [row.rank for row in store.step_results(run_id, 1)] == [1]
    assert len([part for config_id, part, _ in backend.parts if part != (0.0, 1.0)]) == PARTS
    assert not list((tmp_path / run_id / "trials" / "rank-002").glob("*.pt"))  # kept through the slice, then gone


@pytest.mark.parametrize("killed_in", ["the runner-up's slice", "before it came back"])
def test_a_kill_around_the_hand_over_resumes_with_the_runner_up_and_trains_nothing_twice(tmp_path, killed_in):
    scores = {1: [0.80, 0.60], 2: [0.70, 0.72, 0.78, 0.83, 0.82]}
    interrupt_at = 2 + 1 + 1 if killed_in == "the runner-up's slice" else None  # its second part
    clock, backend, store, run_id, halving = _race_of_two(tmp_path, scores, interrupt_at=interrupt_at)
    if interrupt_at is None:  # a kill right after the winner's slice was recorded, before the runner-up came back
        halving._bring_back = lambda *args: (_ for _ in ()).throw(Interrupt())
    with pytest.raises(Interrupt):
        halving.run()
    assert [row.rank for row in store.step_results(run_id, 1)] == [1]

    resumed = ScriptedByTrial(clock, {1: [0.99], 2: [0.72, 0.78, 0.83, 0.82]}, eval_cost=1.0)
    resumed.rank_of = backend.rank_of
    again = SuccessiveHalving(store, run_id, resumed, budget_seconds=400.0, run_dir=tmp_path / run_id, clock=clock)
    again.overhead_estimate = halving.overhead_estimate
    assert again.run().rank == 2
    assert {config_id for config_id, _ in resumed.trained} == {store.trials(run_id)[1].config_id}  # the runner-up only
    assert [row.rank for row in store.step_results(run_id, 1)] == [1, 2]


class Overtrained(FakeBackend):
    """Validation falls once a trial has trained more than ``peak`` seconds (a constant learning rate's collapse)."""

    def __init__(self, clock, *, peak):
        super().__init__(clock)
        self.peak = peak

    def validate(self, trainer) -> Validation:
        validation = super().validate(trainer)
        if trainer["learned"] > self.peak:
            return Validation(0.05, [0.05])
        return validation


@pytest.mark.parametrize(
    ("peak", "exported", "rolled_back_to"),
    [
        # every part of the last slice is past the peak: the winner's first part collapses, the runner-up comes back
        # and, past its peak too, rolls back after each part but its last; the winner's step-2 weights stay the best
        (110.0, "step 2", ["step-1.pt"] * (PARTS - 1)),
        (
            150.0,
            "part 1",
            ["step-2.pt"] * (PARTS - 2),
        ),  # its first part is the best point (no roll-back after the last)
        (math.inf, "part 4", []),  # it only improves
    ],
)
def test_the_job_exports_the_winners_best_validated_weights(tmp_path, peak, exported, rolled_back_to):
    from appliance.automl.job import exported_weights

    clock = FakeClock()
    backend = Overtrained(clock, peak=peak)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=4, budget=400.0)
    winner = halving.run()
    rows = [r for r in store.step_results(run_id) if r.rank == winner.rank]
    assert rows[-2].total_seconds_trained == pytest.approx(100.0)  # then 4 parts of 33.3 s: 133, 167, 200, 233
    assert [name for _, name in backend.restored] == rolled_back_to
    validations = backend.validations

    weights, iou = exported_weights(store, run_id, winner, backend)
    assert backend.validations == validations  # the recorded scores: nothing validated twice
    learned = {"step 2": 100.0, "part 1": 100.0 + 400 / 3 / 4, "part 4": 100 + 400 / 3}[exported]
    assert weights["learned"] == pytest.approx(learned)
    expected = rows[-2] if exported == "step 2" else rows[-1]
    assert iou == pytest.approx(expected.validation_iou)
    assert store.trials(run_id, status="winner")[0].checkpoint == expected.checkpoint
    left = list((tmp_path / run_id / "trials" / f"rank-{winner.rank:03d}").glob("*.pt"))
    assert left == [Path(expected.checkpoint)]  # the other one went
    messages = [e.message for e in store.events(run_id)]
    assert any("lowered validation" in m and "after step 2" in m for m in messages) == (exported == "step 2")
    # asked again (a kill before the export finished): the same weights, nothing else to delete
    again, _ = exported_weights(store, run_id, store.trials(run_id, status="winner")[0], backend)
    assert again["learned"] == weights["learned"]


def test_ties_are_broken_by_meta_model_rank(tmp_path):
    clock = FakeClock()
    store, run_id, halving = _run(tmp_path, FakeBackend(clock, flat=True), clock, top_n=8, budget=400.0)
    winner = halving.run()
    steps = store.finished_steps(run_id)
    assert steps[0].survivors == [1, 2, 3, 4]
    assert winner.rank == 1


class ObjectsBackend(FakeBackend):
    """An instances set: the task's score (AP) ranks configurations the other way round from their mean IoU."""

    def validate(self, trainer) -> Validation:
        iou = super().validate(trainer).mean_iou
        return Validation(iou, [iou], score=1.0 - self.quality(trainer["config_id"]))


def test_survivors_are_chosen_on_the_tasks_score_and_it_is_recorded(tmp_path):
    clock = FakeClock()
    backend = ObjectsBackend(clock)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=8, budget=400.0)
    winner = halving.run()
    trials = store.trials(run_id)
    assert winner.rank == min(trials, key=lambda t: backend.quality(t.config_id)).rank
    first = store.step_results(run_id, 0)
    assert all(r.validation_score == pytest.approx(1.0 - backend.quality(r.config_id)) for r in first)
    assert all(r.validation_iou is not None for r in first)


def test_overheads_count_against_the_budget(tmp_path):
    clock = FakeClock()
    backend = FakeBackend(clock, eval_cost=2.0, save_cost=1.0)
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=16, budget=600.0)
    start = clock()
    halving.run()
    assert clock() - start <= 600.0 * 1.01
    assert sum(seconds for _, seconds in backend.trained) < 600.0 - 3.0 * backend.validations * 0.9


def test_with_an_overhead_estimate_the_first_trial_does_not_eat_the_last_ones_share(tmp_path):
    """Before any slice is measured, a trial trained its whole share and then overran it by its validation and
    checkpoint, at the cost of the step's last trial (the paper default, ranked last, got 25 steps instead of 30)."""
    shares = {}
    for estimate in (None, lambda config: (1.0, 9.0)):
        clock = FakeClock()
        backend = FakeBackend(clock, eval_cost=9.0, save_cost=1.0)
        store = Store(tmp_path / f"{estimate is None}.sqlite")
        ranking = fallback_ranking()
        run_id = store.create_run(set_name="fake", budget_seconds=240.0, top_n=2, seed=0)
        enter_trials(store, run_id, ranking.configurations, ranking.scores, 2)
        halving = SuccessiveHalving(
            store,
            run_id,
            backend,
            budget_seconds=240.0,
            run_dir=tmp_path / run_id,
            clock=clock,
            overhead_estimate=estimate,
        )
        halving.run()
        shares[estimate is None] = [seconds for _, seconds in backend.trained[:2]]
    assert shares[True][0] > shares[True][1] + 9  # without: the first trial's overrun comes out of the second's
    assert shares[False][0] == pytest.approx(shares[False][1])  # with: equal first slices


def test_a_configuration_that_does_not_fit_is_replaced_by_the_next_ranked(tmp_path):
    clock = FakeClock()
    ranking = fallback_ranking()
    too_big = ranking.configurations[2].id
    backend = FakeBackend(clock, too_big=[too_big])
    store, run_id, halving = _run(tmp_path, backend, clock, top_n=8, budget=400.0)
    halving.run()
    trials = {t.rank: t for t in store.trials(run_id)}
    assert trials[3].status == "does_not_fit" and "9000 MB" in trials[3].reason
    assert 9 in trials and trials[9].config_id == ranking.configurations[8].id
    assert len(store.finished_steps(run_id)[0].active) == 8


def test_a_trial_that_fails_mid_training_is_dropped_and_the_run_goes_on(tmp_path):
    clock = FakeClock()
    failing = fallback_ranking().configurations[0].id
    store, run_id, halving = _run(tmp_path, FakeBackend(clock, fail=[failing]), clock, top_n=4, budget=300.0)
    winner = halving.run()
    trials = {t.rank: t for t in store.trials(run_id)}
    assert trials[1].status == "failed" and "out of memory" in trials[1].reason
    assert winner.rank != 1
    assert any("failed" in e.message for e in store.events(run_id))


def test_resuming_after_an_interruption_repeats_no_finished_slice(tmp_path):
    clock = FakeClock()
    interrupted = FakeBackend(clock, interrupt_at=11)  # 8 slices in step 1, then 3 of step 2
    store, run_id, halving = _run(tmp_path, interrupted, clock, top_n=8, budget=400.0)
    with pytest.raises(Interrupt):
        halving.run()
    assert len(store.finished_steps(run_id)) == 1
    assert len(store.step_results(run_id, 1)) == 3

    resumed = FakeBackend(clock)
    halving = SuccessiveHalving(store, run_id, resumed, budget_seconds=400.0, run_dir=tmp_path / run_id, clock=clock)
    winner = halving.run()
    assert len(resumed.trained) == 1 + 2 + PARTS  # the last trial of step 2, then steps 3 and 4 (in parts)
    keys = [(r.step, r.rank) for r in store.step_results(run_id)]
    assert len(keys) == len(set(keys)) == 8 + 4 + 2 + 1
    assert winner.status == "winner"


def test_a_run_resumed_after_its_race_was_decided_returns_the_winner_without_training(tmp_path):
    clock = FakeClock()
    store, run_id, halving = _run(tmp_path, FakeBackend(clock), clock, top_n=4, budget=300.0)
    winner = halving.run()
    resumed = FakeBackend(clock)  # e.g. killed during the winner's test or export
    again = SuccessiveHalving(store, run_id, resumed, budget_seconds=300.0, run_dir=tmp_path / run_id, clock=clock)
    assert again.run().rank == winner.rank
    assert resumed.trained == []


def test_a_kill_inside_the_last_slices_parts_reruns_the_slice_from_the_previous_steps_weights(tmp_path):
    clock = FakeClock()
    killed = FakeBackend(clock, interrupt_at=4 + 2 + 1)  # in the second part of the last slice
    store, run_id, halving = _run(tmp_path, killed, clock, top_n=4, budget=400.0)
    with pytest.raises(Interrupt):
        halving.run()
    (winner,) = store.trials(run_id, status="active")
    folder = tmp_path / run_id / "trials" / f"rank-{winner.rank:03d}"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step-1.pt", "step-2.pt"]  # its first part, whole
    assert store.step_results(run_id, 2) == []  # nothing of the slice recorded

    resumed = FakeBackend(clock)
    halving = SuccessiveHalving(store, run_id, resumed, budget_seconds=400.0, run_dir=tmp_path / run_id, clock=clock)
    assert halving.run().rank == winner.rank
    assert [config_id for config_id, _ in resumed.trained] == [winner.config_id] * PARTS  # from step 2's weights
    (result,) = store.step_results(run_id, 2)
    saved = resumed.load(Path(result.checkpoint))
    before = store.step_results(run_id, 1)
    start = next(r.total_seconds_trained for r in before if r.rank == winner.rank)
    assert saved["learned"] == pytest.approx(start + result.seconds_trained)  # the last part, trained once
