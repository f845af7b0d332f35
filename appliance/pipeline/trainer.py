"""Train one configuration for a wall-clock budget, checkpoint, and resume exactly.

A :class:`Trainer` owns the model, the Adam optimiser, the patch sampler (class-based sampling, one
shuffled epoch after another) and the counters (optimiser steps, seconds trained, patch pixels seen).
:meth:`Trainer.train` continues from wherever the trainer is, so successive halving can give a
configuration several slices. A checkpoint holds all of it, so that training ``a`` steps, saving,
loading and training ``b`` more gives the same weights as training ``a + b`` steps in one go (on the
CPU with the same seed; augmentations are seeded per sample, and batches prepared ahead by background workers are
planned from the sampler state the checkpoint saves: :mod:`appliance.pipeline.loader`).

A step never waits for the host: the loss is summed on the device and read back at the end of a slice (every
:data:`LOSS_EVERY` steps too while a progress bar shows it), and the slice's seconds include the final
synchronisation. :class:`Speedups` holds the device-dependent choices (background workers, channels-last, mixed
precision, fused Adam); :meth:`Speedups.for_device` gives CUDA all of them and the CPU none but its plain path.
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
from appliance.pipeline.augment import build_augmentation
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import amp_dtype, is_cuda, resolve_device, synchronize
from appliance.pipeline.inference import (
    DEFAULT_TILES,
    BatchRunner,
    TileSettings,
    torch_runner,
    torch_sliding_window_logits,
)
from appliance.pipeline.learning_rate import cooldown_factor, slice_progress
from appliance.pipeline.loader import PREFETCH, BatchLoader, PatchSampler, SamplerState, default_workers
from appliance.pipeline.model import build_model, focal_loss
from appliance.pipeline.patches import TrainingPatches

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes a trainer accepts; the next two capture CUDA graphs."""
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

LOSS_EVERY = 20
"""With a progress bar, the mean loss is read back (a host synchronisation) every this many steps."""


