"""Training batches: planned in the training process, prepared in the training thread or in background workers.

A batch's *plan* is the list of its samples as ``(patch index, augmentation seed)``. :class:`PatchSampler` draws
plans in the order the trainer consumes them, from its own state (one shuffled, class-based epoch after another;
the seed of a sample is ``SeedSequence([seed, epoch, position])``), always in the training process. Preparing a
sample (crop + augmentation, :class:`PatchDataset`) needs nothing but its plan entry, so it may run anywhere: the
batch is the same whether the training thread or a worker process built it, and whichever worker gets it.

:class:`BatchLoader` runs a :class:`torch.utils.data.DataLoader` over the plans. With ``workers = 0`` it prepares
each batch when it is asked for (nothing is planned ahead). With workers it plans ``workers × prefetch`` batches
ahead; the sampler state *before* each planned but not yet consumed batch is remembered, and
:meth:`BatchLoader.consumed_state` (what a checkpoint saves) is the state after the last consumed batch, so
``a`` steps, checkpoint, load, ``b`` steps gives the weights of ``a + b`` steps with or without workers.

Workers are forked daemon processes of the DataLoader (a killed trainer's workers notice the lost parent and
exit); they live as long as the loader, across training slices of the same trainer, and stop at
:meth:`BatchLoader.close` or when the loader is garbage-collected. Batches go through pinned memory on CUDA.

Default worker count (:func:`default_workers`): on CUDA a few workers, so the GPU never waits for albumentations.
On the CPU none: preparing a batch costs 1.2–1.9 ms per sample (patch 64–256, every augmentation on) against
7–8 µs per pixel of a training step, 0.4–4 % of a step, while a worker process takes one of the two cores from the
convolutions (measured in ``docs/measurements.md``, "Background batches").
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from appliance.pipeline.augment import augment
from appliance.pipeline.patches import TrainingPatches
from appliance.pipeline.sampling import epoch_order

Plan = list[tuple[int, int]]
"""One batch: ``(patch index, augmentation seed)`` per sample."""

CUDA_WORKERS = 4
"""Background workers on CUDA (fewer when the machine has fewer spare cores)."""
PREFETCH = 2
"""Batches each worker prepares ahead."""


def default_workers(device: torch.device) -> int:
    """Background batch workers for ``device``: none on the CPU (see the module docstring), else up to
    :data:`CUDA_WORKERS`, leaving one core to the training thread."""
    if device.type != "cuda":
        return 0
    return max(1, min(CUDA_WORKERS, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class SamplerState:
    """Where the sampler is: epoch number, the epoch's patch order, the position in it, and the generator state
    that draws the next epoch's order."""

    epoch: int
    order: np.ndarray
    position: int
    rng_state: dict


