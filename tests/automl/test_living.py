"""The living meta-base: a finished run's learning curves appended in the shipped meta-base's columns."""

import pytest

from appliance.automl.living import record_run, save_features
from appliance.metalearning import load_metabase
from appliance.metalearning.base import LIVING_METABASE, summarise_metabase
from appliance.metalearning.builder import read_metabase_rows
from tests.automl.test_halving import FakeBackend, FakeClock, _run

FEATURES = {"hc_images": 12.0, "hc_mean_shape": 512.0, "hc_classes": 1.0, "user_object_cells": 1.0, "opt_x": 0.5}


def test_a_finished_run_adds_one_row_per_decided_slice_once(tmp_path):
    clock = FakeClock()
    store, run_id, halving = _run(tmp_path, FakeBackend(clock), clock, top_n=4, budget=400.0)
    store.update_run(run_id, run_dir=str(tmp_path / run_id), split={"validation": ["a", "b"]}, device="cpu")
    halving.run()
    assert record_run(tmp_path / "data", store, run_id) == 0  # ranked without meta-features: nothing to learn from
    save_features(tmp_path / run_id, FEATURES)
    # one row per decided slice: the last step's single slice (cooled down, validated in parts) is not a learning curve
    last = max(r.step for r in store.step_results(run_id))
    assert store.step_results(run_id, last)[0].validation_iou is not None
    validated = [r for r in store.step_results(run_id) if r.validation_iou is not None and r.step != last]
    assert record_run(tmp_path / "data", store, run_id) == len(validated) > 4
    assert record_run(tmp_path / "data", store, run_id) == 0  # recorded twice (a resumed export): no duplicates
    rows = read_metabase_rows(tmp_path / "data" / LIVING_METABASE)
    for result in validated:
        (row,) = [r for r in rows if (r["config_id"], float(r["fidelity_mp"])) == (result.config_id, result.work_mp)]
        assert float(row["val_iou"]) == pytest.approx(result.validation_iou)
        assert row["device"] == "cpu" and row["source"] == f"run {run_id}" and row["validation_images"] == "2"
        assert float(row["hc_images"]) == 12.0 and float(row["eng_patches_per_image"]) > 0
    finals = {r["config_id"]: float(r["run_fidelity_mp"]) for r in rows}
    assert all(float(r["fidelity_mp"]) <= finals[r["config_id"]] for r in rows)
    summary = summarise_metabase(tmp_path / "data" / LIVING_METABASE)  # what the Training page shows
    assert (summary.rows, summary.runs, summary.sets, summary.devices) == (len(validated), 1, ("fake",), ("cpu",))
    assert summarise_metabase(tmp_path / "nothing.csv").rows == 0
    base = load_metabase(tmp_path / "data" / LIVING_METABASE)  # reads as a meta-base the meta-model tools accept
    assert set(base.columns["set"].tolist()) == {"fake"}
    assert len({(r["config_id"], r["fidelity_mp"]) for r in rows}) == len(rows)


def test_a_runner_up_that_came_back_for_the_last_step_adds_no_row_of_that_step(tmp_path):
    from tests.automl.test_halving import _race_of_two

    _, _, store, run_id, halving = _race_of_two(tmp_path, {1: [0.80, 0.60], 2: [0.70, 0.72, 0.78, 0.83]})
    store.update_run(run_id, run_dir=str(tmp_path / run_id), split={"validation": ["a"]}, device="cpu")
    halving.run()
    assert len(store.step_results(run_id, 1)) == 2  # the winner's collapsed slice and the runner-up's
    save_features(tmp_path / run_id, FEATURES)
    assert record_run(tmp_path / "data", store, run_id) == 2  # the race's step only: two learning-curve points
    rows = read_metabase_rows(tmp_path / "data" / LIVING_METABASE)
    assert sorted(float(r["val_iou"]) for r in rows) == [0.70, 0.80]
