"""AutoML quality at a fixed budget: our race against the paper's default and against random search, per set.

For each cell (set, budget T, seed), on the set's seeded split and the same machine, one after the other:

* ``ours``: the appliance's whole job (``appliance.automl.job.train_set``): meta-features, the meta-model's ranking,
  the budget-aware race, the winner tested. Everything from the job's start counts against T.
* ``default``: the paper's default configuration (batch 16, patch 128, LR 0.001, flip) trained for all of T (pure
  training; its evaluation and export come after T).
* ``random``: the same job racing the same number of configurations drawn at random from the 576 (no meta-model,
  the default not forced in) with the same step budgets, under the same budget.

Every set is raced as a semantic set (class maps; a set's ``instances/`` is left out), as the meta-base measured.

Leave-one-set-out (on by default for the shared sets): the shipped meta-model has seen every shared set, so for a set
in the meta-base the meta-model used by ``ours`` is refitted on the meta-base without that set (same model kind,
features and seed; its calibration from the other sets only). Benchmarking the shipped model on a set it was
trained on would be leakage.

Results append to a JSON-lines file (one line per method and cell), so a long matrix can be stopped and resumed; a
cell already in the file is skipped. ``--table`` prints the Markdown table of a results file. While the file
``--pause-file`` exists, no new cell starts (so other work can have the machine between cells).

    python benchmarks/automl.py --sets dsb2018_fluo_nuclei --budgets 5m          # one cell
    python benchmarks/automl.py --sets drosophila_vnc_em_multiclass,cpm15_he_nuclei,usiigaci_phase_cells \\
        --budgets 5m,15m --out benchmarks/results/automl-cpu.jsonl                # a matrix, resumable
    python benchmarks/automl.py --table benchmarks/results/automl-cpu.jsonl      # the table
    python benchmarks/automl.py --sets cpm15_he_nuclei --prepare-only --work .gpu/bench  # LOSO models, fitted here

Without pyradiomics (the GPU check machine's image lacks it) the job could only rank with the fallback prior. For a
set of the meta-base, ``ours`` is then ranked on the set-level meta-features the meta-base builder computed with the
same code (``metabase/metabase.csv.features.json``), and the seconds they took there are taken off ``ours``' budget,
so the cell still measures the meta-model and still counts the meta-features inside T.

``--models DIR`` benchmarks another meta-model folder (its ``metamodel*`` files and the ``metabase.csv`` it was fitted
on, as ``appliance metamodel train --out DIR`` writes them; e.g. a fidelity-aware model on long learning curves)
instead of the shipped ``models/``; leave-one-set-out refits it the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from appliance.automl.job import train_set
from appliance.automl.ranking import Ranking, rank_for_set
from appliance.automl.search_space import search_space
from appliance.data.labelled_set import load_labelled_set
from appliance.metalearning import MetaModel, evaluate, load_metabase, work_doubling_gain
from appliance.metalearning.builder import BuildSettings, FeatureCache, load_set_metadata
from appliance.pipeline.config import PAPER_DEFAULT
from appliance.pipeline.device import device_name, resolve_device
from appliance.pipeline.workflow import train_configuration
from appliance.settings import REPOSITORY_MODELS, SHARED_DATASETS, Settings, parse_duration
from appliance.version import code_version

FEATURE_CACHE = Path(__file__).resolve().parents[1] / "metabase" / "metabase.csv.features.json"
SET_METADATA = Path(__file__).resolve().parents[1] / "metabase" / "sets.yaml"  # what the meta-base builder was given
METHODS = ("ours", "default", "random")


def random_ranking(seed: int) -> Ranking:
    configurations = list(search_space())
    order = np.random.default_rng(seed).permutation(len(configurations))
    return Ranking(tuple(configurations[i] for i in order), (None,) * len(order), f"random (seed {seed})")


def leave_one_set_out_models(set_name: str, cache: Path, *, models_dir: Path = REPOSITORY_MODELS) -> Path:
    """A meta-model like the shipped one, fitted without ``set_name`` (cached under ``cache``); the shipped folder
    when the set is not in the shipped meta-base."""
    target = cache / models_dir.resolve().name / f"without-{set_name}"
    if (target / "metamodel.json").is_file():
        return target
    shipped = MetaModel.load(models_dir)
    base = load_metabase(models_dir / "metabase.csv")
    if set_name not in base.sets:
        return models_dir
    rest = base.subset(np.asarray(base.columns["set"]) != set_name)
    model = MetaModel.fit(rest, model=shipped.model, variant=shipped.variant, seed=shipped.seed)
    model.work_doubling_gain = work_doubling_gain(rest)
    table = evaluate(rest, models=[shipped.model], variants=[shipped.variant], seeds=[shipped.seed])
    model.score_correlation = table.summary(shipped.model, shipped.variant)["pearson"][0]
    model.save(target)
    return target


def cached_features(labelled_set, path: Path = FEATURE_CACHE) -> tuple[dict[str, float], float] | None:
    """The set's meta-features as the meta-base builder computed them, and the seconds they took; None when the
    cache does not hold this set, or holds it computed otherwise (other images, feature code or metadata)."""
    cache = FeatureCache(
        path, metadata=load_set_metadata(SET_METADATA), optical_images=BuildSettings.optical_images, seed=0
    )
    entry = cache.cached(labelled_set)
    return None if entry is None else (entry["features"], float(entry["seconds"]))


def ranking_without_pyradiomics(
    labelled_set, models_dir: Path, cache: Path = FEATURE_CACHE
) -> tuple[Ranking | None, float]:
    """``(ranking, seconds to charge)`` for ``ours`` where pyradiomics is missing (module docstring);
    ``(None, 0)`` where it is installed (the job computes the features itself) or the set is not cached."""
    if importlib.util.find_spec("radiomics") is not None:
        return None, 0.0
    cached = cached_features(labelled_set, cache)
    if cached is None:
        return None, 0.0
    features, seconds = cached
    ranking, fallback_reason = rank_for_set(features, models_dir=models_dir)
    return (None, 0.0) if fallback_reason else (ranking, seconds)


def semantic_view(set_dir: Path, views: Path) -> Path:
    """The set as a semantic set: a folder of the same name linking to its images, masks and dataset.yaml, without
    its instances/ (nothing is copied). The meta-base's learning curves are of semantic models, so the matrix
    compares searches on the class-map task whichever masks a set brings."""
    if not (set_dir / "instances").exists():
        return set_dir
    view = views / set_dir.name
    view.mkdir(parents=True, exist_ok=True)
    for name in ("images", "masks", "dataset.yaml"):
        if (set_dir / name).exists() and not (view / name).exists():
            (view / name).symlink_to((set_dir / name).resolve())
    return view


def run_cell(
    set_dir: Path,
    budget: float,
    seed: int,
    *,
    data_dir: Path,
    models_dir: Path,
    device: str,
    methods: Sequence[str] = METHODS,
    ours_row: dict | None = None,
) -> Iterator[dict]:
    """The ``methods`` on one set at one budget, one result row each, yielded as each finishes (a cell stopped
    half-way keeps its finished methods). Random races as many configurations as ours did, with its step growth:
    from this call's ours, else from ``ours_row`` (the cell's earlier row)."""
    set_dir = semantic_view(set_dir, data_dir.parent / "semantic-views")
    labelled_set = load_labelled_set(set_dir)
    settings = Settings(data_dir=data_dir, metamodel_dir=models_dir, default_budget=budget, seed=seed)
    if "ours" in methods:
        started = time.perf_counter()
        ranking, charged = ranking_without_pyradiomics(labelled_set, models_dir)
        if ranking is not None:
            print(f"  no pyradiomics: ours ranks on the meta-base's cached meta-features, {charged:.1f} s of T charged")
        ours_settings = dataclasses.replace(settings, default_budget=budget - charged)
        ours = train_set(set_dir, ours_settings, device=device, resume=False, ranking=ranking)
        ours_row = {**_job_row("ours", ours, time.perf_counter() - started), "features_charged_seconds": charged}
        print(f"  ours     test IoU {ours.test.mean_foreground_iou:.3f}  n = {ours_row['n']}: {ours_row['winner']}")
        yield ours_row

    if "default" in methods:
        yield _default_row(labelled_set, budget, seed, device)

    if "random" in methods:
        if ours_row is None:
            raise SystemExit(f"{labelled_set.name}: random races as many configurations as ours; run ours first")
        started = time.perf_counter()
        random = train_set(
            set_dir,
            settings,
            device=device,
            resume=False,
            ranking=random_ranking(seed),
            trials=ours_row["n"],
            growth=ours_row["growth"],
            include_default=False,
        )
        print(f"  random   test IoU {random.test.mean_foreground_iou:.3f}  ({random.run.winner_config_id})")
        yield _job_row("random", random, time.perf_counter() - started)


def _default_row(labelled_set, budget: float, seed: int, device: str) -> dict:
    """The paper default trained alone for all of T: what a lab gets without the search."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = train_configuration(
            labelled_set, PAPER_DEFAULT, seconds=budget, out_dir=Path(tmp), seed=seed, device=device, progress=False
        )
    print(f"  default  test IoU {report.test.mean_foreground_iou:.3f}  ({report.steps} steps)")
    return {
        "method": "default",
        "test_iou": report.test.mean_foreground_iou,
        "validation_iou": report.validation.mean_foreground_iou,
        "wall_seconds": time.perf_counter() - started,
        "winner": PAPER_DEFAULT.id,
        "n": 1,
        "steps": report.steps,
    }


