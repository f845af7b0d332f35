"""The functions that shape store rows for the page, on hand-made rows with hand-computed answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.pipeline.config import PAPER_DEFAULT
from appliance.store.rows import Activation, Component, Event, Intake, Run, StepResult, Trial
from streamlit_app import shaping


def test_component_health_uses_the_health_rule():
    rows = shaping.component_health(
        [
            Component(name="inference", state="running", detail="3 image(s) segmented", interval=1, heartbeat=98.0),
            Component(name="scanner", state="running", detail="", interval=1, heartbeat=50.0),
            Component(name="training", state="stopped", detail="", interval=1, heartbeat=99.0),
            Component(name="slow", state="running", detail="", interval=10, heartbeat=75.0),
        ],
        clock=100.0,
    )
    assert [(r["component"], r["ok"]) for r in rows] == [
        ("inference", True),
        ("scanner", False),  # 50 s old > 15 s
        ("training", False),  # stopped
        ("slow", True),  # 25 s old <= 3 x 10 s
    ]
    assert rows[0]["last heartbeat"] == "2 s ago"


def test_queue_summary_fills_every_status():
    summary = shaping.queue_summary([("segment", "queued", 3), ("segment", "done", 10), ("train", "running", 1)])
    assert summary == {
        "segment": {"queued": 3, "running": 0, "done": 10, "failed": 0},
        "train": {"queued": 0, "running": 1, "done": 0, "failed": 0},
    }
    assert shaping.queue_summary([]) == {}


def test_disk_state_flags_the_reserve():
    gb = 1024**3
    assert shaping.disk_state(4 * gb, 100 * gb, 5.0) == {
        "free": "4.0 GB",
        "total": "100.0 GB",
        "used_fraction": 0.96,
        "below_reserve": True,
        "reserve": "5.0 GB",
    }
    assert not shaping.disk_state(6 * gb, 100 * gb, 5.0)["below_reserve"]


def test_halving_chart_rows_mark_survivors():
    trials = [
        Trial(rank=1, status="winner", config=PAPER_DEFAULT.to_dict()),
        Trial(rank=4, status="dropped"),
        Trial(rank=9, status="active"),
    ]
    results = [
        StepResult(rank=4, step=0, config_id="c-b", validation_iou=0.4),
        StepResult(rank=1, step=1, config_id="c-a", validation_iou=0.7),
        StepResult(rank=1, step=0, config_id="c-a", validation_iou=0.5),
        StepResult(rank=9, step=0, config_id="c-c", validation_iou=0.45, validation_score=0.2),
    ]
    rows = shaping.halving_chart_rows(results, trials)
    assert [r["validation_score"] for r in rows] == [0.5, 0.7, 0.4, 0.2]  # what the race selected on
    assert [(r["trial"], r["configuration"], r["step"], r["survivor"]) for r in rows] == [
        ("configuration 1 of 3", "c-a", 1, True),
        ("configuration 1 of 3", "c-a", 2, True),
        ("configuration 2 of 3", "c-b", 1, False),
        ("configuration 3 of 3", "c-c", 1, True),
    ]
    assert rows[0]["settings"].startswith(f"patch {PAPER_DEFAULT.patch_size}, batch {PAPER_DEFAULT.batch_size}")
    assert rows[2]["settings"] == ""  # a trial row without its configuration


def test_race_plan_reads_the_recorded_plan_and_tolerates_runs_without_one():
    from appliance.automl.memory import MemoryGroup
    from appliance.automl.race import Candidate, plan_race
    from appliance.automl.throughput import Throughput
    from appliance.pipeline.config import PAPER_DEFAULT, PipelineConfig

    def candidate(config, steps_per_second):
        group = MemoryGroup(config.patch_size, config.batch_size, config.encoder)
        return Candidate(config, 0.5, 1.0, Throughput(group, steps_per_second, "probe"))

    fast = PipelineConfig(patch_size=64, batch_size=4)
    plan = plan_race(
        [candidate(fast, 10.0), candidate(PAPER_DEFAULT, 1.0)],
        budget_seconds=300.0,
        overhead=lambda c: 0.0,
        floor_steps=30,
    )
    summary = shaping.race_plan(Run(plan=plan.to_dict()))
    assert summary["n"] == 2 and summary["search"] and summary["active"] == "2 → 1"
    # step budgets 60 s and 240 s (growth 4): the default's first slice of 30 s gives it exactly the 30-step floor
    assert summary["race_budget"] == "5 min 00 s" and summary["winner_share"] == pytest.approx(0.9)
    assert summary["step_budgets"] == "1 min 00 s, 4 min 00 s"
    assert [row["first-slice steps (planned)"] for row in summary["trials"]] == [300, 30]
    assert [row["scored after (MP)"] for row in summary["trials"]] == [None, None]  # scores at the model's own MP
    aware = Candidate(fast, 0.7, 1.0, Throughput(MemoryGroup(64, 4, "resnet18"), 10.0, "probe"), predicted_at_mp=32.0)
    aware_plan = plan_race(
        [aware, candidate(PAPER_DEFAULT, 1.0)], budget_seconds=300.0, overhead=lambda c: 0.0, floor_steps=30
    )
    assert shaping.race_plan(Run(plan=aware_plan.to_dict()))["trials"][0]["scored after (MP)"] == 32.0
    tiny = plan_race(
        [candidate(fast, 10.0), candidate(PAPER_DEFAULT, 1.0)],
        budget_seconds=50.0,
        overhead=lambda c: 0,
        floor_steps=30,
    )
    assert shaping.race_plan(Run(plan=tiny.to_dict()))["search"] is False
    assert shaping.race_plan(Run(plan=None)) is None
    assert shaping.race_plan(Run.from_row({"plan": "not json"})) is None


def test_budget_progress_of_a_running_run_counts_time_since_the_last_slice():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    run = Run(budget_seconds=600.0, status="halving", started_at=(now - timedelta(seconds=200)).isoformat())
    results = [
        StepResult(step=0, rank=1, wall_seconds=100.0, finished_at=(now - timedelta(seconds=90)).isoformat()),
        StepResult(step=0, rank=2, wall_seconds=80.0, finished_at=(now - timedelta(seconds=10)).isoformat()),
    ]
    progress = shaping.budget_progress(run, results, 8, now=now)
    assert progress["used_seconds"] == pytest.approx(190.0)  # 180 recorded + 10 since the last slice
    assert progress["left_seconds"] == pytest.approx(410.0)
    assert progress["eta"] == pytest.approx(now.timestamp() + 410.0)
    assert progress["fraction"] == pytest.approx(190 / 600)
    assert (progress["steps_total"], progress["step_reached"], progress["running"]) == (4, 1, True)


def test_budget_progress_of_a_finished_run_uses_its_measured_halving_time():
    run = Run(budget_seconds=240.0, status="finished", halving_seconds=238.5)
    progress = shaping.budget_progress(run, [StepResult(step=2, rank=1, wall_seconds=10)], 4, now=datetime.now(UTC))
    assert (progress["used_seconds"], progress["left_seconds"], progress["eta"]) == (238.5, 0.0, None)
    assert progress["step_reached"] == 3 and not progress["running"]


def test_predicted_vs_realised_takes_each_trials_last_score():
    trials = [
        Trial(rank=1, config_id="c-a", predicted_score=0.8, status="winner"),
        Trial(rank=2, config_id="c-b", predicted_score=0.7, status="dropped"),
        Trial(rank=3, config_id="c-c", predicted_score=0.6, status="active"),  # no result yet
    ]
    results = [
        StepResult(rank=1, step=0, validation_iou=0.5),
        StepResult(rank=1, step=1, validation_iou=0.72),
        StepResult(rank=2, step=0, validation_iou=0.41),
    ]
    assert shaping.predicted_vs_realised(trials, results) == [
        {"rank": 1, "configuration": "c-a", "predicted": 0.8, "realised": 0.72, "after step": 2, "status": "winner"},
        {"rank": 2, "configuration": "c-b", "predicted": 0.7, "realised": 0.41, "after step": 1, "status": "dropped"},
    ]


def test_rank_correlation_handles_ties_and_too_few_points():
    assert shaping.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert shaping.rank_correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)
    assert shaping.rank_correlation([1, 2], [2, 1]) is None
    assert shaping.rank_correlation([1, 1, 1], [1, 2, 3]) is None
    assert shaping.rank_correlation([None, 1, 2, 3], [5, 1, 2, 3]) == pytest.approx(1.0)


def test_config_summary():
    config = {
        "patch_size": 128,
        "batch_size": 16,
        "learning_rate": 0.001,
        "encoder": "resnet18",
        "flip": 0.5,
        "brightness_blur": 0.0,
        "grid_distortion": 0.5,
    }
    assert shaping.config_summary(config) == "patch 128, batch 16, lr 0.001, resnet18, flip 0.5, grid 0.5"
    assert shaping.config_summary(None) == ""


def test_per_class_scores_names_classes_from_the_model():
    test = {"overall": {"iou": [0.9, 0.6, 0.3], "dice": [0.95, 0.75, None]}}
    assert shaping.per_class_scores(test, ["cell", "debris"]) == [
        {"class": "background", "IoU": 0.9, "Dice": 0.95},
        {"class": "cell", "IoU": 0.6, "Dice": 0.75},
        {"class": "debris", "IoU": 0.3, "Dice": None},
    ]
    assert shaping.per_class_scores(None, []) == []


def test_activation_history_and_rollback_target():
    decisions = [
        Activation(id=1, model_id="m1", previous_model_id=None, activated=1, new_score=0.7, previous_score=None,
                   reason="first", decided_at="t1"),
        Activation(id=2, model_id="m2", previous_model_id="m1", activated=0, new_score=0.6, previous_score=0.7,
                   reason="worse", decided_at="t2"),
        Activation(id=3, model_id="m3", previous_model_id="m1", activated=1, new_score=0.8, previous_score=0.7,
                   reason="better", decided_at="t3"),
    ]  # fmt: skip
    history = shaping.activation_history(decisions)
    assert [(h["model"], h["activated"], h["new score"], h["its score"]) for h in history] == [
        ("m3", True, 0.8, 0.7),
        ("m2", False, 0.6, 0.7),
        ("m1", True, 0.7, None),
    ]
    assert shaping.rollback_target(decisions, "m3") == "m1"
    assert shaping.rollback_target(decisions, "m1") is None
    assert shaping.rollback_target([], None) is None


def test_measurement_table_and_csv():
    rows = [
        {
            "project": "p",
            "relpath": "d/a.tif",
            "model_id": "m",
            "processed_at": "2026-01-01T00:00:00+00:00",
            "row": {"image": "d/a.tif", "class_index": 1, "class_name": "cell", "pixel_fraction": 0.25,
                    "object_count": 3, "area_mean_px": None},
        }
    ]  # fmt: skip
    table = shaping.measurement_table(rows)
    assert table == [
        {
            "project": "p",
            "image": "d/a.tif",
            "processed_at": "2026-01-01T00:00:00+00:00",
            "model_id": "m",
            "class_index": 1,
            "class_name": "cell",
            "pixel_fraction": 0.25,
            "object_count": 3,
            "area_mean_px": None,
        }
    ]
    assert shaping.csv_text(table, ["image", "class_name", "pixel_fraction", "area_mean_px"]) == (
        "image,class_name,pixel_fraction,area_mean_px\nd/a.tif,cell,0.25,\n"
    )
    assert shaping.csv_text([]) == "\n"


def test_rejected_set_rows_one_per_problem():
    intakes = [
        Intake(name="ok", status="accepted", problems=[]),
        Intake(
            name="bad",
            status="rejected",
            inbox_path="/in/bad",
            detected_at="t",
            problems=[{"file": "masks/x.png", "message": "no image"}, {"file": "", "message": "empty"}],
        ),
        Intake(name="odd", status="rejected", inbox_path="/in/odd", detected_at="t", problems=[]),
    ]
    rows = shaping.rejected_set_rows(intakes)
    assert [(r["set"], r["file"], r["problem"]) for r in rows] == [
        ("bad", "masks/x.png", "no image"),
        ("bad", "", "empty"),
        ("odd", "", "rejected (no problem recorded)"),
    ]


def test_formatting():
    assert shaping.format_duration(59.6) == "1 min 00 s"
    assert shaping.format_bytes(2048) == "2.0 KB"
    assert shaping.parse_time("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert shaping.parse_time("garbage") is None


def test_local_time_and_event_rows():
    assert shaping.local_time("2026-01-01T12:00:00+00:00", tz=UTC) == "2026-01-01 12:00:00"
    rows = shaping.event_rows([Event(level="info", message="service started")])
    assert rows == [{"at": "", "level": "info", "run": "service", "message": "service started"}]
    assert "run" not in shaping.event_rows([Event(level="info", message="m")], with_run=False)[0]


def test_doctests_of_the_module():
    import doctest

    assert doctest.testmod(shaping).failed == 0


def test_cluster_nodes_count_this_runs_slices_and_say_what_each_node_does():
    from appliance.store.rows import ClusterNode

    nodes = [
        ClusterNode(node_id="a" * 56, address="10.0.0.2", device="NVIDIA RTX 4070", slots=1, free_memory_mb=2048.0,
                    running="run r1 rank 3 step 2", alive=1, seen_at="2026-11-29T01:00:00+00:00"),
        ClusterNode(node_id="b" * 56, address="10.0.0.3", slots=2, alive=1),
        ClusterNode(node_id="c" * 56, address="10.0.0.4", device="NVIDIA RTX 4070", slots=1, alive=0),
    ]  # fmt: skip
    results = [
        StepResult(run_id="r1", step=0, rank=1, node="a" * 56),
        StepResult(run_id="r1", step=1, rank=1, node="a" * 56),
        StepResult(run_id="r1", step=0, rank=2, node="c" * 56),
    ]
    rows = shaping.cluster_node_rows(nodes, results)
    assert [r["node"] for r in rows] == ["aaaaaaaa", "bbbbbbbb", "cccccccc"]
    assert [r["slices of this run"] for r in rows] == [2, 0, 1]
    assert [r["running"] for r in rows] == ["run r1 rank 3 step 2", "idle", "-"]
    assert rows[0]["free memory"] == "2.0 GB" and rows[1]["device"] == "(no worker yet)" and rows[2]["alive"] is False


def test_a_trial_that_moved_between_nodes_shows_each_in_order():
    results = [
        StepResult(step=1, rank=1, node="b" * 56),
        StepResult(step=0, rank=1, node="a" * 56),
        StepResult(step=2, rank=1, node="b" * 56),
        StepResult(step=0, rank=2, node=None),
    ]
    assert shaping.trial_nodes(results) == {1: "aaaaaaaa → bbbbbbbb", 2: "here"}
