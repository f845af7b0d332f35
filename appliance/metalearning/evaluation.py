"""Leave-one-dataset-out evaluation of meta-models: per-set ranking metrics (thesis 4.7.1) over several seeds, as
an :class:`EvaluationTable`."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from appliance.errors import ConfigError
from appliance.metalearning.base import (
    BASELINE,
    DEFAULT_SEEDS,
    DEFAULT_VARIANTS,
    METRICS,
    PREFIXES,
    TARGET,
    TOP_FRACTION,
    MetaBase,
)
from appliance.metalearning.features import _FeatureBuilder, parse_variant
from appliance.metalearning.learners import DEFAULT_MODELS, MODELS, ModelSpec, _spec

log = logging.getLogger(__name__)


def top_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """Size of the top fraction of ``n`` configurations: ceil(fraction * n), at least 1.

    >>> top_count(30), top_count(31), top_count(5)
    (3, 4, 1)
    """
    return max(1, math.ceil(round(fraction * n, 9)))


def set_metrics(true: Sequence[float], predicted: Sequence[float], *, pointwise: bool = True) -> dict[str, float]:
    """Metrics of one held-out set (thesis 4.7.1). Higher predicted = better; ties go to the earlier row.

    Returns ``z``, ``oracle_z``, ``pearson``, ``kendall``, ``rmse`` (NaN unless ``pointwise``), ``diff_iou`` and
    ``regret``.
    """
    true = np.asarray(true, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    if true.shape != predicted.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError("true and predicted must be 1-D arrays of the same, non-zero length")
    k = top_count(len(true))
    predicted_top = np.argsort(-predicted, kind="stable")[:k]
    true_top = np.argsort(-true, kind="stable")[:k]
    mean, std = true.mean(), true.std()
    nan = float("nan")
    with np.errstate(all="ignore"):
        z = (true[predicted_top].mean() - mean) / std if std > 0 else nan
        oracle = (true[true_top].mean() - mean) / std if std > 0 else nan
        constant = np.ptp(true) == 0 or np.ptp(predicted) == 0
        pearson = nan if constant or len(true) < 2 else float(np.corrcoef(true, predicted)[0, 1])
        kendall = nan if constant or len(true) < 2 else float(stats.kendalltau(true, predicted).statistic)
    return {
        "z": float(z),
        "oracle_z": float(oracle),
        "pearson": pearson,
        "kendall": kendall,
        "rmse": float(np.sqrt(np.mean((true - predicted) ** 2))) if pointwise else nan,
        "diff_iou": float(true[true_top].mean() - true[predicted_top].mean()),
        "regret": float(true.max() - true[predicted_top[0]]),
    }


def _nanmean(values: np.ndarray, axis: int | None = None):
    """``np.nanmean`` without the warning for an all-NaN slice (that slice is NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _finite_or_none(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class EvaluationTable:
    """Leave-one-dataset-out results. ``results[(model, variant)]`` has shape (seeds, sets, metrics) in the order of
    ``seeds``, ``sets`` and :data:`METRICS`; ``oracle_z[set]`` is the z of the true top 10 %."""

    sets: list[str]
    seeds: list[int]
    fidelity: float
    rows_per_set: dict[str, int]
    oracle_z: dict[str, float]
    results: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    fit_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self, model: str, variant: str) -> dict[str, tuple[float, float]]:
        """Metric -> (mean over seeds, std over seeds) of the per-seed mean over held-out sets."""
        per_seed = _nanmean(self.results[(model, variant)], axis=1)  # (seeds, metrics)
        out = {}
        for i, name in enumerate(METRICS):
            values = per_seed[:, i]
            values = values[np.isfinite(values)]
            out[name] = (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)
        return out

    def mean_oracle_z(self) -> float:
        return float(_nanmean(np.array([self.oracle_z[s] for s in self.sets])))

    def best(self) -> tuple[str, str]:
        """The (model, variant) with the highest mean z (first evaluated wins a tie)."""
        if not self.results:
            raise ValueError("the evaluation has no results")
        scored = [(self.summary(*key)["z"][0], -i, key) for i, key in enumerate(self.results)]
        scored = [s for s in scored if math.isfinite(s[0])] or scored
        return max(scored)[2]

    def comparison_line(self, shipped: tuple[str, str] | None = None, baseline: tuple[str, str] = BASELINE) -> str:
        shipped = shipped or self.best()
        z = self.summary(*shipped)["z"][0]
        if baseline not in self.results:
            return (
                f"shipped {shipped[0]}/{shipped[1]} z = {z:.3f}; the RF-d7 baseline ({baseline[1]}) was not evaluated"
            )
        z_base = self.summary(*baseline)["z"][0]
        ratio = f"{z / z_base:.2f}×" if z_base > 0 else "n/a (baseline z ≤ 0)"
        return (
            f"shipped {shipped[0]}/{shipped[1]} z = {z:.3f} vs RF-d7 baseline ({baseline[1]}) z = {z_base:.3f}: "
            f"ratio {ratio} (goal ≥ 1.15×)"
        )

    def per_set(self, model: str, variant: str, metric: str = "z") -> dict[str, float]:
        """Held-out set -> metric averaged over seeds."""
        values = _nanmean(self.results[(model, variant)][:, :, METRICS.index(metric)], axis=0)
        return {s: float(v) for s, v in zip(self.sets, values, strict=True)}

    def per_set_markdown(self, keys: Sequence[tuple[str, str]] | None = None) -> str:
        keys = (
            list(keys)
            if keys
            else list(dict.fromkeys([self.best(), *([BASELINE] if BASELINE in self.results else [])]))
        )
        head = "| held-out set | rows | oracle z | " + " | ".join(f"{m}/{v} z" for m, v in keys) + " |"
        lines = [head, "|" + "---|" * (3 + len(keys))]
        columns = [self.per_set(*key) for key in keys]
        for s in self.sets:
            cells = " | ".join(f"{c[s]:.3f}" for c in columns)
            lines.append(f"| {s} | {self.rows_per_set[s]} | {self.oracle_z[s]:.3f} | {cells} |")
        return "\n".join(lines)

    def to_markdown(self, *, timings: bool = False) -> str:
        """The table; ``timings`` adds each row's fitting seconds (which differ from run to run)."""

        def fmt(pair: tuple[float, float]) -> str:
            return "—" if not math.isfinite(pair[0]) else f"{pair[0]:.3f} ± {pair[1]:.3f}"

        lines = [
            f"Leave-one-dataset-out over {len(self.sets)} sets at fidelity {self.fidelity:g} MP, "
            f"seeds {', '.join(map(str, self.seeds))} (mean ± std over seeds of the mean over held-out sets).",
            "",
            "| model | features | z | Pearson | Kendall τ | RMSE | diff IoU | regret |"
            + (" fit s |" if timings else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if timings else ""),
        ]
        keys = sorted(self.results, key=lambda key: -np.nan_to_num(self.summary(*key)["z"][0], nan=-np.inf))
        for key in keys:
            s = self.summary(*key)
            cells = " | ".join(fmt(s[m]) for m in METRICS)
            timing = f" {self.fit_seconds.get(key, math.nan):.1f} |" if timings else ""
            lines.append(f"| {key[0]} | {key[1]} | {cells} |{timing}")
        lines.append(
            f"| oracle (true top 10 %) | — | {self.mean_oracle_z():.3f} | | | | 0 | 0 |" + (" |" if timings else "")
        )
        lines += ["", self.comparison_line()]
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON report (NaN as null)."""
        return _finite_or_none(
            {
                "sets": self.sets,
                "seeds": self.seeds,
                "fidelity": self.fidelity,
                "rows_per_set": self.rows_per_set,
                "oracle_z": self.oracle_z,
                "mean_oracle_z": self.mean_oracle_z(),
                "best": list(self.best()) if self.results else None,
                "comparison": self.comparison_line() if self.results else None,
                "notes": self.notes,
                "results": [
                    {
                        "model": m,
                        "variant": v,
                        "description": self.descriptions.get(m, ""),
                        "fit_seconds": self.fit_seconds.get((m, v)),
                        "summary": {k: list(pair) for k, pair in self.summary(m, v).items()},
                        "per_set_z": self.per_set(m, v),
                    }
                    for (m, v) in self.results
                ],
            }
        )


def _groups(base: MetaBase, with_fidelity: bool) -> np.ndarray:
    """Query groups for set-relative targets and rankers: the set, or (set, fidelity) with all fidelities."""
    if not with_fidelity:
        return base.columns["set"]
    return np.array([f"{s}@{f:g}" for s, f in zip(base.columns["set"], base.columns["fidelity_mp"], strict=True)])


def _fit_groups(spec: ModelSpec, base: MetaBase, with_fidelity: bool) -> np.ndarray:
    """The groups ``spec`` is fitted with: a fidelity-aware model standardises within each set over all its points."""
    return base.columns["set"] if spec.fidelity_aware else _groups(base, with_fidelity)


def _check_fidelity_aware(spec: ModelSpec, variant: str) -> None:
    if spec.fidelity_aware and "fid" not in parse_variant(variant):
        raise ConfigError(
            f"{spec.name} takes the training amount as an input: give it a variant with +fid "
            f"(e.g. {variant}+fid), not {variant!r}"
        )


def _resolve_fidelity(base: MetaBase, fidelity: float | None) -> float:
    if fidelity is None:
        return base.common_fidelity
    if not base.at_fidelity(fidelity).any():
        present = ", ".join(f"{f:g}" for f in base.fidelities)
        raise ConfigError(f"{base.source}: no rows at fidelity {fidelity:g} MP; present: {present}")
    return float(fidelity)


def _variant_available(base: MetaBase, variant: str) -> str | None:
    """Why ``variant`` cannot be built from ``base``, or None."""
    groups = parse_variant(variant)
    for group in ("hc", "eng", "user"):
        if group in groups and not base.prefixed(PREFIXES[group]):
            return f"no {PREFIXES[group]}* columns"
    if any(g.startswith("opt") for g in groups) and not base.prefixed(PREFIXES["opt"]):
        return "no opt_* columns"
    return None


class _FoldFits:
    """The models fitted in one leave-one-dataset-out fold, so that an ensemble reuses its members' fits."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, first_seed: int, set_groups: np.ndarray | None = None
    ) -> None:
        self.x, self.y, self.groups, self.first_seed = x, y, groups, first_seed
        self.set_groups = groups if set_groups is None else set_groups  # for fidelity-aware models
        self.fitted: dict[tuple[str, int], Any] = {}

    def get(self, spec: ModelSpec, seed: int) -> Any:
        key = (spec.name, self.first_seed if spec.deterministic else seed)
        if key not in self.fitted:
            if spec.members:
                members = [self.get(MODELS[name], seed) for name in spec.members]
                self.fitted[key] = spec.factory(key[1]).compose(members, self.x)
            else:
                groups = self.set_groups if spec.fidelity_aware else self.groups
                self.fitted[key] = spec.factory(key[1]).fit(self.x, self.y, groups)
        return self.fitted[key]


