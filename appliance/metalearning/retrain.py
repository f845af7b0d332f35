"""Fold the living meta-base (what this appliance's own runs measured) into the meta-model, and activate the new
model only when it ranks no worse than the active one (``appliance metamodel train --living``).

Where models live
    The shipped model is ``models/metamodel.*`` (settings ``metamodel_dir``). A model this appliance trained lives in
    ``<data dir>/metamodels/<id>/`` (``metamodel.json``, ``metamodel-meta.json``, ``retrain-report.md``); the
    pointer ``<data dir>/metamodels/active.json`` names the active one. :func:`active_metamodel_dir` is what ranking
    should load: the pointed-to folder when it holds a model, else the shipped folder. Every retraining, activated or
    not, appends one line to ``<data dir>/metamodels/history.jsonl``. The living meta-base is only read, never
    changed.

The comparison (one leave-one-dataset-out protocol for both models, on the same rows)
    Rows: the shipped meta-base's plus the living meta-base's. Each held-out set is scored in *query groups* of rows
    that compete with each other: a shipped row's group is (set, fidelity); a living row's is (set, run, halving step),
    the step being the trial's k-th validated point in that run (all trials of a step trained for the same time, each
    for the megapixels its speed gave it). A group counts when it has 2 or more rows with distinct IoU. For each
    held-out set, each model's *recipe* (kind, features, fidelity) is fitted on the other sets' rows it was trained on
    (the active model: the shipped rows plus the living runs listed in its meta file; the candidate: all rows) and
    asked about every held-out row at the row's own training amount; z, Kendall tau, regret and Pearson r are computed
    per group and averaged per set; a model's LODO z is the mean over held-out sets, then over seeds.

The rule
    The candidate is activated when both LODO z are finite and ``candidate z >= active z`` (a tie activates: the
    candidate ranks no worse and has learned from this lab's runs). Otherwise the active model stays. Before any
    fitting, the active model stays when the living meta-base has fewer than :data:`MIN_LIVING_SETS` distinct sets
    with a usable query group (with one, the comparison would hinge on a single set), or when the candidate's recipe
    equals the active one and every living run is already in the active model (nothing new to learn).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from appliance.data.io import atomic_write
from appliance.errors import ApplianceError, ConfigError, ModelFileError
from appliance.metalearning.base import (
    LIVING_METABASE,
    MODEL_FILE,
    TARGET,
    TEXT_COLUMNS,
    MetaBase,
    MetaBaseError,
    load_metabase,
)
from appliance.metalearning.evaluation import _finite_or_none, _fit_groups, _nanmean, _resolve_fidelity, set_metrics
from appliance.metalearning.features import _FeatureBuilder, parse_variant
from appliance.metalearning.fidelity import FIDELITY_VARIANT
from appliance.metalearning.learners import FIDELITY_AWARE_MODEL, _spec
from appliance.metalearning.model import MetaModel, work_doubling_gain

log = logging.getLogger(__name__)

MODELS_DIR = "metamodels"
"""Folder under the data dir with the meta-models this appliance trained and the pointer to the active one."""
ACTIVE_FILE = "active.json"
HISTORY_FILE = "history.jsonl"
RETRAIN_REPORT = "retrain-report.md"
POINTER_VERSION = 1
MIN_LIVING_SETS = 2
"""Fewest distinct sets with a usable query group the living meta-base needs before a retrained model can replace
the active one."""
RETRAIN_SEEDS = (0, 1, 2)
COMPARISON_METRICS = ("z", "kendall", "regret", "pearson")


class LivingMetaBaseError(MetaBaseError):
    """The living meta-base in the data dir is missing, empty or malformed, so it cannot be folded in."""


# --- the active model ------------------------------------------------------------------------------------------------


def active_metamodel_dir(data_dir: str | Path, shipped_dir: str | Path) -> Path:
    """The folder ranking should load the meta-model from: the one ``<data dir>/metamodels/active.json`` names when
    it holds a model, else ``shipped_dir``. A pointer that cannot be read is logged and the shipped model is used."""
    pointer = Path(data_dir) / MODELS_DIR / ACTIVE_FILE
    shipped_dir = Path(shipped_dir)
    if not pointer.is_file():
        return shipped_dir
    try:
        data = json.loads(pointer.read_text())
        directory = pointer.parent / str(data["directory"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("%s cannot be read (%s); ranking with the shipped meta-model in %s", pointer, error, shipped_dir)
        return shipped_dir
    if not (directory / MODEL_FILE).is_file():
        log.warning(
            "%s names %s, which holds no %s; ranking with the shipped meta-model", pointer, directory, MODEL_FILE
        )
        return shipped_dir
    return directory


# --- the living rows -------------------------------------------------------------------------------------------------


def load_living_metabase(path: str | Path) -> MetaBase:
    """Read the living meta-base at ``path`` (only read, never changed); raises :class:`LivingMetaBaseError` naming
    the file, what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise LivingMetaBaseError(
            f"{path}: no living meta-base here; finished runs of `appliance train` (or the service) in this data dir "
            "write it once they were ranked by the meta-model. Train a set first, or give the data dir that holds it"
        )
    try:
        base = load_metabase(path)
    except MetaBaseError as error:
        problem = str(error).replace(" (rebuild it with the meta-base builder)", "")
        raise LivingMetaBaseError(
            f"living meta-base {problem}. It is written by the appliance's runs and was left unchanged: restore it "
            "from a backup, or move it aside (the next finished run starts a new one)"
        ) from error
    sources = base.columns.get("source")
    if sources is None or sources.dtype != object or not all(sources.tolist()):
        raise LivingMetaBaseError(
            f"{path}: every row of a living meta-base needs a 'source' (the run it came from, 'run <id>'); "
            "this file has rows without one, so it was not written by a run. Move it aside and let runs write a new one"
        )
    return base


