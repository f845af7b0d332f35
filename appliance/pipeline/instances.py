"""Touching objects as separate instances: a 3-class training target, the watershed that turns a predicted
class map back into instances, and the object-matching scores Cellpose and StarDist report.

A semantic class map cannot separate two cells that touch: their pixels form one connected component, so
:func:`appliance.pipeline.objects.instance_labels` counts them as one object. The DSB2018 winners and nnU-Net's
instance utilities instead train on three classes, background (0), interior (1) and boundary (2), where boundary
is every object pixel 4-adjacent to background or to another object. Interiors of different objects are then never
4-adjacent, so the connected components of the predicted interior are one seed per object, and a watershed grows
each seed back over the boundary ring it lost (:func:`instances_from_classes`).

Instance quality is scored the way Cellpose (``metrics.average_precision``) and StarDist (``matching``) score it:
a predicted object is a true positive when its IoU with a true object exceeds a threshold, and "average precision"
is TP / (TP + FP + FN) (:func:`match_counts`, :func:`instance_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import skimage.segmentation

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
"""The classes of :func:`instance_targets` and the input of :func:`instances_from_classes`."""


def instance_targets(instances: np.ndarray) -> np.ndarray:
    """The 3-class training target of an instance mask: 0 = background, 1 = interior, 2 = boundary.

    Parameters
    ----------
    instances : (H, W) ndarray of int
        0 = background, every other value one object; ids need not be consecutive. Not modified.

    Returns
    -------
    (H, W) ndarray of uint8
        Boundary (2) is an object's own pixels with a 4-neighbour of a different id, background or another object
        (``skimage.segmentation.find_boundaries(mode="inner", connectivity=1)``), so two touching objects are
        separated by two rings of boundary, one from each. Pixels on the image border count as interior unless a
        neighbour inside the image differs. An object with no interior pixel at all (1 or 2 pixels wide everywhere,
        such as a single-pixel object) keeps all its pixels as interior, so that it still yields a seed and is not
        lost by :func:`instances_from_classes`; two such objects touching each other will then merge.

    >>> instance_targets(np.array([[0, 0, 0, 0, 0, 0],
    ...                            [0, 4, 4, 4, 0, 0],
    ...                            [0, 4, 4, 4, 0, 9],
    ...                            [0, 4, 4, 4, 0, 0]]))
    array([[0, 0, 0, 0, 0, 0],
           [0, 2, 2, 2, 0, 0],
           [0, 2, 1, 2, 0, 1],
           [0, 2, 1, 2, 0, 0]], dtype=uint8)
    """
    instances = np.asarray(instances)
    objects = instances != 0
    boundary = skimage.segmentation.find_boundaries(instances, connectivity=1, mode="inner") & objects
    targets = np.where(objects, np.where(boundary, BOUNDARY, INTERIOR), BACKGROUND).astype(np.uint8)
    ids, dense = np.unique(instances, return_inverse=True)
    dense = dense.reshape(instances.shape)
    interior_px = np.bincount(dense[targets == INTERIOR], minlength=len(ids))
    no_interior = (interior_px == 0) & (ids != 0)
    targets[no_interior[dense]] = INTERIOR
    return targets


def instances_from_classes(class_map: np.ndarray, *, min_object_px: int = 0) -> np.ndarray:
    """Instances from a 3-class map (as :func:`instance_targets` makes and a model predicts).

    Seeds are the 4-connected components of interior (1); the foreground is interior or boundary (1 or 2); a seeded
    watershed on the negative Euclidean distance transform of the foreground, restricted to the foreground, gives
    each boundary pixel to the seed that floods it first, so a boundary ring goes to the object it surrounds and the
    boundary between two touching objects is split at the neck of the distance transform (the narrowest part of the
    foreground), which is where the true contact line usually lies. Any other value counts as background.

    Parameters
    ----------
    class_map : (H, W) ndarray of int
        0 = background, 1 = interior, 2 = boundary. Not modified.
    min_object_px : int, optional
        Objects with fewer pixels (after the watershed) are removed.

    Returns
    -------
    (H, W) ndarray of uint32
        0 for background, for boundary pixels no seed reaches (a boundary-only component) and for removed objects;
        1..n for objects in raster order of each object's first pixel, as
        :func:`appliance.pipeline.objects.instance_labels` numbers them. The watershed's ids follow the seeds'
        raster order, which can differ: an object's first pixel is on its boundary, not its seed.

    >>> instances_from_classes(np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
    ...                                  [0, 2, 2, 2, 2, 2, 2, 0, 0],
    ...                                  [0, 2, 1, 2, 2, 1, 2, 0, 2],
    ...                                  [0, 2, 2, 2, 2, 2, 2, 0, 0]]))
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 2, 2, 2, 0, 0],
           [0, 1, 1, 1, 2, 2, 2, 0, 0],
           [0, 1, 1, 1, 2, 2, 2, 0, 0]], dtype=uint32)
    """
    class_map = np.asarray(class_map)
    interior = class_map == INTERIOR
    foreground = interior | (class_map == BOUNDARY)
    seeds = skimage.measure.label(interior, connectivity=1)
    if seeds.max() == 0:
        return np.zeros(class_map.shape, dtype=np.uint32)
    distance = ndi.distance_transform_edt(foreground)
    grown = skimage.segmentation.watershed(-distance, markers=seeds, mask=foreground, connectivity=1)
    if min_object_px > 0:
        areas = np.bincount(grown.ravel())
        grown[areas[grown] < min_object_px] = 0
    ids, first = np.unique(grown.ravel(), return_index=True)
    ids, first = ids[ids != 0], first[ids != 0]
    lookup = np.zeros(int(grown.max()) + 1, dtype=np.uint32)
    lookup[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lookup[grown]


def match_counts(truth: np.ndarray, prediction: np.ndarray, *, threshold: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of a predicted instance mask against the true one.

    A predicted object matches a true object when their IoU is greater than ``threshold``. For a threshold of at
    least 0.5 such a match is unique: IoU(t, p) > 0.5 means the overlap is more than half of the union, hence more
    than half of ``t`` and more than half of ``p``; two disjoint predictions cannot each cover more than half of
    ``t``, nor two disjoint true objects more than half of ``p``. So TP is simply the number of pairs above the
    threshold and no assignment solver is needed. Below 0.5 an object can match several and TP would depend on the
    assignment, so such thresholds raise ``ValueError``. Cellpose and StarDist count IoU >= threshold; the strict
    comparison here keeps the match unique at exactly 0.5 and differs from theirs only on exact ties.

    IoUs come from the contingency table of the two label images (the pixel count of every (true id, predicted id)
    pair that occurs), so the cost grows with the pixels, not with the number of object pairs.

    Parameters
    ----------
    truth, prediction : (H, W) ndarray of int
        Instance masks of the same shape, 0 = background; ids need not be consecutive.
    threshold : float, optional
        IoU a match must exceed, in [0.5, 1].

    >>> truth = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    >>> match_counts(truth, np.array([[5, 5, 0, 0, 3], [5, 5, 0, 0, 3]]))
    (1, 1, 1)
    """
    if not 0.5 <= threshold <= 1:
        raise ValueError(
            f"threshold must be in [0.5, 1], got {threshold}: only IoU > 0.5 makes each match unique, "
            "so that counting pairs above the threshold needs no assignment"
        )
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth and prediction differ in shape: {truth.shape} vs {prediction.shape}")
    true_ids, true_dense = np.unique(truth.ravel(), return_inverse=True)
    pred_ids, pred_dense = np.unique(prediction.ravel(), return_inverse=True)
    true_area = np.bincount(true_dense, minlength=len(true_ids))
    pred_area = np.bincount(pred_dense, minlength=len(pred_ids))
    pairs, overlap = np.unique(true_dense.astype(np.int64) * len(pred_ids) + pred_dense, return_counts=True)
    t, p = np.divmod(pairs, len(pred_ids))
    objects = (true_ids[t] != 0) & (pred_ids[p] != 0)
    t, p, overlap = t[objects], p[objects], overlap[objects]
    union = true_area[t] + pred_area[p] - overlap
    tp = int(np.count_nonzero(overlap > threshold * union))
    n_true = int(np.count_nonzero(true_ids))
    n_pred = int(np.count_nonzero(pred_ids))
    return tp, n_pred - tp, n_true - tp


