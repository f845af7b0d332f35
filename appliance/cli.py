"""The ``appliance`` command: a thin shell that parses options, calls the library, prints the result.

Library errors (:class:`appliance.errors.ApplianceError`) become a message and exit code 2; nothing
here re-implements what the library does.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import click

from appliance.errors import ApplianceError

DEMO_SECONDS = 120.0


def _fail(error: ApplianceError) -> None:
    click.secho(f"error: {error}", fg="red", err=True)
    sys.exit(2)


def _format_iou(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _echo_report(report) -> None:
    from appliance.pipeline.evaluation import Evaluation

    def line(name: str, evaluation: Evaluation) -> str:
        per_class = ", ".join(_format_iou(v) for v in evaluation.overall.iou[1:])
        mean = _format_iou(evaluation.overall.mean_foreground_iou)
        return f"  {name:<26} mean foreground IoU {mean}  (per class: {per_class})"

    click.echo(f"configuration {report.config.id}: {report.steps} steps in {report.seconds:.0f} s")
    click.echo(line("validation, U-Net", report.validation))
    click.echo(line("validation, Otsu baseline", report.otsu_validation))
    click.echo(line("test, U-Net", report.test))
    click.echo(
        f"  ONNX vs PyTorch: max |logit diff| {report.parity['max_abs_logit_diff']:.2e}, "
        f"identical argmax {100 * report.parity['argmax_agreement']:.3f} % ({report.provider})"
    )


@click.group()
@click.version_option(package_name="microscope-automl-appliance")
def main() -> None:
    """Microscope AutoML appliance: labelled image sets in, segmentation models and results out."""


@main.command("train-config")
@click.option(
    "--set",
    "set_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Labelled set folder (images/, masks/, optional dataset.yaml).",
)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pipeline configuration YAML (patch_size, batch_size, learning_rate, encoder, flip, ...).",
)
@click.option("--seconds", required=True, type=click.FloatRange(min=1), help="Wall-clock training budget.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder for checkpoint, ONNX, JSON and metrics.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split, weights, sampler and augmentations.")
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
def train_config(set_dir: Path, config_path: Path, seconds: float, out_dir: Path, seed: int, device: str | None):
    """Train one configuration on a labelled set for SECONDS, evaluate it, export ONNX + JSON."""
    from appliance.data.labelled_set import load_labelled_set
    from appliance.pipeline.config import PipelineConfig
    from appliance.pipeline.workflow import train_configuration

    try:
        labelled_set = load_labelled_set(set_dir)
        config = PipelineConfig.load(config_path)
        click.echo(
            f"set {labelled_set.name}: {len(labelled_set)} images, {labelled_set.num_classes} class(es), "
            f"{labelled_set.channels} channel(s); training {config.id} for {seconds:.0f} s"
        )
        report = train_configuration(labelled_set, config, seconds=seconds, out_dir=out_dir, seed=seed, device=device)
    except ApplianceError as error:
        _fail(error)
    _echo_report(report)
    click.echo(f"outputs in {out_dir.resolve()}: model.onnx, model.json, checkpoint.pt, metrics.json")


@main.command()
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding model.onnx and model.json.",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for <stem>_mask.tif, <stem>_overlay.png and measurements.csv.",
)
def predict(model_dir: Path, images: tuple[Path, ...], out_dir: Path):
    """Segment IMAGES with an exported model; write masks, overlays and measurements."""
    from appliance.pipeline.predictor import OnnxPredictor
    from appliance.pipeline.workflow import segment_files

    try:
        predictor = OnnxPredictor(model_dir)
    except ApplianceError as error:
        _fail(error)
    done, failures = segment_files(predictor, list(images), out_dir=out_dir)
    click.echo(f"segmented {len(done)} image(s) on {predictor.provider}; results in {out_dir.resolve()}")
    for failure in failures:
        click.secho(f"skipped: {failure}", fg="yellow", err=True)
    if failures:
        sys.exit(2)


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the demo run (default: a new temporary folder).",
)
@click.option(
    "--seconds",
    default=DEMO_SECONDS,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Training budget of the demo configuration.",
)
def demo(out_dir: Path | None, seconds: float):
    """Train one configuration on the bundled phase-contrast sample and segment the sample images."""
    from appliance.data.labelled_set import load_labelled_set
    from appliance.pipeline.config import PAPER_DEFAULT
    from appliance.pipeline.predictor import OnnxPredictor
    from appliance.pipeline.workflow import segment_files, train_configuration

    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    demo_data = files("appliance") / "demo_data"
    set_dir = out_dir / "inbox" / "labelled" / "usiigaci_phase_cells_demo"
    images_dir = out_dir / "inbox" / "images" / "phase-demo"
    shutil.copytree(str(demo_data / "labelled" / "usiigaci_phase_cells_demo"), set_dir, dirs_exist_ok=True)
    shutil.copytree(str(demo_data / "images" / "phase-demo"), images_dir, dirs_exist_ok=True)
    try:
        labelled_set = load_labelled_set(set_dir)
        click.echo(
            f"demo: training {PAPER_DEFAULT.id} (the paper's default configuration) on "
            f"{len(labelled_set)} bundled phase-contrast crops for {seconds:.0f} s"
        )
        model_dir = out_dir / "models" / "phase-demo"
        report = train_configuration(labelled_set, PAPER_DEFAULT, seconds=seconds, out_dir=model_dir)
        _echo_report(report)
        predictor = OnnxPredictor(model_dir)
        results_dir = out_dir / "results" / "phase-demo"
        done, failures = segment_files(predictor, sorted(images_dir.glob("*.tif")), out_dir=results_dir)
    except ApplianceError as error:
        _fail(error)
    click.echo(f"segmented {len(done)} sample image(s) on {predictor.provider}")
    click.echo(f"model:   {model_dir.resolve()}")
    click.echo(f"results: {results_dir.resolve()} (masks *_mask.tif, overlays *_overlay.png, measurements.csv)")
    if failures:
        for failure in failures:
            click.secho(f"skipped: {failure}", fg="yellow", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
