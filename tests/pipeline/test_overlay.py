import numpy as np
import pytest

from appliance.pipeline.overlay import CLASS_COLOURS, comparison_panel, display_image, overlay


def grey_ramp(height: int = 8, width: int = 8) -> np.ndarray:
    return np.arange(height * width, dtype=np.uint16).reshape(height, width, 1) * 10


def test_display_image_uint16_12bit_uses_its_range():
    image = np.linspace(0, 4095, 64 * 64).reshape(64, 64, 1).astype(np.uint16)
    out = display_image(image)
    assert out.dtype == np.uint8
    assert out.shape == (64, 64, 3)
    assert out.max() == 255  # not 4095 / 65535 * 255 ≈ 16
    assert out.min() == 0
    assert 100 < out[32, 32, 0] < 155
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_display_image_clips_outliers_by_percentile():
    image = np.full((100, 100, 1), 100, dtype=np.uint16)
    image[:50] = 200
    image[0, 0] = 60000  # one hot pixel (0.01 %) does not set the range
    out = display_image(image)
    assert out[99, 99, 0] == 0
    assert out[10, 10, 0] == 255


def test_display_image_two_channels_green_and_magenta():
    image = np.zeros((4, 4, 2), dtype=np.float32)
    image[:2, :, 0] = 1.0  # channel 0 on in the top half
    image[:, :2, 1] = 1.0  # channel 1 on in the left half
    out = display_image(image)
    assert out[3, 3].tolist() == [0, 0, 0]
    assert out[0, 3].tolist() == [0, 255, 0]  # channel 0 only: green
    assert out[3, 0].tolist() == [255, 0, 255]  # channel 1 only: magenta
    assert out[0, 0].tolist() == [255, 255, 255]


def test_display_image_three_or_more_channels_are_rgb():
    image = np.zeros((2, 2, 4), dtype=np.uint8)
    image[0, 0, 0] = image[0, 1, 1] = image[1, 0, 2] = image[1, 1, 3] = 9
    out = display_image(image)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 255, 0]
    assert out[1, 0].tolist() == [0, 0, 255]
    assert out[1, 1].tolist() == [0, 0, 0]  # fourth channel not shown


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_display_image_constant_image_has_no_nan(dtype):
    with np.errstate(all="raise"):
        out = display_image(np.full((5, 5, 1), 7, dtype=dtype))
    assert out.dtype == np.uint8
    assert (out == 0).all()


def test_display_image_non_finite_values_become_zero():
    image = np.array([[[0.0], [np.nan]], [[1.0], [np.inf]]])
    out = display_image(image)
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == [0, 0, 0]
    assert out[1, 0, 0] == 255


def test_display_image_does_not_modify_input():
    image = grey_ramp()
    before = image.copy()
    display_image(image)
    np.testing.assert_array_equal(image, before)


def test_display_image_refuses_bad_shape():
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        display_image(np.zeros((2, 2, 2, 2)))


def square_labels() -> np.ndarray:
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[1:5, 1:5] = 1
    labels[6, 6] = 2
    return labels


def test_overlay_dtype_shape_and_background_unchanged():
    image, labels = grey_ramp(), square_labels()
    base = display_image(image)
    out = overlay(image, labels)
    assert out.dtype == np.uint8
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[labels == 0], base[labels == 0])
    assert (out[labels > 0] != base[labels > 0]).any(axis=1).all()


def test_overlay_outline_in_full_class_colour_and_inside_blended():
    image = np.full((8, 8, 1), 0.5)
    image[0, 0] = 0.0
    image[7, 7] = 1.0  # stretch so that 0.5 lands in the middle
    labels = square_labels()
    base = display_image(image)
    out = overlay(image, labels, alpha=0.5)
    assert out[1, 1].tolist() == list(CLASS_COLOURS[0])  # on the outline
    assert out[6, 6].tolist() == list(CLASS_COLOURS[1])  # a one-pixel object is all outline
    expected = np.rint(0.5 * base[2, 2].astype(float) + 0.5 * np.array(CLASS_COLOURS[0])).astype(np.uint8)
    assert out[2, 2].tolist() == expected.tolist()  # inside: blended, not outlined
    no_outline = overlay(image, labels, alpha=0.5, outline=False)
    assert no_outline[1, 1].tolist() == expected.tolist()


