"""What a network's output classes mean, in one place: a semantic class map, or objects drawn from interior and
boundary.

A *semantic* model's network classes are the set's classes; its objects are the connected components of each
class (:func:`appliance.pipeline.objects.instance_labels`), so touching cells merge. An *instances* model is trained
on a set that brings one id per object (``instances/``, one foreground class): its network learns background,
interior and boundary (:func:`appliance.pipeline.instances.instance_targets`), and its objects come from a seeded
watershed of the interiors (:func:`appliance.pipeline.instances.instances_from_classes`). Every user-facing class
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
from appliance.pipeline.instances import BOUNDARY, INTERIOR, instance_scores, instance_targets, instances_from_classes
from appliance.pipeline.objects import instance_labels

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


def class_map(task: str, network_labels: np.ndarray) -> np.ndarray:
    """The class map in the set's classes (uint8) of the network's argmax labels."""
    network_labels = np.asarray(network_labels)
    if check_task(task) == INSTANCES:
        return (network_labels != 0).astype(np.uint8)
    return network_labels.astype(np.uint8, copy=False)


def segmentation(task: str, network_labels: np.ndarray, *, min_object_px: int = 0) -> Segmentation:
    """Class map and objects of the network's argmax labels; objects below ``min_object_px`` pixels are dropped
    from the instances (the class map keeps their pixels, as for semantic models)."""
    labels = class_map(task, network_labels)
    if task == INSTANCES:
        instances = instances_from_classes(network_labels, min_object_px=min_object_px)
        return Segmentation(labels, instances, np.ones(int(instances.max()), dtype=np.int64))
    return Segmentation(labels, *instance_labels(labels, min_object_px=min_object_px))


@dataclass(frozen=True)
class SplitEvaluation:
    """A model's results on some images of a set and their scores.

    ``classes``: the class maps against the set's masks (IoU, Dice). ``objects``: the objects against the set's
    instance masks (:func:`~appliance.pipeline.instances.instance_scores`: AP@0.5, F1, count error), None when the
    set has none. ``images``, ``masks`` and ``results`` follow ``stems``.
    """

    stems: tuple[str, ...]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    results: list[Segmentation]
    classes: Evaluation
    objects: dict | None


def evaluate_split(
    labelled_set: LabelledSet,
    stems: tuple[str, ...],
    predict_network: Callable[[np.ndarray], np.ndarray],
    *,
    task: str | None = None,
    min_object_px: int = 0,
) -> SplitEvaluation:
    """Segment the images of ``stems`` with ``predict_network`` (raw image -> the network's argmax labels) as a
    ``task`` model (default: the set's own) would, and score classes and objects."""
    task = check_task(task or labelled_set.task)
    images, masks = read_split_images(labelled_set, stems)
    results = [segmentation(task, predict_network(image), min_object_px=min_object_px) for image in images]
    classes = score_predictions((r.labels for r in results), masks, num_classes=labelled_set.num_classes, names=stems)
    truths = read_split_instances(labelled_set, stems)
    objects = None if truths is None else instance_scores(truths, [r.instances for r in results])
    return SplitEvaluation(tuple(stems), images, masks, results, classes, objects)
