"""Evaluation of the fidelity-aware meta-model at every training amount of the meta-base, and of its extrapolation
to training amounts it has not seen (``appliance metamodel evaluate --fidelity-aware``).

Two tables, both leave-one-dataset-out over the same seeds:

1. **Per fidelity.** At each curve point F of the meta-base: the fidelity-aware model (fitted once per fold on the
   other sets' rows at *every* curve point, asked at F) against RF-d7 fitted on the other sets' rows at F only (the
   paper's baseline at that same training amount). Metrics of the held-out set's rows at F: z, regret and Kendall tau
   (as :func:`appliance.metalearning.evaluation.set_metrics`).
2. **Extrapolation.** For each cut F below the largest point: the fidelity-aware model fitted on the other sets'
   rows at points <= F, asked about the held-out set at each point G > F. Its target is IoU standardised within a set
   over the set's points <= F, so the *measured standardised IoU* at G is the held-out set's IoU at G standardised by
   the mean and std of its own IoU at points <= F (the same unit; it exceeds the training range when more training
   helps). Reported: mean absolute error of predicted vs measured standardised IoU; the same error when the model is
   asked at F instead of G (what ignoring the extra training would cost: the model has learned the gain of more
   training when this is larger); Kendall tau and z at G; and, for comparison, Kendall tau at G of RF-d7 fitted at F
   only (ranking by a low-fidelity model, today's practice).

With ``fixed`` = (model, variant, fidelity) the per-fidelity table gets a third row at each point: that
single-fidelity model fitted on the other sets' rows at its own fidelity, ranking the held-out set's rows at F (how
a model shipped at a low fidelity ranks for a race that trains far more).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.errors import ConfigError
from appliance.metalearning.base import BASELINE, TARGET, MetaBase
from appliance.metalearning.evaluation import (
    _check_fidelity_aware,
    _finite_or_none,
    _FoldFits,
    _nanmean,
    set_metrics,
)
from appliance.metalearning.features import _FeatureBuilder, parse_variant
from appliance.metalearning.learners import FIDELITY_AWARE_MODEL, _spec

FIDELITY_SEEDS = (0, 1, 2)
"""Seeds of the per-fidelity report: few, so that it runs in minutes on two cores."""
FIDELITY_VARIANT = "hp+hc+eng+fid"
"""The fidelity-aware model's default features: the RF-d7 baseline's, plus the training amount."""

PER_FIDELITY_METRICS = ("z", "regret", "kendall")
EXTRAPOLATION_METRICS = ("mae", "mae_at_cut", "kendall", "z", "baseline_kendall")


@dataclass
class FidelityReport:
    """Results of :func:`evaluate_fidelities`. Arrays have shape (seeds, sets, metrics) in the order of ``seeds``,
    ``sets`` and :data:`PER_FIDELITY_METRICS` / :data:`EXTRAPOLATION_METRICS`; NaN where a set has no usable rows.

    ``per_fidelity[(F, "aware" | "baseline")]``; ``extrapolation[(cut, G)]``.
    """

    sets: list[str]
    seeds: list[int]
    fidelities: list[float]
    model: str
    variant: str
    baseline: tuple[str, str]
    fixed: tuple[str, str, float] | None = None
    rows_per_set: dict[float, dict[str, int]] = field(default_factory=dict)
    per_fidelity: dict[tuple[float, str], np.ndarray] = field(default_factory=dict)
    extrapolation: dict[tuple[float, float], np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self, values: np.ndarray, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
        """Metric -> (mean over seeds, std over seeds) of the per-seed mean over held-out sets."""
        per_seed = _nanmean(values, axis=1)
        out = {}
        for i, name in enumerate(names):
            finite = per_seed[:, i][np.isfinite(per_seed[:, i])]
            out[name] = (float(finite.mean()), float(finite.std())) if len(finite) else (math.nan, math.nan)
        return out

    def configurations_per_set(self, fidelity: float) -> str:
        """How many rows each held-out set has at ``fidelity``: "n" or "min–max"."""
        counts = [n for n in self.rows_per_set.get(fidelity, {}).values() if n]
        if not counts:
            return "0"
        return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"

    def per_fidelity_summary(self, fidelity: float, which: str) -> dict[str, tuple[float, float]]:
        return self.summary(self.per_fidelity[(fidelity, which)], PER_FIDELITY_METRICS)

    def extrapolation_summary(self, cut: float, at: float) -> dict[str, tuple[float, float]]:
        return self.summary(self.extrapolation[(cut, at)], EXTRAPOLATION_METRICS)

    @property
    def fixed_label(self) -> str:
        return "" if self.fixed is None else f"{self.fixed[0]}/{self.fixed[1]} @{self.fixed[2]:g}"

    def to_markdown(self) -> str:
        def fmt(pair: tuple[float, float]) -> str:
            return "—" if not math.isfinite(pair[0]) else f"{pair[0]:.3f} ± {pair[1]:.3f}"

        aware = f"{self.model}/{self.variant}"
        base = f"{self.baseline[0]}/{self.baseline[1]}"
        lines = [
            f"Leave-one-dataset-out over {len(self.sets)} sets, seeds {', '.join(map(str, self.seeds))} "
            "(mean ± std over seeds of the mean over held-out sets).",
            "",
            f"Per fidelity: {aware} fitted once per fold on every curve point and asked at F, against {base} fitted "
            "on the points at F only.",
            "",
            "| F (MP) | model | z | regret | Kendall τ |",
            "|---|---|---|---|---|",
        ]
        rows = [("aware", aware), ("baseline", base)]
        if self.fixed:
            rows.append(("fixed", self.fixed_label))
            lines[-4] += f" {self.fixed_label}: fitted on the points at {self.fixed[2]:g} MP only, ranking at F."
        for fidelity in self.fidelities:
            for which, name in rows:
                s = self.per_fidelity_summary(fidelity, which)
                lines.append(f"| {fidelity:g} | {name} | {fmt(s['z'])} | {fmt(s['regret'])} | {fmt(s['kendall'])} |")
        lines += [
            "",
            f"Extrapolation: {aware} fitted on the points ≤ F, asked at G > F. MAE = mean |predicted − measured| "
            "standardised IoU (the held-out set's IoU at G in units of its own IoU at the points ≤ F); "
            "MAE asked at F = the same model asked at F instead of G (no gain from the extra training); "
            f"τ {base} @F = RF-d7 fitted at F only, ranking the configurations at G.",
            "",
            "| fit ≤ F (MP) | scored at G (MP) | MAE | MAE asked at F | Kendall τ | z | τ RF-d7 @F |",
            "|---|---|---|---|---|---|---|",
        ]
        for (cut, at), _ in self.extrapolation.items():
            s = self.extrapolation_summary(cut, at)
            cells = " | ".join(fmt(s[m]) for m in EXTRAPOLATION_METRICS)
            lines.append(f"| {cut:g} | {at:g} | {cells} |")
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON report (NaN as null)."""
        return _finite_or_none(
            {
                "sets": self.sets,
                "seeds": self.seeds,
                "fidelities": self.fidelities,
                "model": self.model,
                "variant": self.variant,
                "baseline": list(self.baseline),
                "fixed": None if self.fixed is None else list(self.fixed),
                "seconds": self.seconds,
                "notes": self.notes,
                "per_fidelity": [
                    {
                        "fidelity": f,
                        "model": which,
                        "summary": {k: list(v) for k, v in self.per_fidelity_summary(f, which).items()},
                    }
                    for (f, which) in self.per_fidelity
                ],
                "extrapolation": [
                    {
                        "fit_max": cut,
                        "at": at,
                        "summary": {k: list(v) for k, v in self.extrapolation_summary(cut, at).items()},
                    }
                    for (cut, at) in self.extrapolation
                ],
            }
        )


