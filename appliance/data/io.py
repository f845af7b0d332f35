"""Reading and writing microscopy images and label masks.

Channel rule (every reader returns ``(H, W, C)``, original dtype, ``C >= 1``):

- PNG / JPEG: grey gives ``C = 1``; RGB gives ``C = 3``; an alpha channel is dropped
  (grey+alpha -> 1, RGBA -> 3).
- TIFF: the axes that tifffile reports decide. ``YX`` is grey. Samples (``S``, e.g. RGB stored
  interleaved) and channels (``C``) become the last axis, in file order, so a 2- or 4-channel
  fluorescence TIFF keeps all its channels. Axes of length 1 are squeezed. Any other axis longer
  than 1 (``Z`` slices, ``T`` time points, ``Q``/``I`` unnamed planes) makes the file a stack, which
  is refused: export a single 2D plane (or a maximum projection) instead.
- Pixel values are never rescaled on read: 16-bit stays 16-bit (no silent 12-bit -> [0, 0.06]).

Normalisation (:func:`normalise`) is the single intensity transform shared by training, PyTorch
inference and ONNX inference: per image and per channel, ``(x - mean) / max(std, 1e-6)`` in float32,
computed on the whole image before any tiling.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from appliance.errors import ImageReadError, ModelFileError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
NORMALISATION_EPS = 1e-6
NORMALISATION = {"method": "zscore_per_image_channel", "eps": NORMALISATION_EPS}


def is_image_file(path: str | Path) -> bool:
    """True when ``path`` has one of the supported image suffixes (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image as ``(H, W, C)`` in its original dtype.

    Raises
    ------
    ImageReadError
        When the file is missing, unreadable or truncated, is a 3D/time stack, or has an
        unsupported suffix. The message names the file and says what to do.
    """
    path = Path(path)
    array = _read_array(path)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageReadError(path, f"expected a 2D image, got an array of shape {array.shape}")
    if array.shape[2] in (2, 4) and path.suffix.lower() not in TIFF_SUFFIXES:
        array = array[:, :, : array.shape[2] - 1]  # drop the alpha channel of grey+alpha / RGBA
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(path, f"unsupported pixel type {array.dtype}; save as 8/16-bit integer or float")
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label mask as ``(H, W)`` integer array (0 = background, 1..K = classes).

    Raises
    ------
    ImageReadError
        When the file is unreadable, not single-channel, or not integer-valued.
    """
    path = Path(path)
    array = _read_array(path)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        colour = array[:, :, :3]
        if np.array_equal(colour[:, :, 0], colour[:, :, 1]) and np.array_equal(colour[:, :, 0], colour[:, :, 2]):
            array = colour[:, :, 0]  # a grey mask saved as RGB is still a label image
        else:
            raise ImageReadError(
                path,
                "mask is a colour image; save masks as single-channel integer label images "
                "(0 = background, 1..K = classes)",
            )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ImageReadError(path, f"mask must be a 2D label image, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ImageReadError(path, "mask holds non-integer values; save masks as integer label images")
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageReadError(path, f"mask has unsupported pixel type {array.dtype}")
    return array


def normalise(image: np.ndarray) -> np.ndarray:
    """Per-image, per-channel z-score of an ``(H, W, C)`` image, as float32 ``(H, W, C)``.

    Examples
    --------
    >>> out = normalise(np.array([[[0], [2]], [[4], [6]]], dtype=np.uint16))
    >>> [round(float(v), 3) for v in out.ravel()]
    [-1.342, -0.447, 0.447, 1.342]
    """
    if image.ndim != 3:
        raise ValueError(f"normalise expects an (H, W, C) image, got shape {image.shape}")
    values = image.astype(np.float64)
    mean = values.mean(axis=(0, 1), keepdims=True)
    std = values.std(axis=(0, 1), keepdims=True)
    return ((values - mean) / np.maximum(std, NORMALISATION_EPS)).astype(np.float32)


def write_label_image(path: str | Path, labels: np.ndarray) -> Path:
    """Write an ``(H, W)`` label image as a compressed TIFF (uint8 when K < 256), atomically."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib"))


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an 8-bit ``(H, W)`` or ``(H, W, 3)`` image as PNG, atomically."""
    return atomic_write(path, lambda tmp: iio.imwrite(tmp, image, extension=".png"))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_format_json(path: str | Path, *, key: str, expected: object, remedy: str) -> dict:
    """A JSON object file written by this appliance whose ``key`` must equal ``expected``.

    Raises :class:`~appliance.errors.ModelFileError` naming the file, what is wrong and ``remedy``
    (what to do) when it is missing, not JSON, not an object or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} not found; {remedy}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc}); {remedy}") from exc
    if not isinstance(value, dict):
        raise ModelFileError(f"{path} holds a JSON {type(value).__name__}, not an object; {remedy}")
    if value.get(key) != expected:
        raise ModelFileError(f"{path} has {key} {value.get(key)!r}, this version reads {expected!r}; {remedy}")
    return value


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(
            path, f"unsupported file type {suffix or '(none)'}; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes); copy it again")
    try:
        if suffix in TIFF_SUFFIXES:
            return _read_tiff(path)
        return np.asarray(iio.imread(path, extension=suffix))
    except ImageReadError:
        raise
    except Exception as exc:  # every decoder has its own exception types
        raise ImageReadError(
            path,
            f"cannot be decoded ({type(exc).__name__}: {exc}); the file may be truncated or corrupt — copy it again",
        ) from exc


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        data = series.asarray()
    if len(axes) != data.ndim:
        raise ImageReadError(path, f"TIFF axes {axes!r} do not match its data shape {data.shape}")
    keep = [i for i, (axis, size) in enumerate(zip(axes, data.shape, strict=True)) if size > 1 or axis in "YX"]
    squeezed_axes = "".join(axes[i] for i in keep)
    data = data.reshape([data.shape[i] for i in keep])
    planes = [a for a in squeezed_axes if a not in "YXSC"]
    if planes:
        sizes = {a: data.shape[squeezed_axes.index(a)] for a in planes}
        raise ImageReadError(
            path,
            f"is a stack ({', '.join(f'{a}={n}' for a, n in sizes.items())}; axes {axes}), "
            "but only 2D images are supported; save a single plane or a projection",
        )
    channel_axes = [squeezed_axes.index(a) for a in squeezed_axes if a in "SC"]
    spatial_axes = [squeezed_axes.index("Y"), squeezed_axes.index("X")]
    data = np.transpose(data, spatial_axes + channel_axes)
    if data.ndim == 4:  # both S and C: fold them into one channel axis
        data = data.reshape(data.shape[0], data.shape[1], -1)
    return data
