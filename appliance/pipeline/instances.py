"""Touching objects as separate instances: a 3-class training target, the watershed that turns the network's
probabilities back into instances, and the object-matching scores Cellpose and StarDist report.

A semantic class map cannot separate two cells that touch: their pixels form one connected component, so
:func:`appliance.pipeline.objects.instance_labels` counts them as one object. The DSB2018 winners and nnU-Net's
instance utilities instead train on three classes, background (0), interior (1) and boundary (2), where boundary
is every object pixel 4-adjacent to background or to another object. A seeded watershed then grows one seed per
object over the foreground (:func:`instances_from_probabilities`).

Where the seeds come from decides the result. Seeds from the predicted interior alone (its connected components)
need a boundary the network has fully learnt: one missing pixel of the ring between two nuclei merges them, and a
model trained for minutes predicts the rare boundary class on a few per cent of the pixels (dsb2018, 5 CPU
minutes: the watershed from interior components found 91 of 125 test nuclei, AP@0.5 0.41, no better than the
connected components of the foreground). So the seeds are the maxima of an *elevation* that adds the two cues up:
the distance to the predicted background (large at an object's centre, small at the neck between two touching
round objects) plus the interior probability (which drops on a learnt boundary), each maximum at least
``seed_depth_px`` above the saddle to its neighbour (h-maxima). The depth that fits a set's object sizes and
shapes is chosen on the validation images (:func:`choose_seed_depth`), as nnU-Net chooses its post-processing.

Instance quality is scored the way Cellpose (``metrics.average_precision``) and StarDist (``matching``) score it:
a predicted object is a true positive when its IoU with a true object exceeds a threshold, and "average precision"
is TP / (TP + FP + FN) (:func:`match_counts`, :func:`instance_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import skimage.morphology
import skimage.segmentation

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
"""The classes of :func:`instance_targets`, in the order :func:`instances_from_probabilities` takes them."""


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
        such as a single-pixel object) keeps all its pixels as interior, so that the network still learns it as an
        object with a core; two such objects touching each other will then merge.

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


SEED_DEPTHS_PX = (0.5, 1.0, 2.0, 4.0, 8.0)
"""The seed depths :func:`choose_seed_depth` tries: from splitting at every shallow neck to splitting only at deep
ones (large or elongated objects)."""
DEFAULT_SEED_DEPTH_PX = 1.0
"""The seed depth of a model that was not tuned (no validation images with instance masks)."""
INTERIOR_WEIGHT_PX = 3.0
"""What a certain interior adds to the elevation, in pixels of distance, at least (see :func:`elevation`)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities ``(K + 1, H, W)`` of network logits ``(K + 1, H, W)``."""
    logits = np.asarray(logits, dtype=np.float32)
    exp = np.exp(logits - logits.max(axis=0, keepdims=True))
    return exp / exp.sum(axis=0, keepdims=True)


def foreground_of(probabilities: np.ndarray) -> np.ndarray:
    """Object pixels of 3-class probabilities: background is less likely than interior and boundary together."""
    return np.asarray(probabilities)[BACKGROUND] < 0.5


def elevation(probabilities: np.ndarray, *, seed_depth_px: float = DEFAULT_SEED_DEPTH_PX) -> np.ndarray:
    """The surface the seeds are the maxima of: the distance (px) of each foreground pixel to the predicted
    background, smoothed (σ = 1 px), plus ``max(INTERIOR_WEIGHT_PX, 2 · seed_depth_px)`` times the interior
    probability. The interior weight is more than twice the seed depth, so a boundary the network has learnt
    (interior probability falling to 0 between two objects) always separates them, whatever the depth."""
    probabilities = np.asarray(probabilities)
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(foreground_of(probabilities)), 1.0)
    return distance + max(INTERIOR_WEIGHT_PX, 2 * seed_depth_px) * probabilities[INTERIOR]


def instances_from_probabilities(
    probabilities: np.ndarray, *, seed_depth_px: float = DEFAULT_SEED_DEPTH_PX, min_object_px: int = 0
) -> np.ndarray:
    """Instances from 3-class probabilities (background, interior, boundary), as an instances model predicts.

    The foreground is :func:`foreground_of`; the seeds are the maxima of :func:`elevation` at least
    ``seed_depth_px`` deep (the regional maxima of its h-maxima transform); a seeded watershed of the negative
    elevation, restricted to the foreground, gives every foreground pixel to one seed. A foreground component
    without any such maximum (a small or flat object) is one object, so no object pixels are lost to a missing
    seed.

    Parameters
    ----------
    probabilities : (3, H, W) ndarray of float
        Per-pixel class probabilities (:func:`softmax` of the logits). Not modified.
    seed_depth_px : float, optional
        How far (in pixels of elevation) a maximum must rise above the saddle to its neighbour to seed an object of
        its own.
    min_object_px : int, optional
        Objects with fewer pixels (after the watershed) are removed.

    Returns
    -------
    (H, W) ndarray of uint32
        0 for background and removed objects; 1..n for objects in raster order of each object's first pixel, as
        :func:`appliance.pipeline.objects.instance_labels` numbers them.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or probabilities.shape[0] != 3:
        raise ValueError(
            f"expected (3, H, W) probabilities of background, interior, boundary; got {probabilities.shape}"
        )
    foreground = foreground_of(probabilities)
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.uint32)
    height = elevation(probabilities, seed_depth_px=seed_depth_px)
    # the regional maxima of the h-maxima transform: unlike skimage's h_maxima mask, two equally high peaks joined
    # above their depth are one plateau there, so one seed
    dome = skimage.morphology.reconstruction(height - seed_depth_px, height, method="dilation")
    seeds = skimage.measure.label(skimage.morphology.local_maxima(dome) & foreground)
    components = skimage.measure.label(foreground, connectivity=1)
    seeded = np.zeros(int(components.max()) + 1, dtype=bool)
    seeded[components[seeds > 0]] = True
    unseeded = ~seeded[components] & foreground
    seeds[unseeded] = components[unseeded] + int(seeds.max())
    grown = skimage.segmentation.watershed(-height, markers=seeds, mask=foreground, connectivity=1)
    if min_object_px > 0:
        areas = np.bincount(grown.ravel())
        grown[areas[grown] < min_object_px] = 0
    return _raster_order(grown)


def choose_seed_depth(
    probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], *, min_object_px: int = 0
) -> tuple[float, dict[float, float]]:
    """The seed depth of :data:`SEED_DEPTHS_PX` whose instances score the best AP@0.5 against ``truths`` (the
    smaller depth on a tie), and the AP of each depth."""
    scores = {
        depth: instance_scores(
            truths,
            [instances_from_probabilities(p, seed_depth_px=depth, min_object_px=min_object_px) for p in probabilities],
        )["ap"]
        for depth in SEED_DEPTHS_PX
    }
    return max(scores, key=lambda depth: (scores[depth], -depth)), scores


def _raster_order(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..n (uint32) in raster order of each label's first pixel; 0 stays 0."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    ids, first = ids[ids != 0], first[ids != 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lookup[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lookup[labels]


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
