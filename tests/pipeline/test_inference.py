import numpy as np
import pytest

from appliance.data.io import normalise
from appliance.pipeline.inference import TileSettings, gaussian_weight, sliding_window_logits

CALLS: list[tuple] = []


def echo_runner(batch):
    """Logits = (−x, x) of the first channel: a known model, so the stitched output is predictable."""
    assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    CALLS.append(batch.shape)
    return np.concatenate([-batch[:, :1], batch[:, :1]], axis=1)


@pytest.mark.parametrize("shape", [(97, 130, 1), (20, 20, 1), (300, 64, 3), (512, 512, 2)])
@pytest.mark.parametrize("tile_size", [64, 256])
def test_stitched_logits_equal_the_per_pixel_model(shape, tile_size):
    image = normalise(np.random.default_rng(0).integers(0, 4096, shape).astype(np.uint16))
    logits = sliding_window_logits(image, echo_runner, tiles=TileSettings(tile_size=tile_size, overlap=0.5))
    assert logits.shape == (2, *shape[:2])
    np.testing.assert_allclose(logits[1], image[:, :, 0], rtol=1e-5, atol=1e-5)


def test_tiles_overlap_and_are_batched():
    CALLS.clear()
    sliding_window_logits(np.zeros((256, 256, 1), np.float32), echo_runner, tiles=TileSettings(128, 0.5, 4))
    assert sum(shape[0] for shape in CALLS) == 9  # 3 x 3 tiles at step 64
    assert max(shape[0] for shape in CALLS) == 4


def test_gaussian_weight_trusts_the_centre():
    weight = gaussian_weight(64, 64)
    assert weight.max() == pytest.approx(1.0) and weight[0, 0] < 0.01 and weight.min() > 0


@pytest.mark.parametrize("kwargs", [{"tile_size": 100}, {"overlap": 1.0}, {"batch_size": 0}])
def test_tile_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        TileSettings(**kwargs)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(97, 130, 1), (300, 64, 3)])
def test_blending_on_the_device_equals_blending_on_the_host(shape, channels_last):
    import torch

    from appliance.pipeline.inference import torch_runner, torch_sliding_window_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(shape[2], 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
    model.train()
    image = normalise(np.random.default_rng(1).integers(0, 255, shape).astype(np.uint8))
    tiles = TileSettings(tile_size=64, overlap=0.5, batch_size=3)
    expected = sliding_window_logits(image, torch_runner(model, device="cpu"), tiles=tiles)
    actual = torch_sliding_window_logits(image, model, tiles=tiles, channels_last=channels_last)
    assert actual.shape == expected.shape == (3, *shape[:2]) and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert model.training  # put back as it was
