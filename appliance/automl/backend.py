"""The real trial backend of successive halving: the module library's Trainer on a labelled set's split.

On CUDA the process caps its memory to ``gpu_memory_gb`` (``torch.cuda.set_per_process_memory_fraction``),
so a large GPU behaves like the 8 GB target card, and the probe step measures a configuration's peak
memory under that cap before its first slice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from appliance.automl.halving import DoesNotFit, TrainedSlice, TrialFailed, Validation
from appliance.data.labelled_set import INSTANCES, SEMANTIC, LabelledSet, read_split_instances
from appliance.data.splits import Split
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import (
    cap_gpu_memory,
    is_cuda,
    peak_memory_mb,
    release_cached_memory,
    reset_peak_memory,
    resolve_device,
)
from appliance.pipeline.evaluation import score_predictions
from appliance.pipeline.inference import DEFAULT_TILES, TileSettings, tile_pixels
from appliance.pipeline.instances import choose_seed_depth, softmax
from appliance.pipeline.patches import PatchCache
from appliance.pipeline.task import SELECTION_METRICS, network_classes, read_training_split
from appliance.pipeline.trainer import Trainer


class TorchBackend:
    """Trains configurations on the training images of ``split`` and scores them on its validation images.

    The network learns the set's classes, or interior and boundary for a set with instance masks
    (:mod:`appliance.pipeline.task`); validation scores the network's own classes (mean IoU) and, for an instances
    set, the objects' AP@0.5 at the best seed depth, which is what survivors are chosen on
    (:data:`~appliance.pipeline.task.SELECTION_METRICS`).
    """

    def __init__(
        self,
        labelled_set: LabelledSet,
        split: Split,
        *,
        seed: int,
        device: str | torch.device | None = None,
        gpu_memory_gb: float = 8.0,
        tiles: TileSettings = DEFAULT_TILES,
        on_throughput: Callable[[PipelineConfig, int, float], None] | None = None,
        min_object_px: int = 0,
    ):
        self.labelled_set = labelled_set
        self.seed = seed
        self.device = resolve_device(device)
        self.tiles = tiles
        self.on_throughput = on_throughput or (lambda config, steps, seconds: None)
        self.memory_fraction = cap_gpu_memory(self.device, gpu_memory_gb)
        self.gpu_memory_gb = gpu_memory_gb
        self.num_classes = network_classes(labelled_set)
        self.train_images, self.train_masks = read_training_split(labelled_set, split.train)
        self.validation_images, self.validation_masks = read_training_split(labelled_set, split.validation)
        self.validation_names = split.validation
        self.validation_objects = (
            read_split_instances(labelled_set, split.validation) if labelled_set.task == INSTANCES else None
        )
        self.selection_metric = SELECTION_METRICS[INSTANCES if self.validation_objects else SEMANTIC]
        self.min_object_px = min_object_px
        self.patches = PatchCache(self.train_images, self.train_masks, num_classes=self.num_classes)

    def start(self, config: PipelineConfig) -> Trainer:
        return Trainer(
            config,
            in_channels=self.labelled_set.channels,
            num_classes=self.num_classes,
            seed=self.seed,
            device=self.device,
        )

    def load(self, path: Path) -> Trainer:
        return Trainer.load(path, device=self.device)

    def save(self, trainer: Trainer, path: Path) -> None:
        trainer.save(path)

    def probe(self, trainer: Trainer) -> float | None:
        """One training step with peak-memory tracking (CUDA only; it counts as training, nothing is wasted)."""
        if not is_cuda(self.device):
            return None
        self._reset_peak()
        try:
            trainer.train(self.patches(trainer.config.patch_size), max_steps=1)
        except torch.cuda.OutOfMemoryError as error:
            peak = self.peak_memory_mb()
            self._release(trainer)
            raise DoesNotFit(
                peak, f"one training step needs more than the {self.gpu_memory_gb:g} GB cap ({_first_line(error)})"
            ) from None
        return self.peak_memory_mb()

    def train(
        self,
        trainer: Trainer,
        seconds: float,
        *,
        cooldown: float = 0.0,
        part: tuple[float, float] = (0.0, 1.0),
        rate: float = 1.0,
    ) -> TrainedSlice:
        self._reset_peak()
        try:
            # Trainer.train waits for the device at the slice's end, inside the seconds it reports
            result = trainer.train(
                self.patches(trainer.config.patch_size),
                seconds=max(seconds, 1e-3),
                cooldown=cooldown,
                part=part,
                rate=rate,
            )
        except torch.cuda.OutOfMemoryError as error:
            self._release(trainer)
            raise TrialFailed(
                f"CUDA out of memory under the {self.gpu_memory_gb:g} GB cap: {_first_line(error)}"
            ) from None
        self.on_throughput(trainer.config, result.steps, result.seconds)
        return TrainedSlice(
            seconds=result.seconds,
            total_seconds=trainer.seconds,
            optimizer_steps=trainer.steps,
            work_mp=trainer.pixels_seen / 1e6,
        )

    def restore(self, trainer: Trainer, path: Path) -> None:
        trainer.restore_weights(path)

    @property
    def validation_tile_pixels(self) -> int:
        """Pixels the network runs on to predict every validation image once (the cost of one validation)."""
        return sum(tile_pixels(*image.shape[:2], tiles=self.tiles) for image in self.validation_images)

    def validate(self, trainer: Trainer) -> Validation:
        logits = [trainer.logits(image, tiles=self.tiles) for image in self.validation_images]
        evaluation = score_predictions(
            (each.argmax(axis=0).astype(np.uint8) for each in logits),
            self.validation_masks,
            num_classes=self.num_classes,
            names=self.validation_names,
        )
        score = None
        if self.validation_objects:
            _, by_depth = choose_seed_depth(
                [softmax(each) for each in logits], self.validation_objects, min_object_px=self.min_object_px
            )
            score = max(by_depth.values())
        return Validation(evaluation.mean_foreground_iou, evaluation.overall.iou[1:], score)

    def peak_memory_mb(self) -> float | None:
        return peak_memory_mb(self.device)

    def _reset_peak(self) -> None:
        reset_peak_memory(self.device)

    def _release(self, trainer: Trainer) -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        release_cached_memory(self.device)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
