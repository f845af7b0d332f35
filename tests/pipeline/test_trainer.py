import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from appliance.errors import CheckpointError
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.model import focal_loss
from appliance.pipeline.patches import IGNORE_LABEL, make_training_patches
from appliance.pipeline.trainer import Speedups, Trainer

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


PREFETCHING = Speedups(workers=2, prefetch=2)


def test_resumed_training_with_prefetching_workers_equals_uninterrupted_training(patches, tmp_path):
    straight = Trainer(CONFIG, in_channels=1, num_classes=1, seed=7, device="cpu")
    straight.train(patches, max_steps=3)
    position_after_three = (straight.epoch, straight.position)
    straight.train(patches, max_steps=3)

    with Trainer(CONFIG, in_channels=1, num_classes=1, seed=7, device="cpu", speedups=PREFETCHING) as first:
        first.train(patches, max_steps=3)  # the workers have planned batches beyond these three
        assert (first.epoch, first.position) == position_after_three
        first.save(tmp_path / "checkpoint.pt")
    with Trainer.load(tmp_path / "checkpoint.pt", device="cpu", speedups=Speedups(workers=1)) as resumed:
        assert (resumed.epoch, resumed.position) == position_after_three
        resumed.train(patches, max_steps=3)
        expected, actual = _weights(straight), _weights(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_slices_of_one_trainer_with_workers_equal_one_long_slice(patches):
    straight = Trainer(CONFIG, in_channels=1, num_classes=1, seed=3, device="cpu")
    straight.train(patches, max_steps=5)
    with Trainer(CONFIG, in_channels=1, num_classes=1, seed=3, device="cpu", speedups=PREFETCHING) as sliced:
        for steps in (2, 1, 2):  # the batches prepared ahead carry over to the next slice
            sliced.train(patches, max_steps=steps)
        expected, actual = _weights(straight), _weights(sliced)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_a_slice_reads_the_loss_back_once_and_waits_for_the_device_once(patches, monkeypatch):
    import appliance.pipeline.trainer as trainer_module

    """Reading a device value back waits for the device; the appliance's code does it once per slice (torch's own
    CPU Adam reads its step counters, which live on the host; CUDA runs the fused Adam, which does not)."""
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    trainer.train(patches, max_steps=1)
    reads, waits = [], []

    def counted(read):
        def call(self):
            if "appliance" in Path(sys._getframe(1).f_code.co_filename).parts:
                reads.append(read.__name__)
            return read(self)

        return call

    monkeypatch.setattr(torch.Tensor, "__float__", counted(torch.Tensor.__float__))
    monkeypatch.setattr(torch.Tensor, "item", counted(torch.Tensor.item))
    monkeypatch.setattr(trainer_module, "synchronize", lambda device: waits.append(device))
    result = trainer.train(patches, max_steps=4)
    assert result.steps == 4 and result.mean_loss > 0
    assert reads == ["__float__"] and waits == [torch.device("cpu")]


def test_device_resident_steps_leave_the_counters_and_the_sampler_alone(patches):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    trainer.train(patches, max_steps=1)
    before = (trainer.steps, trainer.pixels_seen, trainer.epoch, trainer.position)
    weight = trainer.model.encoder.conv1.weight.detach().clone()
    seconds = trainer.train_resident(torch.randn(4, 1, 64, 64), torch.zeros(4, 64, 64, dtype=torch.int64), steps=2)
    assert seconds > 0 and not torch.equal(weight, trainer.model.encoder.conv1.weight)
    assert (trainer.steps, trainer.pixels_seen, trainer.epoch, trainer.position) == before


def test_speedups_by_device():
    assert Speedups.for_device(torch.device("cpu")) == Speedups()
    cuda = Speedups.for_device(torch.device("cuda", 0))
    assert cuda.workers >= 1 and cuda.channels_last and cuda.mixed_precision and cuda.fused_adam
    with pytest.raises(ValueError, match="channels_last, fused_adam need a CUDA device"):
        Trainer(
            CONFIG, in_channels=1, num_classes=1, device="cpu", speedups=Speedups(channels_last=True, fused_adam=True)
        )


def test_a_checkpoint_of_a_fused_adam_trainer_resumes_on_the_cpu(patches, tmp_path):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    trainer.train(patches, max_steps=1)
    state = trainer.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True  # as a CUDA trainer's Adam saves it
    torch.save(state, tmp_path / "cuda.pt")
    resumed = Trainer.load(tmp_path / "cuda.pt", device="cpu")
    assert all(not group["fused"] for group in resumed.optimizer.param_groups)
    assert resumed.train(patches, max_steps=1).steps == 1


def test_a_cooldown_decays_the_learning_rate_to_zero_and_the_next_slice_starts_at_the_configured_one(
    patches, tmp_path, monkeypatch
):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    rates = []
    step = trainer._step
    monkeypatch.setattr(
        trainer, "_step", lambda *batch: (rates.append(trainer.optimizer.param_groups[0]["lr"]), step(*batch))[1]
    )
    trainer.train(patches, max_steps=8, cooldown=0.5)  # constant for 4 steps, then down to zero
    assert rates == pytest.approx([CONFIG.learning_rate * f for f in (1, 1, 1, 1, 1, 0.75, 0.5, 0.25)])
    trainer.save(tmp_path / "after.pt")
    trainer.train(patches, max_steps=2)
    assert rates[8:] == [CONFIG.learning_rate] * 2
    resumed = Trainer.load(tmp_path / "after.pt", device="cpu")
    assert resumed.optimizer.param_groups[0]["lr"] == CONFIG.learning_rate


def test_a_timed_cooldown_decays_by_the_fraction_of_its_seconds_spent(patches, monkeypatch):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    now, rates = [0.0], []
    step = trainer._step

    def one_second_step(*batch):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        now[0] += 1.0
        return step(*batch)

    monkeypatch.setattr(trainer, "_step", one_second_step)
    monkeypatch.setattr("appliance.pipeline.trainer.time", SimpleNamespace(perf_counter=lambda: now[0]))
    result = trainer.train(patches, seconds=10.0, cooldown=1.0)
    assert result.steps == 10
    assert rates == pytest.approx([CONFIG.learning_rate * (1 - k / 10) for k in range(10)])


def test_a_part_of_a_slice_cools_down_where_the_whole_slice_would_at_the_rate_it_is_given(patches, monkeypatch):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=0, device="cpu")
    rates = []
    step = trainer._step
    monkeypatch.setattr(
        trainer, "_step", lambda *batch: (rates.append(trainer.optimizer.param_groups[0]["lr"]), step(*batch))[1]
    )
    trainer.train(patches, max_steps=4, cooldown=0.5, part=(0.0, 0.5))  # before the cooldown: constant
    trainer.train(patches, max_steps=4, cooldown=0.5, part=(0.5, 1.0), rate=0.5)  # the cooldown, at half the rate
    assert rates == pytest.approx([CONFIG.learning_rate * f for f in (1, 1, 1, 1, 0.5, 0.375, 0.25, 0.125)])
    assert trainer.optimizer.param_groups[0]["lr"] == CONFIG.learning_rate
    with pytest.raises(ValueError, match="part must be"):
        trainer.train(patches, max_steps=1, part=(0.5, 0.5))


