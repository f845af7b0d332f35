"""Writes the store promises as one transaction really are one: a failure half-way leaves nothing behind."""

import pytest

from appliance.store import Store


def test_entering_a_race_is_all_or_nothing(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    run_id = store.create_run(set_name="s", budget_seconds=60.0, top_n=2, seed=0)
    ranking = [("c-a", {"patch_size": 64}, 0.9), ("c-b", {"patch_size": 128}, 0.5)]
    trials = [(1, "c-a", {"patch_size": 64}, 0.9), (2, "c-b", {"patch_size": 128}, 0.5)]
    with pytest.raises(TypeError):
        store.enter_race(run_id, ranking, trials, {"n": 2, "bad": object()})  # the plan cannot be written
    assert store.ranking(run_id) == [] and store.trials(run_id) == [] and store.run(run_id).plan is None
    store.enter_race(run_id, ranking, trials, {"n": 2})
    assert [t.config_id for t in store.trials(run_id)] == ["c-a", "c-b"]
    assert len(store.ranking(run_id)) == 2 and store.run(run_id).plan == {"n": 2}


def test_a_finished_step_and_its_dropped_trials_are_one_write(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    run_id = store.create_run(set_name="s", budget_seconds=60.0, top_n=2, seed=0)
    store.enter_race(run_id, [], [(1, "c-a", {}, None), (2, "c-b", {}, None)], {"n": 2})
    with pytest.raises(TypeError):
        store.finish_step(run_id, 0, active=[1, 2], survivors=[object()], seconds=1.0)
    assert store.finished_steps(run_id) == []
    assert {t.status for t in store.trials(run_id)} == {"active"}


def test_a_model_whose_export_never_finished_is_replaced_not_kept_beside_the_new_one(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    run_id = store.create_run(set_name="s", budget_seconds=60.0, top_n=2, seed=0)
    store.register_model(run_id=run_id, set_name="s", config_id="c-a", path="")  # killed during its export
    other = store.create_run(set_name="t", budget_seconds=60.0, top_n=2, seed=0)
    kept = store.register_model(run_id=other, set_name="t", config_id="c-b", path="/models/b")
    new = store.register_model(run_id=run_id, set_name="s", config_id="c-a", path="")
    assert sorted(m.id for m in store.models()) == sorted([kept, new])


def test_a_write_transaction_waits_for_another_writer_instead_of_failing(tmp_path):
    """A deferred transaction that read first fails at once ("database is locked") when another process writes
    meanwhile; the store's transactions take the write lock when they begin, so the other writer waits instead."""
    import sqlite3
    import threading
    import time

    store = Store(tmp_path / "s.sqlite")
    other_errors = []

    def other_writer():
        connection = sqlite3.connect(tmp_path / "s.sqlite", timeout=10)
        try:
            connection.execute("insert into events (at, level, message) values ('now', 'info', 'other')")
            connection.commit()
        except sqlite3.Error as error:
            other_errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=other_writer)
    with store.transaction():
        store.events()  # a read first
        thread.start()
        time.sleep(0.3)  # the other writer tries now
        store.db.execute("insert into events (at, level, message) values ('now', 'info', 'ours')")
    thread.join()
    assert other_errors == []
    assert sorted(e.message for e in store.events()) == ["other", "ours"]
