"""The store's schema version: an older data dir opens and is upgraded in place; a newer one is refused."""

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from appliance.store import SCHEMA, SCHEMA_VERSION, NewerStoreError, Store

SAVED = Path(__file__).parent / "store-schema-1.sqlite.gz"
"""A store written by the appliance before schema versions (commit 9966da9, ``tests/page/seed.py``'s typical day)."""

FINGERPRINTS = {2: "8afde472997c1a89", 3: "36ab0fd75c05bbdd", 4: "1b07945d3fa7f9f4", 5: "f231073d4b5a0a99"}
"""SCHEMA's fingerprint at each version: a change to SCHEMA without a new SCHEMA_VERSION fails here."""


def fingerprint() -> str:
    plain = {name: ({c: t.__name__ for c, t in columns.items()}, pk) for name, (columns, pk) in SCHEMA.items()}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def test_a_schema_change_comes_with_a_new_version():
    assert fingerprint() == FINGERPRINTS[SCHEMA_VERSION], "SCHEMA changed: bump SCHEMA_VERSION and add its fingerprint"


def test_a_store_from_before_schema_versions_is_upgraded_in_place_with_its_rows(tmp_path):
    path = tmp_path / "appliance.sqlite"
    with gzip.open(SAVED) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    for name, (columns, _) in SCHEMA.items():
        assert set(columns) <= set(store.db[name].columns_dict), name
    assert store.db.execute("pragma integrity_check").fetchall() == [("ok",)]
    assert [r.status for r in store.runs()].count("finished") == 2
    assert store.projects() == ["nuclei-screen", "phase-demo"]
    assert store.active_model("phase-demo") is not None
    decisions = store.activations("phase-demo")
    assert decisions and all(d.baseline_score is None for d in decisions)  # unknown for old decisions
    assert all(m.project for m in store.models())  # filled in from what the old store knew
    assert store.model(store.active_model("phase-demo").id).project == "phase-demo"
    store.close()
    assert Store(path).schema_version() == SCHEMA_VERSION  # the second open changes nothing


def test_a_store_written_by_a_newer_appliance_is_refused_untouched(tmp_path):
    path = tmp_path / "appliance.sqlite"
    Store(path).db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(NewerStoreError, match=f"store schema {SCHEMA_VERSION + 1}; this version knows up to"):
        Store(path)
    assert path.read_bytes() == before


def test_upgrading_to_4_gives_each_model_its_project_from_its_decision_then_its_intake_then_its_set(tmp_path):
    path = tmp_path / "appliance.sqlite"
    store = Store(path)
    runs = {name: store.create_run(set_name=name, set_dir=f"/sets/{name}") for name in ("a", "b", "c")}
    models = {name: store.register_model(run_id=run, set_name=name, path=f"/m/{name}") for name, run in runs.items()}
    store.record_intake(
        name="b", inbox_path="/inbox/b", signature="s", content_hash="h", status="accepted", project="plates",
        store_dir="/sets/b",
    )  # fmt: skip
    store.record_activation(
        project="phase",
        model_id=models["a"],
        previous_model_id=None,
        new_score=0.5,
        previous_score=None,
        activated=True,
        reason="first model",
    )
    store.db.execute("update models set project = null")
    store.db.execute("update runs set project = null")
    store.db.execute("PRAGMA user_version = 3")
    store.close()
    upgraded = Store(path)
    assert {m.set_name: m.project for m in upgraded.models()} == {"a": "phase", "b": "plates", "c": "c"}
    assert upgraded.run(runs["b"]).project == "plates"
