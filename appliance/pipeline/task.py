"""What a network's output classes mean, in one place: a semantic class map, or objects drawn from interior and
boundary.

A *semantic* model's network classes are the set's classes; its objects are the connected components of each
class (:func:`appliance.pipeline.objects.instance_labels`), so touching cells merge. An *instances* model is trained
on a set that brings one id per object (``instances/``, one foreground class): its network learns background,
interior and boundary (:func:`appliance.pipeline.instances.instance_targets`), and its objects come from a seeded
watershed of its probabilities (:func:`appliance.pipeline.instances.instances_from_probabilities`), with the seed
depth chosen on the validation images and stored with the model. Every user-facing class
map of an instances model is that of the set (0 = background, 1 = the object class), so the mask files, IoU scores
and the quality gate mean the same for both kinds.

Light on imports (no torch): the predictor uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from appliance.data.labelled_set import INSTANCES, SEMANTIC, TASKS, LabelledSet, read_split_images, read_split_instances
from appliance.pipeline.evaluation import Evaluation, score_predictions
from appliance.pipeline.instances import (
    BOUNDARY,
    DEFAULT_SEED_DEPTH_PX,
    INTERIOR,
    choose_seed_depth,
    foreground_of,
    instance_scores,
    instance_targets,
    instances_from_probabilities,
    softmax,
)
from appliance.pipeline.objects import instance_labels

SELECTION_METRICS = {SEMANTIC: "mean IoU", INSTANCES: "AP@0.5"}
"""The validation score successive halving selects on, by task: the network classes' mean foreground IoU, or the
objects' AP@0.5 (ties, such as AP 0 before any object is found, go by the mean IoU)."""

INSTANCE_NETWORK_CLASSES = tuple(name for _, name in sorted({INTERIOR: "interior", BOUNDARY: "boundary"}.items()))
"""The network's foreground classes of an instances model, in label order."""


class Segmentation(NamedTuple):
    """An image's result: the class map in the set's classes and one id per object.

    ``labels`` (H, W) uint8, 0 = background, 1..K = classes; ``instances`` (H, W) uint32, 0 = background, 1..n =
    objects; ``object_class[i - 1]`` is the class of object ``i``.
    """

    labels: np.ndarray
    instances: np.ndarray
    object_class: np.ndarray


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def network_class_names(task: str, class_names: Sequence[str]) -> tuple[str, ...]:
    """Names of the network's foreground outputs (labels 1..): the set's classes, or interior and boundary."""
    return INSTANCE_NETWORK_CLASSES if check_task(task) == INSTANCES else tuple(class_names)


def network_classes(labelled_set: LabelledSet) -> int:
    """How many foreground classes the network of ``labelled_set`` learns."""
    return len(network_class_names(labelled_set.task, labelled_set.class_names))


