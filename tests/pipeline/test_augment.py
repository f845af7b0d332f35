import numpy as np

from appliance.pipeline.augment import augment, build_augmentation
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.patches import IGNORE_LABEL

RNG = np.random.default_rng(0)
IMAGE = RNG.normal(size=(64, 64, 2)).astype(np.float32)
MASK = (RNG.random((64, 64)) > 0.7).astype(np.int64) * 2


def test_no_augmentation_is_the_identity():
    image, mask = augment(build_augmentation(PipelineConfig()), IMAGE, MASK, seed=1)
    assert image is IMAGE and mask is MASK


def test_the_same_seed_gives_the_same_augmentation():
    pipeline = build_augmentation(PipelineConfig(flip=0.5, brightness_blur=0.5, grid_distortion=0.5))
    a = augment(pipeline, IMAGE, MASK, seed=5)
    b = augment(pipeline, IMAGE, MASK, seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_image_and_mask_move_together_and_labels_stay_labels():
    pipeline = build_augmentation(PipelineConfig(flip=0.5, grid_distortion=0.5))
    blocks = np.kron(RNG.random((8, 8)) > 0.5, np.ones((8, 8))).astype(np.int64) * 2  # objects, not noise
    image_in = np.repeat(blocks[:, :, None].astype(np.float32), 2, axis=2)  # the image is its own mask
    changed = 0
    for seed in range(20):
        image, mask = augment(pipeline, image_in, blocks, seed=seed)
        assert set(np.unique(mask)) <= {0, 2, IGNORE_LABEL}
        inside = mask >= 0
        agree = (np.round(image[:, :, 0][inside]) == mask[inside]).mean()
        assert agree > 0.9
        changed += not np.array_equal(mask, blocks)
    assert changed > 5


def test_inputs_are_not_modified():
    before = IMAGE.copy(), MASK.copy()
    augment(build_augmentation(PipelineConfig(flip=0.5, brightness_blur=0.5, grid_distortion=0.5)), IMAGE, MASK, seed=3)
    assert np.array_equal(IMAGE, before[0]) and np.array_equal(MASK, before[1])
