"""The store's write methods: named arguments and schema-checked columns, never SQL built from arbitrary keywords;
JSON columns encoded and decoded inside."""

import dataclasses

import pytest

from appliance.store import SCHEMA, RunStatus, Store
from appliance.store.rows import ROWS, Job, Run


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
    assert store.run(run_id).status == RunStatus.CREATED


def test_intake_problems_go_in_as_a_list_and_come_back_as_one(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    problems = [{"file": "masks/a.png", "message": "no image a.png for this mask"}]
    store.record_intake(name="plate", inbox_path="/in/plate", signature="s", content_hash="h", status="rejected",
                        problems=problems)  # fmt: skip
    assert store.last_intake("/in/plate").problems == problems
    assert store.intakes()[0].problems == problems
    store.record_intake(name="plate", inbox_path="/in/plate", signature="t", content_hash="h", status="accepted")
    assert store.last_intake("/in/plate").problems == []


def test_json_columns_are_written_from_dicts_and_read_back_as_them(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    split = {"train": ["a"], "validation": ["b"], "test": ["c"]}
    run_id = store.create_run(set_name="s", split=split)
    store.update_run(run_id, plan={"n": 1, "schedule": {"active": [1]}})
    store.add_trial(run_id, 1, "c-a", {"patch_size": 64}, None)
    store.finish_step(run_id, 0, active=[1], survivors=[1], seconds=1.0)
    assert store.run(run_id).split == split and store.runs()[0].plan["schedule"] == {"active": [1]}
    assert store.trials(run_id)[0].config == {"patch_size": 64}
    assert store.finished_steps(run_id)[0].survivors == [1]
    assert not store.finished_steps(run_id)[0].decided  # one trial: the winner's last stretch, nothing chosen
    store.finish_step(run_id, 1, active=[1, 2], survivors=[2], seconds=1.0)
    assert store.finished_steps(run_id)[1].decided
    store.update_run(run_id, plan="not json")  # text from elsewhere is kept as written and reads as None
    assert store.run(run_id).plan is None
    store.record_step_result(run_id, 0, 1, validation_iou=0.5, validation_iou_per_class=[0.9, 0.1])
    assert store.step_results(run_id)[0].validation_iou_per_class == [0.9, 0.1]


def test_a_jobs_payload_and_result_come_back_as_dicts(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    job_id, _ = store.enqueue("train", "k", payload={"set_dir": "/sets/a", "budget_seconds": 60.0}, project="p")
    job = store.claim("train", "w", lease_seconds=60)
    assert isinstance(job, Job) and job.payload == {"set_dir": "/sets/a", "budget_seconds": 60.0}
    assert store.complete(job_id, "w", {"model_id": "m"}) and store.job(job_id).result == {"model_id": "m"}
    store.enqueue("train", "other")
    assert store.jobs()[1].payload == {}


def test_each_table_is_declared_once_by_its_row_class():
    assert [cls.table for cls in ROWS] == list(SCHEMA)
    for cls in ROWS:
        assert list(SCHEMA[cls.table][0]) == [field.name for field in dataclasses.fields(cls)], cls.table
    assert SCHEMA["runs"][0]["split"] is str and SCHEMA["runs"][0]["budget_seconds"] is float  # JSON is text
    run = Run.from_row({"id": "r", "status": "created", "a_column_from_a_newer_version": 1})
    assert run == Run(id="r", status="created")  # unknown columns ignored, missing ones None
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "failed"  # rows are read-only: writes go through the store


def test_an_activation_decision_names_the_models_project(tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    run_id = store.create_run(set_name="s")
    model_id = store.register_model(run_id=run_id, set_name="s", path="/m", project="s")
    store.record_activation(project="hela", model_id=model_id, previous_model_id=None, new_score=None,
                            previous_score=None, activated=False, reason="not better than Otsu")  # fmt: skip
    assert store.model(model_id).project == "hela" and store.active_model("hela") is None
