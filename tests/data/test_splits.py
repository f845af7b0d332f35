"""Tests of appliance.data.splits: sizes, disjoint and complete parts, determinism."""

from __future__ import annotations

import json

import pytest

from appliance.data.splits import Split, split_stems


def _stems(n: int) -> list[str]:
    return [f"img{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(3, (1, 1, 1)), (4, (2, 1, 1)), (10, (8, 1, 1)), (53, (43, 5, 5))],
)
def test_sizes(n, sizes):
    split = split_stems(_stems(n), seed=0)
    assert (len(split.train), len(split.validation), len(split.test)) == sizes


@pytest.mark.parametrize("n", [3, 4, 10, 53])
def test_parts_are_disjoint_and_complete(n):
    split = split_stems(_stems(n), seed=3)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert parts[0] | parts[1] | parts[2] == set(_stems(n))
    assert all(list(part) == sorted(part) for part in (split.train, split.validation, split.test))


def test_deterministic_for_a_seed_regardless_of_input_order():
    stems = _stems(20)
    first = split_stems(stems, seed=42)
    assert split_stems(list(reversed(stems)), seed=42) == first
    assert split_stems(tuple(stems[7:] + stems[:7]), seed=42) == first
    assert first.seed == 42


def test_different_seed_gives_a_different_split():
    assert split_stems(_stems(20), seed=1) != split_stems(_stems(20), seed=2)
    first = split_stems(_stems(20), seed=1)
    second = split_stems(_stems(20), seed=2)
    assert (first.validation, first.test) != (second.validation, second.test)


def test_fewer_than_three_stems_is_refused():
    with pytest.raises(ValueError, match="3 are needed"):
        split_stems(["a", "b"], seed=0)
    with pytest.raises(ValueError, match="3 are needed"):
        split_stems([], seed=0)


def test_repeated_stems_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        split_stems(["a", "a", "b"], seed=0)


def test_custom_fractions_keep_one_image_for_train():
    split = split_stems(_stems(10), seed=0, fractions=(0.6, 0.2, 0.2))
    assert (len(split.train), len(split.validation), len(split.test)) == (6, 2, 2)
    split = split_stems(_stems(4), seed=0, fractions=(0.0, 0.5, 0.5))
    assert len(split.train) == 1 and len(split.validation) + len(split.test) == 3


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.2), (1.1, -0.05, -0.05), (0.5, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="summing to 1"):
        split_stems(_stems(10), seed=0, fractions=fractions)


def test_dict_round_trip_through_json():
    split = split_stems(_stems(12), seed=5)
    data = json.loads(json.dumps(split.to_dict()))
    assert data == {
        "train": list(split.train),
        "validation": list(split.validation),
        "test": list(split.test),
        "seed": 5,
    }
    assert Split.from_dict(data) == split


def test_from_dict_refuses_missing_keys_and_overlaps():
    with pytest.raises(ValueError, match="missing seed"):
        Split.from_dict({"train": ["a"], "validation": ["b"], "test": ["c"]})
    with pytest.raises(ValueError, match=r"\['a'\] more than once"):
        Split.from_dict({"train": ["a"], "validation": ["a"], "test": ["c"], "seed": 0})
