"""Evaluation on whole images: per-class IoU and Dice, mean foreground IoU.

Scores of a set are computed from the confusion matrix summed over its images (pixel-level, the
usual "dataset IoU"), so small images do not weigh more than large ones. A class that appears neither
in the truth nor in the prediction of the whole set has no score (``None``) and is left out of means.
Pixels whose truth label is negative (padding) are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, *, num_classes: int) -> np.ndarray:
    """``(K + 1, K + 1)`` int64 counts, rows = truth, columns = prediction."""
    if truth.shape != prediction.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {prediction.shape}")
    n = num_classes + 1
    valid = truth >= 0
    truth_values = truth[valid].astype(np.int64)
    predicted_values = np.clip(prediction[valid].astype(np.int64), 0, n - 1)
    return np.bincount(truth_values * n + predicted_values, minlength=n * n)[: n * n].reshape(n, n)


@dataclass(frozen=True)
class Scores:
    """Scores derived from one confusion matrix."""

    iou: list[float | None]  # per class 0..K
    dice: list[float | None]
    mean_foreground_iou: float | None  # mean IoU over classes 1..K that have a score
    mean_foreground_dice: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def scores_from_confusion(confusion: np.ndarray) -> Scores:
    """IoU = TP / (TP + FP + FN), Dice = 2TP / (2TP + FP + FN), per class.

    >>> scores_from_confusion(np.array([[3, 1], [0, 2]])).iou
    [0.75, 0.6666666666666666]
    """
    tp = np.diag(confusion).astype(float)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    union = tp + fp + fn
    iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    dice = [float(2 * t / (2 * t + f + n)) if u > 0 else None for t, f, n, u in zip(tp, fp, fn, union, strict=True)]
    return Scores(iou=iou, dice=dice, mean_foreground_iou=_mean(iou[1:]), mean_foreground_dice=_mean(dice[1:]))


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass(frozen=True)
class Evaluation:
    """Scores of a whole set plus the scores of each image."""

    overall: Scores
    per_image: dict[str, Scores]

    @property
    def mean_foreground_iou(self) -> float:
        """Mean foreground IoU of the set (0 when no class has a score)."""
        return self.overall.mean_foreground_iou or 0.0

    @property
    def mean_iou(self) -> float:
        """Mean IoU over every class with a score, background included: a model that calls every pixel a cell
        scores its foreground IoU on the cell class but 0 on the background."""
        return _mean(self.overall.iou) or 0.0

    def to_dict(self) -> dict:
        return {"overall": self.overall.to_dict(), "per_image": {k: v.to_dict() for k, v in self.per_image.items()}}


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    num_classes: int,
    names: Sequence[str] | None = None,
) -> Evaluation:
    """Segment every raw ``(H, W, C)`` image with ``predict`` (image -> ``(H, W)`` labels) and score it
    against its ``(H, W)`` mask."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    return score_predictions((predict(image) for image in images), masks, num_classes=num_classes, names=names)


def score_predictions(
    predictions: Iterable[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    num_classes: int,
    names: Sequence[str] | None = None,
) -> Evaluation:
    """Score ``(H, W)`` label images against their ``(H, W)`` masks (``predictions`` may be a generator)."""
    names = list(names) if names is not None else [str(i) for i in range(len(masks))]
    total = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    per_image = {}
    for name, prediction, mask in zip(names, predictions, masks, strict=True):
        confusion = confusion_matrix(mask, prediction, num_classes=num_classes)
        total += confusion
        per_image[name] = scores_from_confusion(confusion)
    return Evaluation(overall=scores_from_confusion(total), per_image=per_image)