class PatchSampler:
    """Plans batches: class-based epochs of patch indices (:func:`~appliance.pipeline.sampling.epoch_order`) and
    one augmentation seed per sample, both from ``seed`` only."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.order = np.zeros(0, dtype=np.int64)
        self.position = 0

    def plan(self, factors: np.ndarray, batch_size: int) -> Plan:
        """The next batch of ``batch_size`` samples; a new shuffled epoch starts when the current one is used up."""
        plan = []
        for _ in range(batch_size):
            if self.position >= len(self.order):
                self.order = epoch_order(factors, self.rng)
                self.position = 0
                self.epoch += 1
            index = int(self.order[self.position])
            seed = int(np.random.SeedSequence([self.seed, self.epoch, self.position]).generate_state(1)[0])
            self.position += 1
            plan.append((index, seed))
        return plan

    def state(self) -> SamplerState:
        # the order array is replaced at each new epoch, never changed in place, so it can be shared
        return SamplerState(self.epoch, self.order, self.position, self.rng.bit_generator.state)

    def restore(self, state: SamplerState) -> None:
        self.epoch, self.order, self.position = state.epoch, state.order, state.position
        self.rng.bit_generator.state = state.rng_state


class PatchDataset(Dataset):
    """Prepares one planned sample: ``(index, seed)`` → ``(C, p, p)`` float32 image and ``(p, p)`` int64 mask."""

    def __init__(self, patches: TrainingPatches, augmentation: A.Compose):
        self.patches = patches
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        index, seed = item
        image, mask = augment(self.augmentation, *self.patches.crop(index), seed=seed)
        return np.ascontiguousarray(image.transpose(2, 0, 1)), np.ascontiguousarray(mask)


class _Plans:
    """The DataLoader's batch sampler: an endless stream of plans that remembers the sampler state before each
    plan it hands out until the trainer consumes that batch (no reference back to the loader, so no cycle)."""

    def __init__(self, sampler: PatchSampler, factors: np.ndarray, batch_size: int):
        self.sampler = sampler
        self.factors = factors
        self.batch_size = batch_size
        self.before: deque[SamplerState] = deque()

    def __iter__(self) -> Iterator[Plan]:
        while True:
            self.before.append(self.sampler.state())
            yield self.sampler.plan(self.factors, self.batch_size)


def _shutdown(iterator) -> None:
    stop = getattr(iterator, "_shutdown_workers", None)  # the multiprocessing iterator's own clean-up
    if stop is not None:
        stop()


class BatchLoader:
    """Batches of ``patches`` in the order ``sampler`` plans them, on ``device``.

    Parameters
    ----------
    patches : TrainingPatches
    augmentation : albumentations.Compose
    sampler : PatchSampler
        Advanced as batches are planned (ahead of consumption with workers); see :meth:`consumed_state`.
    batch_size : int
    device : torch.device
    workers : int
        Background worker processes; 0 prepares each batch in the calling thread when asked for.
    prefetch : int
        Batches each worker prepares ahead.
    channels_last : bool
        Hand images over in channels-last memory format (faster convolutions on CUDA).
    """

    def __init__(
        self,
        patches: TrainingPatches,
        augmentation: A.Compose,
        sampler: PatchSampler,
        *,
        batch_size: int,
        device: torch.device,
        workers: int = 0,
        prefetch: int = PREFETCH,
        channels_last: bool = False,
    ):
        if workers < 0 or prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
        self.patches = patches
        self.sampler = sampler
        self.device = device
        self.workers = workers
        self.channels_last = channels_last
        self._plans = _Plans(sampler, patches.factors, batch_size)
        cuda = device.type == "cuda"
        loader = DataLoader(
            PatchDataset(patches, augmentation),
            batch_sampler=self._plans,
            num_workers=workers,
            collate_fn=default_collate,
            generator=torch.Generator().manual_seed(sampler.seed),  # leaves the global torch generator alone
            pin_memory=cuda,
            prefetch_factor=prefetch if workers else None,
            # fork: workers start in milliseconds and share the patches copy-on-write. They must not call
            # cv2.setNumThreads: in a child forked after the parent used OpenCV's thread pool it never returns.
            multiprocessing_context=multiprocessing.get_context("fork") if workers else None,
        )
        self._iterator = iter(loader)  # forks the workers, which start preparing the first batches
        self._finalizer = weakref.finalize(self, _shutdown, self._iterator)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(B, C, p, p)`` float32 images and ``(B, p, p)`` int64 masks, on the device (copies from pinned
        memory do not block)."""
        images, masks = next(self._iterator)
        self._plans.before.popleft()
        return to_device(images, masks, self.device, channels_last=self.channels_last)

    def consumed_state(self) -> SamplerState:
        """The sampler state after the last batch :meth:`next` returned (before any batch planned ahead)."""
        return self._plans.before[0] if self._plans.before else self.sampler.state()

    def close(self) -> SamplerState:
        """Stop the workers and rewind the sampler to :meth:`consumed_state` (planned batches are dropped);
        returns that state. Safe to call twice."""
        state = self.consumed_state()
        self._finalizer()
        self.sampler.restore(state)
        self._plans.before.clear()
        return state

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty without workers or once closed)."""
        workers = getattr(self._iterator, "_workers", []) if self._finalizer.alive else []
        return [w.pid for w in workers if w.is_alive()]


def to_device(
    images: torch.Tensor, masks: torch.Tensor, device: torch.device, *, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a CPU batch to ``device`` without waiting for the copy (the source is pinned on CUDA), images in
    channels-last format when asked."""
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return images, masks.to(device, non_blocking=True)
