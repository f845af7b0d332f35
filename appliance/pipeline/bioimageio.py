"""A model folder as a BioImage Model Zoo package (ilastik, deepImageJ, QuPath, bioimageio.core open it).

The package is a zip of ``rdf.yaml`` (model description format 0.5), the ONNX weights, TorchScript weights traced
from the same PyTorch weights when the run's checkpoint is still there, a test input and the network's output on it,
a cover picture and a README. The input's preprocessing is the appliance's own (per image and channel: zero mean,
unit variance), so a consumer feeds raw pixels. The output is the network's logits; for an instances model its
channels are background, interior and boundary and the README says how the appliance turns them into objects.
Validation is the spec library's (:func:`validate_package`), with no network access.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

from appliance import __version__
from appliance.data.io import NORMALISATION_EPS, atomic_write, normalise, write_png
from appliance.errors import ApplianceError
from appliance.pipeline.overlay import display_image, overlay
from appliance.pipeline.predictor import CPU_PROVIDER, METADATA_FILE, OnnxPredictor
from appliance.pipeline.task import INSTANCES, SEMANTIC, network_class_names

FORMAT_VERSION = "0.5.4"
TEST_SIDE = 256  # the test tensors' largest side: small, a multiple of 32
UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation (2015)",
    "doi": "10.1007/978-3-319-24574-4_28",
}


class BioimageioExportError(ApplianceError):
    """A model folder cannot be packaged; the message says why and what to do."""


def export_bioimageio(
    model_dir: str | Path,
    out: str | Path,
    *,
    test_image: np.ndarray,
    checkpoint: str | Path | None = None,
    authors: tuple[str, ...] = ("Microscope AutoML appliance",),
    license: str = "CC-BY-4.0",
) -> Path:
    """Write ``out`` (a ``.zip``) from a model folder; ``test_image`` is a raw ``(H, W, C)`` image of the kind the
    model segments (a crop of at most ``TEST_SIDE`` px becomes the test input). Without ``checkpoint`` the package
    holds ONNX weights only. Returns ``out``."""
    model_dir, out = Path(model_dir), Path(out)
    predictor = OnnxPredictor(model_dir, providers=[CPU_PROVIDER])
    metadata = predictor.metadata
    image = _test_crop(test_image, predictor)
    logits = predictor.run_batch(np.moveaxis(normalise(image), -1, 0)[None])
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        folder = Path(tmp)
        np.save(folder / "test_input.npy", np.moveaxis(image.astype(np.float32), -1, 0)[None])
        np.save(folder / "test_output.npy", logits.astype(np.float32))
        shutil.copy(model_dir / metadata["model_file"], folder / "model.onnx")
        weights = {"onnx": {"source": "model.onnx", "opset_version": 17, "sha256": _sha256(folder / "model.onnx")}}
        if checkpoint is not None and Path(checkpoint).is_file():
            weights["torchscript"] = _torchscript(Path(checkpoint), folder / "model.pt", image.shape[-1])
        labels = predictor.predict(image)
        cover = np.concatenate([display_image(image), overlay(image, labels, pixel_size_um=predictor.pixel_size_um)], 1)
        write_png(folder / "cover.png", cover)
        (folder / "README.md").write_text(_readme(metadata, weights))
        (folder / "rdf.yaml").write_text(
            yaml.safe_dump(_description(metadata, weights, authors=authors, license=license), sort_keys=False)
        )

        def write(path: str) -> None:
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(folder.iterdir()):
                    archive.write(file, file.name)

        return atomic_write(out, write)


def validate_package(path: str | Path) -> tuple[str, str]:
    """``(status, details)`` of a package as the BioImage.IO spec library validates it (format and files, not the
    model's numbers): status ``"valid-format"`` or ``"passed"`` when it is valid, ``"failed"`` otherwise."""
    from bioimageio.spec import load_description

    description = load_description(str(path), perform_io_checks=True)
    summary = description.validation_summary
    return summary.status, summary.format()


def _test_crop(image: np.ndarray, predictor: OnnxPredictor) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != predictor.in_channels:
        raise BioimageioExportError(
            f"the test image has shape {image.shape}; the model expects (H, W, {predictor.in_channels}): "
            "give an image of the kind the model was trained on"
        )
    height, width = (min(TEST_SIDE, side) // 32 * 32 for side in image.shape[:2])
    if height == 0 or width == 0:
        raise BioimageioExportError(f"the test image ({image.shape[0]}×{image.shape[1]}) is under 32 px on a side")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def _torchscript(checkpoint: Path, path: Path, channels: int) -> dict:
    import torch

    from appliance.pipeline.trainer import Trainer

    model = Trainer.load(checkpoint, device="cpu").model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, channels, 64, 64))
    traced.save(str(path))
    return {
        "source": path.name,
        "sha256": _sha256(path),
        "parent": "onnx",
        "pytorch_version": torch.__version__.split("+")[0],
        "comment": "traced from the PyTorch weights the ONNX file was exported from",
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _space_axes(sizes: dict) -> list[dict]:
    return [{"type": "space", "id": axis, "size": sizes[axis]} for axis in ("y", "x")]


def _description(metadata: dict, weights: dict, *, authors: tuple[str, ...], license: str) -> dict:
    task = metadata.get("task", SEMANTIC)
    outputs = ["background", *network_class_names(task, metadata["class_names"])]
    channels = metadata["input"]["channels"]
    input_sizes = {axis: {"min": 64, "step": 32} for axis in ("y", "x")}
    output_sizes = {axis: {"tensor_id": "raw", "axis_id": axis} for axis in ("y", "x")}
    config = metadata.get("config", {})
    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": f"U-Net {metadata.get('set', 'model')} {metadata.get('config_id', '')}".strip(),
        "description": (
            f"U-Net ({config.get('encoder', '?')} encoder) trained by the microscope AutoML appliance on the "
            f"labelled set {metadata.get('set', '?')}: {task} segmentation of {', '.join(metadata['class_names'])}"
        ),
        "authors": [{"name": name} for name in authors],
        "cite": [UNET_CITATION],
        "license": license,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["unet", "segmentation", "2d", "onnx", task],
        "version": "1",
        "inputs": [
            {
                "id": "raw",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": [f"c{c}" for c in range(channels)]},
                    *_space_axes(input_sizes),
                ],
                "test_tensor": {"source": "test_input.npy"},
                "preprocessing": [
                    {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"], "eps": NORMALISATION_EPS}}
                ],
            }
        ],
        "outputs": [
            {
                "id": "logits",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": outputs}, *_space_axes(output_sizes)],
                "test_tensor": {"source": "test_output.npy"},
            }
        ],
        "weights": weights,
        "config": {"microscope_automl": {"code_version": __version__, METADATA_FILE: _plain(metadata)}},
    }


