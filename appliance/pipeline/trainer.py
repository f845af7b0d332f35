"""Train one configuration for a wall-clock budget, checkpoint, and resume exactly.

A :class:`Trainer` owns the model, the Adam optimiser, the patch sampler (class-based sampling, one
shuffled epoch after another) and the counters (optimiser steps, seconds trained, patch pixels seen).
:meth:`Trainer.train` continues from wherever the trainer is, so successive halving can give a
configuration several slices. A checkpoint holds all of it, so that training ``a`` steps, saving,
loading and training ``b`` more gives the same weights as training ``a + b`` steps in one go (on the
CPU with the same seed; augmentations are seeded per step and sample).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from appliance import __version__
from appliance.data.io import atomic_write, normalise
from appliance.errors import CheckpointError
from appliance.pipeline.augment import augment, build_augmentation
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import amp_dtype, resolve_device
from appliance.pipeline.inference import (
    DEFAULT_TILES,
    BatchRunner,
    TileSettings,
    sliding_window_logits,
    torch_runner,
)
from appliance.pipeline.model import build_model, focal_loss
from appliance.pipeline.patches import TrainingPatches
from appliance.pipeline.sampling import epoch_order


@dataclass
class SliceResult:
    """What one call of :meth:`Trainer.train` did."""

    steps: int
    seconds: float
    pixels: int
    mean_loss: float | None


class Trainer:
    """Model + optimiser + sampler + counters of one configuration on one set.

    Parameters
    ----------
    config : PipelineConfig
    in_channels, num_classes : int
        Input channels of the set's images and its number of foreground classes K.
    seed : int
        Seeds the weight initialisation, the patch sampler and the augmentations.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU. Mixed precision is used on CUDA only.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        in_channels: int,
        num_classes: int,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.seed = seed
        self.device = resolve_device(device)
        torch.manual_seed(seed)
        self.model = build_model(config, in_channels=in_channels, num_classes=num_classes).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.amp_dtype = amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.augmentation = build_augmentation(config)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.seconds = 0.0
        self.pixels_seen = 0
        self.epoch = 0
        self.epoch_order = np.zeros(0, dtype=np.int64)
        self.position = 0
        self.patch_count: int | None = None

    # -- training -----------------------------------------------------------------------------

    def train(
        self,
        patches: TrainingPatches,
        *,
        seconds: float | None = None,
        max_steps: int | None = None,
        progress: bool = False,
    ) -> SliceResult:
        """Train until ``seconds`` of wall-clock time are spent or ``max_steps`` more steps are done.

        The time limit is checked before each step against the mean step time so far, so a slice
        ends within about one step of its budget instead of overrunning by one.
        """
        if seconds is None and max_steps is None:
            raise ValueError("give seconds, max_steps or both")
        if patches.patch_size != self.config.patch_size:
            raise ValueError(f"patches are {patches.patch_size} px but the configuration says {self.config.patch_size}")
        self._check_patch_count(len(patches))
        self.model.train()
        start, steps, pixels, losses = time.perf_counter(), 0, 0, []
        bar = tqdm(
            total=seconds,
            unit="s",
            disable=not progress,
            leave=False,
            desc=self.config.id,
            bar_format="{desc} {bar} {n:.0f}/{total:.0f}s {postfix}",
        )
        try:
            while max_steps is None or steps < max_steps:
                elapsed = time.perf_counter() - start
                if seconds is not None and steps > 0 and elapsed + elapsed / steps > seconds:
                    break
                images, masks = self._next_batch(patches)
                losses.append(self._step(images, masks))
                steps += 1
                pixels += images.shape[0] * images.shape[2] * images.shape[3]
                bar.n = min(time.perf_counter() - start, seconds or 0)
                bar.set_postfix_str(f"step {self.steps + steps} loss {losses[-1]:.4f}", refresh=True)
        finally:
            bar.close()
        spent = time.perf_counter() - start
        self.steps += steps
        self.seconds += spent
        self.pixels_seen += pixels
        return SliceResult(
            steps=steps, seconds=spent, pixels=pixels, mean_loss=float(np.mean(losses)) if losses else None
        )

    def _step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(images)
        loss = focal_loss(logits, masks)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _next_batch(self, patches: TrainingPatches) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = [], []
        for _ in range(self.config.batch_size):
            if self.position >= len(self.epoch_order):
                self.epoch_order = epoch_order(patches.factors, self.rng)
                self.position = 0
                self.epoch += 1
            index = int(self.epoch_order[self.position])
            sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, self.position]).generate_state(1)[0])
            self.position += 1
            image, mask = augment(self.augmentation, *patches.crop(index), seed=sample_seed)
            images.append(image.transpose(2, 0, 1))
            masks.append(mask)
        batch_images = torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(self.device, non_blocking=True)
        batch_masks = torch.from_numpy(np.stack(masks)).to(self.device, non_blocking=True)
        return batch_images, batch_masks

    def _check_patch_count(self, count: int) -> None:
        if self.patch_count is None:
            self.patch_count = count
        elif self.patch_count != count:
            raise CheckpointError(
                f"this trainer was started on {self.patch_count} training patches but now gets {count}; "
                "resume only on the same set, split and patch size (or start a new run)"
            )

    # -- inference ----------------------------------------------------------------------------

    def runner(self) -> BatchRunner:
        """A batch runner over the current model, for :mod:`appliance.pipeline.inference`."""
        return torch_runner(self.model, device=self.device)

    def predict(self, image: np.ndarray, *, tiles: TileSettings = DEFAULT_TILES) -> np.ndarray:
        """``(H, W)`` network labels (the argmax of :meth:`logits`) for a raw ``(H, W, C)`` image."""
        return self.logits(image, tiles=tiles).argmax(axis=0).astype(np.uint8)

    def logits(self, image: np.ndarray, *, tiles: TileSettings = DEFAULT_TILES) -> np.ndarray:
        """``(K + 1, H, W)`` logits for a raw ``(H, W, C)`` image."""
        return sliding_window_logits(normalise(image), self.runner(), tiles=tiles)

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": 1,
            "code_version": __version__,
            "config": self.config.to_dict(),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {
                "steps": self.steps,
                "seconds": self.seconds,
                "pixels_seen": self.pixels_seen,
                "epoch": self.epoch,
                "position": self.position,
                "patch_count": self.patch_count,
            },
            "epoch_order": torch.from_numpy(self.epoch_order.copy()),
            "sampler_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (temp file + rename), so a crash never leaves half a file."""
        state = self.state_dict()
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> Trainer:
        """Rebuild a trainer from :meth:`save`'s file, ready to continue training."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be loaded as a checkpoint ({exc}); delete it to start over") from exc
        trainer = cls(
            PipelineConfig.from_dict(state["config"]),
            in_channels=state["in_channels"],
            num_classes=state["num_classes"],
            seed=state["seed"],
            device=device,
        )
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        counters = state["counters"]
        trainer.steps, trainer.seconds, trainer.pixels_seen = (
            counters["steps"],
            counters["seconds"],
            counters["pixels_seen"],
        )
        trainer.epoch, trainer.position, trainer.patch_count = (
            counters["epoch"],
            counters["position"],
            counters["patch_count"],
        )
        trainer.epoch_order = state["epoch_order"].numpy().copy()
        trainer.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        return trainer