def instance_scores(truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray], *, threshold: float = 0.5) -> dict:
    """Object-level scores of predicted instance masks, with counts summed over all images.

    Returns a dict of plain Python numbers:

    - ``ap``: TP / (TP + FP + FN), the "average precision" of Cellpose's ``metrics.average_precision`` and
      StarDist's ``matching`` (StarDist calls it accuracy); not the area under a precision-recall curve.
    - ``precision``: TP / (TP + FP); ``recall``: TP / (TP + FN); ``f1``: 2 TP / (2 TP + FP + FN).
    - ``count_error``: mean over images of ``|n_pred - n_true| / max(n_true, 1)``.
    - ``true_objects``, ``predicted_objects``: the total object counts.

    A ratio whose denominator is 0 has nothing to get wrong and is 1.0: with no objects in any truth or prediction
    every score is 1.0, with no predictions precision is 1.0 (and recall 0.0 if there are true objects). StarDist
    returns 0 for these cases instead.

    Parameters
    ----------
    truths, predictions : sequences of (H, W) ndarray of int
        Paired instance masks, one pair per image, as for :func:`match_counts`.
    threshold : float, optional
        IoU a match must exceed, in [0.5, 1].

    >>> truth = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    >>> scores = instance_scores([truth], [np.array([[5, 5, 0, 0, 3], [5, 5, 0, 0, 3]])])
    >>> scores["ap"], scores["f1"], scores["count_error"]
    (0.3333333333333333, 0.5, 0.0)
    """
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    if len(truths) == 0:
        raise ValueError("no images to score")
    tp = fp = fn = 0
    count_errors = []
    for truth, prediction in zip(truths, predictions, strict=True):
        image_tp, image_fp, image_fn = match_counts(truth, prediction, threshold=threshold)
        tp, fp, fn = tp + image_tp, fp + image_fp, fn + image_fn
        n_true, n_pred = image_tp + image_fn, image_tp + image_fp
        count_errors.append(abs(n_pred - n_true) / max(n_true, 1))
    return {
        "ap": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "count_error": float(np.mean(count_errors)),
        "true_objects": tp + fn,
        "predicted_objects": tp + fp,
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0
