"""The budget-aware race: order by what a configuration reaches in its time, n and step budgets from T and the
device's throughput, the paper default always racing, and no search when T is too small."""

import dataclasses
import math

import pytest

from appliance.automl.memory import MemoryGroup
from appliance.automl.race import (
    FLOOR_STEPS,
    Candidate,
    plan_race,
    schedule_for,
    slice_overhead,
    time_aware_order,
)
from appliance.automl.ranking import Ranking, fallback_ranking
from appliance.automl.schedule import HalvingSchedule
from appliance.automl.search_space import search_space
from appliance.automl.throughput import PROBE, ThroughputTable
from appliance.pipeline.config import PAPER_DEFAULT, PipelineConfig

FIXED, PER_PIXEL = 0.05, 2e-6  # a CPU-like device: patch 64 / batch 4 at 12 steps/s, the paper default at 1.75


def cpu_like_table() -> ThroughputTable:
    measured = {}
    for encoder, factor in (("resnet18", 1.0), ("resnet50", 2.1)):
        for patch, batch in ((64, 4), (128, 8)):
            seconds = FIXED + factor * PER_PIXEL * patch * patch * batch
            measured[MemoryGroup(patch, batch, encoder)] = (1 / seconds, PROBE)
    return ThroughputTable("cpu test", "v1", measured)


def scored_ranking(score) -> Ranking:
    configurations = sorted(search_space(), key=lambda c: -score(c))
    return Ranking(tuple(configurations), tuple(score(c) for c in configurations), "meta-model", 0.36, 0.72)


def no_overhead(candidate: Candidate) -> float:
    return 0.0


def test_equal_scores_are_ordered_by_what_a_second_trains():
    table = cpu_like_table()
    order = time_aware_order(scored_ranking(lambda c: 0.5), table)
    mpix = [c.throughput.mpix_per_second for c in order]
    assert mpix == sorted(mpix, reverse=True)
    assert order[0].config.encoder == "resnet18" and order[0].config.patch_size * order[0].config.batch_size >= 1024


def test_a_much_better_score_outweighs_a_throughput_advantage():
    table = cpu_like_table()

    def score(config):  # resnet50 clearly better per pixel; half the throughput costs only one doubling (0.36)
        return 1.0 if config.encoder == "resnet50" else 0.0

    order = time_aware_order(scored_ranking(score), table)
    assert order[0].config.encoder == "resnet50"
    values = [c.value for c in order]
    assert values == sorted(values, reverse=True)


def test_a_ranking_without_scores_keeps_its_order():
    ranking = fallback_ranking()
    order = time_aware_order(ranking, cpu_like_table())
    assert [c.config for c in order] == list(ranking.configurations)
    assert order[0].config == PAPER_DEFAULT


def curve_ranking(curve) -> Ranking:
    """A fidelity-aware ranking (learned from 0.5-32 MP) whose score of a configuration after ``mp`` is
    ``curve(config, mp)``; the plain scores are at 32 MP. Records what it was asked."""
    configurations = tuple(search_space())
    asked = []

    def score_at(training_mp):
        asked.append(list(training_mp))
        return tuple(curve(c, mp) for c, mp in zip(configurations, training_mp, strict=True))

    scores = tuple(curve(c, 32.0) for c in configurations)
    ranking = Ranking(configurations, scores, "meta-model", 0.36, 0.72, score_at=score_at, fidelity_range=(0.5, 32.0))
    return ranking, asked


def fast_starter_against_late_bloomer(config, mp):
    """resnet50 learns fastest per pixel but plateaus at 0.6; resnet18 gains 0.1 per doubling of training."""
    if config.encoder == "resnet50":
        return min(0.6, 0.3 + 0.15 * math.log2(mp / 0.5))
    return min(0.9, 0.1 * math.log2(mp / 0.5))


