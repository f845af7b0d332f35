"""Viewable 8-bit pictures of microscopy images and their label images.

:func:`display_image` turns an ``(H, W, C)`` image of any dtype into ``uint8`` RGB for viewing, with
a per-channel percentile stretch (so 12-bit data in ``uint16`` is shown by its own range, never
divided by 65535). :func:`overlay` colours the classes of a label image on top, outlines each object and adds a
scale bar when the pixel size is known, and :func:`comparison_panel` puts image, ground truth and prediction side by
side for QC reports.
These pictures are for people only; measurements and training never use them.
"""

from __future__ import annotations

import math

import numpy as np
import skimage.segmentation
from PIL import Image, ImageDraw, ImageFont

DISPLAY_PERCENTILES: tuple[float, float] = (0.5, 99.5)

CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 225, 25),  # yellow
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
)
"""RGB colour of label 1, 2, ...; label ``k`` gets ``CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]``."""


def display_image(image: np.ndarray) -> np.ndarray:
    """Stretch an image of any dtype to 8-bit RGB for viewing.

    Each channel is stretched on its own: the 0.5th percentile maps to 0 and the 99.5th to 255,
    values outside are clipped. A constant channel carries no information and becomes 0 (never
    NaN); non-finite float values become 0 as well.

    Parameters
    ----------
    image : (H, W, C) or (H, W) ndarray
        Image of any integer, bool or float dtype. ``(H, W)`` is read as ``C = 1``. Not modified.

    Returns
    -------
    rgb : (H, W, 3) ndarray of uint8
        ``C == 1``: grey replicated in R, G and B. ``C == 2``: channel 0 in green, channel 1 in
        magenta (red + blue). ``C >= 3``: channels 0, 1, 2 as red, green, blue; the rest are not shown.

    Raises
    ------
    ValueError
        When ``image`` is not 2D or 3D, or has no channel.

    Examples
    --------
    >>> image = np.array([[[0], [4095]]], dtype=np.uint16)  # 12-bit data
    >>> display_image(image)[0, :, 0].tolist()
    [0, 255]
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] < 1:
        raise ValueError(f"display_image expects an (H, W, C) image with C >= 1, got shape {image.shape}")
    channels = [_stretch(image[:, :, c]) for c in range(min(image.shape[2], 3))]
    if len(channels) == 1:
        channels = channels * 3
    elif len(channels) == 2:
        green, magenta = channels
        channels = [magenta, green, magenta]
    return np.stack(channels, axis=-1)


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.4,
    outline: bool = True,
    instances: np.ndarray | None = None,
    pixel_size_um: float | None = None,
) -> np.ndarray:
    """Colour the classes of a label image on top of :func:`display_image` of the image.

    Parameters
    ----------
    image : (H, W, C) or (H, W) ndarray
        Image of any dtype. Not modified.
    labels : (H, W) ndarray of int or bool
        Label image, 0 = background, k > 0 = class k, coloured with :data:`CLASS_COLOURS`. Not modified.
    alpha : float, optional
        Opacity of the class colour over labelled pixels, in 0..1.
    outline : bool, optional
        When true, the 1-pixel inner boundary of every object
        (``skimage.segmentation.find_boundaries(labels, mode='inner')``) is drawn in the full class colour.
    instances : (H, W) ndarray of int, optional
        One id per object (as the results' ``_objects.tif``): outlines are drawn around each object, so touching
        objects of one class are told apart.
    pixel_size_um : float, optional
        When given, a scale bar (:func:`draw_scale_bar`) is drawn in the bottom-right corner.

    Returns
    -------
    rgb : (H, W, 3) ndarray of uint8
        Background pixels (``labels == 0``) are exactly :func:`display_image` of ``image``.

    Raises
    ------
    ValueError
        When the shapes of ``image`` and ``labels`` differ in (H, W), ``labels`` is not a non-negative
        integer array, or ``alpha`` is outside 0..1.
    """
    image = np.asarray(image)
    labels = _check_labels(labels, image.shape, name="labels")
    if instances is not None:
        instances = _check_labels(instances, image.shape, name="instances")
    painted = _paint(display_image(image), labels, alpha=alpha, outline=outline, objects=instances)
    return painted if pixel_size_um is None else draw_scale_bar(painted, pixel_size_um)


def scale_bar_length_um(width_px: int, pixel_size_um: float) -> float:
    """The scale bar's length: the largest 1, 2 or 5 × 10^k µm not longer than a fifth of the image width.

    >>> scale_bar_length_um(1000, 0.65), scale_bar_length_um(256, 0.1)
    (100.0, 5.0)
    """
    if not pixel_size_um > 0 or not math.isfinite(pixel_size_um):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    target = width_px * pixel_size_um / 5
    exponent = math.floor(math.log10(target))
    return max(m * 10.0**exponent for m in (1, 2, 5) if m * 10.0**exponent <= target)


def draw_scale_bar(rgb: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """A white bar with its length in µm above it, outlined in black, in the bottom-right corner of an RGB picture
    (:func:`scale_bar_length_um`); a copy."""
    height, width = rgb.shape[:2]
    length_um = scale_bar_length_um(width, pixel_size_um)
    length_px = max(1, round(length_um / pixel_size_um))
    thickness = max(2, height // 100)
    margin = max(4, width // 50)
    x1, y1 = width - margin, height - margin
    x0, y0 = x1 - length_px, y1 - thickness
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((x0 - 1, y0 - 1, x1, y1), fill=(0, 0, 0))
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255))
    font = ImageFont.load_default(size=max(10, height // 40))
    text = f"{length_um:g} µm"
    draw.text(
        ((x0 + x1) / 2, y0 - 2),
        text,
        fill=(255, 255, 255),
        anchor="md",
        font=font,
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )
    return np.asarray(picture)


def comparison_panel(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, *, gap: int = 4) -> np.ndarray:
    """Image, ground truth overlay and prediction overlay side by side, for QC reports.

    Parameters
    ----------
    image : (H, W, C) or (H, W) ndarray
        Image of any dtype. Not modified.
    truth, prediction : (H, W) ndarray of int
        Ground-truth and predicted label images. Not modified.
    gap : int, optional
        Width in pixels of the white stripes between the three panels.

    Returns
    -------
    panel : (H, 3 * W + 2 * gap, 3) ndarray of uint8
        ``display_image(image) | overlay(image, truth) | overlay(image, prediction)``.

    Raises
    ------
    ValueError
        When a label image does not match the image's (H, W), or ``gap`` is negative.
    """
    if isinstance(gap, bool) or not isinstance(gap, int | np.integer) or gap < 0:
        raise ValueError(f"gap must be a whole number of pixels >= 0, got {gap!r}")
    image = np.asarray(image)
    truth = _check_labels(truth, image.shape, name="truth")
    prediction = _check_labels(prediction, image.shape, name="prediction")
    base = display_image(image)
    height, width = base.shape[:2]
    panel = np.full((height, 3 * width + 2 * gap, 3), 255, dtype=np.uint8)
    panels = (base, _paint(base, truth, alpha=0.4, outline=True), _paint(base, prediction, alpha=0.4, outline=True))
    for number, picture in enumerate(panels):
        start = number * (width + gap)
        panel[:, start : start + width] = picture
    return panel


def _stretch(channel: np.ndarray) -> np.ndarray:
    values = channel.astype(np.float64)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    sample = values if all_finite else values[finite]
    out = np.zeros(values.shape, dtype=np.uint8)
    if sample.size == 0:
        return out
    low, high = np.percentile(sample, DISPLAY_PERCENTILES)
    if not high > low:
        return out
    scaled = np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0)
    if not all_finite:
        scaled[~finite] = 0.0
    return np.rint(scaled).astype(np.uint8)


def _check_labels(labels: np.ndarray, image_shape: tuple[int, ...], *, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.shape != tuple(image_shape[:2]):
        raise ValueError(
            f"{name} shape {labels.shape} does not match image shape {tuple(image_shape)}; "
            f"{name} must be (H, W) with the image's height and width"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} hold a negative value {labels.min()}; labels must be 0 (background) or a class > 0")
    return labels


def _colour_table(max_label: int) -> np.ndarray:
    palette = np.asarray(CLASS_COLOURS, dtype=np.float64)
    table = np.zeros((max_label + 1, 3), dtype=np.float64)
    if max_label:
        table[1:] = palette[np.arange(max_label) % len(palette)]
    return table


def _paint(
    base: np.ndarray, labels: np.ndarray, *, alpha: float, outline: bool, objects: np.ndarray | None = None
) -> np.ndarray:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be an opacity in 0..1, got {alpha}")
    out = base.copy()
    labelled = labels > 0
    if not labelled.any():
        return out
    table = _colour_table(int(labels.max()))
    class_labels = labels[labelled]
    blended = (1.0 - alpha) * base[labelled] + alpha * table[class_labels]
    out[labelled] = np.rint(blended).astype(np.uint8)
    if outline:
        edges = skimage.segmentation.find_boundaries(labels if objects is None else objects, mode="inner")
        edges &= labelled
        out[edges] = table[labels[edges]].astype(np.uint8)
    return out
