"""Optical meta-features: hand-computed radiomics values, averaging, sampling and the meta-base reductions."""

import json
import logging
import re

import numpy as np
import pytest
from sklearn.decomposition import PCA

from appliance.automl import optical
from appliance.automl.optical import (
    OPTICAL_COLUMNS,
    OPTICAL_FEATURE_NAMES,
    grey_image,
    image_radiomics,
    optical_vector,
    set_radiomics,
)
from appliance.metalearning.features import OpticalReduction

INDEX = {name: i for i, name in enumerate(OPTICAL_FEATURE_NAMES)}


def feature(vector, name):
    return vector[INDEX[name]]


def two_square_image(dtype=np.float64, low=100, high=200):
    """40x40: background 0, class 1 a 10x10 square at ``low``, class 2 a 10x10 square at ``high``."""
    image = np.zeros((40, 40), dtype=dtype)
    mask = np.zeros((40, 40), dtype=np.int64)
    image[5:15, 5:15], mask[5:15, 5:15] = low, 1
    image[20:30, 20:30], mask[20:30, 20:30] = high, 2
    return image, mask


def textured_image(seed, shape=(48, 48), classes=2):
    """Random 8-bit texture with ``classes`` rectangular class ROIs."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*shape, 1), dtype=np.uint8)
    mask = np.zeros(shape, dtype=np.int64)
    for k in range(1, classes + 1):
        top = 2 + 12 * (k - 1)
        mask[top : top + 10, 4:40] = k
    return image, mask


class FakeSet:
    """Duck-typed LabelledSet that counts reads."""

    def __init__(self, items, num_classes=2, name="fake"):
        self.items = items
        self.stems = tuple(f"img{i}" for i in range(len(items)))
        self.num_classes = num_classes
        self.name = name
        self.reads = []

    def read(self, index):
        self.reads.append(index)
        return self.items[index]


def test_feature_names_are_93_unique_csv_safe_columns():
    assert len(OPTICAL_FEATURE_NAMES) == 93
    assert len(set(OPTICAL_FEATURE_NAMES)) == 93
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", name) for name in OPTICAL_FEATURE_NAMES)
    assert OPTICAL_COLUMNS == tuple("opt_" + name for name in OPTICAL_FEATURE_NAMES)
    assert OPTICAL_FEATURE_NAMES[:2] == ("firstorder_10Percentile", "firstorder_90Percentile")
    assert "firstorder_Mean" in INDEX and "glcm_Contrast" in INDEX and "ngtdm_Strength" in INDEX


def test_grey_image_is_channel_mean_scaled_between_robust_extremes():
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)  # rows 10..19 stay black: grey 0
    rgb[:10] = (30, 60, 90)  # grey 60
    rgb[20:] = (120, 120, 120)  # grey 120
    rgb[25, 25] = (255, 255, 255)  # one hot pixel (1/1200 < 0.1 %): beyond the 99.9 percentile, clipped
    grey = grey_image(rgb)
    assert grey[5, 5] == pytest.approx(60 / 120)
    assert grey[15, 5] == 0.0 and grey[22, 5] == pytest.approx(1.0) and grey[25, 25] == 1.0
    assert np.array_equal(grey_image(np.full((5, 5, 1), 7, np.uint16)), np.zeros((5, 5)))  # constant -> 0


def test_grey_image_ignores_bit_depth_and_crops_centrally():
    image8, _ = textured_image(0)
    image16 = image8.astype(np.uint16) * 257  # the same scene stored as 16-bit
    np.testing.assert_allclose(grey_image(image16), grey_image(image8), rtol=0, atol=1e-12)
    big = np.arange(6 * 8, dtype=np.float64).reshape(6, 8)
    cropped = grey_image(big, max_side=4)
    assert cropped.shape == (4, 4)
    np.testing.assert_array_equal(np.argsort(cropped.ravel()), np.arange(16))  # rows 1..4, columns 2..5 in order


def test_constant_roi_has_its_scaled_value_as_mean_and_no_variance():
    image, mask = two_square_image()
    mask[mask == 2] = 0  # the 200 square only fixes the top of the scale (g = 100 / 200 = 0.5 in the ROI)
    vector = image_radiomics(image, mask, num_classes=1)
    assert vector.shape == (93,) and np.all(np.isfinite(vector))
    for name in ("Mean", "Median", "Minimum", "Maximum", "10Percentile", "90Percentile", "RootMeanSquared"):
        assert feature(vector, f"firstorder_{name}") == pytest.approx(0.5)
    for name in ("Variance", "Range", "InterquartileRange", "MeanAbsoluteDeviation"):
        assert feature(vector, f"firstorder_{name}") == pytest.approx(0.0, abs=1e-12)
    assert feature(vector, "firstorder_Energy") == pytest.approx(100 * 0.5**2)  # sum of g^2 over 100 pixels
    assert feature(vector, "firstorder_Uniformity") == pytest.approx(1.0)  # one grey level


def test_two_classes_are_averaged():
    image, mask = two_square_image()
    vector = image_radiomics(image, mask, num_classes=2)
    assert feature(vector, "firstorder_Mean") == pytest.approx((0.5 + 1.0) / 2)
    assert feature(vector, "firstorder_Energy") == pytest.approx((100 * 0.25 + 100 * 1.0) / 2)
    assert feature(vector, "firstorder_Variance") == pytest.approx(0.0, abs=1e-12)


def test_image_vector_is_the_mean_of_the_class_vectors_on_texture():
    image, mask = textured_image(1)
    only = [np.where(mask == k, 1, 0) for k in (1, 2)]
    per_class = [image_radiomics(image, m, num_classes=1) for m in only]
    np.testing.assert_allclose(image_radiomics(image, mask, num_classes=2), np.mean(per_class, axis=0), rtol=1e-12)
    assert not np.allclose(per_class[0], per_class[1])  # different textures, so the mean is a real average


def test_rgb_is_converted_to_the_channel_mean():
    grey, mask = two_square_image()
    rgb = np.zeros((40, 40, 3))
    rgb[5:15, 5:15] = (30, 60, 210)  # mean 100
    rgb[20:30, 20:30] = (200, 190, 210)  # mean 200
    np.testing.assert_allclose(image_radiomics(rgb, mask, 2), image_radiomics(grey, mask, 2), rtol=1e-12)
    assert feature(image_radiomics(rgb, mask, 2), "firstorder_Mean") == pytest.approx(0.75)


def test_16_bit_image_gives_the_8_bit_features():
    image8, mask = textured_image(2)
    image16 = image8.astype(np.uint16) * 257
    np.testing.assert_allclose(image_radiomics(image16, mask, 2), image_radiomics(image8, mask, 2), rtol=1e-9)


def test_unusable_rois_are_skipped(caplog):
    image, mask = two_square_image()
    reference = image_radiomics(image, mask, num_classes=2)
    mask[35, 35] = 3  # one pixel: pyradiomics rejects it
    mask[38, 2:30] = 4  # one row: pyradiomics rejects it (needs two dimensions)
    mask[0:2, 0:3] = 5  # 6 pixels: below min_roi_pixels
    with caplog.at_level(logging.WARNING, logger="appliance.automl.optical"):
        vector = image_radiomics(image, mask, num_classes=6, min_roi_pixels=1)
    np.testing.assert_allclose(vector, (2 * reference + feature_vector_of_class_5(image, mask)) / 3, rtol=1e-12)
    skipped = [r.getMessage() for r in caplog.records]
    assert any("class 3" in m for m in skipped) and any("class 4" in m for m in skipped)
    np.testing.assert_allclose(image_radiomics(image, mask, num_classes=6, min_roi_pixels=7), reference, rtol=1e-12)


def feature_vector_of_class_5(image, mask):
    return image_radiomics(image, np.where(mask == 5, 1, 0), num_classes=1, min_roi_pixels=1)


def test_no_usable_roi_gives_none():
    image, mask = two_square_image()
    assert image_radiomics(image, np.zeros_like(mask), num_classes=2) is None
    assert image_radiomics(image, mask, num_classes=2, min_roi_pixels=101) is None


def test_set_radiomics_uses_at_most_max_images_seeded_and_deterministic():
    items = [textured_image(seed) for seed in range(12)]
    fake = FakeSet(items)
    result = set_radiomics(fake, max_images=4, seed=3)
    order = np.random.default_rng(3).permutation(12)[:4]
    assert fake.reads == list(order)
    expected = np.mean([image_radiomics(*items[i], 2) for i in order], axis=0)
    assert list(result) == list(OPTICAL_COLUMNS)
    np.testing.assert_allclose(optical_vector(result), expected, rtol=1e-12)
    assert set_radiomics(FakeSet(items), max_images=4, seed=3) == result
    assert set_radiomics(FakeSet(items), max_images=4, seed=4) != result


def test_set_radiomics_uses_all_images_of_a_small_set_and_skips_empty_masks():
    items = [textured_image(seed) for seed in range(3)]
    empty = (items[0][0], np.zeros_like(items[0][1]))
    fake = FakeSet([items[0], empty, items[1], items[2]])
    result = set_radiomics(fake, max_images=20)
    assert sorted(fake.reads) == [0, 1, 2, 3]
    expected = np.mean([image_radiomics(*item, 2) for item in items], axis=0)
    np.testing.assert_allclose(optical_vector(result), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="no image has a class ROI"):
        set_radiomics(FakeSet([empty, empty]))


def z_scored(vectors: np.ndarray) -> np.ndarray:
    """What the reduction does to the fitted sets first: a feature-wise z-score over them."""
    return OpticalReduction().fit({f"s{i}": v for i, v in enumerate(vectors)})._z(vectors)


def test_image_level_normalisation_is_cancelled_by_the_set_level_one():
    rng = np.random.default_rng(0)
    scales = np.array([1e-3, 1.0, 50.0, 1e4, 3.0])
    offsets = np.array([0.0, -2.0, 100.0, 5e5, 0.1])
    images = [rng.normal(size=(20, 5)) * scales * rng.uniform(0.5, 2) + offsets for _ in range(7)]
    # paper: z-score every feature over all image vectors, average per set, z-score over the sets
    stacked = np.concatenate(images)
    paper_sets = np.array([((x - stacked.mean(axis=0)) / stacked.std(axis=0)).mean(axis=0) for x in images])
    # here: average the raw image vectors per set, z-score over the sets only
    ours = np.array([x.mean(axis=0) for x in images])
    np.testing.assert_allclose(z_scored(ours), z_scored(paper_sets), atol=1e-9)


def test_the_z_score_keeps_constant_features_at_zero_and_fills_missing_values_with_the_mean():
    vectors = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    normalised = z_scored(vectors)
    np.testing.assert_allclose(normalised[:, 0], [-2 / np.sqrt(8 / 3), 0.0, 2 / np.sqrt(8 / 3)])
    np.testing.assert_array_equal(normalised[:, 1], [0.0, 0.0, 0.0])
    reduction = OpticalReduction().fit({f"s{i}": v for i, v in enumerate(vectors)})
    np.testing.assert_array_equal(reduction._z(np.array([[np.nan, 5.0, 5.0]])), [[0.0, 0.0, 0.0]])


def random_sets(n, seed=0):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.01, 100, size=93)
    return {f"set{i}": rng.normal(size=93) * scales + 10 for i in range(n)}


def test_reduction_cosine_and_pca_on_the_fitted_sets():
    sets = random_sets(6)
    reduction = OpticalReduction().fit(sets)
    rows = np.array(list(sets.values()))
    cosine = reduction.cosine(rows)
    assert reduction.set_names == sorted(sets) and cosine.shape == (6, 6)
    np.testing.assert_allclose(np.diag(cosine), 1.0)
    assert np.all(np.abs(cosine) <= 1 + 1e-12)
    centred = z_scored(rows)
    expected = PCA(n_components=4, svd_solver="full").fit_transform(centred)
    projected = reduction.pca(rows)
    assert projected.shape == (6, 4)
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), atol=1e-9)  # the same axes, signs fixed


def test_reduction_pads_pca_when_few_sets():
    sets = random_sets(3)
    projected = OpticalReduction().fit(sets).pca(np.array([sets["set0"]]))
    assert projected.shape == (1, 4) and projected[0, 3] == 0 and np.any(projected[0, :2] != 0)
    assert abs(projected[0, 2]) < 1e-9  # three centred sets span two dimensions
    single = OpticalReduction().fit({"only": sets["set0"]})
    np.testing.assert_array_equal(single.pca(np.array([sets["set1"]])), np.zeros((1, 4)))
    np.testing.assert_array_equal(single.cosine(np.array([sets["set1"]])), [[0.0]])  # the one z-scored set is 0


def test_reduction_round_trips_through_json():
    sets = random_sets(5, seed=1)
    reduction = OpticalReduction().fit(sets)
    restored = OpticalReduction.from_dict(json.loads(json.dumps(reduction.to_dict())))
    new = np.array([random_sets(1, seed=2)["set0"]])
    np.testing.assert_array_equal(restored.pca(new), reduction.pca(new))
    np.testing.assert_array_equal(restored.cosine(new), reduction.cosine(new))


def test_demo_set_gives_finite_features_for_every_column(demo_set):
    result = set_radiomics(demo_set)
    assert list(result) == ["opt_" + name for name in OPTICAL_FEATURE_NAMES]
    assert all(np.isfinite(value) for value in result.values())
    assert 0 < result["opt_firstorder_Mean"] < 1  # on the [0, 1] grey scale


def test_pyradiomics_logging_is_quiet(demo_set, capfd):
    image, mask = demo_set.read(0)
    image_radiomics(image, mask, demo_set.num_classes)
    assert logging.getLogger("radiomics").getEffectiveLevel() >= logging.ERROR
    assert capfd.readouterr().err == ""
    assert optical.RADIOMICS_SETTINGS["force2D"] is True