def test_a_fidelity_aware_ranking_is_scored_after_what_each_configuration_trains_in_the_winner_time():
    table = cpu_like_table()
    ranking, asked = curve_ranking(fast_starter_against_late_bloomer)
    short = time_aware_order(ranking, table, training_seconds=5.0)
    assert short[0].config.encoder == "resnet50"  # after ~1-4 MP the fast starter is ahead
    long = time_aware_order(ranking, table, training_seconds=600.0)
    assert long[0].config.encoder == "resnet18"  # after hundreds of MP the late bloomer is
    for candidate in long:  # each asked after its own MPix/s × the winner's time, within what the model knows
        expected = min(32.0, max(0.5, candidate.throughput.mpix_per_second * 600.0))
        assert candidate.predicted_at_mp == pytest.approx(expected)
        assert candidate.predicted_score == pytest.approx(fast_starter_against_late_bloomer(candidate.config, expected))
    assert all(0.5 <= mp <= 32.0 for call in asked for mp in call)
    assert time_aware_order(ranking, table)[0].predicted_at_mp is None  # no time given: the plain scores


def test_beyond_the_fidelity_aware_model_curves_only_the_doublings_beyond_them_count():
    table = cpu_like_table()
    ranking, _ = curve_ranking(fast_starter_against_late_bloomer)
    # every configuration trains more than 32 MP in 10^5 s: the order is the plain rule with the scores at 32 MP
    aware = time_aware_order(ranking, table, training_seconds=1e5)
    plain = time_aware_order(dataclasses.replace(ranking, score_at=None), table, training_seconds=1e5)
    assert [c.config for c in aware] == [c.config for c in plain]
    assert all(c.predicted_at_mp == 32.0 for c in aware)
    gaps = [a.value - p.value for a, p in zip(aware, plain, strict=True)]
    assert max(gaps) - min(gaps) == pytest.approx(0.0, abs=1e-9)  # the values differ by one constant


def test_step_budgets_grow_just_enough_for_the_winner_share():
    schedule = schedule_for(4, 700.0, min_winner_share=0.6)
    assert schedule.winner_share >= 0.6
    assert schedule.growth == pytest.approx(1.1)
    assert schedule_for(2, 700.0, min_winner_share=0.6).growth == 1.0  # 75 % already


def _plan(budget: float, **kwargs):
    order = time_aware_order(
        scored_ranking(lambda c: -c.learning_rate - 0.01 * (c.encoder == "resnet50")), cpu_like_table()
    )
    return order, plan_race(order, budget_seconds=budget, overhead=lambda c: 2.0, max_trials=16, **kwargs)


def test_a_large_budget_races_the_most_configurations_with_the_floor_met():
    order, plan = _plan(20_000.0)
    assert plan.search and plan.n == 16
    assert min(plan.first_slice_steps) >= FLOOR_STEPS
    assert plan.schedule.winner_share >= 0.6
    assert PAPER_DEFAULT in [c.config for c in plan.trials]
    assert plan.schedule.budget_seconds == 20_000.0


@pytest.mark.parametrize("budget", [300.0, 900.0, 3000.0])
def test_n_follows_the_budget_and_every_first_slice_reaches_the_floor(budget):
    order, plan = _plan(budget)
    assert plan.search
    assert all(steps >= FLOOR_STEPS for steps in plan.first_slice_steps)
    assert PAPER_DEFAULT in [c.config for c in plan.trials]
    # one more trial would break the floor for the paper default (the slowest that must race)
    more = schedule_for(plan.n + 1, budget)
    default_steps = (more.slice_seconds[0] - 2.0) * cpu_like_table().get(PAPER_DEFAULT).steps_per_second
    assert plan.n == 16 or default_steps < FLOOR_STEPS


@pytest.mark.parametrize("budget", [300.0, 900.0, 3000.0])
def test_what_the_decision_does_not_need_goes_to_the_survivors(budget):
    order, plan = _plan(budget)
    assert plan.schedule.winner_share >= 0.6
    if plan.schedule.growth < 4.0:  # a little more growth would starve a first slice below the floor
        grown = HalvingSchedule(plan.n, budget, plan.schedule.growth + 0.05)
        rates = [c.throughput.steps_per_second for c in plan.trials]
        assert min((grown.slice_seconds[0] - 2.0) * rate for rate in rates) < FLOOR_STEPS