@dataclass(frozen=True)
class Speedups:
    """How a trainer uses its device; none of it changes what is learned beyond floating-point rounding.

    ``workers`` background processes prepare ``prefetch`` batches each ahead (0: in the training thread);
    ``channels_last`` memory format, ``mixed_precision`` (bf16 where the GPU has it, else fp16) and the
    ``fused_adam`` kernel help on CUDA only and are refused on the CPU, whose path is plain fp32.

    ``compile`` runs the training forward (and so its backward) through ``torch.compile`` in that mode
    (:data:`COMPILE_MODES`; ``""``: eager, the default everywhere). Compiling costs seconds to minutes on the first
    step, which a halving slice pays; whether fewer launches (``reduce-overhead``: CUDA graphs) repay it for the small
    configurations is measured by ``benchmarks/throughput.py --compile MODE`` before any default turns it on. The
    CUDA-graph modes are refused on the CPU. ``compile_backend`` is torch's (``inductor``; ``eager`` traces only).
    """

    workers: int = 0
    prefetch: int = PREFETCH
    channels_last: bool = False
    mixed_precision: bool = False
    fused_adam: bool = False
    compile: str = ""
    compile_backend: str = "inductor"

    @classmethod
    def for_device(cls, device: torch.device) -> Speedups:
        """Every speed-up on CUDA; on the CPU the plain path (no workers: see :func:`default_workers`)."""
        cuda = is_cuda(device)
        return cls(workers=default_workers(device), channels_last=cuda, mixed_precision=cuda, fused_adam=cuda)

    def check(self, device: torch.device) -> None:
        if self.compile and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)} or empty, got {self.compile!r}")
        cuda_only = [name for name in ("channels_last", "mixed_precision", "fused_adam") if getattr(self, name)]
        if self.compile in CUDA_GRAPH_MODES:
            cuda_only.append(f"compile={self.compile!r} (CUDA graphs)")
        if cuda_only and not is_cuda(device):
            raise ValueError(f"{', '.join(cuda_only)} need a CUDA device, got {device}; use Speedups.for_device")
        if self.workers < 0 or self.prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {self.workers} and {self.prefetch}")


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
        Default: CUDA when available, else CPU.
    speedups : Speedups, optional
        Default: :meth:`Speedups.for_device` (mixed precision, channels-last, fused Adam and background batch
        workers on CUDA; none on the CPU).

    A trainer with background workers holds processes: :meth:`close` (or dropping the trainer) stops them.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        in_channels: int,
        num_classes: int,
        seed: int = 0,
        device: str | torch.device | None = None,
        speedups: Speedups | None = None,
    ):
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.seed = seed
        self.device = resolve_device(device)
        self.speedups = speedups or Speedups.for_device(self.device)
        self.speedups.check(self.device)
        torch.manual_seed(seed)
        self.model = build_model(config, in_channels=in_channels, num_classes=num_classes).to(self.device)
        if self.speedups.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the module itself stays eager: checkpoints, validation and export use it; only training steps compile
        self._forward = (
            torch.compile(self.model, mode=self.speedups.compile, backend=self.speedups.compile_backend)
            if self.speedups.compile
            else self.model
        )
        # fused Adam: one kernel for all parameters' updates instead of several per tensor (CUDA)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.learning_rate, fused=True if self.speedups.fused_adam else None
        )
        self.amp_dtype = amp_dtype(self.device) if self.speedups.mixed_precision else None
        # fp16 only (GPUs without bf16): the scaler's inf check reads a flag back every step; bf16 needs no scaler
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.augmentation = build_augmentation(config)
        self.sampler = PatchSampler(seed)
        self._loader: BatchLoader | None = None
        self.steps = 0
        self.seconds = 0.0
        self.pixels_seen = 0
        self.patch_count: int | None = None

    # -- sampler position (as of the last batch trained on, whatever the workers prepared ahead) -------------------

    def sampler_state(self) -> SamplerState:
        return self._loader.consumed_state() if self._loader is not None else self.sampler.state()

    @property
    def epoch(self) -> int:
        return self.sampler_state().epoch

    @property
    def position(self) -> int:
        return self.sampler_state().position

    # -- training -----------------------------------------------------------------------------

    def train(
        self,
        patches: TrainingPatches,
        *,
        seconds: float | None = None,
        max_steps: int | None = None,
        cooldown: float = 0.0,
        part: tuple[float, float] = (0.0, 1.0),
        rate: float = 1.0,
        progress: bool = False,
    ) -> SliceResult:
        """Train until ``seconds`` of wall-clock time are spent or ``max_steps`` more steps are done.

        The time limit is checked before each step against the mean step time so far, so a slice
        ends within about one step of its budget instead of overrunning by one. On CUDA the host queues steps
        ahead of the GPU; the slice waits for them at its end, and its seconds include that wait.

        Every slice runs at the configuration's learning rate; with ``cooldown`` > 0 the rate decays linearly to
        zero over that last fraction of the slice (its progress: the larger of its fraction of ``seconds`` spent
        and of ``max_steps`` done). That is for the last stretch of training, after which the weights are used
        rather than trained on: a warmup-stable-decay schedule, whose constant phase (every earlier slice) can
        end whenever a race decides (docs/design.md, "The last stretch"). A slice trained in several calls (validated
        between them) gives each call its ``part`` of the slice, from and to which fraction of it, so that the
        cooldown runs on over the whole slice; ``rate`` scales the configured learning rate for this call (a
        stretch rolled back after a fall continues at a lower one: :mod:`appliance.automl.last_stretch`).
        """
        if not 0.0 <= part[0] < part[1] <= 1.0 or rate <= 0:
            raise ValueError(f"part must be 0 <= start < end <= 1 and rate > 0, got {part} and {rate}")
        if seconds is None and max_steps is None:
            raise ValueError("give seconds, max_steps or both")
        if patches.patch_size != self.config.patch_size:
            raise ValueError(f"patches are {patches.patch_size} px but the configuration says {self.config.patch_size}")
        self._check_patch_count(len(patches))
        self.model.train()
        start, steps, pixels = time.perf_counter(), 0, 0
        loader = self._batches(patches)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        bar = tqdm(
            total=seconds,
            unit="s",
            disable=not progress,
            leave=False,
            desc=self.config.id,
            bar_format="{desc} {bar} {n:.0f}/{total:.0f}s {postfix}",
        )
        try:
            self._set_learning_rate(rate)
            while max_steps is None or steps < max_steps:
                elapsed = time.perf_counter() - start
                if seconds is not None and steps > 0 and elapsed + elapsed / steps > seconds:
                    break
                if cooldown > 0:
                    done = slice_progress(elapsed, steps, seconds=seconds, max_steps=max_steps)
                    self._set_learning_rate(rate * cooldown_factor(part[0] + done * (part[1] - part[0]), cooldown))
                images, masks = loader.next()
                loss_sum += self._step(images, masks)
                steps += 1
                pixels += images.shape[0] * images.shape[2] * images.shape[3]
                if progress and (steps % LOSS_EVERY == 0 or steps == 1):
                    bar.n = min(time.perf_counter() - start, seconds or 0)
                    bar.set_postfix_str(f"step {self.steps + steps} loss {float(loss_sum) / steps:.4f}", refresh=True)
            synchronize(self.device)
        finally:
            bar.close()
            self._set_learning_rate(1.0)  # a checkpoint saved after a cooldown continues at the configured rate
        spent = time.perf_counter() - start
        self.steps += steps
        self.seconds += spent
        self.pixels_seen += pixels
        return SliceResult(
            steps=steps, seconds=spent, pixels=pixels, mean_loss=float(loss_sum) / steps if steps else None
        )

    def train_resident(self, images: torch.Tensor, masks: torch.Tensor, *, steps: int) -> float:
        """Seconds for ``steps`` optimiser steps on one batch already on the device: the same step as
        :meth:`train` without preparing batches, the reference that real training is measured against
        (``benchmarks/throughput.py``). The counters and the sampler do not move."""
        self.model.train()
        memory_format = torch.channels_last if self.speedups.channels_last else torch.preserve_format
        images = images.to(self.device, memory_format=memory_format)
        masks = masks.to(self.device)
        synchronize(self.device)
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for _ in range(steps):
            loss_sum += self._step(images, masks)
        synchronize(self.device)
        return time.perf_counter() - start

    def _set_learning_rate(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * factor

    def _step(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns the loss as a float32 tensor on the device (reading it would wait for it)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self._forward(images)
        loss = focal_loss(logits, masks)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().float()

    def _batches(self, patches: TrainingPatches) -> BatchLoader:
        """The batch loader of these patches: kept across slices (its workers too), rebuilt for other patches."""
        if self._loader is not None and self._loader.patches is not patches:
            self.close()
        if self._loader is None:
            self._loader = BatchLoader(
                patches,
                self.augmentation,
                self.sampler,
                batch_size=self.config.batch_size,
                device=self.device,
                workers=self.speedups.workers,
                prefetch=self.speedups.prefetch,
                channels_last=self.speedups.channels_last,
            )
        return self._loader

    def close(self) -> None:
        """Stop the background batch workers (if any); the sampler goes back to the last batch trained on, and
        the next :meth:`train` starts new ones. Safe to call more than once."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

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
        """``(K + 1, H, W)`` logits for a raw ``(H, W, C)`` image (tiles batched and blended on the device)."""
        return torch_sliding_window_logits(
            normalise(image),
            self.model,
            device=self.device,
            tiles=tiles,
            amp_dtype=self.amp_dtype,
            channels_last=self.speedups.channels_last,
        )

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        sampler = self.sampler_state()
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
                "epoch": sampler.epoch,
                "position": sampler.position,
                "patch_count": self.patch_count,
            },
            "epoch_order": torch.from_numpy(sampler.order.copy()),
            "sampler_rng": sampler.rng_state,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (temp file + rename), so a crash never leaves half a file."""
        state = self.state_dict()
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    def restore_weights(self, path: str | Path) -> None:
        """Go back to the weights (and the optimiser's and scaler's state) of checkpoint ``path`` of this
        configuration, keeping the counters and the sampler's position: training rolled back to a better point goes
        on with new batches, and the time and pixels spent since count as spent."""
        state = _read_checkpoint(path)
        if state["config"] != self.config.to_dict():
            raise CheckpointError(
                f"{path}: a checkpoint of {PipelineConfig.from_dict(state['config']).id}, "
                f"not of {self.config.id}; roll back only to a checkpoint of the same trial"
            )
        self._load_weights(state)

    def _load_weights(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        kernel = {key: self.optimizer.param_groups[0][key] for key in ("fused", "foreach", "capturable")}
        for group in optimizer["param_groups"]:  # the saved options name the saving trainer's Adam kernel
            group.update(kernel)
        self.optimizer.load_state_dict(optimizer)
        self.scaler.load_state_dict(state["scaler"])

    @classmethod
    def load(
        cls, path: str | Path, *, device: str | torch.device | None = None, speedups: Speedups | None = None
    ) -> Trainer:
        """Rebuild a trainer from :meth:`save`'s file, ready to continue training (on any device, with any
        :class:`Speedups`)."""
        state = _read_checkpoint(path)
        trainer = cls(
            PipelineConfig.from_dict(state["config"]),
            in_channels=state["in_channels"],
            num_classes=state["num_classes"],
            seed=state["seed"],
            device=device,
            speedups=speedups,
        )
        trainer._load_weights(state)
        counters = state["counters"]
        trainer.steps, trainer.seconds, trainer.pixels_seen = (
            counters["steps"],
            counters["seconds"],
            counters["pixels_seen"],
        )
        trainer.patch_count = counters["patch_count"]
        trainer.sampler.restore(
            SamplerState(
                epoch=counters["epoch"],
                order=state["epoch_order"].numpy().copy(),
                position=counters["position"],
                rng_state=state["sampler_rng"],
            )
        )
        torch.set_rng_state(state["torch_rng"])
        return trainer


def _read_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be loaded as a checkpoint ({exc}); delete it to start over") from exc