def combine(shipped: MetaBase, living: MetaBase) -> MetaBase:
    """The shipped rows followed by the living rows, over the union of their columns (a column one side lacks is
    empty there: NaN for numbers, '' for text; the meta-model fills missing features with training medians)."""
    order = list(shipped.order) + [name for name in living.order if name not in shipped.order]
    if "source" not in order:
        order.append("source")
    columns: dict[str, np.ndarray] = {}
    for name in order:
        parts = []
        for base in (shipped, living):
            values = base.columns.get(name)
            if values is None:
                values = np.full(base.n_rows, "" if name in TEXT_COLUMNS or name == "source" else np.nan, dtype=object)
            parts.append(values)
        if all(p.dtype != object for p in parts):
            columns[name] = np.concatenate([p.astype(float) for p in parts])
        elif name in TEXT_COLUMNS or name == "source" or any(p.dtype == object and _is_text(p) for p in parts):
            columns[name] = np.concatenate([_as_text(p) for p in parts]).astype(object)
        else:  # numbers on one side, an all-empty column on the other
            columns[name] = np.concatenate([p.astype(float) for p in parts])
    return MetaBase(columns, order, source=f"{shipped.source} + {living.source}")


def _is_text(values: np.ndarray) -> bool:
    return any(isinstance(v, str) and v != "" for v in values.tolist())


