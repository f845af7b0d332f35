"""The store's write methods: named arguments and schema-checked columns, never SQL built from arbitrary keywords;
JSON columns encoded and decoded inside."""

import pytest

from appliance.store import RunStatus, Store


def test_a_misspelt_column_is_refused_with_the_tables_columns(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    run_id = store.create_run(set_name="s")
    with pytest.raises(TypeError, match="runs has no column statsu; its columns: id, set_name"):
        store.update_run(run_id, statsu=RunStatus.HALVING)
    with pytest.raises(TypeError, match="images has no column x;"):
        store.add_image(id="i", project="p", relpath="a.tif", **{"x": 1})
    with pytest.raises(TypeError, match="step_results has no column validaton_iou"):
        store.record_step_result(run_id, 0, 1, validaton_iou=0.5)
    with pytest.raises(TypeError):
        store.create_run(set_name="s", budget=60)  # the column is budget_seconds
    assert store.run(run_id)["status"] == RunStatus.CREATED


def test_intake_problems_go_in_as_a_list_and_come_back_as_one(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    problems = [{"file": "masks/a.png", "message": "no image a.png for this mask"}]
    store.record_intake(name="plate", inbox_path="/in/plate", signature="s", content_hash="h", status="rejected",
                        problems=problems)  # fmt: skip
    assert store.last_intake("/in/plate")["problems"] == problems
    assert store.intakes()[0]["problems"] == problems
    store.record_intake(name="plate", inbox_path="/in/plate", signature="t", content_hash="h", status="accepted")
    assert store.last_intake("/in/plate")["problems"] == []


def test_json_columns_are_written_from_dicts_and_read_back_as_them(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    split = {"train": ["a"], "validation": ["b"], "test": ["c"]}
    run_id = store.create_run(set_name="s", split=split)
    store.update_run(run_id, plan={"n": 1, "schedule": {"active": [1]}})
    store.add_trial(run_id, 1, "c-a", {"patch_size": 64}, None)
    store.finish_step(run_id, 0, active=[1], survivors=[1], seconds=1.0)
    assert store.run(run_id)["split"] == split and store.runs()[0]["plan"]["schedule"] == {"active": [1]}
    assert store.trials(run_id)[0]["config"] == {"patch_size": 64}
    assert store.finished_steps(run_id)[0]["survivors"] == [1]
    store.update_run(run_id, plan="not json")  # text from elsewhere is kept as written and reads as None
    assert store.run(run_id)["plan"] is None


def test_an_activation_decision_names_the_models_project(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    run_id = store.create_run(set_name="s")
    model_id = store.register_model(run_id=run_id, set_name="s", path="/m", project="s")
    store.record_activation(project="hela", model_id=model_id, previous_model_id=None, new_score=None,
                            previous_score=None, activated=False, reason="not better than Otsu")  # fmt: skip
    assert store.model(model_id)["project"] == "hela" and store.active_model("hela") is None
