"""The whole training job on a real (bundled) set on the CPU: budget kept, model exported, kill -9 resumed."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.automl.job import train_set
from appliance.data.io import read_image
from appliance.metalearning.builder import read_metabase_rows
from appliance.pipeline.config import PAPER_DEFAULT
from appliance.pipeline.instances import SEED_DEPTHS_PX
from appliance.pipeline.predictor import OnnxPredictor
from appliance.settings import Settings
from appliance.store import Store

EXPORT_OVERHEAD_SECONDS = 60  # QC on the test images, overlays, chart, ONNX export and parity check


@pytest.mark.slow
def test_train_keeps_the_budget_and_exports_a_working_model(tmp_path, demo_set, demo_set_dir, measured_cpu_throughput):
    budget = 60.0
    # a low floor, so that this small budget still races several configurations on a 2-core CPU (60 s: two of them)
    settings = Settings(data_dir=tmp_path / "data", default_budget=budget, top_n=4, race_floor_steps=2)
    measured_cpu_throughput(settings.store_path)  # real measurements of this machine, probed once per session
    started = time.perf_counter()
    result = train_set(demo_set_dir, settings, device="cpu")
    total = time.perf_counter() - started

    assert result.run.status == "finished"
    # everything before the export counts against T (meta-features, ranking, plan, race); the device was measured
    assert "device_measurement_seconds" not in result.timings
    assert result.timings["planning_seconds"] + result.timings["halving_seconds"] <= 1.05 * budget
    assert total <= 1.05 * budget + result.timings["export_seconds"] + 2
    assert result.timings["export_seconds"] <= EXPORT_OVERHEAD_SECONDS
    plan = result.run.plan
    assert plan["search"] and 2 <= plan["n"] <= 4
    assert any(t["config_id"] == PAPER_DEFAULT.id for t in plan["trials"])  # the default always races
    statuses = [t.status for t in result.trials]
    assert statuses.count("winner") == 1 and len(statuses) == plan["n"]
    steps = Store(settings.store_path).finished_steps(result.run_id)
    assert [len(s.active) for s in steps] == plan["schedule"]["active"]
    assert result.run.validation_iou is not None

    predictor = OnnxPredictor(result.model_dir)
    image, mask = demo_set.read(demo_set.stems.index(next(iter(result.test.per_image))))
    labels = predictor.predict(image)
    assert labels.shape == mask.shape
    assert set(np.unique(labels)) <= {0, 1}
    qc = Path(result.run.run_dir) / "qc"
    assert (qc / "halving.png").stat().st_size > 0
    assert len(list(qc.glob("*.png"))) == 1 + len(result.test.per_image)
    # the dropped trials' checkpoints went as their steps were decided: only the winner's last one is left
    (winner,) = [t for t in result.trials if t.status == "winner"]
    checkpoints = sorted((Path(result.run.run_dir) / "trials").rglob("*.pt"))
    assert checkpoints == [Path(winner.checkpoint)]
    # what the run measured went into the data dir's living meta-base, one row per validated, decided slice
    rows = read_metabase_rows(settings.data_dir / "metabase.csv")
    store = Store(settings.store_path)
    undecided = {s.step for s in store.finished_steps(result.run_id) if not s.decided}
    validated = [
        r for r in store.step_results(result.run_id) if r.validation_iou is not None and r.step not in undecided
    ]
    assert len(rows) == len(validated) and {r["set"] for r in rows} == {demo_set.name}
    assert all(r["opt_firstorder_Mean"] and r["eng_batches_per_epoch"] for r in rows)


def _rows(path, query):
    if not path.is_file():
        return []
    connection = sqlite3.connect(path, timeout=10)
    try:
        return connection.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        connection.close()


@pytest.mark.slow
def test_a_run_killed_mid_step_resumes_without_repeating_finished_steps(
    tmp_path, demo_set_dir, measured_cpu_throughput
):
    data = tmp_path / "data"
    measured_cpu_throughput(data / "appliance.sqlite")
    command = [sys.executable, "-m", "appliance.cli", "train", str(demo_set_dir), "--budget", "40s", "--trials", "4"]
    command += ["--data-dir", str(data), "--device", "cpu"]
    store_path = data / "appliance.sqlite"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    # kill once step 1 (4 slices) is finished and step 2 has started
    while process.poll() is None and time.monotonic() < deadline:
        if len(_rows(store_path, "select step from step_results")) >= 5:
            break
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read().decode()[-2000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = _rows(store_path, "select step, rank, finished_at, validation_iou from step_results")
    assert {row[0] for row in before} >= {0, 1}

    keep_none = {**os.environ, "APPLIANCE_KEEP_CHECKPOINTS": "none"}  # resuming needs them; a finished run does not
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=keep_none)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming run" in resumed.stdout + resumed.stderr
    assert "s used" in resumed.stderr and "step 3 of 3, 1 racing" in resumed.stderr  # the bar: budget, step k of K
    after = _rows(store_path, "select step, rank, finished_at, validation_iou from step_results")
    keys = [(step, rank) for step, rank, _, _ in after]
    assert len(keys) == len(set(keys)) == 4 + 2 + 1
    assert set(before) <= set(after)  # finished slices kept exactly as they were, not redone
    assert _rows(store_path, "select status from runs") == [("finished",)]
    assert not list(data.rglob("*.pt"))  # keep_checkpoints = "none": the winner's went after its export
    ((model_path,),) = _rows(store_path, "select path from models")
    assert (Path(model_path) / "model.onnx").is_file()


def test_without_pyradiomics_the_job_ranks_with_the_fallback_prior_and_says_why(tmp_path, demo_set, monkeypatch):
    from appliance.automl import job
    from appliance.automl.ranking import FALLBACK_SOURCE

    def no_radiomics(labelled_set):
        raise ImportError("No module named 'radiomics'", name="radiomics")

    monkeypatch.setattr(job, "set_features", no_radiomics)
    store = Store(tmp_path / "s.sqlite")
    run_id = store.create_run(set_name=demo_set.name, budget_seconds=60.0, top_n=4, seed=0)
    messages = []
    ranking = job._rank(store, run_id, demo_set, Settings(data_dir=tmp_path), messages.append, None)
    assert ranking.source == FALLBACK_SOURCE and store.run(run_id).ranking_source == FALLBACK_SOURCE
    assert "need radiomics, which is not installed" in messages[0]
    assert any("radiomics" in e.message and e.level == "warning" for e in store.events(run_id))


@pytest.mark.slow
def test_a_budget_too_small_for_any_race_trains_the_default_without_waiting_for_meta_features(
    tmp_path, demo_set_dir, monkeypatch
):
    from appliance.automl import job
    from tests.service.e2e import seed_throughput

    def never(labelled_set):
        raise AssertionError("meta-features computed although no race can fit the budget")

    monkeypatch.setattr(job, "set_features", never)
    settings = Settings(data_dir=tmp_path / "data", default_budget=6.0)
    seed_throughput(settings.store_path, monkeypatch)
    result = train_set(demo_set_dir, settings, device="cpu")
    plan = result.run.plan
    assert not plan["search"] and [t["config_id"] for t in plan["trials"]] == [PAPER_DEFAULT.id]
    assert "not ranked" in result.run.ranking_source
    assert result.timings["planning_seconds"] < 1.0  # the whole budget went to training


def test_a_fidelity_aware_ranking_is_asked_after_what_each_configuration_trains_in_the_winner_share(
    tmp_path, demo_set_dir, monkeypatch
):
    from appliance.automl import job
    from tests.automl.test_race import curve_ranking, fast_starter_against_late_bloomer
    from tests.service.e2e import seed_throughput

    class Planned(Exception):
        pass

    def stop_after_planning(store, run_id, candidates, plan):
        raise Planned(candidates)

    monkeypatch.setattr(job, "enter_race", stop_after_planning)
    settings = Settings(data_dir=tmp_path / "data", default_budget=600.0, race_min_winner_share=0.5)
    seed_throughput(settings.store_path, monkeypatch)
    ranking, asked = curve_ranking(fast_starter_against_late_bloomer)
    with pytest.raises(Planned) as planned:
        train_set(demo_set_dir, settings, device="cpu", ranking=ranking)
    (candidates,) = planned.value.args
    assert len(asked) == 1 and len(candidates) == 576
    for candidate in candidates:  # the winner's share of what is left of the 600 s, at this device's speed
        mp = candidate.throughput.mpix_per_second * 0.5 * 600.0
        assert candidate.predicted_at_mp == pytest.approx(min(32.0, max(0.5, mp)), rel=0.01)


@pytest.mark.slow
def test_a_set_with_instance_masks_gives_an_instances_model_scored_on_objects(tmp_path, instance_set_dir, monkeypatch):
    from tests.service.e2e import seed_throughput

    settings = Settings(data_dir=tmp_path / "data", default_budget=6.0, quality_gate=False)
    seed_throughput(settings.store_path, monkeypatch)
    result = train_set(instance_set_dir, settings, device="cpu")

    metadata = json.loads((result.model_dir / "model.json").read_text())
    assert metadata["task"] == "instances" and metadata["class_names"] == ["cell"]
    assert metadata["output"]["classes"] == ["background", "interior", "boundary"]
    assert set(metadata["test_objects"]) >= {"ap", "f1", "count_error", "true_objects", "predicted_objects"}
    assert metadata["test_objects"]["true_objects"] == 6  # the one test image: three touching pairs
    assert metadata["seed_depth_px"] in SEED_DEPTHS_PX  # chosen on the validation objects
    report = json.loads((Path(result.run.run_dir) / "qc" / "test.json").read_text())
    assert report["task"] == "instances" and report["objects"] == metadata["test_objects"]
    assert report["seed_depth_px"] == metadata["seed_depth_px"]
    events = [e.message for e in Store(settings.store_path).events(result.run_id)]
    assert any("objects AP@0.5" in message for message in events)
    assert any(f"seed depth {metadata['seed_depth_px']:g} px chosen" in message for message in events)

    predictor = OnnxPredictor(result.model_dir)
    assert predictor.seed_depth_px == metadata["seed_depth_px"]
    image = read_image(instance_set_dir / "images" / "c0.png")
    assert set(np.unique(predictor.predict(image))) <= {0, 1}  # the set's class map, not interior/boundary
    labels, instances, object_class = predictor.segment(image)
    assert instances.dtype == np.uint32 and len(object_class) == instances.max()
    assert np.array_equal(labels, predictor.predict(image))
