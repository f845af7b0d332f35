"""Model activation: which model serves a project's images.

A project's first model is activated. A newer model is activated only when, on the test split of the set it was
trained on, it scores at least as well (mean foreground IoU) as the active model does on the same images; both are
evaluated here with ONNX Runtime, the way they would serve. The decision and both numbers are stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.data.labelled_set import load_labelled_set
from appliance.errors import ApplianceError
from appliance.pipeline.evaluation import evaluate
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.workflow import read_split_images
from appliance.store import Store


@dataclass(frozen=True)
class Decision:
    project: str
    model_id: str
    previous_model_id: str | None
    new_score: float | None
    previous_score: float | None
    activated: bool
    reason: str


def score_on_split(model_dir: str | Path, set_dir: str | Path, test_stems: list[str]) -> float:
    """Mean foreground IoU of an exported model on the given images of a labelled set."""
    labelled_set = load_labelled_set(set_dir)
    images, masks = read_split_images(labelled_set, tuple(test_stems))
    predictor = OnnxPredictor(model_dir)
    return evaluate(predictor.predict, images, masks, num_classes=labelled_set.num_classes).mean_foreground_iou


def decide_activation(store: Store, *, model_id: str, project: str) -> Decision:
    """Apply the activation rule to a freshly registered model and store the decision (once per model)."""
    earlier = store.decision_for(model_id)
    if earlier is not None:
        return Decision(
            **{**{k: earlier[k] for k in Decision.__dataclass_fields__}, "activated": bool(earlier["activated"])}
        )
    model = store.model(model_id)
    run = store.run(model["run_id"])
    test_stems = json.loads(run["split"])["test"]
    new_score = score_on_split(model["path"], run["set_dir"], test_stems)
    active = store.active_model(project)
    previous_score = None
    if active is None:
        activated, reason = True, "first model of the project"
    else:
        try:
            previous_score = score_on_split(active["path"], run["set_dir"], test_stems)
        except ApplianceError as error:
            activated, reason = True, f"the active model {active['id']} cannot segment this set ({error})"
        else:
            activated = new_score >= previous_score
            comparison = ">=" if activated else "<"
            reason = (
                f"test IoU on {len(test_stems)} image(s) of {run['set_name']}: new {new_score:.3f} {comparison} "
                f"active {previous_score:.3f}"
            )
    decision = Decision(
        project=project,
        model_id=model_id,
        previous_model_id=None if active is None else active["id"],
        new_score=new_score,
        previous_score=previous_score,
        activated=activated,
        reason=reason,
    )
    store.record_activation(**{k: getattr(decision, k) for k in Decision.__dataclass_fields__})
    verb = "activated" if activated else "not activated"
    store.event(model["run_id"], f"model {model_id} {verb} for project {project}: {reason}")
    return decision
