"""Meta-features: numbers that describe a labelled set (and a configuration on it) to the meta-model.

Four groups, after the AIxCell paper (§3.4, Table 2):

* handcrafted (9, ``hc_*``): what a deep-learning expert looks at first; :func:`handcrafted_features`;
* engineered (5 per configuration, ``eng_*``): handcrafted features combined with hyperparameters;
  :func:`engineered_features`;
* user-given (11, ``user_*``): microscopy technique and object of interest one-hot, magnification and
  whether it is known, from ``dataset.yaml``; :func:`user_features`;
* optical (``opt_*``): pyradiomics texture and intensity statistics per class ROI, averaged per image
  and then per set; :mod:`appliance.automl.optical`.

The set-level groups (handcrafted, user-given, optical) are computed once per set by
:func:`set_features`; the engineered ones are cheap and computed per configuration.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import skimage.measure

from appliance.data.labelled_set import MICROSCOPY, OBJECTS, LabelledSet
from appliance.pipeline.config import PipelineConfig

HANDCRAFTED_NAMES: tuple[str, ...] = (
    "hc_images",
    "hc_classes",
    "hc_class_imbalance",
    "hc_mean_shape",
    "hc_rgb",
    "hc_roi_mean",
    "hc_roi_std",
    "hc_roi_min",
    "hc_roi_max",
)
ENGINEERED_NAMES: tuple[str, ...] = (
    "eng_patches_per_image",
    "eng_batches_per_epoch",
    "eng_augmentation_batches",
    "eng_lr_batches",
    "eng_backbone_classes",
)
# "other" (and a value not given at all) is encoded as all zeros: a category that no other set shares
# carries no information to a model trained on other sets.
USER_MICROSCOPY: tuple[str, ...] = tuple(value for value in MICROSCOPY if value != "other")
USER_OBJECTS: tuple[str, ...] = tuple(value for value in OBJECTS if value != "other")
USER_NAMES: tuple[str, ...] = (
    *(f"user_microscopy_{value}" for value in USER_MICROSCOPY),
    *(f"user_object_{value}" for value in USER_OBJECTS),
    "user_magnification",
    "user_magnification_known",
)
BACKBONE_WEIGHT = {"resnet18": 0.5, "resnet50": 2.0}


def class_imbalance(fractions: Sequence[float]) -> float:
    """Mean absolute pairwise difference between class pixel fractions.

    ``imbalance = mean over pairs i < j of |x_i - x_j|``, with ``x`` the pixel fractions of background and
    every class. Balanced classes give 0; ``[0.2, 0.1, 0.7]`` gives ``(0.1 + 0.5 + 0.6) / 3 = 0.4``.

    >>> round(class_imbalance([0.2, 0.1, 0.7]), 6)
    0.4
    """
    pairs = list(itertools.combinations([float(x) for x in fractions], 2))
    if not pairs:
        return 0.0
    return float(np.mean([abs(a - b) for a, b in pairs]))


def roi_areas(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Areas in pixels of the regions of interest of one mask: the 8-connected components of each
    class 1..K, all classes together."""
    areas = []
    for label in range(1, num_classes + 1):
        components = skimage.measure.label(mask == label, connectivity=2)
        if components.max():
            areas.append(np.bincount(components.ravel())[1:])
    return np.concatenate(areas) if areas else np.zeros(0, dtype=np.int64)


def roi_statistics(masks: Sequence[np.ndarray], num_classes: int) -> dict[str, float]:
    """ROI size statistics: per image the mean, std (population), min and max of its ROI areas, each then
    averaged over the images that have at least one ROI (0 when none has)."""
    per_image = []
    for mask in masks:
        areas = roi_areas(mask, num_classes)
        if areas.size:
            per_image.append((areas.mean(), areas.std(), areas.min(), areas.max()))
    if not per_image:
        return {"hc_roi_mean": 0.0, "hc_roi_std": 0.0, "hc_roi_min": 0.0, "hc_roi_max": 0.0}
    mean, std, low, high = np.mean(np.array(per_image, dtype=np.float64), axis=0)
    return {"hc_roi_mean": float(mean), "hc_roi_std": float(std), "hc_roi_min": float(low), "hc_roi_max": float(high)}


def handcrafted_from_masks(
    masks: Sequence[np.ndarray], *, num_classes: int, channels: int, shapes: Sequence[tuple[int, int]]
) -> dict[str, float]:
    """The 9 handcrafted meta-features from a set's masks, channel count and image shapes.

    * ``hc_images``: number of images;
    * ``hc_classes``: number of foreground classes K;
    * ``hc_class_imbalance``: :func:`class_imbalance` of the pixel fractions of labels 0..K over all masks;
    * ``hc_mean_shape``: ``(mean width + mean height) / 2`` in pixels;
    * ``hc_rgb``: 1 for 3-channel images, else 0;
    * ``hc_roi_mean``, ``hc_roi_std``, ``hc_roi_min``, ``hc_roi_max``: :func:`roi_statistics`.
    """
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for mask in masks:
        counts += np.bincount(mask.ravel().astype(np.int64), minlength=num_classes + 1)[: num_classes + 1]
    fractions = counts / max(int(counts.sum()), 1)
    heights, widths = zip(*shapes, strict=True)
    return {
        "hc_images": float(len(masks)),
        "hc_classes": float(num_classes),
        "hc_class_imbalance": class_imbalance(fractions),
        "hc_mean_shape": float((np.mean(widths) + np.mean(heights)) / 2),
        "hc_rgb": 1.0 if channels == 3 else 0.0,
        **roi_statistics(masks, num_classes),
    }