def standardise_by(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` in units of ``reference``: (values - mean) / std (std 1 when the reference is constant), as the
    fidelity-aware model's target (:func:`appliance.metalearning.learners._set_standardised`)."""
    std = reference.std()
    return (values - reference.mean()) / (std if std > 1e-12 else 1.0)


def _usable(true: np.ndarray) -> bool:
    return len(true) >= 2 and np.ptp(true) > 0


def evaluate_fidelities(
    metabase: MetaBase,
    *,
    seeds: Iterable[int] = FIDELITY_SEEDS,
    model: str = FIDELITY_AWARE_MODEL,
    variant: str = FIDELITY_VARIANT,
    baseline: tuple[str, str] = BASELINE,
    fixed: tuple[str, str, float] | None = None,
    extrapolation: bool = True,
) -> FidelityReport:
    """The per-fidelity and extrapolation tables of the module docstring for ``model`` on ``variant`` features
    (``+fid`` is added when missing) against ``baseline`` = (model, variant) fitted at each fidelity alone, and
    against ``fixed`` = (model, variant, fidelity) fitted at that one fidelity, when given."""
    started = time.perf_counter()
    spec, base_spec = _spec(model), _spec(baseline[0])
    if not spec.fidelity_aware:
        raise ConfigError(
            f"{spec.name} is not fidelity-aware; the per-fidelity report needs one such as {FIDELITY_AWARE_MODEL}"
        )
    if "fid" not in parse_variant(variant):
        variant = f"{variant}+fid"
    _check_fidelity_aware(spec, variant)
    if "fid" in parse_variant(baseline[1]):
        raise ConfigError(f"the baseline is fitted at one fidelity; its variant cannot hold fid, got {baseline[1]!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("the per-fidelity report needs at least one seed")
    fidelities = metabase.fidelities
    if fixed is not None:
        fixed_spec = _spec(fixed[0])
        if fixed_spec.fidelity_aware or "fid" in parse_variant(fixed[1]):
            raise ConfigError(
                f"the fixed comparison is fitted at one fidelity; {fixed[0]}/{fixed[1]} takes it as input"
            )
        fixed = (fixed_spec.name, fixed[1], float(fixed[2]))
        if fixed[2] not in fidelities:
            present = ", ".join(f"{f:g}" for f in fidelities)
            raise ConfigError(
                f"{metabase.source}: no rows at fidelity {fixed[2]:g} MP for {fixed[0]}; present: {present}"
            )
    if len(fidelities) < 2:
        raise ConfigError(
            f"{metabase.source}: the per-fidelity report needs learning curves at 2 or more fidelities, "
            f"found {', '.join(f'{f:g}' for f in fidelities)} MP"
        )
    set_column, y_all = metabase.columns["set"], metabase.columns[TARGET]
    at = {f: metabase.at_fidelity(f) for f in fidelities}
    sets = [s for s in metabase.sets if any(_usable(y_all[(set_column == s) & at[f]]) for f in fidelities)]
    notes = [f"set {s} not held out: no fidelity with 2 or more distinct IoU" for s in metabase.sets if s not in sets]
    if len(sets) < 2:
        raise ConfigError(f"{metabase.source}: leave-one-dataset-out needs at least 2 usable sets, found {len(sets)}")
    cuts = fidelities[:-1] if extrapolation else []
    report = FidelityReport(
        sets, seeds, fidelities, spec.name, variant, (base_spec.name, baseline[1]), fixed=fixed, notes=notes
    )
    shape_f, shape_x = (
        (len(seeds), len(sets), len(PER_FIDELITY_METRICS)),
        (len(seeds), len(sets), len(EXTRAPOLATION_METRICS)),
    )
    for f in fidelities:
        report.rows_per_set[f] = {s: int((at[f] & (set_column == s)).sum()) for s in sets}
        report.per_fidelity[(f, "aware")] = np.full(shape_f, np.nan)
        report.per_fidelity[(f, "baseline")] = np.full(shape_f, np.nan)
        if fixed:
            report.per_fidelity[(f, "fixed")] = np.full(shape_f, np.nan)
    for cut in cuts:
        for g in fidelities:
            if g > cut:
                report.extrapolation[(cut, g)] = np.full(shape_x, np.nan)

    def metrics(true: np.ndarray, predicted: np.ndarray, names: tuple[str, ...]) -> list[float]:
        m = set_metrics(true, predicted, pointwise=False)
        return [m[n] for n in names]

    for j, held_out in enumerate(sets):
        is_test = set_column == held_out
        train_all = metabase.subset(~is_test)
        test = metabase.subset(is_test)
        test_f = test.columns["fidelity_mp"]
        test_y = test.columns[TARGET]
        test_at = {f: test.at_fidelity(f) for f in fidelities}
        # the fidelity-aware model on every curve point of the other sets
        aware_builder = _FeatureBuilder(variant).fit(train_all)
        x_aware = aware_builder.transform(test.columns)
        # the fidelity-aware model on the points <= cut, for each cut
        cut_parts = {}
        for cut in cuts:
            train_cut = train_all.subset(train_all.columns["fidelity_mp"] <= cut * (1 + 1e-9))
            builder = _FeatureBuilder(variant).fit(train_cut)
            cut_parts[cut] = (train_cut, builder, builder.transform(train_cut.columns))
        # the baseline at each fidelity alone
        base_parts = {}
        for f in fidelities:
            train_f = train_all.subset(train_all.at_fidelity(f))
            if train_f.n_rows == 0:
                continue
            builder = _FeatureBuilder(baseline[1]).fit(train_f)
            base_parts[f] = (train_f, builder.transform(train_f.columns), builder.transform(test.columns))
        x_train_aware = aware_builder.transform(train_all.columns)
        fixed_fits = x_fixed = None
        if fixed:
            train_fixed = train_all.subset(train_all.at_fidelity(fixed[2]))
            fixed_builder = _FeatureBuilder(fixed[1]).fit(train_fixed)
            fixed_fits = _FoldFits(
                fixed_builder.transform(train_fixed.columns),
                train_fixed.columns[TARGET],
                train_fixed.columns["set"],
                first_seed=seeds[0],
            )
            x_fixed = fixed_builder.transform(test.columns)
        for i, seed in enumerate(seeds):
            aware = spec.factory(seed).fit(x_train_aware, train_all.columns[TARGET], train_all.columns["set"])
            predicted = aware.predict(x_aware)
            baseline_fits = {
                f: base_spec.factory(seed).fit(x_tr, train_f.columns[TARGET], train_f.columns["set"])
                for f, (train_f, x_tr, _) in base_parts.items()
            }
            fixed_predicted = None if fixed_fits is None else fixed_fits.get(fixed_spec, seed).predict(x_fixed)
            for f in fidelities:
                true = test_y[test_at[f]]
                if not _usable(true):
                    continue
                report.per_fidelity[(f, "aware")][i, j] = metrics(true, predicted[test_at[f]], PER_FIDELITY_METRICS)
                if fixed_predicted is not None:
                    fixed_at = fixed_predicted[test_at[f]]
                    report.per_fidelity[(f, "fixed")][i, j] = metrics(true, fixed_at, PER_FIDELITY_METRICS)
                if f in baseline_fits:
                    base_predicted = baseline_fits[f].predict(base_parts[f][2][test_at[f]])
                    report.per_fidelity[(f, "baseline")][i, j] = metrics(true, base_predicted, PER_FIDELITY_METRICS)
            for cut in cuts:
                train_cut, builder, x_train_cut = cut_parts[cut]
                fitted = spec.factory(seed).fit(x_train_cut, train_cut.columns[TARGET], train_cut.columns["set"])
                seen = test_f <= cut * (1 + 1e-9)
                if not seen.any():
                    continue
                for g in fidelities:
                    if g <= cut:
                        continue
                    rows = test_at[g]
                    true = test_y[rows]
                    if not _usable(true):
                        continue
                    columns = {name: values[rows] for name, values in test.columns.items()}
                    predicted_g = fitted.predict(builder.transform(columns))
                    predicted_cut = fitted.predict(
                        builder.transform({**columns, "fidelity_mp": np.full(rows.sum(), cut)})
                    )
                    measured = standardise_by(true, test_y[seen])
                    base_tau = math.nan
                    if cut in baseline_fits:
                        base_tau = metrics(true, baseline_fits[cut].predict(base_parts[cut][2][rows]), ("kendall",))[0]
                    z, tau = metrics(true, predicted_g, ("z", "kendall"))
                    report.extrapolation[(cut, g)][i, j] = [
                        float(np.mean(np.abs(predicted_g - measured))),
                        float(np.mean(np.abs(predicted_cut - measured))),
                        tau,
                        z,
                        base_tau,
                    ]
    report.seconds = time.perf_counter() - started
    return report
