"""The shipped meta-model (fit on every set, saved without pickle) and the ranking of the 576 configurations for a
new set."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance import __version__
from appliance.data.io import atomic_write, read_format_json
from appliance.errors import ConfigError, ModelFileError
from appliance.metalearning.base import (
    BASELINE,
    FORMAT_VERSION,
    HYPERPARAMETERS,
    META_FILE,
    MODEL_FILE,
    PREFIXES,
    TARGET,
    MetaBase,
)
from appliance.metalearning.evaluation import _check_fidelity_aware, _fit_groups, _resolve_fidelity
from appliance.metalearning.features import _FeatureBuilder, parse_variant
from appliance.metalearning.learners import (
    MODELS,
    _BoosterFile,
    _EnsembleFile,
    _ForestArrays,
    _predictor_from_json,
    _spec,
)
from appliance.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


class MetaModel:
    """A meta-model fitted on every set of a meta-base; saved as JSON only (no pickle, nothing executes on load).

    ``predict(rows)`` takes the raw input columns (:attr:`input_columns`: hyperparameters, set-level and engineered
    meta-features, as a mapping of name -> value or array, or a list of such dicts) and returns scores: higher is
    better (IoU, within-set standardised IoU or ranking score, depending on the model kind).

    A *fidelity-aware* model (:attr:`fidelity_aware`, e.g. ``rf_d7_curve``) was fitted on every learning-curve point
    with the training amount as an input: ``predict(rows, fidelity_mp=x)`` scores the configurations after ``x`` MP
    of training patches (a number, or one per row); without it, rows' own ``fidelity_mp`` or else :attr:`fidelity`
    (the largest training amount it was fitted on). Its scores are IoU standardised within a set over all the set's
    curve points, so scores at different training amounts compare. :attr:`fidelity_range` is the span of training
    amounts it has seen: beyond it, it extrapolates (a forest predicts the value of its last leaf).
    """

    def __init__(
        self,
        model: str,
        variant: str,
        builder: _FeatureBuilder,
        predictor: _ForestArrays | _BoosterFile | _EnsembleFile,
        *,
        fidelity: float,
        training_sets: list[str],
        seed: int,
        trained_rows: int,
        code_version: str = __version__,
        work_doubling_gain: float | None = None,
        score_correlation: float | None = None,
        fidelity_range: tuple[float, float] | None = None,
        living_runs: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.variant = variant
        self.builder = builder
        self.predictor = predictor
        self.fidelity = float(fidelity)
        self.training_sets = list(training_sets)
        self.seed = int(seed)
        self.trained_rows = int(trained_rows)
        self.code_version = code_version
        # what the budget-aware race needs to weigh a score against throughput (appliance.automl.race)
        self.work_doubling_gain = work_doubling_gain
        self.score_correlation = score_correlation
        low, high = (self.fidelity, self.fidelity) if fidelity_range is None else map(float, fidelity_range)
        self.fidelity_range = (low, high)
        self.living_runs = tuple(living_runs)  # the living meta-base's runs (``source``) it was trained on

    @property
    def fidelity_aware(self) -> bool:
        """Fitted on every curve point with the training amount as an input (``predict(..., fidelity_mp=x)``)."""
        return MODELS[self.model].fidelity_aware

    @property
    def label(self) -> str:
        """One line naming this model, e.g. for what ranked a run."""
        if self.fidelity_aware:
            low, high = self.fidelity_range
            amount = f"fidelity-aware, fitted on {low:.3g}-{high:.3g} MP, ranks at {self.fidelity:.3g} MP"
        else:
            amount = f"at {self.fidelity:g} MP"
        living = f", with {len(self.living_runs)} living run(s)" if self.living_runs else ""
        return f"{self.model}/{self.variant} ({amount}; {len(self.training_sets)} sets{living})"

    @property
    def feature_names(self) -> list[str]:
        return self.builder.feature_names

    @property
    def input_columns(self) -> list[str]:
        return self.builder.input_columns

    @classmethod
    def fit(
        cls,
        metabase: MetaBase,
        model: str = BASELINE[0],
        variant: str = BASELINE[1],
        seed: int = 0,
        fidelity: float | None = None,
    ) -> MetaModel:
        """Fit ``model`` on ``variant`` features of every set's rows at ``fidelity`` (all rows for ``+fid``).

        A fidelity-aware ``model`` gets ``+fid`` added to its variant and is fitted on every row; ``fidelity`` is then
        only the training amount it scores at when asked without one (default: the largest in the meta-base).
        """
        spec = _spec(model)
        if spec.name not in MODELS:
            raise ConfigError(f"only registered meta-models can be shipped, not {spec.name!r}")
        if spec.fidelity_aware:
            if "fid" not in parse_variant(variant):
                variant = f"{variant}+fid"
            if fidelity is not None and not fidelity > 0:
                raise ConfigError(f"fidelity must be a positive number of MP, not {fidelity!r}")
            fidelity = float(max(metabase.fidelities) if fidelity is None else fidelity)
        else:
            fidelity = _resolve_fidelity(metabase, fidelity)
        _check_fidelity_aware(spec, variant)
        all_fidelities = "fid" in parse_variant(variant)
        train = metabase if all_fidelities else metabase.subset(metabase.at_fidelity(fidelity))
        builder = _FeatureBuilder(variant).fit(train)
        estimator = spec.factory(seed).fit(
            builder.transform(train.columns), train.columns[TARGET], _fit_groups(spec, train, all_fidelities)
        )
        living = sorted({s for s in train.sources.tolist() if s})
        return cls(
            spec.name,
            variant,
            builder,
            estimator.portable(),
            fidelity=fidelity,
            training_sets=train.sets,
            seed=seed,
            trained_rows=train.n_rows,
            work_doubling_gain=work_doubling_gain(metabase),
            fidelity_range=(min(train.fidelities), max(train.fidelities)),
            living_runs=living,
        )

    def predict(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        fidelity_mp: float | Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores of ``rows`` (higher is better). ``fidelity_mp``: the training amount to score at, for a model that
        takes it as an input (a ``+fid`` variant); it replaces the rows' own ``fidelity_mp``. A model without that
        input predicts at :attr:`fidelity` whatever is given."""
        if not isinstance(rows, Mapping):
            rows = {name: np.array([row[name] for row in rows]) for name in rows[0]} if len(rows) else {}
            if not rows:
                return np.zeros(0)
        if "fidelity_mp" in self.input_columns:
            if fidelity_mp is not None:
                rows = {**rows, "fidelity_mp": np.asarray(fidelity_mp, dtype=float)}
            elif "fidelity_mp" not in rows:
                rows = {**rows, "fidelity_mp": self.fidelity}
        return self.predictor.predict(self.builder.transform(rows))

    def meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "description": MODELS[self.model].description,
            "model_file": MODEL_FILE,
            "model_format": self.predictor.FORMAT,
            "variant": self.variant,
            "feature_names": self.feature_names,
            "input_columns": self.input_columns,
            "features": self.builder.to_dict(),
            "fidelity_mp": self.fidelity,
            "training_sets": self.training_sets,
            "trained_rows": self.trained_rows,
            "seed": self.seed,
            "code_version": self.code_version,
            "work_doubling_gain": self.work_doubling_gain,
            "score_correlation": self.score_correlation,
            "fidelity_aware": self.fidelity_aware,
            "fidelity_range": list(self.fidelity_range),
            "living_runs": list(self.living_runs),
            "label": self.label,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``metamodel.json`` (forest arrays or xgboost JSON) and ``metamodel-meta.json`` atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.predictor, _BoosterFile):
            model_bytes = self.predictor.raw  # xgboost's own JSON model format, as save_model writes it
        else:
            model_bytes = json.dumps(self.predictor.to_json(), separators=(",", ":")).encode()
        atomic_write(directory / MODEL_FILE, lambda tmp: Path(tmp).write_bytes(model_bytes))
        meta = json.dumps(self.meta(), indent=1).encode()
        atomic_write(directory / META_FILE, lambda tmp: Path(tmp).write_bytes(meta))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> MetaModel:
        directory = Path(directory)
        meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
        remedy = "retrain it with `appliance metamodel train` or restore the shipped models/ folder"
        meta = read_format_json(meta_path, key="format_version", expected=FORMAT_VERSION, remedy=remedy)
        if not model_path.is_file():
            raise ModelFileError(f"{model_path} not found beside {meta_path}; {remedy}")
        if meta.get("model") not in MODELS:
            raise ModelFileError(f"{meta_path}: unknown model kind {meta.get('model')!r}")
        try:
            if meta["model_format"] == _BoosterFile.FORMAT:
                predictor: Any = _BoosterFile(model_path.read_bytes())
            else:
                predictor = _predictor_from_json(json.loads(model_path.read_text()))
            if predictor.FORMAT != meta["model_format"]:
                raise ValueError(f"model file holds {predictor.FORMAT}, meta says {meta['model_format']}")
            builder = _FeatureBuilder.from_dict(meta["features"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{directory}: meta-model files do not match ({exc})") from exc
        if builder.feature_names != meta["feature_names"]:
            raise ModelFileError(f"{meta_path}: feature_names do not match the saved feature state")
        return cls(
            meta["model"],
            meta["variant"],
            builder,
            predictor,
            fidelity=meta["fidelity_mp"],
            training_sets=meta["training_sets"],
            seed=meta["seed"],
            trained_rows=meta["trained_rows"],
            code_version=meta["code_version"],
            work_doubling_gain=meta.get("work_doubling_gain"),
            score_correlation=meta.get("score_correlation"),
            fidelity_range=meta.get("fidelity_range"),  # absent in files written before fidelity-aware models
            living_runs=meta.get("living_runs", ()),
        )


def work_doubling_gain(metabase: MetaBase) -> float | None:
    """How much twice the training work raises validation IoU, in within-set standard deviations of IoU.

    For every run with curve points at the two largest fidelities F₁ < F₂ of the meta-base: the difference of its
    IoU at F₂ and F₁, both standardised over all rows of its set, divided by log₂(F₂ / F₁); the mean over runs.
    None when the meta-base has a single fidelity. On the shipped meta-base (1 → 2 MP): 0.36.
    """
    fidelities = metabase.fidelities
    if len(fidelities) < 2:
        return None
    low, high = fidelities[-2], fidelities[-1]
    columns = metabase.columns
    iou = np.asarray(columns[TARGET], dtype=float)
    sets = np.asarray(columns["set"])
    fidelity = np.asarray(columns["fidelity_mp"], dtype=float)
    configs = np.asarray(columns["config_id"])
    gains = []
    for name in np.unique(sets):
        in_set = sets == name
        spread = iou[in_set].std()
        if not spread > 0:
            continue
        z = (iou - iou[in_set].mean()) / spread
        at_low = {c: v for c, v, keep in zip(configs, z, in_set & (fidelity == low), strict=True) if keep}
        at_high = {c: v for c, v, keep in zip(configs, z, in_set & (fidelity == high), strict=True) if keep}
        gains += [at_high[c] - at_low[c] for c in at_high.keys() & at_low.keys()]
    return float(np.mean(gains) / math.log2(high / low)) if gains else None


def rank_configurations(
    model: MetaModel,
    set_features: Mapping[str, float],
    configurations: Iterable[PipelineConfig] | None = None,
    fidelity: float | Sequence[float] | None = None,
) -> list[tuple[PipelineConfig, float]]:
    """Score every configuration (default: the 576 of the search space) for a set described by ``set_features``
    (its ``hc_*``, ``user_*`` and ``opt_*`` values; ``eng_*`` are computed per configuration) and return
    ``(configuration, score)`` best first (ties keep the configurations' order). ``fidelity``: the training amount
    in MP to score at, one for all or one per configuration (a fidelity-aware model; others score at their own)."""
    if configurations is None:
        from appliance.automl.search_space import search_space

        configurations = search_space()
    configurations = list(configurations)
    if not configurations:
        return []
    columns = configuration_columns(model, set_features, configurations)
    if fidelity is None or np.isscalar(fidelity):
        columns["fidelity_mp"] = float(model.fidelity if fidelity is None else fidelity)
    else:
        columns["fidelity_mp"] = np.asarray(fidelity, dtype=float)
        if columns["fidelity_mp"].shape != (len(configurations),):
            raise ValueError(f"{len(columns['fidelity_mp'])} training amounts for {len(configurations)} configurations")
    scores = model.predict(columns)
    order = np.argsort(-scores, kind="stable")
    return [(configurations[i], float(scores[i])) for i in order]


def configuration_columns(
    model: MetaModel, set_features: Mapping[str, float], configurations: Sequence[PipelineConfig]
) -> dict[str, Any]:
    """The input columns ``model`` needs for ``configurations`` on a set described by ``set_features``, without the
    training amount (``fidelity_mp``): hyperparameters, engineered ``eng_*`` per configuration, the set's own values."""
    from appliance.automl.metafeatures import engineered_features

    columns: dict[str, Any] = {
        name: np.array([getattr(c, name) for c in configurations], dtype=object if name == "encoder" else float)
        for name in HYPERPARAMETERS
    }
    needed = [name for name in model.input_columns if name != "fidelity_mp"]  # the caller's to give
    eng_needed = [name for name in needed if name.startswith(PREFIXES["eng"])]
    if eng_needed:
        missing = [n for n in ("hc_mean_shape", "hc_images", "hc_classes") if n not in set_features]
        if missing:
            raise ConfigError(f"set features lack {', '.join(missing)}, needed for the engineered meta-features")
        per_config = [engineered_features(set_features, config) for config in configurations]
        engineered = {name: np.array([values[name] for values in per_config]) for name in per_config[0]}
        unknown = [name for name in eng_needed if name not in engineered]
        if unknown:
            raise ConfigError(
                f"the meta-model uses engineered feature(s) this code cannot compute: {', '.join(unknown)}"
            )
        columns.update(engineered)
    missing = [n for n in needed if n not in columns and n not in set_features]
    if missing:
        raise ConfigError(f"set features lack {', '.join(missing)}, which the meta-model ({model.variant}) needs")
    for name in needed:
        if name not in columns:
            value = set_features[name]
            columns[name] = np.nan if value is None else float(value)
    return columns
