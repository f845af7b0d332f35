"""Training patches: a grid with stride = patch / 2 over each (padded) training image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.data.io import normalise
from appliance.pipeline.sampling import class_pixel_fractions, patch_factors, sampling_factors

IGNORE_LABEL = -1
"""Mask value of padding pixels: the loss and the metrics ignore them."""


def pad_to_at_least(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad an ``(H, W, C)`` image with 0 (the mean after normalisation) and its ``(H, W)`` mask with
    :data:`IGNORE_LABEL` at the bottom/right so that both sides are at least ``size``."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image, mask
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_LABEL)
    return image, mask


def grid_positions(length: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets along one axis: every ``stride`` from 0, plus a last one flush with the end.

    >>> grid_positions(10, 4, 2).tolist()
    [0, 2, 4, 6]
    >>> grid_positions(11, 4, 2).tolist()
    [0, 2, 4, 6, 7]
    """
    if length <= patch:
        return np.array([0])
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return np.array(starts)


def class_presence(mask: np.ndarray, positions: np.ndarray, *, patch: int, num_classes: int) -> np.ndarray:
    """For each patch ``(y, x)`` in ``positions``, whether each class ``0..num_classes`` occurs in it.

    Uses one summed-area table per class, so the cost does not grow with the number of patches.
    """
    presence = np.zeros((len(positions), num_classes + 1), dtype=bool)
    ys, xs = positions[:, 0], positions[:, 1]
    for label in range(num_classes + 1):
        table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        table[1:, 1:] = np.cumsum(np.cumsum(mask == label, axis=0), axis=1)
        counts = table[ys + patch, xs + patch] - table[ys, xs + patch] - table[ys + patch, xs] + table[ys, xs]
        presence[:, label] = counts > 0
    return presence


@dataclass
class TrainingPatches:
    """Normalised, padded training images and the patch grid over them, with sampling factors."""

    images: list[np.ndarray]  # (H, W, C) float32, normalised and padded
    masks: list[np.ndarray]  # (H, W) int64, padding = IGNORE_LABEL
    positions: np.ndarray  # (N, 3) int: image index, y, x
    factors: np.ndarray  # (N,) per-patch sampling factor
    patch_size: int
    class_fractions: np.ndarray  # (K + 1,)
    class_factors: np.ndarray  # (K + 1,)

    def __len__(self) -> int:
        return len(self.positions)

    def crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_index, y, x = self.positions[index]
        p = self.patch_size
        return self.images[image_index][y : y + p, x : x + p], self.masks[image_index][y : y + p, x : x + p]


def make_training_patches(
    images: list[np.ndarray], masks: list[np.ndarray], *, patch_size: int, num_classes: int
) -> TrainingPatches:
    """Normalise raw ``(H, W, C)`` images, pad them to the patch size and cut the stride ``patch/2``
    grid; compute class fractions, class factors and per-patch factors (class-based sampling)."""
    stride = patch_size // 2
    prepared_images, prepared_masks, positions, presences = [], [], [], []
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        image, mask = pad_to_at_least(normalise(image), mask.astype(np.int64), patch_size)
        grid = np.array(
            [
                (y, x)
                for y in grid_positions(image.shape[0], patch_size, stride)
                for x in grid_positions(image.shape[1], patch_size, stride)
            ]
        )
        presences.append(class_presence(mask, grid, patch=patch_size, num_classes=num_classes))
        positions.append(np.column_stack([np.full(len(grid), index), grid]))
        prepared_images.append(image)
        prepared_masks.append(mask)
    fractions = class_pixel_fractions(prepared_masks, num_classes=num_classes)
    factors = sampling_factors(fractions)
    return TrainingPatches(
        images=prepared_images,
        masks=prepared_masks,
        positions=np.concatenate(positions),
        factors=patch_factors(np.concatenate(presences), factors),
        patch_size=patch_size,
        class_fractions=fractions,
        class_factors=factors,
    )


class PatchCache:
    """The training patches of one set of images, cut once per patch size and kept for later trials."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], *, num_classes: int):
        self.images, self.masks, self.num_classes = images, masks, num_classes
        self._by_size: dict[int, TrainingPatches] = {}

    def __call__(self, patch_size: int) -> TrainingPatches:
        if patch_size not in self._by_size:
            self._by_size[patch_size] = make_training_patches(
                self.images, self.masks, patch_size=patch_size, num_classes=self.num_classes
            )
        return self._by_size[patch_size]