def _as_text(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return values
    return np.array(["" if not np.isfinite(v) else f"{v:g}" for v in values.tolist()], dtype=object)


def query_groups(base: MetaBase) -> np.ndarray:
    """The group of every row that its rank is judged in: ``set@fidelity`` for a meta-base row, ``set|run|step k``
    for a living row (its trial's k-th validated point in that run, counting from 0)."""
    sets, fidelity = base.columns["set"], base.columns["fidelity_mp"]
    sources = base.sources
    configs = base.columns["config_id"]
    points: dict[tuple[str, str], list[float]] = {}
    for source, config, f in zip(sources.tolist(), configs.tolist(), fidelity.tolist(), strict=True):
        if source:
            points.setdefault((source, config), []).append(f)
    steps = {key: sorted(set(values)) for key, values in points.items()}
    out = []
    for name, source, config, f in zip(
        sets.tolist(), sources.tolist(), configs.tolist(), fidelity.tolist(), strict=True
    ):
        out.append(f"{name}|{source}|step {steps[(source, config)].index(f)}" if source else f"{name}@{f:g}")
    return np.array(out, dtype=object)


def _usable_groups(base: MetaBase, groups: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """Masks of the groups among ``rows`` with 2 or more rows of distinct IoU."""
    y = base.columns[TARGET]
    masks = []
    for group in dict.fromkeys(groups[rows].tolist()):
        mask = rows & (groups == group)
        if mask.sum() >= 2 and np.ptp(y[mask]) > 0:
            masks.append(mask)
    return masks


def living_sets(base: MetaBase) -> list[str]:
    """The sets of a (living) meta-base with at least one usable query group."""
    groups = query_groups(base)
    return [s for s in base.sets if _usable_groups(base, groups, base.columns["set"] == s)]


# --- the comparison --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a meta-model is fitted: kind, features, fidelity, and which living runs its rows include (None: all)."""

    model: str
    variant: str
    fidelity: float | None
    living_runs: frozenset[str] | None = None

    @classmethod
    def of(cls, model: MetaModel) -> Recipe:
        return cls(model.model, model.variant, model.fidelity, frozenset(model.living_runs))

    def training_rows(self, base: MetaBase) -> np.ndarray:
        if self.living_runs is None:
            rows = np.ones(base.n_rows, dtype=bool)
        else:
            rows = np.array([not s or s in self.living_runs for s in base.sources.tolist()], dtype=bool)
        if _spec(self.model).fidelity_aware or "fid" in parse_variant(self.variant):
            return rows
        return rows & base.at_fidelity(_resolve_fidelity(base, self.fidelity))


@dataclass
class Comparison:
    """Leave-one-dataset-out results of several recipes on the same rows: ``results[name]`` has shape
    (seeds, sets, :data:`COMPARISON_METRICS`)."""

    sets: list[str]
    living: list[str]
    seeds: list[int]
    results: dict[str, np.ndarray] = field(default_factory=dict)
    groups_per_set: dict[str, int] = field(default_factory=dict)

    def mean(self, name: str, metric: str = "z", sets: Sequence[str] | None = None) -> tuple[float, float]:
        """(mean over seeds, std over seeds) of the mean over ``sets`` (default: all held-out sets)."""
        chosen = [self.sets.index(s) for s in (self.sets if sets is None else sets)]
        if not chosen:
            return math.nan, math.nan
        values = _nanmean(self.results[name][:, chosen, COMPARISON_METRICS.index(metric)], axis=1)
        values = values[np.isfinite(values)]
        return (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)

    def to_markdown(self, labels: dict[str, str]) -> str:
        def fmt(pair: tuple[float, float]) -> str:
            return "—" if not math.isfinite(pair[0]) else f"{pair[0]:.3f} ± {pair[1]:.3f}"

        shipped = [s for s in self.sets if s not in self.living]
        lines = [
            f"Leave-one-dataset-out over {len(self.sets)} sets ({len(self.living)} with living rows), seeds "
            f"{', '.join(map(str, self.seeds))}; per set the mean over its query groups.",
            "",
            "| model | z (all sets) | z (meta-base sets) | z (living sets) | Kendall τ | regret | Pearson r |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in self.results:
            lines.append(
                f"| {name}: {labels.get(name, name)} | {fmt(self.mean(name))} | {fmt(self.mean(name, sets=shipped))} "
                f"| {fmt(self.mean(name, sets=self.living))} | {fmt(self.mean(name, 'kendall'))} "
                f"| {fmt(self.mean(name, 'regret'))} | {fmt(self.mean(name, 'pearson'))} |"
            )
        return "\n".join(lines)


def compare(base: MetaBase, recipes: dict[str, Recipe], *, seeds: Iterable[int] = RETRAIN_SEEDS) -> Comparison:
    """Score every recipe by the module's leave-one-dataset-out protocol on ``base`` (shipped + living rows)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("the comparison needs at least one seed")
    groups = query_groups(base)
    set_column, y = base.columns["set"], base.columns[TARGET]
    has_living = base.sources != ""
    held: dict[str, list[np.ndarray]] = {}
    for name in base.sets:
        masks = _usable_groups(base, groups, set_column == name)
        if masks:
            held[name] = masks
    sets = list(held)
    if len(sets) < 2:
        raise ConfigError(f"{base.source}: leave-one-dataset-out needs at least 2 usable sets, found {len(sets)}")
    living = [s for s in sets if has_living[set_column == s].any()]
    comparison = Comparison(sets, living, seeds, groups_per_set={s: len(m) for s, m in held.items()})
    training = {name: recipe.training_rows(base) for name, recipe in recipes.items()}
    for name in recipes:
        comparison.results[name] = np.full((len(seeds), len(sets), len(COMPARISON_METRICS)), np.nan)
    for j, held_out in enumerate(sets):
        is_test = set_column == held_out
        test = base.subset(is_test)
        local = [mask[is_test] for mask in held[held_out]]
        for name, recipe in recipes.items():
            spec = _spec(recipe.model)
            train = base.subset(training[name] & ~is_test)
            if train.n_rows == 0 or len(train.sets) == 0:
                continue
            all_fidelities = spec.fidelity_aware or "fid" in parse_variant(recipe.variant)
            builder = _FeatureBuilder(recipe.variant).fit(train)
            x_train, x_test = builder.transform(train.columns), builder.transform(test.columns)
            fit_groups = _fit_groups(spec, train, all_fidelities)
            fitted = None
            for i, seed in enumerate(seeds):
                if fitted is None or not spec.deterministic:
                    fitted = spec.factory(seed).fit(x_train, train.columns[TARGET], fit_groups)
                predicted = fitted.predict(x_test)
                per_group = []
                for mask in local:
                    m = set_metrics(y[is_test][mask], predicted[mask], pointwise=False)
                    per_group.append([m[k] for k in COMPARISON_METRICS])
                comparison.results[name][i, j] = _nanmean(np.array(per_group), axis=0)
    return comparison


# --- retraining ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainResult:
    """What :func:`retrain_with_living` decided and why; ``candidate_dir`` is None when no candidate was fitted."""

    activated: bool
    reason: str
    active_dir: Path
    active_label: str
    candidate_dir: Path | None = None
    candidate_label: str | None = None
    candidate_z: float | None = None
    active_z: float | None = None
    living_rows: int = 0
    living_sets: tuple[str, ...] = ()
    comparison: Comparison | None = None


def retrain_with_living(
    metabase_path: str | Path,
    data_dir: str | Path,
    shipped_dir: str | Path,
    *,
    model: str = FIDELITY_AWARE_MODEL,
    variant: str = FIDELITY_VARIANT,
    fidelity: float | None = None,
    seeds: Iterable[int] = RETRAIN_SEEDS,
    now: datetime | None = None,
) -> RetrainResult:
    """Fit ``model`` on ``variant`` features of the shipped meta-base plus ``<data dir>/metabase.csv``, compare it
    with the active meta-model (:func:`active_metamodel_dir`) by the module's protocol, and activate it by the
    module's rule. The candidate, its report and the decision are kept under ``<data dir>/metamodels/``."""
    data_dir, shipped_dir = Path(data_dir), Path(shipped_dir)
    seeds = tuple(int(s) for s in seeds)
    living = load_living_metabase(data_dir / LIVING_METABASE)
    shipped = load_metabase(metabase_path)
    active_dir = active_metamodel_dir(data_dir, shipped_dir)
    try:
        active = MetaModel.load(active_dir)
    except ModelFileError as error:
        raise ModelFileError(
            f"the active meta-model cannot be read, so a retrained one cannot be compared with it: {error}"
        ) from error
    usable = living_sets(living)
    runs = sorted(set(living.columns["source"].tolist()))
    common = {"active_dir": active_dir, "active_label": active.label, "living_rows": living.n_rows}
    common["living_sets"] = tuple(usable)
    if len(usable) < MIN_LIVING_SETS:
        reason = (
            f"the living meta-base {data_dir / LIVING_METABASE} holds {len(usable)} set(s) with a usable halving "
            f"step ({', '.join(usable) or 'none'}); at least {MIN_LIVING_SETS} are needed before a retrained model "
            f"can be judged, so the active model stays ({active.label})"
        )
        return _record(data_dir, RetrainResult(False, reason, **common), now)
    spec = _spec(model)
    if spec.fidelity_aware and "fid" not in parse_variant(variant):
        variant = f"{variant}+fid"
    if not spec.fidelity_aware and fidelity is None:  # the meta-base's largest point, not the largest living one
        fidelity = _resolve_fidelity(shipped, None)
    candidate_recipe = Recipe(spec.name, variant, fidelity)
    if (candidate_recipe.model, candidate_recipe.variant) == (active.model, active.variant) and set(runs) <= set(
        active.living_runs
    ):
        reason = f"the active model ({active.label}) already has every living run and the same recipe; nothing new"
        return _record(data_dir, RetrainResult(False, reason, **common), now)
    base = combine(shipped, living)
    recipes = {"candidate": candidate_recipe, "active": Recipe.of(active)}
    comparison = compare(base, recipes, seeds=seeds)
    candidate_z, active_z = comparison.mean("candidate")[0], comparison.mean("active")[0]
    activated = math.isfinite(candidate_z) and math.isfinite(active_z) and candidate_z >= active_z
    fitted = MetaModel.fit(base, model=spec.name, variant=variant, seed=seeds[0], fidelity=fidelity)
    fitted.work_doubling_gain = work_doubling_gain(shipped)  # the shared curve points; living ones differ per run
    fitted.score_correlation = comparison.mean("candidate", "pearson")[0]
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    candidate_dir = _fresh_dir(data_dir / MODELS_DIR, f"{stamp}-{_slug(spec.name)}")
    fitted.save(candidate_dir)
    if activated:
        verb = "equals" if candidate_z == active_z else "beats"
        reason = f"candidate LODO z {candidate_z:.3f} {verb} the active model's {active_z:.3f}: activated"
    elif not (math.isfinite(candidate_z) and math.isfinite(active_z)):
        reason = f"LODO z not computable (candidate {candidate_z}, active {active_z}): the active model stays"
    else:
        reason = (
            f"candidate LODO z {candidate_z:.3f} is below the active model's {active_z:.3f}: the active model stays"
        )
    result = RetrainResult(
        activated,
        reason,
        candidate_dir=candidate_dir,
        candidate_label=fitted.label,
        candidate_z=candidate_z,
        active_z=active_z,
        comparison=comparison,
        **common,
    )
    report = render_retrain_report(result, living_runs=len(runs), seeds=seeds)
    atomic_write(candidate_dir / RETRAIN_REPORT, lambda tmp: Path(tmp).write_text(report))
    if activated:
        pointer = {
            "format_version": POINTER_VERSION,
            "directory": candidate_dir.name,
            "label": fitted.label,
            "activated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "lodo_z": candidate_z,
            "replaced": {"directory": str(active_dir), "label": active.label, "lodo_z": active_z},
        }
        text = json.dumps(pointer, indent=1)
        atomic_write(data_dir / MODELS_DIR / ACTIVE_FILE, lambda tmp: Path(tmp).write_text(text))
    return _record(data_dir, result, now)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _fresh_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        path = parent / (name if n == 0 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ApplianceError(f"{parent}: 1000 candidate folders named {name}*; remove old ones")


def _record(data_dir: Path, result: RetrainResult, now: datetime | None) -> RetrainResult:
    """Append the decision to ``<data dir>/metamodels/history.jsonl`` (one JSON object per line)."""
    entry: dict[str, Any] = {
        "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "activated": result.activated,
        "reason": result.reason,
        "active_before": result.active_label,
        "candidate": None if result.candidate_dir is None else result.candidate_dir.name,
        "candidate_label": result.candidate_label,
        "candidate_z": result.candidate_z,
        "active_z": result.active_z,
        "living_rows": result.living_rows,
        "living_sets": list(result.living_sets),
    }
    path = data_dir / MODELS_DIR / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(_finite_or_none(entry), allow_nan=False, default=str) + "\n")
    return result


def render_retrain_report(result: RetrainResult, *, living_runs: int, seeds: Sequence[int]) -> str:
    lines = [
        "# Meta-model retrained with the living meta-base",
        "",
        f"**{'Activated' if result.activated else 'Not activated'}.** {result.reason}.",
        "",
        f"- Candidate: {result.candidate_label}.",
        f"- Active before: {result.active_label} (from `{result.active_dir}`).",
        f"- Living meta-base: {result.living_rows} rows from {living_runs} run(s); sets with a usable halving step: "
        f"{', '.join(result.living_sets)}.",
        f"- Rule: activate when candidate LODO z ≥ active LODO z (ties activate); seeds {', '.join(map(str, seeds))}.",
        "",
    ]
    if result.comparison is not None:
        lines += [
            result.comparison.to_markdown({"candidate": result.candidate_label or "", "active": result.active_label})
        ]
    lines += [
        "",
        "Protocol: every held-out set's rows are ranked in query groups (a meta-base set: each fidelity; a living set: "
        "each halving step of each run); each model's recipe is fitted on the other sets' rows it was trained on and "
        "asked at each row's own training amount (see `appliance/metalearning/retrain.py`).",
    ]
    return "\n".join(lines) + "\n"