def test_overlay_alpha_zero_without_outline_is_display_image():
    image, labels = grey_ramp(), square_labels()
    np.testing.assert_array_equal(overlay(image, labels, alpha=0.0, outline=False), display_image(image))


def test_overlay_colours_cycle_past_palette():
    labels = np.zeros((3, 3), dtype=np.uint16)
    labels[1, 1] = len(CLASS_COLOURS) + 1
    out = overlay(np.zeros((3, 3, 1)), labels, alpha=1.0)
    assert out[1, 1].tolist() == list(CLASS_COLOURS[0])


def test_overlay_does_not_modify_inputs():
    image, labels = grey_ramp(), square_labels()
    image_before, labels_before = image.copy(), labels.copy()
    overlay(image, labels)
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(labels, labels_before)


def test_overlay_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(7, 8\).*\(8, 8, 1\)"):
        overlay(grey_ramp(), np.zeros((7, 8), dtype=np.uint8))


def test_overlay_refuses_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        overlay(grey_ramp(), square_labels(), alpha=1.5)


def test_comparison_panel_shape_and_gaps():
    image, truth = grey_ramp(8, 6), np.zeros((8, 6), dtype=np.uint8)
    truth[2:4, 2:4] = 1
    prediction = np.zeros_like(truth)
    panel = comparison_panel(image, truth, prediction, gap=3)
    assert panel.dtype == np.uint8
    assert panel.shape == (8, 3 * 6 + 2 * 3, 3)
    assert (panel[:, 6:9] == 255).all()
    assert (panel[:, 15:18] == 255).all()
    np.testing.assert_array_equal(panel[:, :6], display_image(image))
    np.testing.assert_array_equal(panel[:, 9:15], overlay(image, truth))
    np.testing.assert_array_equal(panel[:, 18:], overlay(image, prediction))


def test_comparison_panel_without_gap():
    image, labels = grey_ramp(), square_labels()
    assert comparison_panel(image, labels, labels, gap=0).shape == (8, 24, 3)


def test_comparison_panel_refuses_mismatched_prediction_and_negative_gap():
    image, labels = grey_ramp(), square_labels()
    with pytest.raises(ValueError, match="prediction"):
        comparison_panel(image, labels, labels[:4])
    with pytest.raises(ValueError, match="gap"):
        comparison_panel(image, labels, labels, gap=-1)


def test_overlay_outlines_each_object_so_touching_objects_of_one_class_are_told_apart():
    image = np.zeros((10, 12, 1), dtype=np.uint8)
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[2:8, 2:10] = 1
    instances = np.zeros((10, 12), dtype=np.uint32)
    instances[2:8, 2:6], instances[2:8, 6:10] = 1, 2
    red = list(CLASS_COLOURS[0])
    by_class = overlay(image, labels)
    by_object = overlay(image, labels, instances=instances)
    assert by_class[4, 5].tolist() != red and by_class[4, 6].tolist() != red  # one blob: its middle is blended
    assert by_object[4, 5].tolist() == red and by_object[4, 6].tolist() == red  # the contact line is outlined
    assert np.array_equal(by_object[labels == 0], by_class[labels == 0])


def test_a_scale_bar_of_a_round_length_appears_only_with_a_pixel_size():
    from appliance.pipeline.overlay import scale_bar_length_um

    image = np.zeros((200, 400, 1), dtype=np.uint8)
    labels = np.zeros((200, 400), dtype=np.uint8)
    plain = overlay(image, labels)
    assert plain.max() == 0
    assert scale_bar_length_um(400, 0.5) == 20.0  # a fifth of 200 µm is 40 µm: the largest 1-2-5 below is 20
    barred = overlay(image, labels, pixel_size_um=0.5)
    white_rows = [(barred[y, :, :] == 255).all(axis=1).sum() for y in range(200)]
    assert max(white_rows) == 40  # 20 µm at 0.5 µm per pixel
    assert np.flatnonzero((barred[:, :200] > 0).any(axis=(1, 2))).size == 0  # the left half is untouched
    with pytest.raises(ValueError, match="positive"):
        scale_bar_length_um(400, 0.0)
