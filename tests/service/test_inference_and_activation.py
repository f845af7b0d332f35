"""Automatic inference with a real ONNX model, exactly once; the activation rule; the disk guard."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile
import torch

from appliance.data.io import read_image
from appliance.data.labelled_set import load_labelled_set
from appliance.data.splits import split_stems
from appliance.pipeline.export import write_model_folder
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.trainer import Trainer
from appliance.service.activation import ActivationError, activate_by_hand, decide_activation
from appliance.service.children import child_environment
from appliance.service.images import ImageDetector
from appliance.service.inference import InferenceWorker
from appliance.service.jobs import TrainingRequest
from appliance.service.training import TrainingSupervisor


def register(store, model_dir, set_dir):
    """A finished run on ``set_dir`` whose exported model is ``model_dir`` (what train_set records)."""
    labelled_set = load_labelled_set(set_dir)
    split = split_stems(labelled_set.stems, seed=0)
    run_id = store.create_run(set_name=labelled_set.name, set_dir=str(set_dir), split=split.to_dict())
    model_id = store.register_model(run_id=run_id, set_name=labelled_set.name, path=str(model_dir))
    store.update_run(run_id, status="finished", model_id=model_id)
    return model_id


def activate_trained(store, model_dir, set_dir, project="phase-demo"):
    """Register ``model_dir`` and activate it by hand, as an admin does with a model trained too briefly to pass the
    quality gate (the few-second model these tests segment with calls nearly every pixel "cell")."""
    model_id = register(store, model_dir, set_dir)
    activate_by_hand(store, project=project, model_id=model_id, note="activated by hand")
    return model_id


def labelled_by(model_dir, set_dir, out):
    """A copy of the labelled set whose masks are the model's own predictions: on it the model is perfect."""
    shutil.copytree(set_dir, out)
    predictor = OnnxPredictor(model_dir)
    for image in sorted((out / "images").iterdir()):
        mask = predictor.predict(read_image(image))
        (out / "masks" / image.name).unlink()
        tifffile.imwrite(out / "masks" / f"{image.stem}.tif", mask.astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def background_model(tmp_path_factory, trained_model, demo_set):
    """The trained model with its head forced to predict background everywhere: strictly worse."""
    trainer = Trainer.load(trained_model / "checkpoint.pt", device="cpu")
    head = trainer.model.segmentation_head
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.zero_()
        head[0].bias[0] = 10.0
    out = tmp_path_factory.mktemp("background-model")
    write_model_folder(out, trainer.model, config=trainer.config, in_channels=1, class_names=["cell"])
    return out


def _drop_images(settings, store, demo_images_dir, names=("set20", "set21", "set22"), project="phase-demo"):
    detector = ImageDetector(settings, store, log=lambda m: None)
    folder = settings.images_inbox / project / "plate1"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(demo_images_dir / f"{name}.tif", folder / f"{name}.tif")
    detector.rescan()
    detector.tick(clock=0.0)
    return detector.tick(clock=2.0)


def _csv_rows(settings, project="phase-demo"):
    with open(settings.results / project / "measurements.csv") as handle:
        return list(csv.DictReader(handle))


def test_waiting_images_are_segmented_once_when_a_model_activates(
    settings, store, demo_images_dir, demo_set_dir, trained_model
):
    registered = _drop_images(settings, store, demo_images_dir)
    worker = InferenceWorker(settings, store, log=lambda m: None)
    assert len(registered) == 3 and not worker.run_once()  # no model yet: they wait

    model_id = activate_trained(store, trained_model, demo_set_dir)
    while worker.run_once():
        pass
    assert worker.processed == 3 and not worker.run_once()
    # the provider the one loaded session really runs on, as the page shows it
    assert worker.providers_in_use() in (["CPUExecutionProvider"], ["CUDAExecutionProvider"])

    predictor = OnnxPredictor(trained_model)
    for name in ("set20", "set21", "set22"):
        mask = tifffile.imread(settings.results / "phase-demo" / "plate1" / f"{name}_mask.tif")
        expected = predictor.predict(read_image(demo_images_dir / f"{name}.tif"))
        assert np.array_equal(mask, expected)
        assert (settings.results / "phase-demo" / "plate1" / f"{name}_overlay.png").stat().st_size > 0
    rows = _csv_rows(settings)
    assert [row["image"] for row in rows] == [f"plate1/{n}.tif" for n in ("set20", "set21", "set22")]
    assert {row["model_id"] for row in rows} == {model_id} and {row["class_name"] for row in rows} == {"cell"}
    assert {image.status for image in store.images()} == {"done"}


def test_an_interrupted_image_is_done_again_without_a_duplicate_row(
    settings, store, demo_images_dir, demo_set_dir, trained_model
):
    _drop_images(settings, store, demo_images_dir, names=("set20", "set21"))
    activate_trained(store, trained_model, demo_set_dir)
    worker = InferenceWorker(settings, store, log=lambda m: None)
    worker.run_once()
    store.claim("segment", "a worker that died", lease_seconds=3600)  # killed mid-image
    (settings.results / "phase-demo" / "plate1" / "set21_mask.tif").write_bytes(b"half a file")
    assert [job.status for job in store.recover_jobs()] == ["queued"]
    while worker.run_once():
        pass
    assert len(_csv_rows(settings)) == 2
    assert tifffile.imread(settings.results / "phase-demo" / "plate1" / "set21_mask.tif").shape == (384, 384)


def test_a_changed_image_replaces_its_rows(settings, store, demo_images_dir, demo_set_dir, trained_model):
    activate_trained(store, trained_model, demo_set_dir)
    worker = InferenceWorker(settings, store, log=lambda m: None)
    _drop_images(settings, store, demo_images_dir, names=("set20",))
    worker.run_once()
    target = settings.images_inbox / "phase-demo" / "plate1" / "set20.tif"
    shutil.copy(demo_images_dir / "set22.tif", target)
    detector = ImageDetector(settings, store, log=lambda m: None)
    detector.rescan()
    detector.tick(clock=0.0)
    (new_version,) = detector.tick(clock=2.0)
    worker.run_once()
    (row,) = _csv_rows(settings)
    assert row["image"] == "plate1/set20.tif" and store.image(new_version).status == "done"
    assert len(store.images(status="done")) == 2  # both versions are on record


def test_an_unreadable_image_fails_with_its_reason_unless_it_may_still_be_written(
    settings, store, demo_images_dir, demo_set_dir, trained_model
):
    activate_trained(store, trained_model, demo_set_dir)
    folder = settings.images_inbox / "phase-demo"
    folder.mkdir(parents=True)
    payload = (demo_images_dir / "set20.tif").read_bytes()
    (folder / "old.tif").write_bytes(payload[:5000])
    os.utime(folder / "old.tif", (1_000_000_000, 1_000_000_000))  # long unchanged: it will not get better
    (folder / "fresh.tif").write_bytes(payload[:5000])
    detector = ImageDetector(settings, store, log=lambda m: None)
    detector.rescan()
    detector.tick(clock=0.0)
    detector.tick(clock=2.0)
    worker = InferenceWorker(settings, store, log=lambda m: None)
    worker.run_once()
    worker.run_once()
    old = store.latest_image("phase-demo", "old.tif")
    assert old.status == "failed" and "cannot be decoded" in old.error
    assert store.job(old.job_id).status == "failed"
    fresh = store.job(store.latest_image("phase-demo", "fresh.tif").job_id)
    assert fresh.status == "queued" and fresh.attempts == 0 and fresh.not_before > 0
    assert any("old.tif not segmented" in event.message for event in store.events())


def test_a_better_or_equal_model_activates_a_worse_one_does_not(
    store, demo_set_dir, trained_model, background_model, tmp_path
):
    first = register(store, trained_model, demo_set_dir)
    assert decide_activation(store, model_id=first, project="p", quality_gate=False).activated
    same = register(store, shutil.copytree(trained_model, tmp_path / "same"), demo_set_dir)
    equal = decide_activation(store, model_id=same, project="p", quality_gate=False)
    assert (
        equal.activated and equal.new_score == pytest.approx(equal.previous_score) and equal.previous_model_id == first
    )
    worse = register(store, background_model, demo_set_dir)
    decision = decide_activation(store, model_id=worse, project="p", quality_gate=False)
    assert not decision.activated and decision.new_score < decision.previous_score
    assert "new 0.000 < active" in decision.reason and f"appliance activate p {worse}" in decision.reason
    assert store.active_model("p").id == same
    assert [(a.model_id, a.activated) for a in store.activations("p")] == [(first, 1), (same, 1), (worse, 0)]
    assert [m.id for m in store.models() if m.active] == [same]
    assert decide_activation(store, model_id=worse, project="p") == decision  # decided once


def test_a_model_that_does_not_beat_otsu_is_registered_not_activated_until_an_admin_says_so(
    store, demo_set_dir, untrained_model
):
    model_id = register(store, untrained_model, demo_set_dir)
    decision = decide_activation(store, model_id=model_id, project="p")
    assert not decision.activated and store.active_model("p") is None
    assert decision.model_mean_iou <= decision.baseline_score
    assert decision.reason.startswith("not better than Otsu thresholding: test mean IoU with background")
    assert f"`appliance activate p {model_id}`" in decision.reason and "larger budget" in decision.reason
    (row,) = store.activations("p")
    assert row.activated == 0 and row.baseline_score == pytest.approx(decision.baseline_score)
    assert any("not activated" in e.message and e.level == "warning" for e in store.events())

    activate_by_hand(store, project="p", model_id=model_id, note="activated by hand")
    assert store.active_model("p").id == model_id
    assert store.activations("p")[-1].reason.startswith("activated by hand")
    with pytest.raises(ActivationError, match="already the active model of project p"):
        activate_by_hand(store, project="p", model_id=model_id, note="again")
    with pytest.raises(ActivationError, match="not in the registry"):
        activate_by_hand(store, project="p", model_id="model-nope", note="typo")


def test_a_model_that_beats_otsu_is_activated_with_both_numbers(store, demo_set_dir, trained_model, tmp_path):
    own_set = labelled_by(trained_model, demo_set_dir, tmp_path / "labelled-by-the-model")
    decision = decide_activation(store, model_id=register(store, trained_model, own_set), project="p")
    assert decision.activated and store.active_model("p").id == decision.model_id
    assert decision.model_mean_iou == pytest.approx(1.0) and decision.baseline_score < 1.0
    assert decision.reason.startswith("first model of the project (beats Otsu thresholding: mean IoU with background")


def test_training_waits_while_the_disk_is_below_the_reserve(settings, store):
    settings = settings.with_values(disk_reserve_gb=10**9)
    request = TrainingRequest(set_dir=str(settings.data_dir / "sets" / "s"), set_name="s", project="p", budget=60.0)
    store.enqueue("train", "k", payload=request.to_payload())
    supervisor = TrainingSupervisor(settings, store, log=lambda m: None)
    assert not supervisor.run_once(threading.Event()) and not supervisor.run_once(threading.Event())
    assert supervisor.state == "waiting for disk" and "below the reserve of 1e+09 GB" in supervisor.detail
    assert store.jobs("train")[0].status == "queued"
    assert [e.message for e in store.events()].count(f"training waits: {supervisor.detail}") == 1


def test_an_unforeseen_error_spends_an_attempt_and_a_poison_image_ends_failed(
    settings, store, demo_images_dir, demo_set_dir, trained_model, monkeypatch
):
    import appliance.service.inference as inference

    _drop_images(settings, store, demo_images_dir, names=("set20",))
    activate_trained(store, trained_model, demo_set_dir)
    monkeypatch.setattr(inference, "write_results", lambda *a, **k: 1 / 0)
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])  # the queue's retry delay, on a fake clock
    worker = InferenceWorker(settings, store, log=lambda m: None)
    runs = 0
    while worker.run_once():
        runs += 1
        clock[0] += settings.stable_seconds + 1  # past the retry delay
        assert runs <= settings.max_attempts
    (job,) = store.jobs("segment")
    assert runs == settings.max_attempts == job.attempts and job.status == "failed"
    assert job.error == "ZeroDivisionError: division by zero"
    (image,) = store.images()
    assert image.status == "failed" and "ZeroDivisionError" in image.error
    assert any("not segmented: ZeroDivisionError" in e.message for e in store.events())