def _plain(value):
    return json.loads(json.dumps(value))


def _readme(metadata: dict, weights: dict) -> str:
    task = metadata.get("task", SEMANTIC)
    outputs = ["background", *network_class_names(task, metadata["class_names"])]
    lines = [
        f"# U-Net for {metadata.get('set', 'a labelled set')}",
        "",
        "Trained by the microscope AutoML appliance (meta-learned ranking of 576 U-Net configurations, successive "
        "halving within a time budget).",
        "",
        f"- Configuration: `{json.dumps(metadata.get('config', {}))}`",
        f"- Input: {metadata['input']['channels']} channel(s), raw pixels; each image is normalised per channel to "
        "zero mean and unit variance (the appliance divides by max(std, 1e-6), this description by std + 1e-6).",
        f"- Output: logits of {', '.join(outputs)}; the class is the argmax.",
        f"- Weights: {', '.join(weights)}.",
    ]
    if metadata.get("pixel_size_um"):
        lines.append(f"- Pixel size of the training images: {metadata['pixel_size_um']} µm.")
    for key, label in (("validation_mean_foreground_iou", "validation"), ("test_mean_foreground_iou", "test")):
        if metadata.get(key) is not None:
            lines.append(f"- Mean foreground IoU on the {label} images: {metadata[key]:.3f}.")
    if task == INSTANCES:
        lines += [
            "",
            "## Objects",
            "",
            "This is an instances model: interior and boundary together are the object class; the appliance finds "
            "objects by a seeded watershed: seeds are the 4-connected components of interior, grown over interior "
            "and boundary on the negative distance transform of the foreground.",
        ]
        if metadata.get("test_objects"):
            o = metadata["test_objects"]
            lines.append(
                f"On the test images: AP@0.5 {o['ap']:.3f}, F1 {o['f1']:.3f}, count error {o['count_error']:.1%}."
            )
    return "\n".join(lines) + "\n"
