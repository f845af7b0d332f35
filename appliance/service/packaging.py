"""A registered model as a BioImage Model Zoo package: what the CLI and the Models page share.

The registry knows the model's folder, its run knows the set, the test split (the test input is the first test
image) and the winner's checkpoint (TorchScript weights, when the run kept it: ``keep_checkpoints``).
"""

from __future__ import annotations

from pathlib import Path

from appliance.data.io import read_image
from appliance.errors import ModelFileError
from appliance.store import Model, Run, Store

PACKAGE_FILE = "bioimageio.zip"


def package_path(model: Model) -> Path:
    """Where a model's package is kept: beside its ONNX file."""
    return Path(model.path) / PACKAGE_FILE


def package_model(
    store: Store,
    model_id: str,
    *,
    out: str | Path | None = None,
    test_image: str | Path | None = None,
    authors: tuple[str, ...] = (),
    license: str = "CC-BY-4.0",
) -> Path:
    """Write the package of a registered model (default: :func:`package_path`) and return its path."""
    from appliance.pipeline.bioimageio import BioimageioExportError, export_bioimageio  # torch: on demand only

    model = store.model(model_id)
    if model is None or not model.path:
        raise ModelFileError(f"no exported model {model_id!r} in {store.path}; `appliance models` lists them")
    run = store.run(model.run_id)
    if test_image is None:
        test_image = _first_test_image(run)
    if test_image is None:
        raise BioimageioExportError(
            f"the images of the set {model.set_name} that trained {model_id} are gone from "
            f"{run.set_dir if run else 'its run (deleted)'}; package it with a test image of the same kind: "
            f"`appliance export-bioimageio {model_id} DIR --test-image PATH`"
        )
    checkpoint = next((t.checkpoint for t in store.trials(model.run_id) if t.config_id == model.config_id), None)
    return export_bioimageio(
        model.path,
        out or package_path(model),
        test_image=read_image(test_image),
        checkpoint=checkpoint,
        authors=authors or (f"trained on {model.set_name} by the microscope AutoML appliance",),
        license=license,
    )


def _first_test_image(run: Run | None) -> Path | None:
    if run is None or not run.set_dir or not run.split:
        return None
    images = Path(run.set_dir) / "images"
    stem = run.split["test"][0]
    found = sorted(p for p in images.iterdir() if p.stem == stem) if images.is_dir() else []
    return found[0] if found else None
