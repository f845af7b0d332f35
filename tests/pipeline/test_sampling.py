import numpy as np
import pytest

from appliance.pipeline.sampling import (
    class_pixel_fractions,
    epoch_order,
    is_imbalanced,
    patch_factors,
    sampling_factors,
)


def test_paper_worked_example():
    factors = sampling_factors(np.array([0.1, 0.1, 0.7]))
    np.testing.assert_allclose(factors, [1.5, 1.5, 0.36 / 0.7])
    assert np.round(factors, 3).tolist() == [1.5, 1.5, 0.514]


def test_imbalance_threshold_is_mu_plus_three_quarters_mu():
    # n = 2, sum = 1: mu = 0.5, threshold t = 0.875
    assert not is_imbalanced(np.array([0.125, 0.875]))
    assert is_imbalanced(np.array([0.12, 0.88]))
    # the threshold uses the sum of x, which may be below 1 (unlabelled pixels): mu = 0.3, t = 0.525
    assert not is_imbalanced(np.array([0.1, 0.28, 0.52]))
    assert is_imbalanced(np.array([0.1, 0.27, 0.53]))


def test_balanced_sets_are_not_resampled():
    assert sampling_factors(np.array([0.4, 0.6])).tolist() == [1.0, 1.0]


def test_upsampling_is_capped_at_two_and_downsampling_is_not():
    factors = sampling_factors(np.array([0.95, 0.05]))  # mu 0.5: low 0.25, high 0.6
    assert factors[1] == 2.0  # 0.25 / 0.05 = 5 -> capped
    assert factors[0] == pytest.approx(0.6 / 0.95)


def test_classes_between_the_bounds_keep_factor_one():
    factors = sampling_factors(np.array([0.05, 0.3, 0.65]))  # mu 1/3: low 1/6, high 0.4
    assert factors[1] == 1.0
    assert factors[0] == pytest.approx(2.0)
    assert factors[2] == pytest.approx(0.4 / 0.65)


def test_class_fractions_ignore_padding_and_count_background():
    masks = [np.array([[0, 0, 1, -1]]), np.array([[2, 2, 0, -1]])]
    assert class_pixel_fractions(masks, num_classes=2).tolist() == pytest.approx([0.5, 1 / 6, 1 / 3])


def test_patch_factor_is_the_largest_factor_present():
    class_factors = np.array([0.5, 2.0, 1.0])
    presence = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=bool)
    assert patch_factors(presence, class_factors).tolist() == [0.5, 2.0, 1.0, 1.0]


def test_epoch_order_repeats_patches_by_their_factor_on_average():
    rng = np.random.default_rng(0)
    factors = np.array([2.0, 1.0, 0.5, 1.5])
    counts = np.zeros(4)
    for _ in range(400):
        counts += np.bincount(epoch_order(factors, rng), minlength=4)
    np.testing.assert_allclose(counts / 400, factors, atol=0.08)