def test_two_images_with_one_stem_keep_separate_results(settings, store, demo_images_dir, demo_set_dir, trained_model):
    import imageio.v3 as iio

    folder = settings.images_inbox / "phase-demo"
    folder.mkdir(parents=True)
    shutil.copy(demo_images_dir / "set20.tif", folder / "x.tif")
    iio.imwrite(folder / "x.png", tifffile.imread(demo_images_dir / "set21.tif"))
    detector = ImageDetector(settings, store, log=lambda m: None)
    detector.rescan()
    detector.tick(clock=0.0)
    assert len(detector.tick(clock=2.0)) == 2
    activate_trained(store, trained_model, demo_set_dir)
    worker = InferenceWorker(settings, store, log=lambda m: None)
    while worker.run_once():
        pass
    predictor = OnnxPredictor(trained_model)
    results = settings.results / "phase-demo"
    for name, mask in (("x.png", "x_mask.tif"), ("x.tif", "x_tif_mask.tif")):  # x.png is registered first
        expected = predictor.predict(read_image(folder / name))
        assert np.array_equal(tifffile.imread(results / mask), expected), name
    assert sorted(row["image"] for row in _csv_rows(settings)) == ["x.png", "x.tif"]
    # a new version of x.tif keeps its own name
    shutil.copy(demo_images_dir / "set22.tif", folder / "x.tif")
    detector.notice(folder / "x.tif")
    detector.tick(clock=10.0)
    detector.tick(clock=12.0)
    while worker.run_once():
        pass
    expected = predictor.predict(read_image(folder / "x.tif"))
    assert np.array_equal(tifffile.imread(results / "x_tif_mask.tif"), expected)
    assert not (results / "x_tif-2_mask.tif").exists() and len(_csv_rows(settings)) == 2


