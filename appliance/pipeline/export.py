"""ONNX export of a trained model, with the JSON that makes the pair self-sufficient.

A model folder holds ``model.onnx`` (input ``image`` ``(batch, C, height, width)`` float32, output
``logits`` ``(batch, K + 1, height, width)``, all three of batch, height and width dynamic; height and
width must be multiples of 32) and ``model.json`` (normalisation, channels, class names, tile settings,
the configuration and its QC numbers). Those two files alone segment a new image
(:class:`appliance.pipeline.predictor.OnnxPredictor`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from appliance import __version__
from appliance.data.io import NORMALISATION, atomic_write, normalise
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.inference import DEFAULT_TILES, TileSettings, sliding_window_logits, torch_runner
from appliance.pipeline.predictor import METADATA_FILE, METADATA_FORMAT
from appliance.pipeline.task import SEMANTIC, check_task, network_class_names

MODEL_FILE = "model.onnx"
OPSET = 17


def export_onnx(model: torch.nn.Module, path: str | Path, *, in_channels: int) -> Path:
    """Export ``model`` (on any device) to ONNX with dynamic batch, height and width, atomically.

    Uses the TorchScript-based exporter: it handles the U-Net's shape arithmetic with symbolic
    height/width without the divisibility guards the ``torch.export`` path adds.
    """
    path = Path(path)
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(1, in_channels, 64, 64, device=device)
    dynamic = {0: "batch", 2: "height", 3: "width"}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, torch.jit.TracerWarning))
            torch.onnx.export(
                model,
                (example,),
                tmp,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": dynamic, "logits": dynamic},
                opset_version=OPSET,
                dynamo=False,
            )

    return atomic_write(path, write)


def model_metadata(
    *,
    config: PipelineConfig,
    in_channels: int,
    class_names: list[str],
    tiles: TileSettings,
    pixel_size_um: float | None = None,
    task: str = SEMANTIC,
    seed_depth_px: float | None = None,
    extra: dict | None = None,
) -> dict:
    """The content of ``model.json``: everything besides the weights that inference needs. ``class_names`` are the
    set's classes; the network's outputs are those of ``task`` (:func:`~appliance.pipeline.task.network_class_names`);
    ``seed_depth_px`` is the watershed's seed depth an instances model was tuned with (omitted: the default).
    """
    return {
        "format": METADATA_FORMAT,
        "code_version": __version__,
        "model_file": MODEL_FILE,
        "input": {"name": "image", "channels": in_channels, "layout": "NCHW", "size_multiple": 32},
        "output": {"name": "logits", "classes": ["background", *network_class_names(task, class_names)]},
        "task": check_task(task),
        **({"seed_depth_px": float(seed_depth_px)} if seed_depth_px is not None else {}),
        "class_names": list(class_names),
        "normalisation": dict(NORMALISATION),
        "tiles": asdict(tiles),
        "pixel_size_um": pixel_size_um,
        "config": config.to_dict(),
        "config_id": config.id,
        "fixed_defaults": config.fixed_defaults(),
        **(extra or {}),
    }


def write_model_folder(
    out_dir: str | Path,
    model: torch.nn.Module,
    *,
    config: PipelineConfig,
    in_channels: int,
    class_names: list[str],
    tiles: TileSettings = DEFAULT_TILES,
    pixel_size_um: float | None = None,
    task: str = SEMANTIC,
    seed_depth_px: float | None = None,
    extra: dict | None = None,
) -> tuple[Path, Path]:
    """Write ``model.onnx`` and ``model.json`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    onnx_path = export_onnx(model, out_dir / MODEL_FILE, in_channels=in_channels)
    metadata = model_metadata(
        config=config,
        in_channels=in_channels,
        class_names=class_names,
        tiles=tiles,
        pixel_size_um=pixel_size_um,
        task=task,
        seed_depth_px=seed_depth_px,
        extra=extra,
    )
    json_path = atomic_write(out_dir / METADATA_FILE, lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=2)))
    return onnx_path, json_path


def onnx_parity(
    model: torch.nn.Module, predictor, images: list[np.ndarray], *, tiles: TileSettings = DEFAULT_TILES
) -> dict:
    """Compare PyTorch and ONNX Runtime on whole raw images: the largest absolute logit difference
    and the fraction of pixels with the same argmax label."""
    runner = torch_runner(model)
    max_diff, same, total = 0.0, 0, 0
    for image in images:
        normalised = normalise(image)
        reference = sliding_window_logits(normalised, runner, tiles=tiles)
        candidate = predictor.logits(image)
        max_diff = max(max_diff, float(np.abs(reference - candidate).max()))
        same += int((reference.argmax(0) == candidate.argmax(0)).sum())
        total += reference.shape[1] * reference.shape[2]
    return {"max_abs_logit_diff": max_diff, "argmax_agreement": same / total, "images": len(images)}
