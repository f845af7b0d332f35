"""Detection of new images: only stable files, each version once, a changed file again."""

import os
import shutil

import numpy as np
import tifffile

from appliance.service.images import ImageDetector


def _detector(settings, store):
    settings.images_inbox.mkdir(parents=True, exist_ok=True)
    return ImageDetector(settings, store, log=lambda m: None)


def test_a_file_is_registered_once_after_it_stopped_changing(settings, store, demo_images_dir):
    detector = _detector(settings, store)
    target = settings.images_inbox / "phase-demo" / "day1" / "set20.tif"
    target.parent.mkdir(parents=True)
    shutil.copy(demo_images_dir / "set20.tif", target)
    detector.rescan()
    assert detector.tick(clock=0.0) == []
    assert detector.tick(clock=0.5) == []  # not yet stable for 1 s
    (identifier,) = detector.tick(clock=1.2)
    image = store.image(identifier)
    assert (image.project, image.relpath, image.status) == ("phase-demo", "day1/set20.tif", "queued")
    (job,) = store.jobs("segment")
    assert job.key == identifier and job.project == "phase-demo"
    detector.rescan()
    assert detector.tick(clock=5.0) == [] and detector.tick(clock=10.0) == []
    os.utime(target)  # touched, same content: nothing new
    detector.notice(target)
    detector.tick(clock=20.0)
    assert detector.tick(clock=22.0) == [] and len(store.jobs("segment")) == 1


def test_a_tiff_written_in_chunks_is_registered_only_when_complete(settings, store):
    detector = _detector(settings, store)
    image = (np.arange(512 * 512, dtype=np.uint32) % 65521).astype(np.uint16).reshape(512, 512)
    full = settings.images_inbox / "complete.tif"
    tifffile.imwrite(full, image)
    payload = full.read_bytes()
    full.unlink()
    target = settings.images_inbox / "phase-demo" / "big.tif"
    target.parent.mkdir(parents=True)
    clock = 0.0
    with open(target, "wb") as handle:
        for start in range(0, len(payload), len(payload) // 4 + 1):
            handle.write(payload[start : start + len(payload) // 4 + 1])
            handle.flush()
            os.utime(target, ns=(int(clock * 1e9) + 1, int(clock * 1e9) + 1))  # every chunk moves mtime
            detector.notice(target)
            assert detector.tick(clock=clock) == []
            clock += 0.8  # pauses shorter than stable_seconds
    (identifier,) = [*detector.tick(clock=clock), *detector.tick(clock=clock + 1.1)]
    assert store.image(identifier).size == len(payload)


def test_a_changed_file_is_a_new_version(settings, store, demo_images_dir):
    detector = _detector(settings, store)
    target = settings.images_inbox / "phase-demo" / "a.tif"
    target.parent.mkdir(parents=True)
    shutil.copy(demo_images_dir / "set20.tif", target)
    detector.rescan()
    detector.tick(clock=0.0)
    (first,) = detector.tick(clock=1.5)
    shutil.copy(demo_images_dir / "set21.tif", target)
    detector.notice(target)
    detector.tick(clock=2.0)
    (second,) = detector.tick(clock=3.5)
    assert first != second and len(store.jobs("segment")) == 2
    assert store.latest_image("phase-demo", "a.tif").id == second


def test_hidden_temporary_and_misplaced_files_are_not_images(settings, store, demo_images_dir):
    detector = _detector(settings, store)
    project = settings.images_inbox / "phase-demo"
    project.mkdir()
    for name in (".hidden.tif", "copying.tif.part", "notes.txt"):
        shutil.copy(demo_images_dir / "set20.tif", project / name)
    shutil.copy(demo_images_dir / "set20.tif", settings.images_inbox / "no-project.tif")
    (settings.images_inbox / "bad project!").mkdir()
    shutil.copy(demo_images_dir / "set20.tif", settings.images_inbox / "bad project!" / "a.tif")
    detector.rescan()
    detector.tick(clock=0.0)
    assert detector.tick(clock=5.0) == [] and store.jobs() == []
    messages = " | ".join(event.message for event in store.events())
    assert "no-project.tif: images must be in a project folder" in messages
    assert "'bad project!' is not a valid project name" in messages


def test_a_name_that_is_not_utf8_is_reported_once_and_the_other_images_go_on(settings, store, demo_images_dir):
    detector = _detector(settings, store)
    project = settings.images_inbox / "phase-demo"
    project.mkdir()
    shutil.copy(demo_images_dir / "set20.tif", os.path.join(os.fsencode(project), b"caf\xe9.tif"))
    shutil.copy(demo_images_dir / "set20.tif", project / "plain.tif")
    detector.rescan()
    detector.tick(clock=0.0)
    (identifier,) = detector.tick(clock=5.0)
    assert store.image(identifier).relpath == "plain.tif"
    detector.rescan()
    detector.tick(clock=10.0)
    (event,) = [e for e in store.events() if "UTF-8" in e.message]
    assert "caf\\xe9.tif: the name 'caf\\xe9.tif' is not valid UTF-8 text" in event.message


def test_a_file_that_cannot_be_checked_does_not_stop_the_others(settings, store, demo_images_dir, monkeypatch):
    detector = _detector(settings, store)
    project = settings.images_inbox / "phase-demo"
    project.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(demo_images_dir / "set20.tif", project / name)
    real = store.latest_image

    def latest_image(project_name, relpath):
        if relpath == "a.tif":
            raise OSError("input/output error")
        return real(project_name, relpath)

    monkeypatch.setattr(store, "latest_image", latest_image)
    detector.rescan()
    detector.tick(clock=0.0)
    (identifier,) = detector.tick(clock=5.0)
    assert store.image(identifier).relpath == "b.tif"
    assert any("a.tif: could not be checked (OSError: input/output error)" in e.message for e in store.events())
