"""Tests of appliance.data.io: the channel rule, bit depths, refused stacks, broken files, normalise()."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from appliance.data.io import normalise, read_format_json, read_image, read_mask
from appliance.errors import ImageReadError, ModelFileError

H, W = 24, 32


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _truncate(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# --- PNG / JPEG -----------------------------------------------------------------------------------


def test_png_grey_8bit_is_hw1_uint8(tmp_path):
    grey = _rng().integers(0, 256, (H, W), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", grey)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (H, W, 1)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[:, :, 0], grey)


def test_png_grey_16bit_keeps_values(tmp_path):
    grey = _rng().integers(0, 4096, (H, W), dtype=np.uint16)  # 12-bit data in uint16: never rescaled
    iio.imwrite(tmp_path / "a.png", grey)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (H, W, 1)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image[:, :, 0], grey)


def test_png_rgb_is_hw3(tmp_path):
    rgb = _rng().integers(0, 256, (H, W, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgb)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, rgb)


def test_png_rgba_drops_alpha(tmp_path):
    rgba = _rng().integers(0, 256, (H, W, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, rgba[:, :, :3])


def test_png_grey_alpha_drops_alpha(tmp_path):
    grey_alpha = _rng().integers(0, 256, (H, W, 2), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", grey_alpha)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (H, W, 1)
    np.testing.assert_array_equal(image[:, :, 0], grey_alpha[:, :, 0])


def test_jpeg_rgb_and_grey(tmp_path):
    rgb = np.full((H, W, 3), (200, 100, 50), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgb.jpg", rgb)
    iio.imwrite(tmp_path / "grey.JPEG", np.full((H, W), 90, dtype=np.uint8), extension=".jpeg")
    image = read_image(tmp_path / "rgb.jpg")
    assert image.shape == (H, W, 3)
    assert image.dtype == np.uint8
    assert np.abs(image.astype(int) - rgb).max() <= 3  # lossy, but close
    assert read_image(tmp_path / "grey.JPEG").shape == (H, W, 1)


# --- TIFF -----------------------------------------------------------------------------------------


def test_tiff_grey_uint16(tmp_path):
    grey = _rng().integers(0, 65536, (H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", grey)
    image = read_image(tmp_path / "a.tif")
    assert image.shape == (H, W, 1)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image[:, :, 0], grey)


def test_tiff_rgb(tmp_path):
    rgb = _rng().integers(0, 256, (H, W, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tiff", rgb, photometric="rgb")
    image = read_image(tmp_path / "a.tiff")
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, rgb)


@pytest.mark.parametrize("channels", [2, 4])
def test_tiff_multichannel_cyx_keeps_every_channel(tmp_path, channels):
    cyx = _rng().integers(0, 65536, (channels, H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", cyx, photometric="minisblack", metadata={"axes": "CYX"})
    image = read_image(tmp_path / "a.tif")
    assert image.shape == (H, W, channels)
    assert image.dtype == np.uint16
    for c in range(channels):
        np.testing.assert_array_equal(image[:, :, c], cyx[c])


def test_tiff_single_plane_axes_are_squeezed(tmp_path):
    zyx = _rng().integers(0, 256, (1, H, W), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", zyx, metadata={"axes": "ZYX"})
    assert read_image(tmp_path / "a.tif").shape == (H, W, 1)


def test_tiff_z_stack_is_refused_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, H, W), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "stack.tif")
    assert "stack.tif" in str(info.value)
    assert "stack" in info.value.problem and "Z=5" in info.value.problem
    assert "2D" in info.value.problem


def test_tiff_imagej_z_stack_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, H, W), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError, match="ij.tif.*stack"):
        read_image(tmp_path / "ij.tif")


# --- broken files ---------------------------------------------------------------------------------


def test_truncated_png_names_the_file(tmp_path):
    iio.imwrite(tmp_path / "cut.png", _rng().integers(0, 65536, (H, W), dtype=np.uint16))
    _truncate(tmp_path / "cut.png")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "cut.png")
    assert info.value.path == tmp_path / "cut.png"
    assert "cut.png" in str(info.value)
    assert "truncated" in info.value.problem


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_names_the_file(tmp_path, compression):
    tifffile.imwrite(
        tmp_path / "cut.tif", _rng().integers(0, 65536, (64, 64), dtype=np.uint16), compression=compression
    )
    _truncate(tmp_path / "cut.tif")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "cut.tif")
    assert "cut.tif" in str(info.value)
    assert "truncated" in info.value.problem


def test_empty_missing_and_unsupported_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="empty.png.*empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="missing.tif.*not found"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(ImageReadError, match=r"notes.txt.*\.tif, \.tiff, \.png"):
        read_image(tmp_path / "notes.txt")


# --- masks ----------------------------------------------------------------------------------------


def test_read_mask_grey_png_and_tiff(tmp_path):
    labels = _rng().integers(0, 3, (H, W), dtype=np.uint8)
    iio.imwrite(tmp_path / "m.png", labels)
    tifffile.imwrite(tmp_path / "m.tif", labels.astype(np.uint16))
    for name in ("m.png", "m.tif"):
        mask = read_mask(tmp_path / name)
        assert mask.shape == (H, W)
        assert np.issubdtype(mask.dtype, np.integer)
        np.testing.assert_array_equal(mask, labels)


def test_read_mask_grey_saved_as_rgb_is_accepted(tmp_path):
    labels = _rng().integers(0, 3, (H, W), dtype=np.uint8)
    iio.imwrite(tmp_path / "m.png", np.stack([labels] * 3, axis=-1))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), labels)


def test_read_mask_colour_is_refused(tmp_path):
    iio.imwrite(tmp_path / "m.png", _rng().integers(0, 256, (H, W, 3), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="m.png.*colour"):
        read_mask(tmp_path / "m.png")


def test_read_mask_float_labels(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", np.array([[0.0, 1.0], [2.0, 0.0]], dtype=np.float32))
    tifffile.imwrite(tmp_path / "bad.tif", np.array([[0.0, 0.5], [2.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "ok.tif"), [[0, 1], [2, 0]])
    with pytest.raises(ImageReadError, match="bad.tif.*non-integer"):
        read_mask(tmp_path / "bad.tif")


# --- normalise ------------------------------------------------------------------------------------


def test_normalise_per_channel_zero_mean_unit_std():
    rng = _rng()
    image = np.stack(
        [rng.integers(0, 4096, (H, W)), rng.integers(100, 200, (H, W)), np.full((H, W), 7)], axis=-1
    ).astype(np.uint16)
    before = image.copy()
    out = normalise(image)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, :, :2].std(axis=(0, 1)), 1.0, atol=1e-4)
    np.testing.assert_array_equal(out[:, :, 2], 0.0)  # a constant channel stays finite
    np.testing.assert_array_equal(image, before)  # input not modified


def test_normalise_is_identical_for_the_same_input():
    image = _rng().integers(0, 65536, (H, W, 2), dtype=np.uint16)
    first, second = normalise(image), normalise(image.copy())
    assert first.tobytes() == second.tobytes()


def test_normalise_refuses_2d_input():
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        normalise(np.zeros((H, W)))


def test_atomic_write_gives_the_usual_file_permissions(tmp_path):
    from appliance.data.io import atomic_write

    path = atomic_write(tmp_path / "out.txt", lambda tmp: Path(tmp).write_text("done"))
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_text() == "done"
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_read_format_json_names_the_file_the_problem_and_the_remedy(tmp_path):
    path = tmp_path / "model.json"
    with pytest.raises(ModelFileError, match=r"model.json not found; export again"):
        read_format_json(path, key="format", expected=1, remedy="export again")
    path.write_text("{not json")
    with pytest.raises(ModelFileError, match=r"model.json is not valid JSON .*; export again"):
        read_format_json(path, key="format", expected=1, remedy="export again")
    path.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="holds a JSON list, not an object"):
        read_format_json(path, key="format", expected=1, remedy="export again")
    path.write_text('{"format": 2}')
    with pytest.raises(ModelFileError, match="has format 2, this version reads 1; export again"):
        read_format_json(path, key="format", expected=1, remedy="export again")
    path.write_text('{"format": 1, "x": "y"}')
    assert read_format_json(path, key="format", expected=1, remedy="export again") == {"format": 1, "x": "y"}
    assert path.read_text() == '{"format": 1, "x": "y"}'