def test_an_image_overwritten_a_b_a_ends_with_the_results_of_a(
    settings, store, demo_images_dir, demo_set_dir, trained_model
):
    activate_trained(store, trained_model, demo_set_dir)
    detector = ImageDetector(settings, store, log=lambda m: None)
    worker = InferenceWorker(settings, store, log=lambda m: None)
    target = settings.images_inbox / "phase-demo" / "a.tif"
    target.parent.mkdir(parents=True)
    clock = 0.0
    for version in ("set20", "set21", "set20"):
        shutil.copy(demo_images_dir / f"{version}.tif", target)
        detector.notice(target)
        for _ in range(2):
            detector.tick(clock=clock)
            clock += 2.0
        while worker.run_once():
            pass
    expected = OnnxPredictor(trained_model).predict(read_image(demo_images_dir / "set20.tif"))
    assert np.array_equal(tifffile.imread(settings.results / "phase-demo" / "a_mask.tif"), expected)
    (row,) = _csv_rows(settings)
    latest = store.latest_image("phase-demo", "a.tif")
    assert latest.status == "done" and row["image"] == "a.tif"
    assert latest.content_hash == store.images()[0].content_hash  # the first version is the latest again
    assert [job.attempts for job in store.jobs("segment")] == [1, 1]


def test_a_file_written_on_while_it_is_segmented_gets_the_results_of_its_final_content(
    settings, store, demo_images_dir, demo_set_dir, trained_model, monkeypatch
):
    """A preallocated file, 40 % written when it looked stable, completed by a writer that keeps the mtime."""
    final = (demo_images_dir / "set21.tif").read_bytes()
    target = settings.images_inbox / "phase-demo" / "a.tif"
    target.parent.mkdir(parents=True)
    target.write_bytes(final[: len(final) * 4 // 10] + bytes(len(final) - len(final) * 4 // 10))
    stat = target.stat()
    activate_trained(store, trained_model, demo_set_dir)
    detector = ImageDetector(settings, store, log=lambda m: None)
    detector.notice(target)
    detector.tick(clock=0.0)
    assert len(detector.tick(clock=2.0)) == 1
    worker = InferenceWorker(settings, store, log=lambda m: None)
    predictor = worker.predictor(store.active_model("phase-demo"))
    real_segment = predictor.segment

    def segment_while_the_writer_finishes(pixels, **options):
        target.write_bytes(final)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return real_segment(pixels, **options)

    monkeypatch.setattr(predictor, "segment", segment_while_the_writer_finishes)
    assert worker.run_once()
    monkeypatch.setattr(predictor, "segment", real_segment)
    assert store.images()[0].status == "superseded"
    assert not (settings.results / "phase-demo" / "a_mask.tif").exists()
    detector.rescan()
    detector.tick(clock=10.0)
    assert len(detector.tick(clock=12.0)) == 1
    while worker.run_once():
        pass
    expected = OnnxPredictor(trained_model).predict(read_image(demo_images_dir / "set21.tif"))
    assert np.array_equal(tifffile.imread(settings.results / "phase-demo" / "a_mask.tif"), expected)
    assert [row["image"] for row in _csv_rows(settings)] == ["a.tif"]


def _supervisor_with_child(settings, store, script: str) -> TrainingSupervisor:
    """A supervisor whose training child is ``script`` (a stand-in process with the child's exit behaviour)."""
    request = TrainingRequest(set_dir=str(settings.data_dir / "sets" / "s"), set_name="s", project="p", budget=60.0)
    store.enqueue("train", "k", payload=request.to_payload())
    supervisor = TrainingSupervisor(settings, store, log=lambda m: None)
    supervisor.child_command = [sys.executable, "-c", script]
    return supervisor


def test_training_that_fills_the_disk_is_paused_without_spending_an_attempt(settings, store):
    script = "import sys; print('OSError: [Errno 28] No space left on device: checkpoint.pt'); sys.exit(1)"
    supervisor = _supervisor_with_child(settings, store, script)
    assert supervisor.run_once(threading.Event())
    (job,) = store.jobs("train")
    assert job.status == "queued" and job.attempts == 0 and "paused for disk space" in job.error
    assert "paused, no attempt spent: the disk filled up" in store.events()[0].message


def test_running_training_stops_resumably_when_the_disk_runs_low(settings, store, monkeypatch):
    import appliance.service.training as training

    # the stand-in restores SIGINT's handler as the real child does (a test run started with `&` ignores SIGINT)
    script = "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); time.sleep(900)"
    supervisor = _supervisor_with_child(settings, store, script)
    monkeypatch.setattr(training, "training_must_stop", lambda settings: (True, "only 0.1 GB free, below half"))
    started = time.monotonic()
    assert supervisor.run_once(threading.Event())
    # the child was interrupted, not waited for (a loaded machine once took 31 s to start and stop it)
    assert time.monotonic() - started < 300
    (job,) = store.jobs("train")
    assert job.status == "queued" and job.attempts == 0 and "only 0.1 GB free" in job.error


def test_the_training_child_stops_on_sigint_even_when_started_with_sigint_ignored(tmp_path, monkeypatch):
    import appliance.service.training as training

    def interrupted_job(job_id, settings, log):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
        raise AssertionError("the child ignored SIGINT")

    monkeypatch.setattr(training, "run_job", interrupted_job)
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "data"))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `nohup appliance run &` hands its children
    try:
        assert training.main(["1", str(tmp_path / "result.json")]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (tmp_path / "result.json").exists()


def test_a_retried_job_of_a_finished_run_applies_the_activation_rule_without_the_training_stack(
    settings, store, demo_set_dir, trained_model
):
    model_id = register(store, trained_model, demo_set_dir.resolve())
    (run,) = store.runs()
    store.update_run(run.id, budget_seconds=60.0, top_n=settings.top_n, seed=settings.seed)
    request = TrainingRequest(set_dir=str(demo_set_dir), set_name="phase_cells", project="phase-demo", budget=60.0)
    job_id, _ = store.enqueue("train", "k", payload=request.to_payload())
    script = (
        "import sys; from appliance.service.training import run_job; from appliance.settings import Settings; "
        f"result = run_job({job_id}, Settings.from_env(), log=lambda m: None); "
        "print(result['model_id'], 'appliance.automl.job' in sys.modules)"
    )
    environment = child_environment(settings)
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [model_id, "False"]
    assert store.decision_for(model_id) is not None


def test_intake_pauses_while_the_disk_is_below_the_reserve_and_resumes(settings, store, demo_set_dir):
    from appliance.service.intake import Intake

    shutil.copytree(demo_set_dir, settings.labelled_inbox / "cells")
    intake = Intake(settings.with_values(disk_reserve_gb=10**9), store, log=lambda m: None)
    intake.scan()
    assert intake.tick(clock=0.0) == [] and intake.tick(clock=100.0) == [] and store.jobs() == []
    assert "below the reserve of 1e+09 GB" in intake.paused
    assert [e.message for e in store.events()].count(f"intake of labelled sets paused: {intake.paused}") == 1
    intake.settings = settings
    intake.tick(clock=200.0)
    (decision,) = intake.tick(clock=210.0)
    assert decision.status == "accepted" and intake.paused is None
