"""Touching objects kept apart by the boundary class, the watershed back to instances, and IoU-matched scores."""

import numpy as np
import pytest
import skimage.draw
import skimage.measure

from appliance.pipeline.instances import (
    SEED_DEPTHS_PX,
    choose_seed_depth,
    instance_scores,
    instance_targets,
    instances_from_probabilities,
    match_counts,
    softmax,
)


def touching_discs() -> np.ndarray:
    instances = np.zeros((40, 50), dtype=np.int32)
    instances[skimage.draw.disk((20, 18), 9)] = 1
    instances[skimage.draw.disk((20, 32), 9)] = 2  # overwrites the overlap, so the two discs touch
    return instances


def square(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    image = np.zeros(shape, dtype=np.int32)
    image[rows, cols] = value
    return image


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def certain(class_map: np.ndarray) -> np.ndarray:
    """The (3, H, W) probabilities of a network sure of ``class_map`` (0 background, 1 interior, 2 boundary)."""
    return np.stack([(class_map == k).astype(np.float32) for k in range(3)])


def test_touching_discs_are_separated_by_boundary_and_recovered_by_the_watershed():
    instances = touching_discs()
    targets = instance_targets(instances)
    assert targets.dtype == np.uint8
    assert set(np.unique(targets)) == {0, 1, 2}
    assert np.array_equal(targets > 0, instances > 0)

    contact = (instances == 1) & np.roll(instances == 2, -1, axis=1)
    assert contact.sum() > 5
    assert np.all(targets[contact] == 2)
    assert np.all(targets[np.roll(contact, 1, axis=1)] == 2)

    assert skimage.measure.label(targets > 0, connectivity=1).max() == 1  # why the boundary class exists
    assert skimage.measure.label(targets == 1, connectivity=1).max() == 2

    for depth in SEED_DEPTHS_PX:  # a learnt boundary separates whatever the seed depth
        recovered = instances_from_probabilities(certain(targets), seed_depth_px=depth)
        assert recovered.dtype == np.uint32
        assert sorted(np.unique(recovered)) == [0, 1, 2]
        for object_id in (1, 2):
            assert iou(recovered == object_id, instances == object_id) > 0.7
        assert match_counts(instances, recovered) == (2, 0, 0)


def test_a_boundary_the_network_did_not_learn_is_replaced_by_the_neck_between_round_objects():
    instances = touching_discs()
    no_boundary = certain((instances > 0).astype(np.uint8))  # interior everywhere: one connected blob
    assert match_counts(instances, instances_from_probabilities(no_boundary, seed_depth_px=1.0)) == (2, 0, 0)
    merged = instances_from_probabilities(no_boundary, seed_depth_px=8.0)  # the neck is shallower than 8 px
    assert merged.max() == 1


def test_seeds_follow_the_probabilities_not_only_their_argmax():
    instances = touching_discs()
    probabilities = certain(instance_targets(instances))
    contact = instance_targets(instances) == 2
    probabilities[:, contact] = np.array([0.1, 0.5, 0.4])[:, None]  # boundary lost the argmax, but only just
    assert match_counts(instances, instances_from_probabilities(probabilities, seed_depth_px=8.0)) == (2, 0, 0)


def test_boundary_is_the_inner_ring_and_non_consecutive_ids_are_fine():
    instances = square((7, 7), slice(1, 6), slice(1, 6), value=1000)
    targets = instance_targets(instances)
    expected = np.zeros((7, 7), dtype=np.uint8)
    expected[1:6, 1:6] = 2
    expected[2:5, 2:5] = 1
    assert np.array_equal(targets, expected)


def test_tiny_objects_keep_their_pixels_as_interior_and_survive_the_round_trip():
    instances = np.zeros((12, 12), dtype=np.int32)
    instances[2, 2] = 5
    instances[6, 6:8] = 9
    instances[8:12, 8:12] = 3
    targets = instance_targets(instances)
    assert targets[2, 2] == 1
    assert np.all(targets[6, 6:8] == 1)
    assert (targets[8:12, 8:12] == 2).any()

    recovered = instances_from_probabilities(certain(targets))
    assert recovered.max() == 3
    for object_id in (5, 9, 3):
        assert len(np.unique(recovered[instances == object_id])) == 1
        assert iou(recovered == recovered[instances == object_id][0], instances == object_id) == 1.0


def test_an_object_without_a_deep_enough_maximum_is_kept_whole_and_small_objects_are_removed():
    class_map = np.zeros((8, 14), dtype=np.uint8)
    class_map[1:6, 1:6] = 2
    class_map[2:5, 2:5] = 1
    class_map[1:3, 8:10] = 2  # boundary only: no maximum 8 px deep, still an object
    class_map[6, 12] = 1  # a one-pixel object
    recovered = instances_from_probabilities(certain(class_map), seed_depth_px=8.0)
    assert recovered.max() == 3
    assert len(np.unique(recovered[1:3, 8:10])) == 1 and recovered[1, 8] != 0
    assert np.all(recovered[1:6, 1:6] == 1)

    filtered = instances_from_probabilities(certain(class_map), seed_depth_px=8.0, min_object_px=5)
    assert filtered.max() == 1
    assert filtered[6, 12] == 0 and not filtered[1:3, 8:10].any()


def test_ids_follow_each_objects_first_pixel_not_its_seed():
    class_map = np.zeros((6, 13), dtype=np.uint8)
    class_map[0:5, 1:4] = 2
    class_map[3, 2] = 1  # seed of the left object, after the right one's in raster order
    class_map[1:4, 9:12] = 2
    class_map[2, 10] = 1
    recovered = instances_from_probabilities(certain(class_map))
    assert recovered[0, 1] == 1
    assert np.all(recovered[0:5, 1:4] == 1)
    assert np.all(recovered[1:4, 9:12] == 2)


def test_no_foreground_gives_no_objects_and_the_shape_is_checked():
    assert not instances_from_probabilities(certain(np.zeros((4, 4), dtype=np.uint8))).any()
    with pytest.raises(ValueError, match=r"expected \(3, H, W\) probabilities"):
        instances_from_probabilities(np.zeros((2, 4, 4)))


def test_the_seed_depth_is_chosen_by_the_objects_it_gives():
    instances = touching_discs()
    no_boundary = certain((instances > 0).astype(np.uint8))
    depth, scores = choose_seed_depth([no_boundary], [instances])
    assert set(scores) == set(SEED_DEPTHS_PX)
    assert scores[depth] == 1.0 and depth == min(d for d in SEED_DEPTHS_PX if scores[d] == 1.0)
    one_object = (instances > 0).astype(np.int32)  # had the truth been one peanut-shaped object
    depth, scores = choose_seed_depth([no_boundary], [one_object])
    assert scores[8.0] == 1.0 and scores[0.5] < 1.0  # the neck is about 2.6 px deep
    assert depth == min(d for d in SEED_DEPTHS_PX if scores[d] == 1.0) == 4.0


def test_softmax_gives_probabilities():
    probabilities = softmax(np.array([[[0.0]], [[1000.0]], [[-5.0]]]))
    assert probabilities.shape == (3, 1, 1) and np.allclose(probabilities.sum(axis=0), 1.0)
    assert probabilities[1, 0, 0] == pytest.approx(1.0)


def test_match_counts_on_hand_made_cases():
    shape = (10, 12)
    truth = square(shape, slice(2, 6), slice(2, 6), value=3)
    assert match_counts(truth, square(shape, slice(2, 6), slice(2, 6), value=7)) == (1, 0, 0)
    # shifted by two columns: overlap 8, union 24, IoU 1/3
    assert match_counts(truth, square(shape, slice(2, 6), slice(4, 8))) == (0, 1, 1)
    # shifted by one column: overlap 12, union 20, IoU 0.6
    shifted = square(shape, slice(2, 6), slice(3, 7))
    assert match_counts(truth, shifted) == (1, 0, 0)
    assert match_counts(truth, shifted, threshold=0.7) == (0, 1, 1)

    extra = truth.copy()
    extra[8:10, 8:10] = 4
    assert match_counts(truth, extra) == (1, 1, 0)
    assert match_counts(extra, truth) == (1, 0, 1)
    assert match_counts(truth, np.zeros(shape, dtype=np.int32)) == (0, 0, 1)


def test_match_needs_iou_strictly_above_the_threshold():
    shape = (8, 12)
    truth = square(shape, slice(2, 6), slice(2, 6), value=1) + square(shape, slice(2, 6), slice(6, 10), value=2)
    merged = square(shape, slice(2, 6), slice(2, 10))  # IoU with either true object is exactly 0.5
    assert match_counts(truth, merged) == (0, 1, 2)


def test_instance_scores_sum_counts_over_images():
    shape = (12, 12)
    truth_a = square(shape, slice(0, 4), slice(0, 4), value=1) + square(shape, slice(6, 10), slice(0, 4), value=2)
    prediction_a = (
        square(shape, slice(0, 4), slice(0, 4), value=1)  # exact
        + square(shape, slice(6, 10), slice(2, 6), value=2)  # IoU 1/3
        + square(shape, slice(8, 12), slice(8, 12), value=3)  # nothing there
    )
    truth_b = square(shape, slice(3, 7), slice(3, 7), value=5)
    prediction_b = square(shape, slice(3, 7), slice(3, 7), value=1)
    # image a: tp 1, fp 2, fn 1, count error |3 - 2| / 2; image b: tp 1, fp 0, fn 0, count error 0
    scores = instance_scores([truth_a, truth_b], [prediction_a, prediction_b])
    assert scores["ap"] == pytest.approx(2 / 5)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["count_error"] == pytest.approx(0.25)
    assert scores["true_objects"] == 3
    assert scores["predicted_objects"] == 4


def test_empty_images_score_one_and_missing_predictions_score_zero():
    empty = np.zeros((5, 5), dtype=np.int32)
    scores = instance_scores([empty, empty], [empty, empty])
    assert scores == {
        "ap": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "count_error": 0.0,
        "true_objects": 0,
        "predicted_objects": 0,
    }
    missed = instance_scores([square((5, 5), slice(1, 3), slice(1, 3))], [empty])
    assert (missed["ap"], missed["precision"], missed["recall"], missed["f1"]) == (0.0, 1.0, 0.0, 0.0)
    assert missed["count_error"] == 1.0


def test_invalid_inputs_raise():
    image = square((5, 5), slice(1, 3), slice(1, 3))
    with pytest.raises(ValueError, match="0.5"):
        match_counts(image, image, threshold=0.3)
    with pytest.raises(ValueError, match="0.5"):
        instance_scores([image], [image], threshold=0.49)
    with pytest.raises(ValueError, match="shape"):
        match_counts(image, image[:4])
    with pytest.raises(ValueError):
        instance_scores([image], [])
    with pytest.raises(ValueError):
        instance_scores([], [])
