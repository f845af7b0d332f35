"""The service SIGKILLed (with its training child) at every stage of a training job and of an image job, then
restarted: each job finishes exactly once, nothing is lost or duplicated, no orphan rows or files remain, and the
store passes SQLite's integrity check. ``appliance/faults.py`` holds the kill points; each fires once."""

import csv
import os
import sqlite3
import time
from collections import Counter

import pytest

from appliance.faults import FAULT_LOG_VARIABLE, FAULTS_VARIABLE
from tests.service.e2e import ServiceProcess, drop, seed_throughput

TRAINING_STAGES = (
    "ranked",  # ranking stored, the race not entered yet
    "halving-step-0-slice",  # a slice's result and checkpoint written, the step not finished
    "halving-step-0",  # a step decided, the losers' checkpoints not deleted yet
    "tested",  # the winner tested, its QC not written yet
    "registered",  # a registry row without files
    "exported",  # files written, the row not pointing at them yet
    "trained",  # the run finished, the activation rule not applied
    "activated",  # the model activated, the job not marked done
)
IMAGE_STAGES = ("image-written", "image-finished")
TIMEOUT = 900


def _csv_rows(data_dir):
    path = data_dir / "results" / "phase-demo" / "measurements.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_kill_at_any_stage_loses_and_duplicates_nothing(tmp_path, demo_set_dir, demo_images_dir, monkeypatch):
    data = tmp_path / "data"
    seed_throughput(data / "appliance.sqlite", monkeypatch)
    fired_log = tmp_path / "fired.txt"
    service = ServiceProcess(
        data,
        **{
            FAULTS_VARIABLE: ",".join(TRAINING_STAGES + IMAGE_STAGES),
            FAULT_LOG_VARIABLE: str(fired_log),
            "APPLIANCE_DEFAULT_BUDGET": "12s",
            "APPLIANCE_MAX_ATTEMPTS": "20",  # every kill during training spends an attempt
            "APPLIANCE_QUIET_PERIOD": "1s",
            "APPLIANCE_RACE_FLOOR_STEPS": "3",  # a race of two even on 12 s
            "APPLIANCE_QUALITY_GATE": "false",  # a 12-s model need not beat Otsu: what is tested is the kills
        },
    )
    images = [f"{source.stem}.tif" for source in sorted(demo_images_dir.glob("*.tif"))[:2]]
    for name in images:
        drop(demo_images_dir / name, data / "inbox" / "images" / "phase-demo" / name)
    drop(demo_set_dir, data / "inbox" / "labelled" / "phase_cells")

    def finished() -> bool:
        done = service.rows("select count(*) from images where status = 'done'")
        train = service.rows("select status from jobs where kind = 'train'")
        return bool(done) and done[0][0] == len(images) and train == [("done",)] and len(_csv_rows(data)) == 2

    deadline = time.monotonic() + TIMEOUT
    kills = 0
    while True:
        assert time.monotonic() < deadline, f"not finished after {kills} kills:\n{service.log()}"
        service.start(wait_healthy=False)
        while service.process.poll() is None and not finished():
            assert time.monotonic() < deadline, f"not finished after {kills} kills:\n{service.log()}"
            time.sleep(0.2)
        if service.process.poll() is None:
            break
        assert service.process.returncode == -9, service.log()
        kills += 1
    time.sleep(3)  # let anything still in flight land before looking
    assert service.terminate() == 0, service.log()

    fired = fired_log.read_text().split()
    assert sorted(fired) == sorted(TRAINING_STAGES + IMAGE_STAGES) and kills == len(fired)
    assert service.rows("pragma integrity_check") == [("ok",)]
    assert service.rows("select status from runs") == [("finished",)]
    ((model_id, path),) = service.rows("select id, path from models")
    assert path and os.path.isfile(os.path.join(path, "model.onnx"))
    assert sorted(p.name for p in (data / "models").iterdir()) == [model_id]  # no orphan model folders
    assert service.rows("select model_id, activated from activations") == [(model_id, 1)]
    assert service.rows("select status, count(*) from jobs group by status") == [("done", 3)]
    rows = _csv_rows(data)
    assert Counter(row["image"] for row in rows) == Counter(images)  # one row per image and class: one class
    assert {row["model_id"] for row in rows} == {model_id}
    assert service.rows("select count(*) from measurements") == [(len(images),)]
    leftovers = [p for p in data.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".staging-" in p.name]
    assert leftovers == []
    connection = sqlite3.connect(data / "appliance.sqlite")
    assert connection.execute("select count(*) from models where path = '' or path is null").fetchone() == (0,)
    connection.close()
