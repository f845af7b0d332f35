"""Augmentation with albumentations, applied to image and mask together.

The three searchable toggles (DESIGN §3): ``flip`` (horizontal and vertical flips, each with the
configured probability), ``brightness_blur`` (brightness/contrast change followed by a Gaussian blur, as
one toggle) and ``grid_distortion``. Images arrive normalised (float32 z-scores), so brightness shifts
are in units of the image's standard deviation. Mask interpolation is nearest; pixels pulled in from
outside the patch by a distortion get :data:`~appliance.pipeline.patches.IGNORE_LABEL`.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.patches import IGNORE_LABEL


def build_augmentation(config: PipelineConfig) -> A.Compose:
    """The augmentation pipeline of ``config`` (an identity when every probability is 0)."""
    transforms = []
    if config.flip > 0:
        transforms += [A.HorizontalFlip(p=config.flip), A.VerticalFlip(p=config.flip)]
    if config.brightness_blur > 0:
        transforms.append(
            A.Sequential(
                [
                    A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
                    A.GaussianBlur(sigma_limit=(0.5, 1.5), p=1.0),
                ],
                p=config.brightness_blur,
            )
        )
    if config.grid_distortion > 0:
        transforms.append(
            A.GridDistortion(
                p=config.grid_distortion,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_LABEL,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    return A.Compose(transforms)


def augment(pipeline: A.Compose, image: np.ndarray, mask: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``pipeline`` to an ``(H, W, C)`` float32 image and its ``(H, W)`` mask with a given seed,
    so that a resumed run draws exactly the augmentations an uninterrupted run would."""
    if not pipeline.transforms:
        return image, mask
    pipeline.set_random_seed(seed)
    out = pipeline(image=image, mask=mask.astype(np.int16))  # OpenCV remaps int16, not int64
    return out["image"], out["mask"].astype(np.int64)
