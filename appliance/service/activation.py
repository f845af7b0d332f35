"""Model activation: which model serves a project's images.

A newly trained model must first earn activation: on the test split of the set it was trained on, its mean IoU
with the background must beat Otsu thresholding's (:mod:`appliance.pipeline.baselines`, its bands mapped to classes
on the training split) — a model that called every pixel "cell" after a one-minute run scored 0.301 foreground IoU
and 0.03 background IoU, and was activated without this gate. Then a project's first model is activated; a newer
one only when it scores at least as well (mean foreground IoU) as the active model on the same test images. Every
model is evaluated here with ONNX Runtime, the way it would serve. The decision, its numbers and its reason are
stored; a model that was not activated can be activated by hand (:func:`activate_by_hand`: the Models page, or
``appliance activate``). ``Settings.quality_gate = false`` turns the baseline check off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.data.labelled_set import LabelledSet, load_labelled_set, read_split_images
from appliance.errors import ApplianceError
from appliance.pipeline.baselines import fit_otsu_baseline
from appliance.pipeline.evaluation import Evaluation, evaluate
from appliance.store import Store

BASELINE_FIT_IMAGES = 32
"""Training images the Otsu baseline learns its band → class map from (evenly spread over the training split)."""


class ActivationError(ApplianceError, ValueError):
    """A manual activation that cannot be done as asked (the message says why)."""


@dataclass(frozen=True)
class Decision:
    project: str
    model_id: str
    previous_model_id: str | None
    new_score: float | None
    previous_score: float | None
    activated: bool
    reason: str
    baseline_score: float | None = None  # Otsu's test mean IoU with background, when the gate was applied
    model_mean_iou: float | None = None  # the model's, on the same images


def evaluate_model(
    model_dir: str | Path, images: list, masks: list, *, num_classes: int, engine_cache: Path | None = None
) -> Evaluation:
    """An exported model's scores on images of a labelled set (ONNX Runtime, as it serves)."""
    from appliance.pipeline.predictor import OnnxPredictor  # ONNX Runtime: not for the page's manual activation

    predictor = OnnxPredictor(model_dir, engine_cache=engine_cache)
    return evaluate(predictor.predict, images, masks, num_classes=num_classes)


def baseline_on_split(labelled_set: LabelledSet, train_stems: list[str], images: list, masks: list) -> Evaluation:
    """Otsu thresholding's scores on the given test images, its band → class map learnt from (up to
    :data:`BASELINE_FIT_IMAGES` of) the training images."""
    step = max(1, len(train_stems) // BASELINE_FIT_IMAGES)
    fit_images, fit_masks = read_split_images(labelled_set, tuple(train_stems[::step][:BASELINE_FIT_IMAGES]))
    otsu = fit_otsu_baseline(fit_images, fit_masks, num_classes=labelled_set.num_classes)
    return evaluate(otsu, images, masks, num_classes=labelled_set.num_classes)


def decide_activation(
    store: Store, *, model_id: str, project: str, quality_gate: bool = True, engine_cache: Path | None = None
) -> Decision:
    """Apply the activation rule to a freshly registered model and store the decision (once per model).

    ``engine_cache``: the TensorRT engine folder of the served models (``Settings.engine_cache_dir``).
    """
    earlier = store.decision_for(model_id)
    if earlier is not None:
        return Decision(
            **{**{k: getattr(earlier, k) for k in Decision.__dataclass_fields__}, "activated": bool(earlier.activated)}
        )
    model = store.model(model_id)
    run = store.run(model.run_id)
    split = run.split
    test_stems = split["test"]
    labelled_set = load_labelled_set(run.set_dir)  # validated, and its test images read, once for every score
    images, masks = read_split_images(labelled_set, tuple(test_stems))
    k = labelled_set.num_classes
    evaluation = evaluate_model(model.path, images, masks, num_classes=k, engine_cache=engine_cache)
    new_score = evaluation.mean_foreground_iou
    active = store.active_model(project)
    previous_score = baseline_score = None
    by_hand = f"activate it by hand on the Models page or with `appliance activate {project} {model_id}`"
    if quality_gate:
        baseline_score = baseline_on_split(labelled_set, split["train"], images, masks).mean_iou
    if quality_gate and evaluation.mean_iou <= baseline_score:
        activated = False
        reason = (
            f"not better than Otsu thresholding: test mean IoU with background on {len(test_stems)} image(s) of "
            f"{run.set_name} {evaluation.mean_iou:.3f} <= Otsu's {baseline_score:.3f}. Registered, not active; "
            f"train it with a larger budget, or {by_hand}"
        )
    elif active is None:
        activated, reason = True, "first model of the project"
    else:
        try:
            previous = evaluate_model(active.path, images, masks, num_classes=k, engine_cache=engine_cache)
            previous_score = previous.mean_foreground_iou
        except ApplianceError as error:
            activated, reason = True, f"the active model {active.id} cannot segment this set ({error})"
        else:
            activated = new_score >= previous_score
            comparison = ">=" if activated else "<"
            reason = (
                f"test IoU on {len(test_stems)} image(s) of {run.set_name}: new {new_score:.3f} {comparison} "
                f"active {previous_score:.3f}"
            )
            if not activated:
                reason += f"; {by_hand}"
    if activated and quality_gate:
        reason += (
            f" (beats Otsu thresholding: mean IoU with background {evaluation.mean_iou:.3f} > {baseline_score:.3f})"
        )
    decision = Decision(
        project=project,
        model_id=model_id,
        previous_model_id=None if active is None else active.id,
        new_score=new_score,
        previous_score=previous_score,
        activated=activated,
        reason=reason,
        baseline_score=baseline_score,
        model_mean_iou=evaluation.mean_iou,
    )
    store.record_activation(**{k: getattr(decision, k) for k in Decision.__dataclass_fields__})
    verb = "activated" if activated else "not activated"
    store.event(
        model.run_id,
        f"model {model_id} {verb} for project {project}: {reason}",
        level="info" if activated else "warning",
    )
    return decision


def activate_by_hand(store: Store, *, project: str, model_id: str, note: str) -> int:
    """Make ``model_id`` the active model of ``project`` whatever the rule decided (an admin's call, from the page or
    the command line); the decision is stored with each model's own test-split score. Returns the decision's id."""
    model = store.model(model_id)
    if model is None:
        known = ", ".join(m.id for m in store.models()) or "none"
        raise ActivationError(f"model {model_id!r} is not in the registry; registered models: {known}")
    if not model.path:
        raise ActivationError(f"model {model_id} has no exported files yet (its export did not finish)")
    active = store.active_model(project)
    if active is not None and active.id == model_id:
        raise ActivationError(f"model {model_id} is already the active model of project {project}")
    decision = store.record_activation(
        project=project,
        model_id=model_id,
        previous_model_id=None if active is None else active.id,
        new_score=model.test_iou,
        previous_score=None if active is None else active.test_iou,
        activated=True,
        reason=f"{note} (test IoU on each model's own test split)",
    )
    store.event(model.run_id, f"model {model_id} activated for project {project} by hand: {note}")
    return decision