def read_training_split(labelled_set: LabelledSet, stems: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw images of ``stems`` and what the network learns for each: the mask itself, or background / interior /
    boundary of the instance mask."""
    images, masks = read_split_images(labelled_set, stems)
    if labelled_set.task == SEMANTIC:
        return images, masks
    return images, [instance_targets(objects) for objects in read_split_instances(labelled_set, stems)]


def class_map(task: str, logits: np.ndarray) -> np.ndarray:
    """The class map (uint8) in the set's classes of the network's ``(K + 1, H, W)`` logits: their argmax, or
    for an instances model the pixels where background is less likely than interior and boundary together."""
    logits = np.asarray(logits)
    if check_task(task) == INSTANCES:
        return foreground_of(softmax(logits)).astype(np.uint8)
    return logits.argmax(axis=0).astype(np.uint8)


def segmentation(
    task: str, logits: np.ndarray, *, seed_depth_px: float = DEFAULT_SEED_DEPTH_PX, min_object_px: int = 0
) -> Segmentation:
    """Class map and objects of the network's ``(K + 1, H, W)`` logits; objects below ``min_object_px`` pixels are
    dropped from the instances (the class map keeps their pixels, as for semantic models). ``seed_depth_px``
    matters to instances models only (:func:`appliance.pipeline.instances.instances_from_probabilities`)."""
    if check_task(task) == INSTANCES:
        return _objects(softmax(logits), seed_depth_px=seed_depth_px, min_object_px=min_object_px)
    labels = class_map(task, logits)
    return Segmentation(labels, *instance_labels(labels, min_object_px=min_object_px))


def _objects(probabilities: np.ndarray, *, seed_depth_px: float, min_object_px: int) -> Segmentation:
    instances = instances_from_probabilities(probabilities, seed_depth_px=seed_depth_px, min_object_px=min_object_px)
    labels = foreground_of(probabilities).astype(np.uint8)
    return Segmentation(labels, instances, np.ones(int(instances.max()), dtype=np.int64))


def segmentation_of_labels(labels: np.ndarray, *, min_object_px: int = 0) -> Segmentation:
    """A semantic class map ``(H, W)`` and its connected components as objects (a mask that is no network's
    output: a ground truth, a baseline's)."""
    labels = np.asarray(labels).astype(np.uint8, copy=False)
    return Segmentation(labels, *instance_labels(labels, min_object_px=min_object_px))


@dataclass(frozen=True)
class SplitEvaluation:
    """A model's results on some images of a set and their scores.

    ``classes``: the class maps against the set's masks (IoU, Dice). ``objects``: the objects against the set's
    instance masks (:func:`~appliance.pipeline.instances.instance_scores`: AP@0.5, F1, count error), None when the
    set has none. ``images``, ``masks`` and ``results`` follow ``stems``. ``seed_depth_px``: the seed depth the
    instances were drawn with (None for a semantic model); ``seed_depth_scores``: AP@0.5 of each depth tried when it
    was chosen on these images.
    """

    stems: tuple[str, ...]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    results: list[Segmentation]
    classes: Evaluation
    objects: dict | None
    seed_depth_px: float | None = None
    seed_depth_scores: dict[float, float] | None = None


CHOOSE = "choose"
"""``seed_depth_px`` of :func:`evaluate_split` that chooses the depth on the images it evaluates."""


def evaluate_split(
    labelled_set: LabelledSet,
    stems: tuple[str, ...],
    predict_logits: Callable[[np.ndarray], np.ndarray],
    *,
    task: str | None = None,
    min_object_px: int = 0,
    seed_depth_px: float | str | None = None,
) -> SplitEvaluation:
    """Segment the images of ``stems`` with ``predict_logits`` (raw image -> the network's ``(K + 1, H, W)``
    logits) as a ``task`` model (default: the set's own) would, and score classes and objects.

    ``seed_depth_px`` (instances models only; None: the default) ``=CHOOSE`` chooses the seed depth on these
    images' instance masks (:func:`~appliance.pipeline.instances.choose_seed_depth`): pass the validation split,
    then the chosen depth with the test split."""
    task = check_task(task or labelled_set.task)
    images, masks = read_split_images(labelled_set, stems)
    truths = read_split_instances(labelled_set, stems)
    depth, depth_scores = None, None
    if task == INSTANCES and seed_depth_px == CHOOSE and truths is not None:
        probabilities = [softmax(predict_logits(image)) for image in images]  # held once, for every depth tried
        depth, depth_scores = choose_seed_depth(probabilities, truths, min_object_px=min_object_px)
        results = [_objects(p, seed_depth_px=depth, min_object_px=min_object_px) for p in probabilities]
        del probabilities
    else:
        if task == INSTANCES:
            depth = DEFAULT_SEED_DEPTH_PX if seed_depth_px in (CHOOSE, None) else float(seed_depth_px)
        depth_px = depth or DEFAULT_SEED_DEPTH_PX
        results = [
            segmentation(task, predict_logits(image), seed_depth_px=depth_px, min_object_px=min_object_px)
            for image in images
        ]
    classes = score_predictions((r.labels for r in results), masks, num_classes=labelled_set.num_classes, names=stems)
    objects = None if truths is None else instance_scores(truths, [r.instances for r in results])
    return SplitEvaluation(tuple(stems), images, masks, results, classes, objects, depth, depth_scores)
