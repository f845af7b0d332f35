"""Intake of labelled sets: completeness, validation of a hashed copy, REJECTED.txt, no retraining of the same set."""

import shutil
import time

import pytest

from appliance.service.intake import READY_FILE, REJECTED_FILE, Intake
from appliance.store import Store

from .bad_inputs import BAD_SETS, make_bad_set
from .conftest import tree_digest


def test_a_complete_set_is_copied_with_hashes_and_queued_once(settings, store, dropped_set):
    intake = Intake(settings, store, log=lambda m: None)
    intake.scan()
    assert intake.tick(clock=100.0) == []  # first sight starts the quiet period
    assert intake.tick(clock=104.0) == []
    (decision,) = intake.tick(clock=105.5)
    assert decision.status == "accepted" and decision.project == "phase-demo" and decision.new_job
    copied = sorted(p.relative_to(decision.store_dir).as_posix() for p in decision.store_dir.rglob("*.png"))
    assert copied == sorted(p.relative_to(dropped_set).as_posix() for p in dropped_set.rglob("*.png"))
    (job,) = store.jobs("train")
    payload = job.payload
    assert payload["set_dir"] == str(decision.store_dir.resolve()) and payload["budget"] == 40.0
    assert job.key.startswith(decision.store_dir.name.rsplit("-", 1)[1])
    assert not (dropped_set / REJECTED_FILE).exists()
    # nothing changed: never decided again
    intake.scan()
    assert intake.tick(clock=200.0) == [] and intake.tick(clock=300.0) == []


def test_ready_file_skips_the_quiet_period(settings, store, dropped_set):
    (dropped_set / READY_FILE).touch()
    intake = Intake(settings, store, log=lambda m: None)
    intake.scan()
    intake.tick(clock=10.0)
    (decision,) = intake.tick(clock=11.5)  # stable_seconds (1 s), not quiet_period (5 s)
    assert decision.status == "accepted"


def test_a_set_still_being_copied_waits(settings, store, dropped_set):
    intake = Intake(settings, store, log=lambda m: None)
    intake.scan()
    intake.tick(clock=0.0)
    (dropped_set / "images" / "set1.png").rename(dropped_set / "set1.png.part")  # the copy goes on
    intake.notice(dropped_set / "images")
    assert intake.tick(clock=6.0) == []  # changed: the quiet period starts again
    (dropped_set / "set1.png.part").rename(dropped_set / "images" / "set1.png")
    assert intake.tick(clock=7.0) == []
    (decision,) = intake.tick(clock=12.5)
    assert decision.status == "accepted"


def test_the_same_set_again_does_not_retrain_a_changed_one_does(settings, store, dropped_set):
    intake = Intake(settings, store, log=lambda m: None)
    first = intake.decide(dropped_set)
    again = intake.decide(shutil.copytree(dropped_set, settings.labelled_inbox / "phase_cells_copy"))
    assert again.status == "accepted" and not again.new_job and again.job_id == first.job_id
    assert "already known" in store.events()[0].message
    (dropped_set / "images" / "set1.png").write_bytes((dropped_set / "images" / "set2.png").read_bytes())
    changed = intake.decide(dropped_set)
    assert changed.new_job and changed.job_id != first.job_id and changed.store_dir != first.store_dir
    assert len(store.jobs("train")) == 2


def test_a_fixed_set_is_accepted_and_its_rejection_note_removed(settings, store, dropped_set):
    intake = Intake(settings, store, log=lambda m: None)
    (dropped_set / "masks" / "set8.png").rename(dropped_set / "set8-mask-aside.png")
    assert intake.decide(dropped_set).status == "rejected"
    assert "no mask with the stem 'set8'" in (dropped_set / REJECTED_FILE).read_text()
    (dropped_set / "set8-mask-aside.png").rename(dropped_set / "masks" / "set8.png")
    assert intake.decide(dropped_set).status == "accepted"
    assert not (dropped_set / REJECTED_FILE).exists()


