import numpy as np

from appliance.pipeline.patches import (
    IGNORE_LABEL,
    class_presence,
    grid_positions,
    make_training_patches,
    pad_to_at_least,
)


def test_grid_has_stride_half_the_patch_and_covers_the_image():
    positions = grid_positions(300, 128, 64)
    assert positions.tolist() == [0, 64, 128, 172]
    assert positions[-1] + 128 == 300


def test_small_images_are_padded_with_ignored_mask_pixels():
    image, mask = pad_to_at_least(np.ones((40, 70, 1), np.float32), np.ones((40, 70), np.int64), 64)
    assert image.shape == (64, 70, 1) and mask.shape == (64, 70)
    assert (mask[40:] == IGNORE_LABEL).all() and (image[40:] == 0).all()


def test_presence_matches_a_direct_count():
    rng = np.random.default_rng(1)
    mask = rng.choice(3, size=(50, 60), p=[0.97, 0.02, 0.01])
    positions = np.array([(y, x) for y in range(0, 35, 7) for x in range(0, 45, 9)])
    presence = class_presence(mask, positions, patch=16, num_classes=2)
    for (y, x), row in zip(positions, presence, strict=True):
        crop = mask[y : y + 16, x : x + 16]
        assert row.tolist() == [bool((crop == c).any()) for c in range(3)]


def test_training_patches_normalise_and_count_every_grid_cell():
    images = [
        np.full((100, 130, 1), 1000, np.uint16) + np.arange(130, dtype=np.uint16),
        np.zeros((30, 30, 1), np.uint8),
    ]
    masks = [np.zeros((100, 130), np.int64), np.ones((30, 30), np.int64)]
    patches = make_training_patches(images, masks, patch_size=64, num_classes=1)
    assert len(patches) == 3 * 4 + 1  # rows 0,32,36; cols 0,32,64,66; one patch for the padded small image
    image, mask = patches.crop(len(patches) - 1)
    assert image.shape == (64, 64, 1) and image.dtype == np.float32
    assert (mask[:30, :30] == 1).all() and (mask[30:] == IGNORE_LABEL).all()
    assert abs(float(patches.images[0].mean())) < 1e-4
