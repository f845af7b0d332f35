"""Classical baselines that every trained model is reported next to.

Otsu thresholding (``K = 1``) and multi-Otsu (``K > 1``, ``K + 1`` intensity bands) on the mean of the
image's channels, with a threshold per image. Which band is which class is learnt from the training
images (the class each band overlaps most), so the baseline gets the polarity right for dark nuclei on
a bright background as well as for bright ones on a dark background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from skimage.filters import threshold_multiotsu, threshold_otsu


def intensity_bands(image: np.ndarray, *, bands: int) -> np.ndarray:
    """``(H, W)`` band index ``0..bands-1`` of each pixel, from (multi-)Otsu thresholds of this image."""
    grey = image.astype(np.float64).mean(axis=2)
    if np.ptp(grey) == 0:
        return np.zeros(grey.shape, dtype=np.int64)
    if bands == 2:
        thresholds = np.array([threshold_otsu(grey)])
    else:
        try:
            thresholds = threshold_multiotsu(grey, classes=bands)
        except ValueError:  # too few distinct intensities for that many bands
            thresholds = np.array([threshold_otsu(grey)])
    return np.digitize(grey, thresholds)


def fit_otsu_baseline(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *, num_classes: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Learn the band -> class map on training images; return ``predict(image) -> (H, W) labels``."""
    bands = num_classes + 1
    overlap = np.zeros((bands, num_classes + 1), dtype=np.int64)
    for image, mask in zip(images, masks, strict=True):
        band = intensity_bands(image, bands=bands)
        valid = mask >= 0
        np.add.at(overlap, (band[valid], mask[valid].astype(np.int64)), 1)
    band_to_class = overlap.argmax(axis=1)

    def predict(image: np.ndarray) -> np.ndarray:
        return band_to_class[intensity_bands(image, bands=bands)].astype(np.uint8)

    return predict