def test_n_never_grows_when_the_budget_shrinks():
    counts = [_plan(budget)[1].n for budget in (20_000, 5000, 2000, 900, 300, 120, 60)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == 16 and counts[-1] == 1


def test_a_budget_too_small_for_any_search_trains_the_paper_default_for_all_of_it():
    order, plan = _plan(40.0)
    assert not plan.search and plan.n == 1
    assert order[0].config != PAPER_DEFAULT  # the meta-model's favourite alone is nobody's tested pick
    assert plan.trials[0].config == PAPER_DEFAULT
    assert plan.schedule.active == [1] and plan.schedule.budget_seconds == 40.0
    assert f"cannot give two configurations {FLOOR_STEPS} optimiser steps" in plan.reason
    assert "no search" in plan.describe()


def test_configurations_too_slow_for_the_floor_are_passed_over():
    table = cpu_like_table()
    slow = PipelineConfig(patch_size=256, batch_size=32, encoder="resnet50")
    ranking = scored_ranking(lambda c: 2.0 if c == slow else -c.learning_rate)
    order = time_aware_order(ranking, table)
    assert order[0].config == slow
    plan = plan_race(order, budget_seconds=900.0, overhead=no_overhead, max_trials=8)
    assert slow not in [c.config for c in plan.trials]
    assert "passed over" in plan.reason


def test_a_fixed_n_races_exactly_that_many_and_can_leave_the_default_out():
    order = time_aware_order(scored_ranking(lambda c: -c.learning_rate), cpu_like_table())
    plan = plan_race(order, budget_seconds=60.0, overhead=no_overhead, trials=3, include_default=False)
    assert [c.config for c in plan.trials] == [c.config for c in order[:3]]
    assert plan.schedule.active == [3, 1]


def test_a_fixed_n_passes_over_configurations_that_cannot_take_one_step_in_their_first_slice():
    table = cpu_like_table()
    slow = PipelineConfig(patch_size=256, batch_size=32, encoder="resnet50")  # ~5 s a step on this table
    order = time_aware_order(scored_ranking(lambda c: 2.0 if c == slow else -c.learning_rate), table)
    assert order[0].config == slow
    plan = plan_race(order, budget_seconds=24.0, overhead=no_overhead, trials=3, include_default=False)
    first = plan.schedule.slice_seconds[0]
    assert first < 1 / table.get(slow).steps_per_second  # its first step alone would overrun the slice
    assert slow not in [c.config for c in plan.trials] and len(plan.trials) == 3
    assert "1 configuration(s) passed over" in plan.reason
    roomy = plan_race(order, budget_seconds=3600.0, overhead=no_overhead, trials=3, include_default=False)
    assert roomy.trials[0].config == slow and roomy.reason == "n = 3 as asked"  # a step fits: no floor applies


def test_the_plan_is_recorded_as_plain_data():
    _, plan = _plan(900.0)
    data = plan.to_dict()
    assert data["n"] == plan.n and data["schedule"]["active"] == plan.schedule.active
    assert {"config_id", "steps_per_second", "mpix_per_second", "first_slice_steps"} <= set(data["trials"][0])
    assert math.isclose(sum(data["schedule"]["step_seconds"]), 900.0)


def test_slice_overhead_counts_checkpoints_and_validation_at_prediction_speed():
    table = cpu_like_table()
    candidate = time_aware_order(fallback_ranking(), table)[0]
    table.prediction["resnet18"] = 0.5
    seconds = slice_overhead(candidate, validation_pixels=3e6, table=table)
    assert seconds == pytest.approx(1.2 + 3.0 / 0.5)


@pytest.mark.parametrize("include_default", [True, False])
def test_whether_any_race_fits_does_not_depend_on_the_order(include_default):
    """What lets a job skip the meta-features when its budget allows no race (job.py plans with the prior first)."""
    table = cpu_like_table()
    orders = [
        time_aware_order(fallback_ranking(), table),
        time_aware_order(scored_ranking(lambda c: -c.learning_rate - 0.01 * (c.encoder == "resnet50")), table),
        time_aware_order(scored_ranking(lambda c: c.patch_size * c.batch_size), table),
    ]
    decisions = set()
    for budget in (4.0, 8.0, 12.0, 20.0, 40.0, 60.0, 90.0, 120.0, 200.0, 300.0, 900.0):
        searched = {
            plan_race(
                order, budget_seconds=budget, overhead=lambda c: 2.0, max_trials=16, include_default=include_default
            ).search
            for order in orders
        }
        assert len(searched) == 1, budget
        decisions |= searched
    assert decisions == {True, False}  # the budgets cover both answers
