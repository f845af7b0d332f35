"""What a training job carries from intake to training."""

from appliance.service.jobs import TRAIN, TrainingRequest
from appliance.store import Store


def test_a_training_request_survives_the_queue_and_reads_older_payloads(tmp_path):
    request = TrainingRequest("/d/sets/a-1", "a", "hela", 90.0, content_hash="c0ffee", inbox_path="/in/a")
    store = Store(tmp_path / "appliance.sqlite")
    store.enqueue(TRAIN, "k", payload=request.to_payload(), project="hela")
    assert TrainingRequest.from_payload(store.claim(TRAIN, "w", lease_seconds=60).payload) == request
    older = {"set_dir": "/d/sets/a-1", "set_name": "a", "project": "hela", "budget": 90.0, "retired_key": 1}
    assert TrainingRequest.from_payload(older) == TrainingRequest("/d/sets/a-1", "a", "hela", 90.0)
