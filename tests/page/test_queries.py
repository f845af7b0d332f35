"""The page's read-only queries against real stores: the typical day, 10,000 images, and a store without tables."""

from __future__ import annotations

import pytest
import sqlite_utils

from appliance.store import Store
from streamlit_app import actions
from tests.page.seed import OTHER_PROJECT, PROJECT, seed_typical


def test_queries_on_the_typical_store(typical_store):
    store = Store(typical_store / "appliance.sqlite")
    assert store.projects() == [OTHER_PROJECT, PROJECT]  # not the rejected set's project
    assert dict(((k, s), n) for k, s, n in store.queue_counts())[("segment", "queued")] == 2
    assert store.image_status_counts(project=PROJECT) == {"done": 6, "failed": 1}
    assert [r.relpath for r in store.problem_images()] == ["2026-11-21/scan_0042.tif"]
    assert [j.kind for j in store.failed_jobs()] == ["segment"]
    assert [r.set_name for r in store.failed_runs()] == ["he_tissue"]
    assert {e.level for e in store.recent_events(levels=("error",))} == {"error"}
    images = store.recent_images(project=PROJECT)
    assert len(images) == 6 and all(i.overlay_path for i in images)
    rows = store.measurement_rows(image_id=images[0].id)
    assert [r["relpath"] for r in rows] == [images[0].relpath]


def test_results_queries_filter_and_aggregate_10000_images(big_store):
    store = Store(big_store / "appliance.sqlite")
    assert store.measurement_count() == 20_006
    assert store.measurement_count(project=OTHER_PROJECT) == 10_000
    assert len(store.measurement_rows(limit=1000)) == 1000
    day = store.recent_images(project=OTHER_PROJECT, limit=1)[0].processed_at[:10]
    one_day = store.measurement_rows(project=OTHER_PROJECT, since=day)
    assert one_day and all(r["processed_at"] >= day for r in one_day)
    trends = store.daily_trends(project=OTHER_PROJECT)
    assert {t["class"] for t in trends} == {"cell", "debris"}
    assert sum(t["images"] for t in trends if t["class"] == "cell") == 5000
    assert all(0 <= t["mean_confluence"] <= 1 for t in trends)


def test_a_store_from_before_the_service_opens_with_empty_pages(tmp_path):
    path = tmp_path / "old.sqlite"
    sqlite_utils.Database(path)["runs"].insert({"id": "r"})  # written before the service existed
    store = Store(path)  # opening upgrades it in place: the service's tables exist, empty
    assert [r.id for r in store.runs()] == ["r"]
    assert store.queue_counts() == []
    assert store.projects() == []
    assert store.recent_images() == []
    assert store.measurement_rows() == []
    assert store.measurement_count() == 0
    assert store.daily_trends() == []
    assert store.problem_images() == []
    assert store.failed_jobs() == []
    assert store.image_status_counts() == {}
    assert store.recent_events() == []


def test_activate_refuses_what_it_cannot_do(tmp_path):
    seed_typical(tmp_path)
    store = Store(tmp_path / "appliance.sqlite")
    active = store.active_model(PROJECT).id
    with pytest.raises(actions.ActionError, match="is already the active model"):
        actions.activate(store, project=PROJECT, model_id=active, note="manual activation")
    with pytest.raises(actions.ActionError, match="registered models: model-"):
        actions.activate(store, project=PROJECT, model_id="model-nope", note="manual activation")
    assert store.active_model(PROJECT).id == active
