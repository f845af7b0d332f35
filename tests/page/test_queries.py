"""The page's read-only queries against real stores: the typical day, 10,000 images, and a store without tables."""

from __future__ import annotations

import pytest
import sqlite_utils

from appliance.store import Store
from streamlit_app import actions, queries
from tests.page.seed import OTHER_PROJECT, PROJECT, seed_typical


def test_queries_on_the_typical_store(typical_store):
    store = Store(typical_store / "appliance.sqlite")
    assert queries.projects(store) == [OTHER_PROJECT, PROJECT]  # not the rejected set's project
    assert dict(((k, s), n) for k, s, n in queries.queue_counts(store))[("segment", "queued")] == 2
    assert queries.image_status_counts(store, project=PROJECT) == {"done": 6, "failed": 1}
    assert [r["relpath"] for r in queries.problem_images(store)] == ["2026-11-21/scan_0042.tif"]
    assert [j["kind"] for j in queries.failed_jobs(store)] == ["segment"]
    assert [r["set_name"] for r in queries.failed_runs(store)] == ["he_tissue"]
    assert {e["level"] for e in queries.recent_events(store, levels=("error",))} == {"error"}
    images = queries.recent_images(store, project=PROJECT)
    assert len(images) == 6 and all(i["overlay_path"] for i in images)
    rows = queries.measurement_rows(store, image_id=images[0]["id"])
    assert [r["relpath"] for r in rows] == [images[0]["relpath"]]


def test_results_queries_filter_and_aggregate_10000_images(big_store):
    store = Store(big_store / "appliance.sqlite")
    assert queries.measurement_count(store) == 20_006
    assert queries.measurement_count(store, project=OTHER_PROJECT) == 10_000
    assert len(queries.measurement_rows(store, limit=1000)) == 1000
    day = queries.recent_images(store, project=OTHER_PROJECT, limit=1)[0]["processed_at"][:10]
    one_day = queries.measurement_rows(store, project=OTHER_PROJECT, since=day)
    assert one_day and all(r["processed_at"] >= day for r in one_day)
    trends = queries.daily_trends(store, project=OTHER_PROJECT)
    assert {t["class"] for t in trends} == {"cell", "debris"}
    assert sum(t["images"] for t in trends if t["class"] == "cell") == 5000
    assert all(0 <= t["mean_confluence"] <= 1 for t in trends)


def test_queries_tolerate_a_store_without_the_service_tables(tmp_path):
    path = tmp_path / "old.sqlite"
    sqlite_utils.Database(path)["runs"].insert({"id": "r"})  # written before the service existed
    store = Store.__new__(Store)
    store.path, store.db = path, sqlite_utils.Database(path)
    assert queries.queue_counts(store) == []
    assert queries.projects(store) == []
    assert queries.recent_images(store) == []
    assert queries.measurement_rows(store) == []
    assert queries.measurement_count(store) == 0
    assert queries.daily_trends(store) == []
    assert queries.problem_images(store) == []
    assert queries.failed_jobs(store) == []
    assert queries.image_status_counts(store) == {}
    assert queries.recent_events(store) == []


def test_activate_refuses_what_it_cannot_do(tmp_path):
    seed_typical(tmp_path)
    store = Store(tmp_path / "appliance.sqlite")
    active = store.active_model(PROJECT)["id"]
    with pytest.raises(actions.ActionError, match="is already the active model"):
        actions.activate(store, project=PROJECT, model_id=active, note="manual activation")
    with pytest.raises(actions.ActionError, match="registered models: model-"):
        actions.activate(store, project=PROJECT, model_id="model-nope", note="manual activation")
    assert store.active_model(PROJECT)["id"] == active
