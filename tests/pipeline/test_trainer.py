import pytest
import torch

from appliance.errors import CheckpointError
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.model import focal_loss
from appliance.pipeline.patches import IGNORE_LABEL, make_training_patches
from appliance.pipeline.trainer import Trainer

CONFIG = PipelineConfig(patch_size=64, batch_size=4, flip=0.5, brightness_blur=0.5, grid_distortion=0.5)


@pytest.fixture(scope="module")
def patches(demo_set):
    pairs = [demo_set.read(i) for i in range(3)]
    images = [image[:128, :96] for image, _ in pairs]
    masks = [mask[:128, :96] for _, mask in pairs]
    return make_training_patches(images, masks, patch_size=64, num_classes=1)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resumed_training_equals_uninterrupted_training(patches, tmp_path):
    straight = Trainer(CONFIG, in_channels=1, num_classes=1, seed=7, device="cpu")
    straight.train(patches, max_steps=6)

    first = Trainer(CONFIG, in_channels=1, num_classes=1, seed=7, device="cpu")
    first.train(patches, max_steps=3)
    first.save(tmp_path / "checkpoint.pt")
    resumed = Trainer.load(tmp_path / "checkpoint.pt", device="cpu")
    assert (resumed.steps, resumed.position, resumed.epoch) == (3, first.position, first.epoch)
    resumed.train(patches, max_steps=3)

    expected, actual = _weights(straight), _weights(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.steps == straight.steps == 6
    assert resumed.pixels_seen == straight.pixels_seen == 6 * 4 * 64 * 64


def test_a_different_seed_trains_differently(patches):
    a = Trainer(CONFIG, in_channels=1, num_classes=1, seed=1, device="cpu")
    b = Trainer(CONFIG, in_channels=1, num_classes=1, seed=2, device="cpu")
    a.train(patches, max_steps=1)
    b.train(patches, max_steps=1)
    assert not torch.equal(a.model.encoder.conv1.weight, b.model.encoder.conv1.weight)


def test_a_wall_clock_budget_stops_training_near_it(patches):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    result = trainer.train(patches, seconds=2.0)
    assert result.steps >= 1
    assert result.seconds < 2.0 + 2 * result.seconds / result.steps
    assert trainer.seconds == pytest.approx(result.seconds)


def test_resuming_on_other_patches_is_refused(patches, demo_set, tmp_path):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    trainer.train(patches, max_steps=1)
    other = make_training_patches([demo_set.read(5)[0]], [demo_set.read(5)[1]], patch_size=64, num_classes=1)
    with pytest.raises(CheckpointError, match="same set, split and patch size"):
        trainer.train(other, max_steps=1)


def test_a_broken_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(path)):
        Trainer.load(path)


def test_focal_loss_matches_the_formula_and_ignores_padding():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, IGNORE_LABEL]]])
    p0 = torch.softmax(torch.tensor([2.0, 0.0]), 0)[0]
    expected = -((1 - p0) ** 2) * torch.log(p0)
    assert focal_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_loss_is_zero_with_zero_gradient_when_every_pixel_is_ignored():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)
    loss = focal_loss(logits, torch.full((1, 1, 2), IGNORE_LABEL))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_training_reduces_the_loss_on_real_data(patches):
    trainer = Trainer(PipelineConfig(patch_size=64, batch_size=4), in_channels=1, num_classes=1, seed=0, device="cpu")
    first = trainer.train(patches, max_steps=3).mean_loss
    for _ in range(3):
        last = trainer.train(patches, max_steps=3).mean_loss
    assert last < first