def _job_row(method: str, job, wall: float) -> dict:
    plan = job.run.plan
    return {
        "method": method,
        "test_iou": job.test.mean_foreground_iou,
        "validation_iou": job.run.validation_iou,
        "wall_seconds": wall,
        "halving_seconds": job.timings.get("halving_seconds"),
        "planning_seconds": job.timings.get("planning_seconds"),
        "winner": job.run.winner_config_id,
        "n": plan["n"],
        "growth": plan["schedule"]["growth"],
        "search": plan["search"],
        "trials": [t["config_id"] for t in plan["trials"]],
    }


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def render_table(rows: list[dict]) -> str:
    """Per cell: test IoU of each method and ours − default, ours − random (– where a method has no row yet); then
    per budget the means and win counts over the cells that have both methods of a difference."""
    cells: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cells.setdefault((row["budget_seconds"], row["set"], row["seed"]), {})[row["method"]] = row
    lines = [
        "| T | set | seed | ours | default | random | ours − default | ours − random | ours: n, winner |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    differences: dict[tuple[float, str], list[float]] = {}
    for (budget, name, seed), methods in sorted(cells.items()):
        iou = {m: methods[m]["test_iou"] if m in methods else None for m in METHODS}
        cell = [f"{budget / 60:g} min", name, str(seed), *(_number(iou[m], "{:.3f}") for m in METHODS)]
        for other in ("default", "random"):
            both = iou["ours"] is not None and iou[other] is not None
            difference = iou["ours"] - iou[other] if both else None
            if difference is not None:
                differences.setdefault((budget, other), []).append(difference)
            cell.append(_number(difference, "{:+.3f}"))
        cell.append(f"{methods['ours']['n']}, {methods['ours']['winner']}" if "ours" in methods else "–")
        lines.append("| " + " | ".join(cell) + " |")
    lines.append("")
    for budget in sorted({budget for budget, _ in differences}):
        parts = []
        for other in ("default", "random"):
            values = differences.get((budget, other), [])
            if values:
                parts.append(
                    f"mean ours − {other} {statistics.mean(values):+.3f}, "
                    f"ours ≥ {other} in {sum(d >= 0 for d in values)}/{len(values)} cells"
                )
        lines.append(f"- T = {budget / 60:g} min: " + "; ".join(parts))
    return "\n".join(lines)


def _number(value: float | None, form: str) -> str:
    return "–" if value is None else form.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default="dsb2018_fluo_nuclei", help="Comma-separated set names (in ../shared) or paths."
    )
    parser.add_argument("--budgets", default="5m", help="Comma-separated budgets T, like 5m,15m.")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds.")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"Comma-separated methods of {', '.join(METHODS)} (default all)."
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/automl.jsonl"))
    parser.add_argument("--work", type=Path, default=None, help="Data dir kept across cells (default: a temp dir).")
    parser.add_argument("--no-loso", action="store_true", help="Use the meta-model as it is even on its own sets.")
    parser.add_argument(
        "--models", type=Path, default=REPOSITORY_MODELS, help="Meta-model folder (with its metabase.csv) to benchmark."
    )
    parser.add_argument("--pause-file", type=Path, default=None, help="No new cell starts while this file exists.")
    parser.add_argument("--table", type=Path, default=None, help="Print the Markdown table of a results file and exit.")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="Fit the leave-one-set-out meta-models of --sets into --work and exit (before a short GPU session).",
    )
    args = parser.parse_args()
    methods = [m for m in METHODS if m in args.methods.split(",")]
    if not methods or set(args.methods.split(",")) - set(METHODS):
        parser.error(f"--methods: choose among {', '.join(METHODS)}")
    if args.table:
        print(render_table(read_results(args.table)))
        return

    device = str(resolve_device(args.device))
    work = args.work or Path(tempfile.mkdtemp(prefix="automl-bench-"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["set"], r["budget_seconds"], r["seed"], r["method"]): r for r in read_results(args.out)}
    machine = device_name(resolve_device(device))
    for budget in (parse_duration(b) for b in args.budgets.split(",")):
        for name in args.sets.split(","):
            set_dir = Path(name) if Path(name).is_dir() else SHARED_DATASETS / name
            for seed in (int(s) for s in args.seeds.split(",")):
                labelled_set = load_labelled_set(set_dir)
                if args.prepare_only:
                    if not args.no_loso:
                        print(leave_one_set_out_models(labelled_set.name, work / "loso", models_dir=args.models))
                    continue
                cell = (labelled_set.name, budget, seed)
                missing = [m for m in methods if (*cell, m) not in done]
                if not missing:
                    continue
                while args.pause_file and args.pause_file.exists():
                    time.sleep(10)
                loso = not args.no_loso
                models_dir = args.models
                if loso:
                    models_dir = leave_one_set_out_models(labelled_set.name, work / "loso", models_dir=args.models)
                print(f"{labelled_set.name}: T = {budget:.0f} s, seed {seed}, {machine}, meta-model {models_dir}")
                rows = run_cell(
                    set_dir,
                    budget,
                    seed,
                    data_dir=work / "data",
                    models_dir=models_dir,
                    device=device,
                    methods=missing,
                    ours_row=done.get((*cell, "ours")),
                )
                for row in rows:
                    with args.out.open("a") as out:
                        row.update(
                            set=labelled_set.name,
                            budget_seconds=budget,
                            seed=seed,
                            machine=machine,
                            code_version=code_version(),
                            leave_one_set_out=models_dir != args.models,
                            metamodel=str(args.models),
                            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        )
                        out.write(json.dumps(row) + "\n")
    if not args.prepare_only:
        print(render_table(read_results(args.out)))


if __name__ == "__main__":
    main()
