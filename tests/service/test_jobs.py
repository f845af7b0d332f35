"""What a training job carries from intake to training."""

import json

from appliance.service.jobs import TrainingRequest


def test_a_training_request_survives_the_queue_and_reads_older_payloads():
    request = TrainingRequest("/d/sets/a-1", "a", "hela", 90.0, content_hash="c0ffee", inbox_path="/in/a")
    assert TrainingRequest.from_payload(json.dumps(request.to_payload())) == request
    older = {"set_dir": "/d/sets/a-1", "set_name": "a", "project": "hela", "budget": 90.0, "retired_key": 1}
    assert TrainingRequest.from_payload(older) == TrainingRequest("/d/sets/a-1", "a", "hela", 90.0)
