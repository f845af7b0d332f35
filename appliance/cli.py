"""The ``appliance`` command: a thin shell that parses options, calls the library, prints the result.

Library errors (:class:`appliance.errors.ApplianceError`) become a message and exit code 2; nothing
here re-implements what the library does.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
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
@click.option(
    "--min-object-px",
    type=click.IntRange(min=0),
    default=None,
    help="Components smaller than this many pixels are not counted as objects (default: setting min_object_px).",
)
def predict(model_dir: Path, images: tuple[Path, ...], out_dir: Path, min_object_px: int | None):
    """Segment IMAGES with an exported model; write masks, overlays and measurements."""
    from tqdm.auto import tqdm

    from appliance.pipeline.outputs import segment_files
    from appliance.pipeline.predictor import OnnxPredictor

    try:
        if min_object_px is None:
            min_object_px = _service_settings(None).min_object_px
        predictor = OnnxPredictor(model_dir)
    except ApplianceError as error:
        _fail(error)
    with tqdm(total=len(set(images)), desc="segmenting", unit="image", file=sys.stderr) as bar:
        done, failures = segment_files(
            predictor,
            list(images),
            out_dir=out_dir,
            min_object_px=min_object_px,
            on_image=lambda path: (bar.set_postfix_str(path.name, refresh=False), bar.update()),
        )
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
    help="A fresh data dir for the demo (default: a new temporary folder).",
)
@click.option(
    "--seconds",
    default=DEMO_SECONDS,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Training budget for the bundled set.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Instead of the service: train the paper's default configuration, segment the sample images and exit.",
)
def demo(out_dir: Path | None, seconds: float, once: bool):
    """The appliance on its embedded defaults: the service on a fresh data dir with the bundled labelled set and
    sample images dropped in; it trains, activates the model, segments the images and keeps running (Ctrl-C stops)."""
    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    if once:
        _demo_once(out_dir, seconds)
        return
    from appliance.service.demo import prepare_demo
    from appliance.service.runner import Service

    try:
        settings = prepare_demo(_service_settings(None, data_dir=out_dir, default_budget=seconds))
        click.echo(f"demo: data dir {settings.data_dir.resolve()}; the bundled set trains for {seconds:.0f} s")
        click.echo(
            f"demo: results appear in {settings.results.resolve()}; status page on "
            f"http://{settings.page_address}:{settings.page_port}"
        )
        code = Service(settings, page=True).run()
    except ApplianceError as error:
        _fail(error)
    sys.exit(code)


def _demo_once(out_dir: Path, seconds: float) -> None:
    from appliance.data.labelled_set import load_labelled_set
    from appliance.pipeline.config import PAPER_DEFAULT
    from appliance.pipeline.outputs import segment_files
    from appliance.pipeline.predictor import OnnxPredictor
    from appliance.pipeline.workflow import train_configuration
    from appliance.service.demo import DEMO_PROJECT, copy_demo_data

    set_dir, images_dir = copy_demo_data(out_dir / "inbox" / "labelled", out_dir / "inbox" / "images")
    try:
        labelled_set = load_labelled_set(set_dir)
        click.echo(
            f"demo: training {PAPER_DEFAULT.id} (the paper's default configuration) on "
            f"{len(labelled_set)} bundled phase-contrast crops for {seconds:.0f} s"
        )
        model_dir = out_dir / "models" / DEMO_PROJECT
        report = train_configuration(labelled_set, PAPER_DEFAULT, seconds=seconds, out_dir=model_dir)
        _echo_report(report)
        predictor = OnnxPredictor(model_dir)
        results_dir = out_dir / "results" / DEMO_PROJECT
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


@main.group()
def metabase() -> None:
    """Build the meta-base: configurations trained on labelled sets, with their learning curves."""


def _expand_set_dirs(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """Each path is a labelled set (has ``images/``) or a folder of labelled sets."""
    expanded = []
    for path in paths:
        if (path / "images").is_dir():
            expanded.append(path)
        else:
            children = sorted(child for child in path.iterdir() if (child / "images").is_dir())
            if not children:
                raise click.BadParameter(f"{path} is neither a labelled set (no images/) nor a folder of sets")
            expanded.extend(children)
    return tuple(expanded)


@metabase.command("build")
@click.option(
    "--sets",
    "set_paths",
    required=True,
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled set, or a folder of sets; repeat for more.",
)
@click.option(
    "--out",
    "out_csv",
    default=Path("metabase/metabase.csv"),
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The meta-base CSV being built; runs already in it are skipped.",
)
@click.option("--configs-per-set", default=48, show_default=True, type=click.IntRange(1, 576))
@click.option(
    "--configs",
    "config_ids",
    default=None,
    help="Train these configurations on every set instead of a sample: 'default' (the paper's) and/or ids.",
)
@click.option(
    "--fidelity",
    default="0.5,1,2",
    show_default=True,
    help="Learning-curve points in megapixels of training patches; the last is the run's fidelity.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the configuration sample, split and training.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Parallel training runs.")
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@click.option(
    "--metadata",
    "metadata_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML of set name → microscopy/object/magnification, for sets without dataset.yaml.",
)
@click.option(
    "--optical-images",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Images per set for the radiomics features (0 skips them).",
)
@click.option("--limit", default=None, type=click.IntRange(1), help="Stop after this many runs (for trials).")
def metabase_build(
    set_paths,
    out_csv,
    configs_per_set,
    config_ids,
    fidelity,
    seed,
    workers,
    device,
    metadata_path,
    optical_images,
    limit,
):
    """Train a stratified sample of configurations on every set and record their learning curves."""
    from appliance.metalearning.builder import (
        BuildSettings,
        build_metabase,
        load_set_metadata,
        parse_configs,
        parse_curve,
    )

    try:
        settings = BuildSettings(
            set_dirs=_expand_set_dirs(set_paths),
            out_csv=out_csv,
            configs_per_set=configs_per_set,
            configs=parse_configs(config_ids) if config_ids else (),
            curve=parse_curve(fidelity),
            seed=seed,
            workers=workers,
            device=device,
            metadata=load_set_metadata(metadata_path),
            optical_images=optical_images,
            limit=limit,
        )
        count = build_metabase(settings, log=lambda message: click.echo(message))
    except ApplianceError as error:
        _fail(error)
    click.echo(f"{count} runs added to {out_csv.resolve()}")


_CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML settings file (default: $APPLIANCE_CONFIG, if set).",
)
_DATA_DIR_OPTION = click.option(
    "--data-dir", default=None, type=click.Path(file_okay=False, path_type=Path), help="State folder."
)


@main.group()
def metamodel() -> None:
    """Evaluate and train the meta-model that ranks configurations for a new set."""


_METABASE_OPTION = click.option(
    "--metabase",
    "metabase_path",
    default=Path("models/metabase.csv"),
    show_default=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
_SEEDS_OPTION = click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Comma-separated seeds.")
_MODELS_OPTION = click.option("--models", default=None, help="Comma-separated models (default: all registered).")
_VARIANTS_OPTION = click.option("--variants", default=None, help="Comma-separated feature variants (default: all).")
_FIDELITY_OPTION = click.option(
    "--fidelity",
    default=None,
    type=float,
    help="Curve point (MP) to evaluate at (default: the largest that every builder run reached).",
)


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give seeds like 0,1,2,3,4") from None
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return seeds


def _split_names(text: str | None) -> tuple[str, ...] | None:
    return tuple(name.strip() for name in text.split(",") if name.strip()) if text else None


def _given(name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE


@metamodel.command("evaluate")
@_METABASE_OPTION
@_SEEDS_OPTION
@_FIDELITY_OPTION
@_MODELS_OPTION
@_VARIANTS_OPTION
@click.option(
    "--fidelity-aware",
    is_flag=True,
    help="Instead: the fidelity-aware model at every curve point vs RF-d7 fitted at that point, and its "
    "extrapolation from the points ≤ F to those above (seeds 0,1,2 unless --seeds; --variants: its one variant).",
)
@click.option(
    "--against",
    default=None,
    metavar="MODEL/VARIANT@F",
    help="With --fidelity-aware: also a single-fidelity model fitted at F MP only, ranking at every point "
    "(e.g. xgb_rank/hp+hc+eng+opt_cos@2).",
)
def metamodel_evaluate(
    metabase_path: Path, seeds: str, fidelity: float | None, models, variants, fidelity_aware, against
):
    """Leave-one-dataset-out table of every model and feature variant (mean ± std over seeds)."""
    from appliance.metalearning import DEFAULT_MODELS, evaluate, load_metabase

    if fidelity_aware:
        _evaluate_fidelity_aware(metabase_path, seeds, fidelity, models, variants, _parse_against(against))
        return
    if against:
        raise click.BadParameter("--against compares at every curve point: give it with --fidelity-aware")
    try:
        table = evaluate(
            load_metabase(metabase_path),
            models=_split_names(models) or DEFAULT_MODELS,
            variants=_split_names(variants),
            seeds=_parse_seeds(seeds),
            fidelity=fidelity,
        )
    except ApplianceError as error:
        _fail(error)
    click.echo(table.to_markdown())
    click.echo(f"\n(fitting took {sum(table.fit_seconds.values()):.0f} s in all)", err=True)


def _parse_against(text: str | None) -> tuple[str, str, float] | None:
    if not text:
        return None
    model, _, rest = text.partition("/")
    variant, _, fidelity = rest.rpartition("@")
    try:
        amount = float(fidelity)
    except ValueError:
        amount = math.nan
    if not (model and variant and amount > 0):
        raise click.BadParameter(f"{text!r}: give MODEL/VARIANT@MP, e.g. xgb_rank/hp+hc+eng+opt_cos@2")
    return model, variant, amount


def _evaluate_fidelity_aware(metabase_path: Path, seeds: str, fidelity, models, variants, against) -> None:
    from appliance.metalearning import evaluate_fidelities, load_metabase
    from appliance.metalearning.fidelity import FIDELITY_SEEDS, FIDELITY_VARIANT

    if fidelity is not None or models:
        raise click.BadParameter(
            "--fidelity-aware evaluates every fidelity with its own model: leave out --fidelity/--models"
        )
    variant_names = _split_names(variants) or (FIDELITY_VARIANT,)
    if len(variant_names) != 1:
        raise click.BadParameter("--fidelity-aware takes one feature variant in --variants")
    started = time.perf_counter()
    try:
        report = evaluate_fidelities(
            load_metabase(metabase_path),
            seeds=_parse_seeds(seeds) if _given("seeds") else FIDELITY_SEEDS,
            variant=variant_names[0],
            fixed=against,
        )
    except ApplianceError as error:
        _fail(error)
    click.echo(report.to_markdown())
    click.echo(f"\n(took {time.perf_counter() - started:.0f} s)", err=True)


@metamodel.command("train")
@_METABASE_OPTION
@click.option(
    "--also",
    "more_metabases",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Another meta-base CSV (e.g. metabase/long.csv, long curves of a few configurations) combined with "
    "--metabase into OUT/metabase.csv; repeatable.",
)
@_SEEDS_OPTION
@_FIDELITY_OPTION
@_MODELS_OPTION
@_VARIANTS_OPTION
@click.option("--out", "out_dir", default=Path("models"), show_default=True, type=click.Path(path_type=Path))
@click.option("--model", default=None, help="Model to ship (default: the best by LODO z-score).")
@click.option("--variant", default=None, help="Feature variant to ship (with --model).")
@click.option(
    "--living",
    is_flag=True,
    help="Instead: fold the data dir's living meta-base (its runs' learning curves) into a new model (default the "
    "fidelity-aware rf_d7_curve; --model/--variant choose another) and activate it under <data dir>/metamodels only "
    "when its leave-one-dataset-out z is not below the active model's (seeds 0,1,2 unless --seeds).",
)
@_CONFIG_OPTION
@_DATA_DIR_OPTION
def metamodel_train(
    metabase_path,
    more_metabases,
    seeds,
    fidelity,
    models,
    variants,
    out_dir,
    model,
    variant,
    living,
    config_file,
    data_dir,
):
    """Evaluate, fit the best model on every set, write models/metamodel.* and the report."""
    from appliance.metalearning import DEFAULT_MODELS
    from appliance.metalearning.report import train_and_report

    if living and more_metabases:
        raise click.BadParameter("--also combines the builder's files for the shipped model; --living takes none")
    if living:
        _retrain_with_living(metabase_path, seeds, fidelity, models, variants, model, variant, config_file, data_dir)
        return
    if config_file is not None or data_dir is not None:
        raise click.BadParameter("--config and --data-dir apply with --living only")
    if more_metabases and metabase_path.resolve() == (out_dir / "metabase.csv").resolve():
        raise click.BadParameter(
            f"--also combines files into {out_dir / 'metabase.csv'}: give the builder's own files to --metabase "
            "and --also (e.g. metabase/metabase.csv --also metabase/long.csv), not that output"
        )
    if (model is None) != (variant is None):
        raise click.BadParameter("give --model and --variant together, or neither")
    try:
        trained = train_and_report(
            metabase_path,
            out_dir,
            seeds=_parse_seeds(seeds),
            fidelity=fidelity,
            model=model,
            variant=variant,
            models=_split_names(models) or DEFAULT_MODELS,
            variants=_split_names(variants),
            more_metabases=more_metabases,
        )
    except ApplianceError as error:
        _fail(error)
    click.echo(trained.table.comparison_line((trained.model.model, trained.model.variant)))
    click.echo(f"model:  {trained.model_path.resolve()}")
    click.echo(f"report: {trained.report_path.resolve()}")


def _retrain_with_living(metabase_path, seeds, fidelity, models, variants, model, variant, config_file, data_dir):
    from appliance.metalearning import FIDELITY_AWARE_MODEL, retrain_with_living
    from appliance.metalearning.fidelity import FIDELITY_VARIANT
    from appliance.metalearning.retrain import RETRAIN_SEEDS

    if (model is None) != (variant is None):
        raise click.BadParameter("give --model and --variant together, or neither (the fidelity-aware default)")
    if models or variants or _given("out_dir"):
        raise click.BadParameter(
            "--living fits one model (--model/--variant) and keeps it under <data dir>/metamodels: "
            "leave out --models, --variants and --out"
        )
    try:
        settings = _service_settings(config_file, data_dir=data_dir)
        result = retrain_with_living(
            metabase_path,
            settings.data_dir,
            settings.metamodel_dir,
            model=model or FIDELITY_AWARE_MODEL,
            variant=variant or FIDELITY_VARIANT,
            fidelity=fidelity,
            seeds=_parse_seeds(seeds) if _given("seeds") else RETRAIN_SEEDS,
        )
    except ApplianceError as error:
        _fail(error)
    if result.comparison is not None:
        labels = {"candidate": result.candidate_label or "", "active": result.active_label}
        click.echo(result.comparison.to_markdown(labels))
        click.echo("")
    click.echo(("activated: " if result.activated else "not activated: ") + result.reason)
    if result.candidate_dir is not None:
        click.echo(f"candidate: {result.candidate_dir.resolve()}")


@main.command()
@click.argument("set_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--budget", default=None, help="Wall-clock budget of successive halving, like 90s, 30m or 1h.")
@click.option(
    "--top",
    "top_n",
    default=None,
    type=click.IntRange(1, 576),
    help="The most configurations that race (default: the top_n setting, 50); the budget decides how many do.",
)
@click.option(
    "--trials",
    default=None,
    type=click.IntRange(1, 576),
    help="Race exactly this many configurations instead of letting the budget decide (no step floor).",
)
@click.option("--seed", default=None, type=int, help="Seed of the split, weights and sampling.")
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=Path), help="State folder.")
@click.option("--new", "start_new", is_flag=True, help="Start a new run even if an unfinished one can be resumed.")
def train(set_dir: Path, budget, top_n, trials, seed, device, data_dir, start_new):
    """Find the best configuration for a labelled set within a budget and export it (resumes unfinished runs)."""
    from tqdm.auto import tqdm

    from appliance.automl.job import train_set
    from appliance.settings import Settings, parse_duration

    try:
        settings = Settings.from_env(data_dir=data_dir)
        seconds = parse_duration(budget) if budget is not None else None
        started = time.monotonic()
        total = round(seconds if seconds is not None else settings.default_budget)
        bar = tqdm(
            desc="budget",
            total=total,
            unit="s",
            leave=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s used [{elapsed}] {postfix}",
        )

        def on_slice(result: dict) -> None:
            bar.n = min(time.monotonic() - started, total)
            iou = result["validation_iou"]
            score = f"IoU {iou:.3f}" if iou is not None else "not validated"
            bar.set_postfix_str(
                f"step {result['step'] + 1} of {result['steps']}, {result['racing']} racing; "
                f"configuration {result['rank']}: {score}"
            )

        result = train_set(
            set_dir,
            settings,
            budget=seconds,
            top_n=top_n,
            trials=trials,
            seed=seed,
            device=device,
            resume=not start_new,
            log=lambda message: tqdm.write(message),
            on_slice=on_slice,
        )
        bar.close()
    except ApplianceError as error:
        _fail(error)
    _echo_summary(result)


@main.command()
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=Path), help="State folder.")
@click.option("--measure", is_flag=True, help="Probe every group not measured yet on this device (slow on a CPU).")
def throughput(device, data_dir, measure):
    """Training speed of each memory group on this device: measured (probe or real training) or estimated."""
    from appliance.automl.throughput import ThroughputTable, ensure_reference_measurements, measure_every_group
    from appliance.pipeline.device import resolve_device
    from appliance.settings import Settings
    from appliance.store import Store

    try:
        settings = Settings.from_env(data_dir=data_dir)
        store, torch_device = Store(settings.store_path), resolve_device(device)
        log = lambda message: click.echo(message)  # noqa: E731
        if measure:
            measure_every_group(store, torch_device, log=log)
        else:
            ensure_reference_measurements(store, torch_device, log=log)
        table = ThroughputTable.load(store, torch_device)
    except ApplianceError as error:
        _fail(error)
    click.echo(f"{table.device}, code {table.version}")
    click.echo(f"{'patch':>5} {'batch':>5} {'encoder':<8} {'steps/s':>8} {'MPix/s':>7}  source")
    for row in table.rows():
        group = row.group
        click.echo(
            f"{group.patch_size:>5} {group.batch_size:>5} {group.encoder:<8} {row.steps_per_second:>8.2f} "
            f"{row.mpix_per_second:>7.3f}  {row.source}"
        )


def _echo_summary(result) -> None:
    run = result.run
    scores: dict[int, list[float]] = {}
    for row in result.step_results:
        if row.validation_iou is not None:
            scores.setdefault(row.rank, []).append(row.validation_iou)
    # the winner first, then by how far each trial got, then by rank
    trials = sorted(result.trials, key=lambda t: (t.status != "winner", -len(scores.get(t.rank, [])), t.rank))
    click.echo("")
    click.echo(f"{'rank':>4}  {'configuration':<13} {'encoder':<8} {'patch':>5} {'batch':>5} {'lr':>7}  IoU per step")
    for trial in trials[:12]:
        config = trial.config
        ious = " ".join(f"{s:.3f}" for s in scores.get(trial.rank, []))
        mark = {"winner": " <- winner", "dropped": ""}.get(trial.status, f" ({trial.status})")
        click.echo(
            f"{trial.rank:>4}  {trial.config_id:<13} {config['encoder']:<8} {config['patch_size']:>5} "
            f"{config['batch_size']:>5} {config['learning_rate']:>7}  {ious}{mark}"
        )
    if len(trials) > 12:
        click.echo(f"      ... {len(trials) - 12} more trials")
    click.echo("")
    click.echo(f"run {result.run_id}: ranked by {run.ranking_source}")
    click.echo(f"  winner {run.winner_config_id}: validation IoU {run.validation_iou:.3f}")
    click.echo(f"  test IoU {run.test_iou:.3f} on {len(result.test.per_image)} test image(s)")
    click.echo(
        "  time: " + ", ".join(f"{name.removesuffix('_seconds')} {sec:.0f} s" for name, sec in result.timings.items())
    )
    click.echo(f"  model: {result.model_dir}")
    click.echo(f"  QC: {Path(run.run_dir) / 'qc'}")


# -- the service: appliance run / health / config -------------------------------------------------------------------


def _service_settings(config_file: Path | None, **overrides):
    from appliance.settings import Settings

    return Settings.from_env(config_file=config_file, **overrides)


@main.command("run")
@_CONFIG_OPTION
@_DATA_DIR_OPTION
@click.option("--budget", default=None, help="Default training budget per set, like 90s, 30m or 1h.")
@click.option("--polling/--events", default=None, help="Poll the inbox (for SMB/NFS shares) instead of file events.")
@click.option("--no-page", is_flag=True, help="Do not start the status page.")
@click.option(
    "--demo", is_flag=True, help="First drop the bundled set and sample images into a fresh data dir (2 min budget)."
)
def run_service(config_file, data_dir, budget, polling, no_page, demo):
    """Watch the inbox, train on labelled sets, segment new images; runs until SIGTERM or Ctrl-C."""
    from appliance.service.demo import prepare_demo
    from appliance.service.runner import Service

    try:
        settings = _service_settings(config_file, data_dir=data_dir, default_budget=budget, polling=polling)
        if demo:
            settings = prepare_demo(settings)
        code = Service(settings, page=not no_page).run()
    except ApplianceError as error:
        _fail(error)
    sys.exit(code)


@main.command()
@_CONFIG_OPTION
@_DATA_DIR_OPTION
def health(config_file, data_dir):
    """Exit 0 when the service and every component are up, 1 when one is down (for container health checks)."""
    from appliance.service.health import check_health

    try:
        report = check_health(_service_settings(config_file, data_dir=data_dir))
    except ApplianceError as error:
        _fail(error)
    for line in report.lines():
        click.echo(line)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("job_id", type=int)
@_CONFIG_OPTION
@_DATA_DIR_OPTION
def retry(job_id, config_file, data_dir):
    """Queue a failed job (training or segmentation) again with fresh attempts; the running service takes it."""
    from appliance.store import Store

    try:
        settings = _service_settings(config_file, data_dir=data_dir)
    except ApplianceError as error:
        _fail(error)
    store = Store(settings.store_path)
    job = store.job(job_id)
    if job is None:
        click.secho(f"error: job {job_id} does not exist in {settings.store_path}", fg="red", err=True)
        sys.exit(2)
    if not store.retry(job_id):
        click.secho(f"error: job {job_id} is {job.status}; only failed jobs can be retried", fg="red", err=True)
        sys.exit(2)
    store.event(None, f"job {job_id} ({job.kind}, project {job.project}) queued again from the command line")
    click.echo(f"job {job_id} ({job.kind}, project {job.project}) queued again; last error was: {job.error}")


@main.command()
@click.argument("project")
@click.argument("model_id")
@_CONFIG_OPTION
@_DATA_DIR_OPTION
def activate(project, model_id, config_file, data_dir):
    """Make MODEL_ID the active model of PROJECT by hand (e.g. one the quality gate did not activate); the running
    service segments the project's next images with it."""
    from appliance.service.activation import activate_by_hand
    from appliance.store import Store

    try:
        settings = _service_settings(config_file, data_dir=data_dir)
        activate_by_hand(Store(settings.store_path), project=project, model_id=model_id, note="activated by hand")
    except ApplianceError as error:
        _fail(error)
    click.echo(f"{model_id} is now the active model of {project}")


