"""The hostile campaign that found the intake and result bugs, rerun against one real ``appliance run`` with other
names and contents: every class of bad input and fault at once, then a check that the service never crashed,
nothing is stuck, and no result is lost or duplicated.

Classes (issue "Nothing lost, nothing stuck"): a name that is not UTF-8 (a set folder and an image), a set whose
``READY`` arrives first and whose files follow in reverse order, a YAML alias bomb (in another shape), a budget that
is not a number, a non-regular file (a socket) in a set, a set name that is an option, two images that share a
stem, an image overwritten A → B → A, a preallocated half-written image, an unreadable image, an active model with
a bad ``model.json`` (then rolled back and its failed image retried), and SIGKILLs of the service mid-training
and mid-inference.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from appliance.data.io import read_image
from appliance.pipeline.predictor import OnnxPredictor
from appliance.service.files import file_hash
from appliance.service.intake import READY_FILE, REJECTED_FILE
from appliance.store import Store
from tests.service.e2e import ServiceProcess, drop, seed_throughput

TIMEOUT = 600
PROJECT = "phase-demo"
ENVIRONMENT = {
    "APPLIANCE_DEFAULT_BUDGET": "12s",
    "APPLIANCE_RACE_FLOOR_STEPS": "3",
    "APPLIANCE_QUALITY_GATE": "false",  # a 12-s model; the gate has its own tests
    "APPLIANCE_QUIET_PERIOD": "2s",
    "APPLIANCE_MAX_ATTEMPTS": "3",
}


def _csv_rows(data: Path) -> list[dict]:
    path = data / "results" / PROJECT / "measurements.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _cli(service: ServiceProcess, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "appliance.cli", *arguments]
    return subprocess.run(command, env=service.environment, capture_output=True, text=True, timeout=120)


def _bad_sets(source: Path, staging: Path) -> dict[bytes, str]:
    """Bad sets under new names, each with a word its rejection must contain (keyed by folder name, as bytes)."""
    made = {}

    def copy(name: bytes) -> Path:
        root = Path(os.fsdecode(os.path.join(os.fsencode(staging), name)))
        shutil.copytree(source, root)
        return root

    copy(b"plaque_\xe9t\xe9")  # Latin-1 bytes: not UTF-8
    made[b"plaque_\xe9t\xe9"] = "is not safe: use 1-64 letters"  # the name rule rejects it before its bytes matter
    root = copy(b"latin1_files")
    for folder in (b"images", b"masks"):
        folder_path = os.path.join(os.fsencode(root), folder)
        os.rename(os.path.join(folder_path, b"set3.png"), os.path.join(folder_path, b"c\xf4te.png"))
    made[b"latin1_files"] = "is not valid UTF-8 text"
    root = copy(b"nested_aliases")
    lines = ["x: &x [{k: v}, {k: v}, {k: v}, {k: v}, {k: v}, {k: v}, {k: v}, {k: v}]"]
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 8)}]" for a, b in zip("xyzw", "yzwv", strict=True)]
    (root / "dataset.yaml").write_text("\n".join(lines) + "\nproject: phase-demo\n")
    made[b"nested_aliases"] = "aliases (*name) are not allowed"
    root = copy(b"budget_nan")
    with open(root / "dataset.yaml", "a") as handle:
        handle.write("budget_minutes: .nan\n")
    made[b"budget_nan"] = "budget_minutes: must be a positive number"
    root = copy(b"socket_in_set")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "masks" / "live.png"))
    server.close()
    made[b"socket_in_set"] = "masks/live.png: is not a regular file"
    copy(b"--force")
    made[b"--force"] = "the set folder name '--force' is not safe"
    return made


def _drop_ready_first_in_reverse_order(source: Path, target: Path) -> None:
    """rsync-like, backwards: READY first, then every file in reverse order, a little apart."""
    target.mkdir(parents=True)
    (target / READY_FILE).touch()
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    for relative in reversed(files):
        time.sleep(0.05)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / relative, target / relative)


def _write_preallocated(path: Path, payload: bytes, *, pause: float) -> None:
    """A file that is full size on disk at once (preallocated), 40 % written, then the rest after a pause."""
    with open(path, "wb") as handle:
        handle.truncate(len(payload))
        handle.write(payload[: len(payload) * 4 // 10])
        handle.flush()
        time.sleep(pause)
        handle.write(payload[len(payload) * 4 // 10 :])


@pytest.mark.slow
def test_a_hostile_campaign_crashes_nothing_leaves_nothing_stuck_and_loses_no_result(
    tmp_path, demo_set_dir, demo_images_dir, monkeypatch
):
    data = tmp_path / "data"
    seed_throughput(data / "appliance.sqlite", monkeypatch)
    service = ServiceProcess(data, **ENVIRONMENT).start()
    labelled = data / "inbox" / "labelled"
    images = data / "inbox" / "images" / PROJECT
    sources = {p.stem: p for p in sorted(demo_images_dir.glob("*.tif"))}  # set20, set21, set22
    a, b, c = (sources[name] for name in sorted(sources))
    staging = tmp_path / "staging"
    staging.mkdir()
    rejected = _bad_sets(demo_set_dir, staging)
    try:
        # images before any model: they wait; one name is not UTF-8, one file is not an image at all
        drop(a, images / "well.tif")
        iio.imwrite(images / "well.png", tifffile.imread(b))  # x.png beside x.tif: one stem, two inputs
        drop(c, images / "plate" / "well.tif")  # the same stem in a subfolder
        (images / "broken.tif").write_bytes(b"II*\x00" + os.urandom(3000))
        shutil.copy(a, os.path.join(os.fsencode(images), b"frame_\xff\xfe.tif"))
        for name in sorted(rejected):
            os.rename(os.path.join(os.fsencode(staging), name), os.path.join(os.fsencode(labelled), name))
        _drop_ready_first_in_reverse_order(demo_set_dir, labelled / "phase_cells_reversed")

        burst = [f"burst/{i}.tif" for i in range(6)]  # waiting with the others, so that inference can be interrupted
        for index, name in enumerate(burst):
            drop((a, b, c)[index % 3], images / name)

        # killed mid-training (its training child dies with it), restarted: the run resumes
        service.wait_for(lambda: service.rows("select 1 from step_results"), TIMEOUT, "training under way")
        service.kill()
        time.sleep(1)
        assert str(data) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        service.start()
        # killed again once inference has begun, restarted: every image is segmented once
        service.wait_for(lambda: service.rows("select 1 from images where status = 'done'"), TIMEOUT, "inference")
        service.kill()
        done_before = service.rows("select count(*) from images where status = 'done'")[0][0]
        service.start()
        service.wait_for(
            lambda: service.rows(f"select active_model_id from projects where name = '{PROJECT}'"),
            TIMEOUT,
            "the model to be activated",
        )
        ((good_model, good_path),) = service.rows("select id, path from models")

        # A → B → A on one path, and a preallocated half-written image
        def segmented(relpath: str, content: Path):
            latest = service.rows(
                "select status, content_hash from images where relpath = ? order by landed_at desc, rowid desc limit 1",
                (relpath,),
            )
            return latest == [("done", file_hash(content))]

        for content in (a, b, a):
            shutil.copy(content, images / ".timelapse.tif.part")  # hidden while it is copied
            os.replace(images / ".timelapse.tif.part", images / "timelapse.tif")
            service.wait_for(lambda content=content: segmented("timelapse.tif", content), TIMEOUT, "timelapse.tif")
        _write_preallocated(images / "prealloc.tif", b.read_bytes(), pause=3.0)
        service.wait_for(lambda: segmented("prealloc.tif", b), TIMEOUT, "prealloc.tif with its final content")

        # an admin activates a copy of the model with a broken model.json; its image fails, ends failed; roll back
        # and retry it
        broken = data / "models" / "hand-made"
        shutil.copytree(good_path, broken)
        metadata = json.loads((broken / "model.json").read_text())
        (broken / "model.json").write_text(json.dumps({**metadata, "tiles": "auto"}))
        store = Store(data / "appliance.sqlite")
        run_id = store.create_run(set_name="hand_made", set_dir=str(demo_set_dir))
        broken_id = store.register_model(run_id=run_id, set_name="hand_made", path="")
        store.finish_export(run_id, broken_id, str(broken))
        assert _cli(service, "activate", PROJECT, broken_id).returncode == 0
        drop(c, images / "after-swap.tif")
        service.wait_for(
            lambda: service.rows("select 1 from jobs where status = 'failed' and error like '%tiles%'"),
            TIMEOUT,
            "the image job of the broken model to end failed",
        )
        ((failed_job, attempts, error),) = service.rows(
            "select id, attempts, error from jobs where status = 'failed' and error like '%tiles%'"
        )
        assert attempts <= 3 and "model.json" in error, error
        assert _cli(service, "activate", PROJECT, good_model).returncode == 0
        retried = _cli(service, "retry", str(failed_job))
        assert retried.returncode == 0, retried.stderr

        good = ["well.tif", "well.png", "plate/well.tif", *burst, "timelapse.tif", "prealloc.tif", "after-swap.tif"]
        service.wait_for(
            lambda: {r["image"] for r in _csv_rows(data)} >= set(good), TIMEOUT, "every good image in the CSV"
        )
        service.wait_for(
            lambda: not service.rows("select 1 from jobs where status in ('queued', 'running')"),
            TIMEOUT,
            "the queue to drain",
        )
        time.sleep(6)  # a rescan: nothing decided or segmented twice
        code, report = service.health()
        assert code == 0, report
    finally:
        assert service.terminate() == 0, service.log()  # it never crashed: a clean stop after everything

    store = Store(data / "appliance.sqlite")
    assert store.db.execute("pragma integrity_check").fetchall() == [("ok",)]
    # intake: every bad set decided once, with its reason, briefly; the reversed set trained exactly once
    for name, reason in rejected.items():
        folder = Path(os.fsdecode(os.path.join(os.fsencode(labelled), name)))
        note = folder / REJECTED_FILE
        if note.is_file():
            assert reason in note.read_text(errors="replace") and note.stat().st_size < 20_000, name
        else:  # a folder whose name cannot be written back as text is reported as an event instead
            assert any(reason in e.message for e in store.events()), name
    ((train_job,),) = [store.jobs(kind="train")]
    assert train_job.status == "done" and train_job.attempts in (2, 3)  # the first kill spent one
    assert "resuming run" in (data / "logs" / f"train-job-{train_job.id}.log").read_text()
    assert done_before < len(good)  # the second kill did interrupt inference
    assert any("frame_" in e.message and "rename the file" in e.message for e in store.events())
    # results: one row set per good image path, none for the bad ones, outputs unique per input
    rows = _csv_rows(data)
    assert Counter(r["image"] for r in rows) == Counter(good)  # one class: one row per image
    masks = sorted(p.relative_to(data / "results" / PROJECT) for p in (data / "results" / PROJECT).rglob("*_mask.tif"))
    assert len(masks) == len(set(masks)) == len(good), masks
    predictor = OnnxPredictor(good_path)
    final = {"timelapse.tif": a, "prealloc.tif": b}
    for name, content in final.items():
        mask = tifffile.imread(data / "results" / PROJECT / name.replace(".tif", "_mask.tif"))
        assert np.array_equal(mask, predictor.predict(read_image(content))), name  # the results of what is there
    failed = store.jobs(status="failed")  # only the image that is not an image
    assert len(failed) == 1 and "broken.tif" in failed[0].error, failed
    assert not store.jobs(status="queued") and not store.jobs(status="running")
    assert not list(data.rglob("*.tmp"))  # no temporary file left behind
