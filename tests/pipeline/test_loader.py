"""Training batches: planned in the trainer's process, the same whether workers or the training thread prepare
them, and no worker outlives its loader or a killed trainer."""

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.pipeline.augment import build_augmentation
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.loader import BatchLoader, PatchSampler, default_workers, to_device
from appliance.pipeline.patches import make_training_patches

CONFIG = PipelineConfig(patch_size=64, batch_size=4, flip=0.5, brightness_blur=0.5, grid_distortion=0.5)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def patches(demo_set):
    pairs = [demo_set.read(i) for i in range(3)]
    return make_training_patches(
        [image[:128, :96] for image, _ in pairs], [mask[:128, :96] for _, mask in pairs], patch_size=64, num_classes=1
    )


def _loader(patches, *, workers: int, prefetch: int = 2, seed: int = 7) -> BatchLoader:
    return BatchLoader(
        patches,
        build_augmentation(CONFIG),
        PatchSampler(seed),
        batch_size=CONFIG.batch_size,
        device=CPU,
        workers=workers,
        prefetch=prefetch,
    )


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped (it runs nothing any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_until_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return all(_gone(pid) for pid in pids)


def test_batches_prepared_by_workers_equal_those_prepared_in_process(patches):
    in_process = _loader(patches, workers=0)
    expected = [in_process.next() for _ in range(7)]  # more than one epoch of the 6 x 4 patches
    assert expected[0][0].dtype == torch.float32 and expected[0][1].dtype == torch.int64
    assert expected[0][0].shape == (4, 1, 64, 64) and expected[0][1].shape == (4, 64, 64)
    background = _loader(patches, workers=2)  # forked after this process used OpenCV's thread pool
    try:
        for images, masks in expected:
            actual_images, actual_masks = background.next()
            assert torch.equal(images, actual_images) and torch.equal(masks, actual_masks)
    finally:
        background.close()


def test_the_consumed_state_ignores_the_batches_planned_ahead(patches):
    reference = PatchSampler(7)
    for _ in range(2):
        reference.plan(patches.factors, CONFIG.batch_size)
    loader = _loader(patches, workers=1, prefetch=3)
    loader.next()
    loader.next()
    assert loader.sampler.epoch * 100 + loader.sampler.position > reference.epoch * 100 + reference.position
    consumed = loader.consumed_state()
    assert (consumed.epoch, consumed.position) == (reference.epoch, reference.position)
    assert np.array_equal(consumed.order, reference.order)
    loader.close()  # rewinds the sampler to the consumed state
    assert (loader.sampler.epoch, loader.sampler.position) == (reference.epoch, reference.position)
    assert loader.sampler.plan(patches.factors, 4) == reference.plan(patches.factors, 4)


def test_workers_stop_when_the_loader_is_closed_or_dropped(patches):
    loader = _loader(patches, workers=2)
    loader.next()
    pids = loader.worker_pids
    assert len(pids) == 2
    loader.close()
    loader.close()
    assert _wait_until_gone(pids, 10) and loader.worker_pids == []

    dropped = _loader(patches, workers=1)
    dropped.next()
    pids = dropped.worker_pids
    del dropped
    gc.collect()
    assert _wait_until_gone(pids, 10)


def test_a_killed_trainer_leaves_no_workers(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, sys
        import numpy as np, torch
        from appliance.pipeline.augment import build_augmentation
        from appliance.pipeline.config import PipelineConfig
        from appliance.pipeline.loader import BatchLoader, PatchSampler
        from appliance.pipeline.patches import make_training_patches

        rng = np.random.default_rng(0)
        patches = make_training_patches(
            [rng.random((128, 128, 1), dtype=np.float32)], [rng.integers(0, 2, (128, 128))], patch_size=64,
            num_classes=1)
        loader = BatchLoader(patches, build_augmentation(PipelineConfig(patch_size=64)), PatchSampler(0),
                             batch_size=4, device=torch.device("cpu"), workers=2)
        loader.next()
        print(*loader.worker_pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert _wait_until_gone(pids, 20), "DataLoader workers must notice the lost parent and exit"


def test_workers_by_device():
    assert default_workers(CPU) == 0
    assert 1 <= default_workers(torch.device("cuda", 0)) <= max(1, (os.cpu_count() or 2) - 1)


def test_batches_can_be_handed_over_channels_last():
    images, masks = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.int64)
    moved, same_masks = to_device(images, masks, CPU, channels_last=True)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, images)
    assert same_masks is masks


def test_bad_loader_settings_are_refused(patches):
    with pytest.raises(ValueError, match="workers must be >= 0"):
        _loader(patches, workers=-1)