@main.command("export-bioimageio")
@click.argument("model_id")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--test-image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An image of the kind the model segments (default: the first test image of its set).",
)
@click.option("--author", "authors", multiple=True, help="An author's name (repeat for several).")
@click.option("--license", "license_", default="CC-BY-4.0", show_default=True, help="SPDX licence of the package.")
@_CONFIG_OPTION
@_DATA_DIR_OPTION
def export_bioimageio(model_id, out_dir, test_image, authors, license_, config_file, data_dir):
    """Write MODEL_ID as a BioImage Model Zoo package, OUT_DIR/<MODEL_ID>.bioimageio.zip (ilastik, deepImageJ and
    QuPath open it), validated with the spec library."""
    from appliance.pipeline.bioimageio import validate_package
    from appliance.service.packaging import package_model
    from appliance.store import Store

    try:
        settings = _service_settings(config_file, data_dir=data_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = package_model(
            Store(settings.store_path),
            model_id,
            out=out_dir / f"{model_id}.bioimageio.zip",
            test_image=test_image,
            authors=tuple(authors),
            license=license_,
        )
    except ApplianceError as error:
        _fail(error)
    status, details = validate_package(path)
    if status == "failed":
        click.secho(f"error: {path} does not validate:\n{details}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"{path} ({status})")


@main.command("config")
@_CONFIG_OPTION
@_DATA_DIR_OPTION
def show_config(config_file, data_dir):
    """Print the effective settings as TOML (the page password hidden)."""
    try:
        settings = _service_settings(config_file, data_dir=data_dir)
    except ApplianceError as error:
        _fail(error)
    click.echo(settings.to_toml())


if __name__ == "__main__":  # pragma: no cover
    main()
