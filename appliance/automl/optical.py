"""Optical meta-features: pyradiomics texture statistics of a labelled set, and their reductions.

Paper 3.4 ("Optical Meta-Features"): radiomics features are extracted for each class ROI, averaged per image,
averaged over the images of a set, normalised feature-wise over the meta-base sets and then reduced either to the
first four principal components or to the cosine similarities with the meta-base sets.

Pipeline for one set (every step is a plain mean; nothing is learnt here):

1. grey image ``g`` (:func:`grey_image`): mean over channels, optional centred crop to ``max_side``, then a robust
   per-image min-max scaling to ``[0, 1]`` between the 0.1 and 99.9 percentiles (so 8-bit, 16-bit and float
   images of the same scene give the same features);
2. per ROI ``k`` (pixels with ``mask == k``, ``k = 1..K``): the 93 default 2D pyradiomics features
   ``f(g, mask == k)`` (firstorder 18, GLCM 24, GLRLM 16, GLSZM 16, GLDM 14, NGTDM 5; shape is not used) with a
   fixed bin width of 1/32 on the ``[0, 1]`` scale (at most 33 grey levels);
3. per image (:func:`image_radiomics`): the mean over its usable ROIs;
4. per set (:func:`set_radiomics`): the mean over at most 20 seeded images (20 suffice, thesis);
5. meta-base (:class:`appliance.metalearning.features.OpticalReduction`, fitted with the meta-model): feature-wise
   z-score over the set vectors, then PCA to 4 components or cosine similarity to each meta-base set.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from appliance.data.labelled_set import LabelledSet

logger = logging.getLogger(__name__)

#: pyradiomics feature classes and the features used from each: the classes' default (non-deprecated) features
#: in pyradiomics 3.0.1, in a fixed order. Shape features are left out (they describe masks, not optics).
RADIOMICS_FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": (
        "10Percentile",
        "90Percentile",
        "Energy",
        "Entropy",
        "InterquartileRange",
        "Kurtosis",
        "Maximum",
        "MeanAbsoluteDeviation",
        "Mean",
        "Median",
        "Minimum",
        "Range",
        "RobustMeanAbsoluteDeviation",
        "RootMeanSquared",
        "Skewness",
        "TotalEnergy",
        "Uniformity",
        "Variance",
    ),
    "glcm": (
        "Autocorrelation",
        "ClusterProminence",
        "ClusterShade",
        "ClusterTendency",
        "Contrast",
        "Correlation",
        "DifferenceAverage",
        "DifferenceEntropy",
        "DifferenceVariance",
        "Id",
        "Idm",
        "Idmn",
        "Idn",
        "Imc1",
        "Imc2",
        "InverseVariance",
        "JointAverage",
        "JointEnergy",
        "JointEntropy",
        "MCC",
        "MaximumProbability",
        "SumAverage",
        "SumEntropy",
        "SumSquares",
    ),
    "glrlm": (
        "GrayLevelNonUniformity",
        "GrayLevelNonUniformityNormalized",
        "GrayLevelVariance",
        "HighGrayLevelRunEmphasis",
        "LongRunEmphasis",
        "LongRunHighGrayLevelEmphasis",
        "LongRunLowGrayLevelEmphasis",
        "LowGrayLevelRunEmphasis",
        "RunEntropy",
        "RunLengthNonUniformity",
        "RunLengthNonUniformityNormalized",
        "RunPercentage",
        "RunVariance",
        "ShortRunEmphasis",
        "ShortRunHighGrayLevelEmphasis",
        "ShortRunLowGrayLevelEmphasis",
    ),
    "glszm": (
        "GrayLevelNonUniformity",
        "GrayLevelNonUniformityNormalized",
        "GrayLevelVariance",
        "HighGrayLevelZoneEmphasis",
        "LargeAreaEmphasis",
        "LargeAreaHighGrayLevelEmphasis",
        "LargeAreaLowGrayLevelEmphasis",
        "LowGrayLevelZoneEmphasis",
        "SizeZoneNonUniformity",
        "SizeZoneNonUniformityNormalized",
        "SmallAreaEmphasis",
        "SmallAreaHighGrayLevelEmphasis",
        "SmallAreaLowGrayLevelEmphasis",
        "ZoneEntropy",
        "ZonePercentage",
        "ZoneVariance",
    ),
    "gldm": (
        "DependenceEntropy",
        "DependenceNonUniformity",
        "DependenceNonUniformityNormalized",
        "DependenceVariance",
        "GrayLevelNonUniformity",
        "GrayLevelVariance",
        "HighGrayLevelEmphasis",
        "LargeDependenceEmphasis",
        "LargeDependenceHighGrayLevelEmphasis",
        "LargeDependenceLowGrayLevelEmphasis",
        "LowGrayLevelEmphasis",
        "SmallDependenceEmphasis",
        "SmallDependenceHighGrayLevelEmphasis",
        "SmallDependenceLowGrayLevelEmphasis",
    ),
    "ngtdm": ("Busyness", "Coarseness", "Complexity", "Contrast", "Strength"),
}

#: The ordered optical feature names, ``<class>_<feature>`` (93); columns are ``opt_<name>``.
OPTICAL_FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{cls}_{name}" for cls, names in RADIOMICS_FEATURES.items() for name in names
)
OPTICAL_PREFIX = "opt_"
#: Column names of :func:`set_radiomics`, in :data:`OPTICAL_FEATURE_NAMES` order.
OPTICAL_COLUMNS: tuple[str, ...] = tuple(OPTICAL_PREFIX + name for name in OPTICAL_FEATURE_NAMES)

GREY_PERCENTILES = (0.1, 99.9)  # robust min-max scaling of the grey image to [0, 1]
BIN_WIDTH = 1.0 / 32  # pyradiomics binWidth on the [0, 1] grey scale: at most 33 grey levels
MIN_ROI_PIXELS = 16  # a class ROI with fewer pixels in an image is not used
MAX_SIDE = 1024  # larger images are centre-cropped to at most MAX_SIDE x MAX_SIDE (native resolution kept)
MAX_IMAGES = 20  # images per set (20 suffice, thesis)

#: Every pyradiomics setting used, explicit (no parameter file, no downloads). ``minimumROIDimensions=2`` with
#: ``force2D``: a ROI must extend over at least two rows and two columns, else pyradiomics rejects it.
RADIOMICS_SETTINGS: dict[str, Any] = {
    "binWidth": BIN_WIDTH,
    "force2D": True,
    "force2Ddimension": 0,  # numpy axis 0 is the singleton z of the (1, H, W) volume: texture is in-plane
    "distances": [1],
    "normalize": False,  # grey_image already scales to [0, 1]
    "resampledPixelSpacing": None,
    "preCrop": False,
    "correctMask": False,
    "minimumROIDimensions": 2,
    "minimumROISize": None,
    "resegmentRange": None,
    "removeOutliers": None,
    "voxelArrayShift": 0,
    "additionalInfo": False,
}


def grey_image(image: np.ndarray, *, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """One grey float channel in ``[0, 1]`` from an ``(H, W)`` or ``(H, W, C)`` image of any dtype.

    Formula: ``m = mean_c image[..., c]`` (RGB -> (R + G + B) / 3, grey -> itself), in float64;
    centred crop of ``m`` to at most ``max_side`` rows and columns (rows ``(H - h) // 2 .. + h``, same for columns);
    ``lo, hi = percentile(m, 0.1), percentile(m, 99.9)`` (numpy linear interpolation over the cropped image);
    ``g = clip((m - lo) / (hi - lo), 0, 1)``, and ``g = 0`` everywhere when ``hi == lo``.
    The scaling makes features independent of bit depth and exposure (an affine intensity change of the image,
    with positive gain, leaves ``g`` unchanged).

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        uint8, uint16, other integer or float.
    max_side : int or None
        Crop limit per side; None keeps the full image.

    Returns
    -------
    (h, W') ndarray of float64
    """
    array = np.asarray(image)
    if array.ndim == 3:
        grey = array.astype(np.float64).mean(axis=2)
    elif array.ndim == 2:
        grey = array.astype(np.float64)
    else:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {array.shape}")
    if max_side is not None:
        grey = grey[_centre_slice(grey.shape[0], max_side), _centre_slice(grey.shape[1], max_side)]
    lo, hi = np.percentile(grey, GREY_PERCENTILES)
    if not hi > lo:
        return np.zeros_like(grey)
    return np.clip((grey - lo) / (hi - lo), 0.0, 1.0)


def image_radiomics(
    image: np.ndarray,
    mask: np.ndarray,
    num_classes: int,
    *,
    min_roi_pixels: int = MIN_ROI_PIXELS,
    max_side: int | None = MAX_SIDE,
) -> np.ndarray | None:
    """Radiomics vector of one image: the mean of the pyradiomics feature vectors of its class ROIs.

    Formula: ``v = (1 / |R|) * sum_{k in R} f(g, mask == k)`` where ``g = grey_image(image)`` (see there: channel
    mean, centred crop to ``max_side``, robust scaling to ``[0, 1]``), ``f`` gives the features of
    :data:`OPTICAL_FEATURE_NAMES` computed by pyradiomics with :data:`RADIOMICS_SETTINGS` (2D, bin width 1/32), and
    ``R`` holds the classes ``k = 1..num_classes`` whose ROI is usable: at least ``min_roi_pixels`` pixels (after the
    crop), accepted by pyradiomics (it rejects e.g. a single pixel or a single row/column with a ValueError, which is
    logged as a warning and the ROI skipped), and all features finite (else skipped with a warning). Each class is
    one ROI (all its pixels, connected or not), as in the paper.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        Any dtype (see :func:`grey_image`).
    mask : (H, W) ndarray of int
        Labels ``0..num_classes``; 0 is background and never a ROI.
    num_classes : int
        K, the number of foreground classes.
    min_roi_pixels : int
        Fewest pixels of a usable ROI.
    max_side : int or None
        Crop limit per side (see :func:`grey_image`); the mask is cropped the same way.

    Returns
    -------
    (len(OPTICAL_FEATURE_NAMES),) ndarray of float64, or None
        None when no ROI is usable.
    """
    mask = np.asarray(mask)
    if mask.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {np.asarray(image).shape}")
    grey = grey_image(image, max_side=max_side)
    if max_side is not None:
        mask = mask[_centre_slice(mask.shape[0], max_side), _centre_slice(mask.shape[1], max_side)]
    classes = [k for k in range(1, num_classes + 1) if np.count_nonzero(mask == k) >= max(min_roi_pixels, 1)]
    if not classes:
        return None
    sitk = _simpleitk()
    extractor = _extractor()
    sitk_image = sitk.GetImageFromArray(grey[None])
    sitk_mask = sitk.GetImageFromArray(mask[None].astype(np.uint8 if num_classes < 256 else np.int32))
    vectors = []
    for k in classes:
        try:
            result = extractor.execute(sitk_image, sitk_mask, label=k)
        except ValueError as error:  # pyradiomics' ROI checks (checkMask) reject ROIs with a ValueError
            logger.warning("optical features: ROI of class %d skipped, pyradiomics rejected it: %s", k, error)
            continue
        vector = np.array([float(result[f"original_{name}"]) for name in OPTICAL_FEATURE_NAMES])
        if not np.all(np.isfinite(vector)):
            bad = [n for n, x in zip(OPTICAL_FEATURE_NAMES, vector, strict=True) if not np.isfinite(x)]
            logger.warning("optical features: ROI of class %d skipped, non-finite features %s", k, bad)
            continue
        vectors.append(vector)
    return np.mean(vectors, axis=0) if vectors else None


def set_radiomics(labelled_set: LabelledSet, max_images: int = MAX_IMAGES, seed: int = 0) -> dict[str, float]:
    """Optical meta-features of a set: the mean radiomics vector of at most ``max_images`` of its images.

    Formula: ``y = (1 / |S|) * sum_{i in S} image_radiomics(image_i, mask_i, K)``, returned as
    ``{"opt_<name>": y_j}`` in :data:`OPTICAL_FEATURE_NAMES` order. ``S``: the images are visited in the order
    ``numpy.random.default_rng(seed).permutation(n)``; each is read and its vector computed; images without a usable
    ROI are skipped (they do not count); visiting stops once ``max_images`` vectors were collected. So with
    ``n <= max_images`` every image is used, and the result depends only on the set's files, ``max_images`` and
    ``seed``. Approximation for speed: images larger than 1024 px on a side are centre-cropped to 1024 (native
    resolution kept, see :func:`grey_image`). Cost: one pyradiomics pass per ROI, about 0.5-0.9 s for a
    1 MPx image on one CPU core (single-threaded); measured on 20 images: 2 s (dsb2018 fluo, 256 px) to 40 s
    (drosophila VNC, 1024 px, 4 classes).

    Parameters
    ----------
    labelled_set : LabelledSet
        Anything with ``stems``, ``num_classes`` and ``read(i) -> (image, mask)``.
    max_images : int
        Most images used (20 suffice, thesis).
    seed : int
        Seed of the image order.

    Returns
    -------
    dict of str to float

    Raises
    ------
    ValueError
        When no image of the set has a usable ROI, or ``max_images < 1``.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    n = len(labelled_set.stems)
    vectors = []
    for index in np.random.default_rng(seed).permutation(n):
        image, mask = labelled_set.read(int(index))
        vector = image_radiomics(image, mask, labelled_set.num_classes)
        if vector is not None:
            vectors.append(vector)
            if len(vectors) == max_images:
                break
    if not vectors:
        name = getattr(labelled_set, "name", "the set")
        raise ValueError(
            f"{name}: no image has a class ROI of at least {MIN_ROI_PIXELS} pixels; optical meta-features need "
            "labelled objects (check that the masks are not empty)"
        )
    mean = np.mean(vectors, axis=0)
    return {column: float(value) for column, value in zip(OPTICAL_COLUMNS, mean, strict=True)}


def optical_vector(features: Mapping[str, float]) -> np.ndarray:
    """The values of ``features`` (as returned by :func:`set_radiomics`) as an array in :data:`OPTICAL_COLUMNS`
    order: ``x_j = features["opt_" + OPTICAL_FEATURE_NAMES[j]]``."""
    return np.array([float(features[column]) for column in OPTICAL_COLUMNS])


def _centre_slice(length: int, limit: int) -> slice:
    """Rows (or columns) ``(length - h) // 2 .. + h`` with ``h = min(length, limit)``."""
    keep = min(length, limit)
    start = (length - keep) // 2
    return slice(start, start + keep)


@functools.cache
def _simpleitk():
    import SimpleITK

    return SimpleITK


@functools.cache
def _extractor():
    """The one pyradiomics extractor (imported lazily; its INFO/WARNING logging silenced, errors still shown).

    ``execute`` copies its settings per call, so sharing one extractor is safe.
    """
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)  # the import resets the level to INFO
    extractor = featureextractor.RadiomicsFeatureExtractor(**RADIOMICS_SETTINGS)
    extractor.disableAllImageTypes()
    extractor.enableImageTypeByName("Original")
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(**{cls: list(names) for cls, names in RADIOMICS_FEATURES.items()})
    return extractor
