import numpy as np

from appliance.pipeline.baselines import fit_otsu_baseline


def _blobs(dark_objects: bool, seed: int):
    rng = np.random.default_rng(seed)
    mask = np.zeros((64, 64), np.int64)
    mask[10:30, 10:30] = 1
    mask[40:55, 35:60] = 1
    image = np.where(mask == 1, 900, 300) + rng.normal(0, 30, mask.shape)
    if dark_objects:
        image = 1200 - image
    return image[:, :, None].astype(np.uint16), mask


def test_otsu_learns_the_polarity_from_training_images():
    for dark in (False, True):
        train = [_blobs(dark, seed) for seed in range(3)]
        predict = fit_otsu_baseline([t[0] for t in train], [t[1] for t in train], num_classes=1)
        image, mask = _blobs(dark, 9)
        assert (predict(image) == mask).mean() > 0.98


def test_multi_otsu_maps_bands_to_classes():
    mask = np.zeros((60, 60), np.int64)
    mask[:, 20:40] = 2
    mask[:, 40:] = 1
    noise = np.random.default_rng(0).normal(0, 20, mask.shape)
    image = (np.choose(mask, [100, 1000, 500]) + noise)[:, :, None].astype(np.uint16)
    predict = fit_otsu_baseline([image], [mask], num_classes=2)
    assert (predict(image) == mask).mean() > 0.99