@pytest.mark.parametrize("kind", sorted(BAD_SETS))
def test_each_kind_of_bad_set_is_rejected_with_its_reason_and_the_inbox_untouched(kind, settings, demo_set_dir):
    folder, expected = make_bad_set(kind, demo_set_dir, settings.labelled_inbox)
    before = tree_digest(settings.labelled_inbox)
    store = Store(settings.store_path)
    intake = Intake(settings, store, log=lambda m: None)
    intake.scan()
    intake.tick(clock=0.0)
    (decision,) = intake.tick(clock=10.0)
    assert decision.status == "rejected"
    text = (folder / REJECTED_FILE).read_text()
    assert expected in text, text
    assert len(text) < 20_000 and all(len(event.message) < 2_200 for event in store.events())
    assert tree_digest(settings.labelled_inbox, ignore_name=REJECTED_FILE) == before
    (row,) = store.intakes()
    assert row.status == "rejected" and any(expected in f"{p['file']}: {p['message']}" for p in row.problems)
    assert "rejected" in store.events()[0].message and store.jobs() == []
    assert [p.name for p in settings.sets_dir.iterdir()] == []  # the staging copy is gone
    # writing REJECTED.txt is no change to the set: it is not looked at again
    intake.notice(folder / REJECTED_FILE)
    assert intake.tick(clock=20.0) == [] and intake.tick(clock=40.0) == []


def test_a_folder_that_cannot_be_checked_does_not_stop_the_others(settings, store, dropped_set, monkeypatch):
    import appliance.service.intake as intake_module

    broken = shutil.copytree(dropped_set, settings.labelled_inbox / "broken")
    real = intake_module.tree_signature

    def tree_signature(root, **kwargs):
        if root == broken:
            raise OSError("input/output error")
        return real(root, **kwargs)

    monkeypatch.setattr(intake_module, "tree_signature", tree_signature)
    intake = Intake(settings, store, log=lambda m: None)
    for clock in (0.0, 10.0):
        intake.scan()
        decisions = intake.tick(clock=clock)
    assert [d.folder.name for d in decisions] == ["phase_cells"]
    errors = [e.message for e in store.events() if e.level == "error"]
    assert errors == ["labelled set broken: could not be checked (OSError: input/output error)"]


def test_the_same_set_dropped_again_after_its_job_failed_is_queued_again(settings, store, dropped_set):
    intake = Intake(settings, store, log=lambda m: None)
    first = intake.decide(dropped_set)
    job = store.claim("train", "w", lease_seconds=60)
    store.give_up(job.id, "w", "CUDA out of memory")
    again = intake.decide(shutil.copytree(dropped_set, settings.labelled_inbox / "phase_cells_again"))
    assert again.job_id == first.job_id and again.new_job
    job = store.job(first.job_id)
    assert job.status == "queued" and job.attempts == 0 and job.error is None
    assert "failed before" in store.events()[0].message


def test_a_ready_file_that_came_first_does_not_make_a_partial_set_complete(settings, store, dropped_set):
    """rsync and many copy tools write in sorted order: READY lands before dataset.yaml, images/ and masks/."""
    intake = Intake(settings, store, log=lambda m: None)
    aside = settings.data_dir / "aside"
    shutil.move(dropped_set / "masks", aside)
    (dropped_set / READY_FILE).touch()
    time.sleep(0.02)
    shutil.copytree(aside, dropped_set / "masks")  # arrives after READY, with the source's modification times
    intake.scan()
    intake.tick(clock=0.0)
    assert intake.tick(clock=2.0) == []  # READY is no sign of completeness here: the quiet period applies
    (decision,) = intake.tick(clock=5.5)
    assert decision.status == "accepted"


def test_a_newer_version_of_a_set_cancels_the_queued_job_of_the_older_one(settings, store, dropped_set):
    intake = Intake(settings, store, log=lambda m: None)
    older = intake.decide(dropped_set)
    (dropped_set / "images" / "set1.png").write_bytes((dropped_set / "images" / "set2.png").read_bytes())
    newer = intake.decide(dropped_set)
    assert newer.new_job and store.job(older.job_id).status == "superseded"
    assert f"queued job(s) {older.job_id} of its earlier version cancelled" in store.events()[0].message
    assert store.claim("train", "w", lease_seconds=60).id == newer.job_id