def evaluate(
    metabase: MetaBase,
    models: Iterable[str | ModelSpec] = DEFAULT_MODELS,
    variants: Iterable[str] | None = None,
    seeds: Iterable[int] = DEFAULT_SEEDS,
    fidelity: float | None = None,
    use_all_fidelities: bool = False,
) -> EvaluationTable:
    """Leave-one-dataset-out evaluation of every (model, variant) over ``seeds``.

    For each held-out set the models train on the other sets' rows at ``fidelity`` (default: the largest point
    every builder run reached, :attr:`MetaBase.common_fidelity`; with ``use_all_fidelities`` or a ``+fid`` variant:
    on all their rows, with log(fidelity) as a feature) and are scored on the held-out set's rows at ``fidelity``.
    ``variants=None`` takes :data:`DEFAULT_VARIANTS` that the
    meta-base has columns for (the others are listed in ``notes``); named variants that cannot be built raise.
    """
    specs = [_spec(m) for m in models]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("evaluate needs at least one seed")
    fidelity = _resolve_fidelity(metabase, fidelity)
    notes: list[str] = []
    if variants is None:
        chosen = []
        for variant in DEFAULT_VARIANTS:
            reason = _variant_available(metabase, variant)
            if reason:
                notes.append(f"variant {variant} skipped: {reason} in {metabase.source}")
            else:
                chosen.append(variant)
        variants = chosen
    variants = [v + "+fid" if use_all_fidelities and "fid" not in parse_variant(v) else v for v in variants]
    for variant in variants:
        parse_variant(variant)  # fail early on a bad name
        for spec in specs:
            _check_fidelity_aware(spec, variant)

    at_fidelity = metabase.at_fidelity(fidelity)
    set_column = metabase.columns["set"]
    y_all = metabase.columns[TARGET]
    sets, rows_per_set, oracle = [], {}, {}
    for name in metabase.sets:
        mask = at_fidelity & (set_column == name)
        true = y_all[mask]
        if mask.sum() < 2 or np.ptp(true) == 0:
            notes.append(f"set {name} not held out: {int(mask.sum())} row(s) at {fidelity:g} MP with distinct IoU")
            continue
        sets.append(name)
        rows_per_set[name] = int(mask.sum())
        oracle[name] = set_metrics(true, true)["oracle_z"]
    if len(sets) < 2:
        raise ConfigError(f"{metabase.source}: leave-one-dataset-out needs at least 2 usable sets, found {len(sets)}")

    table = EvaluationTable(sets, seeds, fidelity, rows_per_set, oracle, notes=notes)
    table.descriptions = {spec.name: spec.description for spec in specs}
    for variant in variants:
        all_fidelities = "fid" in parse_variant(variant)
        for spec in specs:
            table.results[(spec.name, variant)] = np.full((len(seeds), len(sets), len(METRICS)), np.nan)
            table.fit_seconds[(spec.name, variant)] = 0.0
        for j, held_out in enumerate(sets):
            train_mask = (set_column != held_out) & (True if all_fidelities else at_fidelity)
            test_mask = (set_column == held_out) & at_fidelity
            train, test = metabase.subset(train_mask), metabase.subset(test_mask)
            builder = _FeatureBuilder(variant).fit(train)
            x_train, x_test = builder.transform(train.columns), builder.transform(test.columns)
            y_train, y_test = train.columns[TARGET], test.columns[TARGET]
            groups = _groups(train, all_fidelities)
            fits = _FoldFits(x_train, y_train, groups, first_seed=seeds[0], set_groups=train.columns["set"])
            for spec in specs:
                key = (spec.name, variant)
                for i, seed in enumerate(seeds):
                    if i and spec.deterministic:
                        table.results[key][i, j] = table.results[key][0, j]
                        continue
                    started = time.perf_counter()
                    predicted = fits.get(spec, seed).predict(x_test)
                    table.fit_seconds[key] += time.perf_counter() - started
                    metrics = set_metrics(y_test, predicted, pointwise=spec.pointwise)
                    table.results[key][i, j] = [metrics[m] for m in METRICS]
            log.debug("evaluated variant %s with %s held out", variant, held_out)
    return table
