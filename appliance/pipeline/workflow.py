"""Train, evaluate and export one configuration on one labelled set (the module library's whole path).

Writes into ``out_dir``: ``checkpoint.pt`` (resumable), ``model.onnx`` + ``model.json`` (the deployable
pair), ``config.yaml``, ``split.json`` and ``metrics.json`` (validation and test scores, the Otsu
baseline on the same images, ONNX/PyTorch parity, training counters).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.data.io import atomic_write
from appliance.data.labelled_set import LabelledSet, read_split_images
from appliance.data.splits import Split, split_stems
from appliance.pipeline.baselines import fit_otsu_baseline
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.evaluation import Evaluation, score_predictions
from appliance.pipeline.export import onnx_parity, write_model_folder
from appliance.pipeline.inference import DEFAULT_TILES, TileSettings
from appliance.pipeline.learning_rate import COOLDOWN
from appliance.pipeline.patches import make_training_patches
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.task import CHOOSE, SEMANTIC, evaluate_split, network_classes, read_training_split
from appliance.pipeline.trainer import Trainer

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrainingReport:
    """What :func:`train_configuration` produced."""

    out_dir: Path
    config: PipelineConfig
    split: Split
    validation: Evaluation
    test: Evaluation
    test_objects: dict | None
    otsu_validation: Evaluation
    parity: dict
    provider: str
    steps: int
    seconds: float
    metrics: dict


def train_configuration(
    labelled_set: LabelledSet,
    config: PipelineConfig,
    *,
    seconds: float,
    out_dir: str | Path,
    seed: int = 0,
    tiles: TileSettings = DEFAULT_TILES,
    device: str | None = None,
    progress: bool = True,
    min_object_px: int = 0,
) -> TrainingReport:
    """Split the set (seeded 80/10/10), train ``config`` for ``seconds``, evaluate on the validation
    and test images (objects below ``min_object_px`` pixels are not counted as objects), compare with Otsu, export
    ONNX + JSON and check ONNX against PyTorch. A set with instance masks trains an instances model unless its
    ``dataset.yaml`` says ``task: semantic`` (:mod:`appliance.pipeline.task`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_stems(labelled_set.stems, seed=seed)
    train_images, train_targets = read_training_split(labelled_set, split.train)
    k = labelled_set.num_classes

    patches = make_training_patches(
        train_images, train_targets, patch_size=config.patch_size, num_classes=network_classes(labelled_set)
    )
    trainer = Trainer(
        config, in_channels=labelled_set.channels, num_classes=network_classes(labelled_set), seed=seed, device=device
    )
    trainer.train(patches, seconds=seconds, cooldown=COOLDOWN, progress=progress)  # one stretch: the last one
    trainer.save(out_dir / CHECKPOINT_FILE)

    started = time.perf_counter()
    predict = lambda image: trainer.logits(image, tiles=tiles)  # noqa: E731
    validated = evaluate_split(
        labelled_set, split.validation, predict, min_object_px=min_object_px, seed_depth_px=CHOOSE
    )
    tested = evaluate_split(
        labelled_set, split.test, predict, min_object_px=min_object_px, seed_depth_px=validated.seed_depth_px
    )
    validation, test = validated.classes, tested.classes
    # the targets are the masks themselves for a semantic set; an instances set's masks are read for Otsu only
    train_masks = train_targets if labelled_set.task == SEMANTIC else read_split_images(labelled_set, split.train)[1]
    otsu = fit_otsu_baseline(train_images, train_masks, num_classes=k)
    otsu_validation = score_predictions(
        (otsu(image) for image in validated.images), validated.masks, num_classes=k, names=split.validation
    )
    evaluation_seconds = time.perf_counter() - started

    metrics = {
        "set": labelled_set.name,
        "config_id": config.id,
        "seed": seed,
        "device": str(trainer.device),
        "training": {
            "seconds": trainer.seconds,
            "steps": trainer.steps,
            "pixels_seen": trainer.pixels_seen,
            "patches": len(patches),
            "class_fractions": patches.class_fractions.tolist(),
            "class_factors": patches.class_factors.tolist(),
        },
        "evaluation_seconds": evaluation_seconds,
        "validation": validation.to_dict(),
        "test": test.to_dict(),
        "otsu_validation": otsu_validation.to_dict(),
        "task": labelled_set.task,
        "validation_objects": validated.objects,
        "seed_depth_px": validated.seed_depth_px,
        "seed_depth_scores": validated.seed_depth_scores,
        "test_objects": tested.objects,
    }
    write_model_folder(
        out_dir,
        trainer.model,
        config=config,
        in_channels=labelled_set.channels,
        class_names=list(labelled_set.class_names),
        tiles=tiles,
        pixel_size_um=labelled_set.pixel_size_um,
        task=labelled_set.task,
        seed_depth_px=validated.seed_depth_px,
        extra={
            "set": labelled_set.name,
            "validation_mean_foreground_iou": validation.mean_foreground_iou,
            "test_mean_foreground_iou": test.mean_foreground_iou,
        },
    )
    predictor = OnnxPredictor(out_dir)
    parity = onnx_parity(trainer.model, predictor, validated.images, tiles=tiles)
    metrics["onnx_parity"] = parity
    metrics["onnx_provider"] = predictor.provider
    atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(config.to_yaml()))
    atomic_write(out_dir / "split.json", lambda tmp: Path(tmp).write_text(json.dumps(split.to_dict(), indent=2)))
    atomic_write(out_dir / METRICS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
    return TrainingReport(
        out_dir=out_dir,
        config=config,
        split=split,
        validation=validation,
        test=test,
        test_objects=tested.objects,
        otsu_validation=otsu_validation,
        parity=parity,
        provider=predictor.provider,
        steps=trainer.steps,
        seconds=trainer.seconds,
        metrics=metrics,
    )
