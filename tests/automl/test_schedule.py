import pytest

from appliance.automl.schedule import HalvingSchedule, select_survivors, selection_score, survivors
from appliance.store.rows import StepResult


def test_fifty_configurations_follow_the_paper():
    schedule = HalvingSchedule(configurations=50, budget_seconds=600)
    assert schedule.steps == 6
    assert schedule.active == [50, 25, 12, 6, 3, 1]
    assert schedule.step_seconds == pytest.approx([100] * 6)
    assert schedule.slice_seconds[0] == pytest.approx(2.0) and schedule.slice_seconds[-1] == pytest.approx(100)
    assert schedule.winner_share == pytest.approx(0.2739, abs=1e-4)


@pytest.mark.parametrize(
    ("n", "steps", "active"), [(1, 1, [1]), (2, 2, [2, 1]), (8, 4, [8, 4, 2, 1]), (9, 4, [9, 4, 2, 1])]
)
def test_step_counts_and_survivors(n, steps, active):
    schedule = HalvingSchedule(configurations=n, budget_seconds=60)
    assert schedule.steps == steps and schedule.active == active
    assert sum(schedule.step_seconds) == pytest.approx(60)
    assert schedule.deadline(steps - 1) == pytest.approx(60)


def test_growing_steps_give_the_winner_more():
    paper = HalvingSchedule(configurations=4, budget_seconds=700)
    grown = HalvingSchedule(configurations=4, budget_seconds=700, growth=2.0)
    assert grown.step_seconds == pytest.approx([100, 200, 400])
    assert grown.slice_seconds == pytest.approx([25, 100, 400])
    assert [grown.deadline(s) for s in range(3)] == pytest.approx([100, 300, 700])
    assert grown.winner_share == pytest.approx(525 / 700)
    assert paper.winner_share == pytest.approx((1 / 4 + 1 / 2 + 1) / 3)
    assert HalvingSchedule.from_dict(grown.to_dict()) == grown


def test_survivors_are_half_rounded_down_but_never_zero():
    assert [survivors(n) for n in (50, 25, 12, 3, 1)] == [25, 12, 6, 1, 1]


def test_ties_and_missing_scores_are_broken_by_meta_model_rank():
    scores = [0.5, 0.7, 0.5, None, 0.7]
    ranks = [3, 4, 1, 0, 2]
    assert select_survivors(scores, ranks, keep=2) == [1, 4]
    assert select_survivors(scores, ranks, keep=3) == [1, 2, 4]  # 0.5 tie: rank 1 beats rank 3
    assert select_survivors(scores, ranks, keep=5) == [0, 1, 2, 3, 4]


def test_a_tiebreak_score_comes_before_the_rank():
    scores = [0.0, 0.0, 0.0, 0.3]  # objects' AP: nothing found yet by three of them
    ties = [0.20, 0.45, None, 0.10]  # their mean IoU
    assert select_survivors(scores, [1, 2, 3, 4], keep=2, tiebreak=ties) == [1, 3]
    assert select_survivors(scores, [1, 2, 3, 4], keep=2) == [0, 3]
    with pytest.raises(ValueError):
        select_survivors(scores, [1, 2, 3, 4], keep=2, tiebreak=[0.1])


def test_a_slice_is_selected_on_its_task_score_else_its_iou():
    assert selection_score(StepResult(validation_iou=0.6, validation_score=0.2)) == 0.2
    assert selection_score(StepResult(validation_iou=0.6)) == 0.6  # a semantic set, or a row from before scores


@pytest.mark.parametrize(
    "kwargs",
    [
        {"configurations": 0, "budget_seconds": 1},
        {"configurations": 5, "budget_seconds": 0},
        {"configurations": 5, "budget_seconds": 10, "growth": 0.5},
    ],
)
def test_invalid_schedules_say_why(kwargs):
    with pytest.raises(ValueError):
        HalvingSchedule(**kwargs)
