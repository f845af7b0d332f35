"""Seeded train / validation / test splits of a labelled set's stems.

The split is recorded with every run, so that results can be reproduced: the validation part
drives successive halving, the test part is only used for the final quality report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_STEMS = 3
_PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    """Stems of the train, validation and test parts (each sorted) and the seed that drew them."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    seed: int

    def to_dict(self) -> dict:
        """Plain form for JSON/YAML: lists of stems and the seed."""
        return {
            "train": list(self.train),
            "validation": list(self.validation),
            "test": list(self.test),
            "seed": int(self.seed),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Split:
        """Rebuild a split from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            When a key is missing or a stem appears in more than one part.
        """
        missing = [key for key in (*_PARTS, "seed") if key not in d]
        if missing:
            raise ValueError(f"split is missing {', '.join(missing)}; expected keys train, validation, test, seed")
        parts = {key: tuple(str(stem) for stem in d[key]) for key in _PARTS}
        stems = [stem for part in parts.values() for stem in part]
        if len(stems) != len(set(stems)):
            repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
            raise ValueError(f"split lists stems {repeated} more than once; each stem belongs to exactly one part")
        return cls(**parts, seed=int(d["seed"]))


def split_stems(stems: Sequence[str], *, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Split:
    """Split stems into train / validation / test, deterministically for a given seed.

    The stems are sorted first, so the input order does not matter, then permuted with
    ``numpy.random.default_rng(seed)``. Validation and test get ``round(n * fraction)`` stems but at
    least one each; train gets the rest, and at least one.

    Parameters
    ----------
    stems : sequence of str
        Distinct file stems; at least 3.
    seed : int
        Seed of the permutation.
    fractions : (float, float, float), optional
        Train, validation and test fractions, summing to 1.

    Returns
    -------
    Split

    Raises
    ------
    ValueError
        With fewer than 3 stems, repeated stems, or fractions that are not three non-negative
        numbers summing to 1.

    Examples
    --------
    >>> split = split_stems([f"img{i:02d}" for i in range(10)], seed=0)
    >>> len(split.train), len(split.validation), len(split.test)
    (8, 1, 1)
    """
    ordered = sorted(stems)
    if len(ordered) < MIN_STEMS:
        raise ValueError(
            f"got {len(ordered)} stem(s), but {MIN_STEMS} are needed for a train/validation/test "
            "split (one image each); add more labelled images"
        )
    if len(set(ordered)) != len(ordered):
        raise ValueError("stems must be distinct; each image belongs to exactly one part of the split")
    n_validation, n_test = _part_sizes(len(ordered), fractions)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    validation = shuffled[:n_validation]
    test = shuffled[n_validation : n_validation + n_test]
    train = shuffled[n_validation + n_test :]
    return Split(
        train=tuple(sorted(train)), validation=tuple(sorted(validation)), test=tuple(sorted(test)), seed=int(seed)
    )


def _part_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Sizes of validation and test: ``round(n * fraction)``, at least 1, leaving at least 1 for train."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"fractions must be three non-negative numbers (train, validation, test) summing to 1, "
            f"got {tuple(fractions)}"
        )
    n_validation = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    while n - n_validation - n_test < 1:  # give train its one image back from the larger part
        if n_validation >= n_test:
            n_validation -= 1
        else:
            n_test -= 1
    return n_validation, n_test