def test_rolling_back_restores_the_weights_and_keeps_the_counters_and_the_sampler(patches, tmp_path):
    trainer = Trainer(CONFIG, in_channels=1, num_classes=1, seed=3, device="cpu")
    trainer.train(patches, max_steps=2)
    trainer.save(tmp_path / "best.pt")
    best = _weights(trainer)
    trainer.train(patches, max_steps=3)
    position, steps, pixels = trainer.position, trainer.steps, trainer.pixels_seen
    assert not all(torch.equal(best[k], v) for k, v in _weights(trainer).items())

    trainer.restore_weights(tmp_path / "best.pt")
    assert all(torch.equal(best[k], v) for k, v in _weights(trainer).items())
    assert (trainer.position, trainer.steps, trainer.pixels_seen) == (position, steps, pixels)  # new batches next
    saved = torch.load(tmp_path / "best.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(saved[0][key], trainer.optimizer.state_dict()["state"][0][key]) for key in saved[0])
    assert trainer.train(patches, max_steps=1).steps == 1

    other = Trainer(dataclasses.replace(CONFIG, learning_rate=0.01), in_channels=1, num_classes=1, seed=3, device="cpu")
    with pytest.raises(CheckpointError, match="roll back only to a checkpoint of the same trial"):
        other.restore_weights(tmp_path / "best.pt")


def test_a_compiled_trainer_learns_what_the_eager_one_does_and_saves_the_plain_model(patches, tmp_path):
    """The compile switch's CPU path: dynamo traces the training forward (the ``eager`` backend: no code generated,
    so the arithmetic and the weights are the eager trainer's); the checkpoint holds the module's own keys."""
    eager = Trainer(CONFIG, in_channels=1, num_classes=1, seed=5, device="cpu")
    eager.train(patches, max_steps=2)
    traced = Speedups(compile="default", compile_backend="eager")
    compiled = Trainer(CONFIG, in_channels=1, num_classes=1, seed=5, device="cpu", speedups=traced)
    assert compiled._forward is not compiled.model
    compiled.train(patches, max_steps=2)
    expected, actual = _weights(eager), _weights(compiled)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    compiled.save(tmp_path / "compiled.pt")
    assert not any("_orig_mod" in key for key in torch.load(tmp_path / "compiled.pt")["model"])
    resumed = Trainer.load(tmp_path / "compiled.pt", device="cpu")
    assert resumed._forward is resumed.model  # a checkpoint does not carry the switch


@pytest.mark.parametrize(
    ("compile_mode", "error"),
    [("reduce-overhead", "CUDA graphs.*need a CUDA device"), ("fastest", "compile must be one of")],
)
def test_cuda_graph_and_unknown_compile_modes_are_refused_on_the_cpu(compile_mode, error):
    with pytest.raises(ValueError, match=error):
        Trainer(CONFIG, in_channels=1, num_classes=1, device="cpu", speedups=Speedups(compile=compile_mode))
