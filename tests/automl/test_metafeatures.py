"""Meta-features against values computed by hand."""

import numpy as np
import pytest

from appliance.automl.metafeatures import (
    ENGINEERED_NAMES,
    HANDCRAFTED_NAMES,
    USER_NAMES,
    class_imbalance,
    engineered_features,
    handcrafted_features,
    handcrafted_from_masks,
    roi_areas,
    set_features,
    user_features,
)
from appliance.pipeline.config import PipelineConfig


def test_class_imbalance_of_the_issue_example():
    assert class_imbalance([0.2, 0.1, 0.7]) == pytest.approx(0.4)


def test_class_imbalance_is_zero_for_balanced_classes_and_for_one_class():
    assert class_imbalance([0.25, 0.25, 0.25, 0.25]) == 0.0
    assert class_imbalance([1.0]) == 0.0


def test_roi_areas_use_8_connectivity_per_class():
    mask = np.zeros((6, 6), dtype=np.int64)
    mask[0, 0] = mask[1, 1] = 1  # diagonal neighbours: one object of 2 px
    mask[4:6, 4:6] = 1  # 4 px
    mask[0, 4:6] = 2  # 2 px of class 2, touching nothing of class 2
    assert sorted(roi_areas(mask, 2).tolist()) == [2, 2, 4]


def _two_masks() -> list[np.ndarray]:
    first = np.zeros((4, 5), dtype=np.int64)
    first[0, 0:2] = 1  # object of 2 px
    first[2:4, 2:4] = 1  # object of 4 px
    second = np.zeros((4, 5), dtype=np.int64)
    second[1:4, 0:2] = 2  # object of 6 px, class 2
    return [first, second]


def test_handcrafted_features_by_hand():
    features = handcrafted_from_masks(_two_masks(), num_classes=2, channels=3, shapes=[(4, 5), (4, 5)])
    assert list(features) == list(HANDCRAFTED_NAMES)
    assert features["hc_images"] == 2
    assert features["hc_classes"] == 2
    # 40 px: class 1 = 6, class 2 = 6, background = 28 -> fractions 0.7, 0.15, 0.15
    assert features["hc_class_imbalance"] == pytest.approx((0.55 + 0.55 + 0.0) / 3)
    assert features["hc_mean_shape"] == pytest.approx((5 + 4) / 2)
    assert features["hc_rgb"] == 1
    # image 1 areas [2, 4]: mean 3, std 1, min 2, max 4; image 2 areas [6]: mean 6, std 0, min 6, max 6
    assert features["hc_roi_mean"] == pytest.approx(4.5)
    assert features["hc_roi_std"] == pytest.approx(0.5)
    assert features["hc_roi_min"] == pytest.approx(4.0)
    assert features["hc_roi_max"] == pytest.approx(5.0)


def test_roi_statistics_skip_images_without_objects():
    empty = np.zeros((4, 5), dtype=np.int64)
    with_empty = handcrafted_from_masks([*_two_masks(), empty], num_classes=2, channels=1, shapes=[(4, 5)] * 3)
    assert with_empty["hc_roi_mean"] == pytest.approx(4.5)
    assert with_empty["hc_rgb"] == 0


def test_engineered_features_by_hand():
    set_values = {"hc_mean_shape": 256.0, "hc_images": 20.0, "hc_classes": 3.0}
    config = PipelineConfig(
        patch_size=64, batch_size=32, learning_rate=0.0005, encoder="resnet50", flip=0.5, grid_distortion=0.5
    )
    features = engineered_features(set_values, config)
    assert list(features) == list(ENGINEERED_NAMES)
    assert features["eng_patches_per_image"] == pytest.approx(16.0)  # (256 / 64)^2
    assert features["eng_batches_per_epoch"] == pytest.approx(10.0)  # 16 * 20 / 32
    assert features["eng_augmentation_batches"] == pytest.approx(40.0)  # 2 augmentations * 2 * 10
    assert features["eng_lr_batches"] == pytest.approx(0.005)
    assert features["eng_backbone_classes"] == pytest.approx(6.0)  # 2 * 3


def test_user_features_one_hot_and_magnification():
    features = user_features({"microscopy": "phase_contrast", "object": "cells", "magnification": 10})
    assert list(features) == list(USER_NAMES) and len(features) == 11
    assert {name for name, value in features.items() if value} == {
        "user_microscopy_phase_contrast",
        "user_object_cells",
        "user_magnification",
        "user_magnification_known",
    }
    assert features["user_magnification"] == 10


def test_user_features_unknown_and_other_are_all_zero():
    assert not any(user_features({}).values())
    assert not any(user_features({"microscopy": "other", "object": "other"}).values())


def test_handcrafted_features_of_the_demo_set(demo_set):
    features = handcrafted_features(demo_set)
    assert features["hc_images"] == 8
    assert features["hc_classes"] == 1
    assert features["hc_mean_shape"] == 256
    assert features["hc_rgb"] == 0
    assert 0 < features["hc_roi_min"] <= features["hc_roi_mean"] <= features["hc_roi_max"]


def test_set_features_without_optical_images(demo_set):
    features = set_features(demo_set, metadata={"microscopy": "phase_contrast"}, optical_images=0)
    assert set(features) == set(HANDCRAFTED_NAMES) | set(USER_NAMES)
    assert features["user_microscopy_phase_contrast"] == 1
