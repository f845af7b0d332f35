"""Automatic class-based sampling (paper §3.3, thesis §4.4.2).

``x`` holds the pixel fraction of every class of the softmax, background (label 0) included, over the
training masks; ``n = len(x)`` and ``μ = Σx / n``. The set is imbalanced when some ``x[i] > μ + 0.75·μ``.
Then ``a_low = μ − 0.5·μ`` and ``a_high = μ + 0.2·μ``; a class with ``x[i] < a_low`` gets the factor
``a_low / x[i]`` capped at 2, one with ``x[i] > a_high`` gets ``a_high / x[i]`` (not capped), every other
class 1. A balanced set gets factor 1 for every class.

Factors act on training patches: a patch's factor is the largest factor among the classes it contains,
so a patch with a minority class is up-sampled, a patch holding only majority classes is down-sampled,
and a patch with any class of factor 1 keeps factor 1. Each epoch lists a patch ``⌊f⌋`` times plus once
more with probability ``f − ⌊f⌋``, then shuffles.
"""

from __future__ import annotations

import numpy as np

IMBALANCE_MARGIN = 0.75
LOW_MARGIN = 0.5
HIGH_MARGIN = 0.2
MAX_UPSAMPLING = 2.0


def class_pixel_fractions(masks: list[np.ndarray], *, num_classes: int) -> np.ndarray:
    """Fraction of labelled pixels in each class ``0..num_classes`` over all ``masks``.

    Pixels with a negative label (padding) are not counted.

    >>> class_pixel_fractions([np.array([[0, 1], [1, -1]])], num_classes=1).tolist()
    [0.3333333333333333, 0.6666666666666666]
    """
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for mask in masks:
        valid = mask[mask >= 0].ravel()
        counts += np.bincount(valid, minlength=num_classes + 1)[: num_classes + 1]
    total = counts.sum()
    if total == 0:
        return np.zeros(num_classes + 1)
    return counts / total


def is_imbalanced(fractions: np.ndarray) -> bool:
    """True when some class fraction exceeds ``μ + 0.75·μ`` with ``μ = Σx / n``.

    >>> is_imbalanced(np.array([0.1, 0.1, 0.7]))
    True
    >>> is_imbalanced(np.array([0.3, 0.3, 0.4]))
    False
    """
    fractions = np.asarray(fractions, dtype=float)
    mu = fractions.sum() / len(fractions)
    return bool(np.any(fractions > mu + IMBALANCE_MARGIN * mu))


def sampling_factors(fractions: np.ndarray) -> np.ndarray:
    """Per-class re-sampling factors of the paper's rule (all ones for a balanced set).

    >>> np.round(sampling_factors(np.array([0.1, 0.1, 0.7])), 3).tolist()
    [1.5, 1.5, 0.514]
    """
    fractions = np.asarray(fractions, dtype=float)
    factors = np.ones_like(fractions)
    if not is_imbalanced(fractions):
        return factors
    mu = fractions.sum() / len(fractions)
    low, high = mu - LOW_MARGIN * mu, mu + HIGH_MARGIN * mu
    for index, value in enumerate(fractions):
        if value <= 0:
            continue  # a class absent from the training masks cannot be re-sampled
        if value < low:
            factors[index] = min(low / value, MAX_UPSAMPLING)
        elif value > high:
            factors[index] = high / value
    return factors


def patch_factors(presence: np.ndarray, class_factors: np.ndarray) -> np.ndarray:
    """Factor of each patch: the largest factor among the classes present in it.

    Parameters
    ----------
    presence : (N, n) bool ndarray
        Whether class ``j`` occurs in patch ``i``.
    class_factors : (n,) ndarray
        Output of :func:`sampling_factors`.
    """
    weighted = np.where(presence, class_factors[None, :], -np.inf)
    factors = weighted.max(axis=1)
    return np.where(np.isfinite(factors), factors, 1.0)


def epoch_order(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of the patches for one epoch: patch ``i`` appears ``⌊f⌋`` times plus once with
    probability ``f − ⌊f⌋``; the list is shuffled. Never empty when there is at least one patch."""
    whole = np.floor(factors).astype(np.int64)
    extra = rng.random(len(factors)) < (factors - whole)
    counts = whole + extra
    order = np.repeat(np.arange(len(factors)), counts)
    if len(order) == 0 and len(factors) > 0:
        order = np.arange(len(factors))
    rng.shuffle(order)
    return order