def handcrafted_features(labelled_set: LabelledSet) -> dict[str, float]:
    """The 9 handcrafted meta-features of a labelled set (see :func:`handcrafted_from_masks`)."""
    masks = [labelled_set.read(index)[1] for index in range(len(labelled_set))]
    return handcrafted_from_masks(
        masks, num_classes=labelled_set.num_classes, channels=labelled_set.channels, shapes=labelled_set.shapes
    )


def engineered_features(set_features: Mapping[str, float], config: PipelineConfig) -> dict[str, float]:
    """The 5 engineered meta-features of a configuration on a set (paper Table 2).

    * ``eng_patches_per_image = (hc_mean_shape / patch_size)²``
    * ``eng_batches_per_epoch = eng_patches_per_image · hc_images / batch_size``
    * ``eng_augmentation_batches = (augmentations switched on) · 2 · eng_batches_per_epoch``, counting
      flip, brightness+blur and grid distortion with probability > 0
    * ``eng_lr_batches = learning_rate · eng_batches_per_epoch``
    * ``eng_backbone_classes = (0.5 for resnet18, 2 for resnet50) · hc_classes``

    >>> features = {"hc_mean_shape": 512.0, "hc_images": 10.0, "hc_classes": 2.0}
    >>> engineered_features(features, PipelineConfig(patch_size=128, batch_size=8, learning_rate=0.01, flip=0.5))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'eng_patches_per_image': 16.0, 'eng_batches_per_epoch': 20.0, 'eng_augmentation_batches': 40.0,
     'eng_lr_batches': 0.2, 'eng_backbone_classes': 1.0}
    """
    patches_per_image = (set_features["hc_mean_shape"] / config.patch_size) ** 2
    batches_per_epoch = patches_per_image * set_features["hc_images"] / config.batch_size
    augmentations_on = sum(p > 0 for p in (config.flip, config.brightness_blur, config.grid_distortion))
    return {
        "eng_patches_per_image": float(patches_per_image),
        "eng_batches_per_epoch": float(batches_per_epoch),
        "eng_augmentation_batches": float(augmentations_on * 2 * batches_per_epoch),
        "eng_lr_batches": float(config.learning_rate * batches_per_epoch),
        "eng_backbone_classes": float(BACKBONE_WEIGHT[config.encoder] * set_features["hc_classes"]),
    }


def user_features(metadata: Mapping) -> dict[str, float]:
    """The 11 user-given meta-features from ``dataset.yaml`` content.

    ``user_microscopy_<m>`` is 1 for the given technique (brightfield, fluorescence, phase_contrast, dic,
    electron), ``user_object_<o>`` 1 for the given object (nuclei, cells, tissue, organelles); "other" and
    values not given are all zeros. ``user_magnification`` is the objective magnification (0 when not
    given) and ``user_magnification_known`` is 1 when it is given.

    >>> features = user_features({"microscopy": "fluorescence", "object": "nuclei", "magnification": 20})
    >>> [name for name, value in features.items() if value]
    ['user_microscopy_fluorescence', 'user_object_nuclei', 'user_magnification', 'user_magnification_known']
    """
    features = {name: 0.0 for name in USER_NAMES}
    microscopy, obj = metadata.get("microscopy"), metadata.get("object")
    if microscopy in USER_MICROSCOPY:
        features[f"user_microscopy_{microscopy}"] = 1.0
    if obj in USER_OBJECTS:
        features[f"user_object_{obj}"] = 1.0
    magnification = metadata.get("magnification")
    if magnification is not None:
        features["user_magnification"] = float(magnification)
        features["user_magnification_known"] = 1.0
    return features


def set_features(
    labelled_set: LabelledSet, *, metadata: Mapping | None = None, optical_images: int = 20, seed: int = 0
) -> dict[str, float]:
    """All set-level meta-features: handcrafted, user-given and optical (raw set-level radiomics means,
    from at most ``optical_images`` images; 0 leaves the optical features out).

    ``metadata`` overrides the set's own ``dataset.yaml`` content for the user-given features (the meta-base
    builder uses it for public sets that come without one).
    """
    features = {
        **handcrafted_features(labelled_set),
        **user_features(labelled_set.metadata if metadata is None else metadata),
    }
    if optical_images > 0:
        from appliance.automl.optical import set_radiomics  # pyradiomics is slow to import

        features.update(set_radiomics(labelled_set, max_images=optical_images, seed=seed))
    return features
