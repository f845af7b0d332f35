"""The meta-model: predicts which of the 576 configurations do best on a new set (paper 3.6, 5.4; thesis 4.7).

One module, four parts:

1. :func:`load_metabase` reads the meta-base CSV (one row per set x configuration x fidelity) into a
   :class:`MetaBase` and says which file and which columns are wrong when it cannot.
2. Feature-set *variants* name which meta-features go into the model, as ``+``-joined groups:
   ``hp`` (the seven hyperparameters, encoder as 0/1 for resnet50; always included), ``hc`` (every ``hc_*`` column),
   ``eng`` (``eng_*``), ``user`` (``user_*``), ``opt_raw`` (the raw ``opt_*`` radiomics means), ``opt_pca`` (4 principal
   components of the z-scored set-level ``opt_*`` vectors), ``opt_cos`` (cosine similarity to each training set),
   ``opt_pca_x`` / ``opt_cos_x`` (the thesis' "engineered radiomics": each component or similarity multiplied by
   learning rate x backbone factor (0.5 resnet18, 2 resnet50) x classes) and ``fid`` (train on every fidelity of the
   meta-base with log(fidelity_mp) as a feature). ``all`` = ``hp+hc+eng+user+opt_pca+opt_cos+opt_pca_x``.
   The optical reductions are fitted on the training sets only (inside each leave-one-dataset-out fold).
3. Models (:data:`MODELS`): ``rf_d7`` (the paper's random forest, max depth 7, on raw IoU: the baseline),
   ``rf_d7_setz`` (the same forest on IoU standardised within each set: it spends no splits on predicting a set's mean
   IoU, which cannot help ranking inside one set), ``xgb_reg`` / ``xgb_reg_setz`` (gradient-boosted trees, same two
   targets), ``xgb_rank`` (LambdaMART-style ``rank:pairwise`` = RankNet loss, as in the thesis, grouped by set on the
   raw IoU: pairwise needs no integer labels), ``xgb_ndcg`` (``rank:ndcg`` LambdaMART on within-set decile grades
   0..9, the thesis' "binned IoU") and ``ens`` (mean of the standardised scores of ``rf_d7_setz`` and ``xgb_rank``).
4. :func:`evaluate` runs leave-one-dataset-out over several seeds and returns an :class:`EvaluationTable`;
   :class:`MetaModel` is the shipped model (fit on all sets, saved without pickle) and :func:`rank_configurations`
   ranks all 576 configurations for a new set.

Metrics per held-out set (thesis 4.7.1): z = (mean true IoU of the predicted top 10 % - mean of all) / std of all
(population std; top 10 % = ceil(0.1 n), at least 1), the oracle z of the true top 10 %, Pearson r, Kendall tau,
RMSE (only for models that predict IoU itself), diff IoU = mean of the true top 10 % - mean of the predicted top 10 %,
and regret = best true IoU - true IoU of the predicted best. They are averaged over held-out sets per seed; the table
shows mean +- std over seeds.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from appliance import __version__
from appliance.automl.optical import PCA_COMPONENTS, OpticalReduction
from appliance.data.io import atomic_write, read_format_json
from appliance.errors import ConfigError, ModelFileError
from appliance.pipeline.config import ENCODERS, PipelineConfig

log = logging.getLogger(__name__)

HYPERPARAMETERS = ("patch_size", "batch_size", "learning_rate", "encoder", "flip", "brightness_blur", "grid_distortion")
AUGMENTATIONS = ("flip", "brightness_blur", "grid_distortion")
REQUIRED_COLUMNS = ("set", "config_id", *HYPERPARAMETERS, "fidelity_mp", "val_iou")
TEXT_COLUMNS = frozenset({"set", "config_id", "encoder"})
PREFIXES = {"hc": "hc_", "eng": "eng_", "user": "user_", "opt": "opt_"}
TARGET = "val_iou"
TOP_FRACTION = 0.1
BACKBONE_FACTOR = {"resnet18": 0.5, "resnet50": 2.0}

GROUPS = ("hp", "hc", "eng", "user", "opt_raw", "opt_pca", "opt_cos", "opt_pca_x", "opt_cos_x", "fid")
VARIANT_ALIASES = {"all": "hp+hc+eng+user+opt_pca+opt_cos+opt_pca_x"}
DEFAULT_VARIANTS = (
    "hp+hc+eng",
    "hp+hc+eng+user",
    "hp+hc+eng+opt_pca",
    "hp+hc+eng+opt_cos",
    "hp+hc+eng+opt_pca_x",
    "all",
)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
BASELINE = ("rf_d7", "hp+hc+eng")
"""The paper's best meta-model: random forest, max depth 7, on hyperparameters + handcrafted + engineered features."""

MODEL_FILE = "metamodel.json"
META_FILE = "metamodel-meta.json"
FORMAT_VERSION = 1
N_JOBS = 2  # random-forest threads (trees are built in parallel; results do not depend on it)
XGB_THREADS = 1  # xgboost on a few hundred rows is fastest single-threaded; OpenMP threads only contend

METRICS = ("z", "pearson", "kendall", "rmse", "diff_iou", "regret")


class MetaBaseError(ConfigError):
    """The meta-base file cannot be used: it is missing, empty, lacks columns or holds values that are not numbers."""


# ----------------------------------------------------------------------------------------------------------------------
# 1. The meta-base


@dataclass
class MetaBase:
    """The meta-base as columns: ``columns[name]`` is a float array, or a ``str`` object array for text columns.

    ``order`` keeps the file's column order (feature groups are taken in that order, so that models are deterministic).
    Rows whose ``val_iou`` is not a finite number are dropped on load and counted in ``dropped_rows``.
    """

    columns: dict[str, np.ndarray]
    order: list[str]
    source: str = "<memory>"
    dropped_rows: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.columns["set"])

    @property
    def sets(self) -> list[str]:
        return sorted(set(self.columns["set"].tolist()))

    @property
    def fidelities(self) -> list[float]:
        return sorted(set(self.columns["fidelity_mp"].tolist()))

    def prefixed(self, prefix: str) -> list[str]:
        """Names of the columns that start with ``prefix``, in file order."""
        return [name for name in self.order if name.startswith(prefix)]

    def subset(self, mask: np.ndarray) -> MetaBase:
        return MetaBase({k: v[mask] for k, v in self.columns.items()}, list(self.order), self.source)

    def at_fidelity(self, fidelity: float) -> np.ndarray:
        """Boolean mask of the rows measured at ``fidelity`` megapixels."""
        return np.isclose(self.columns["fidelity_mp"], fidelity, rtol=1e-6, atol=1e-9)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], source: str = "<memory>") -> MetaBase:
        """Build and validate a meta-base from dict rows (what :class:`csv.DictReader` yields)."""
        if not rows:
            raise MetaBaseError(f"{source}: the meta-base has no rows")
        order = list(rows[0].keys())
        missing = [name for name in REQUIRED_COLUMNS if name not in order]
        if missing:
            raise MetaBaseError(
                f"{source}: the meta-base lacks required column(s) {', '.join(missing)}; "
                f"it needs {', '.join(REQUIRED_COLUMNS)} (rebuild it with the meta-base builder)"
            )
        columns: dict[str, np.ndarray] = {}
        for name in order:
            raw = [row.get(name) for row in rows]
            if name in TEXT_COLUMNS:
                columns[name] = np.array(["" if v is None else str(v).strip() for v in raw], dtype=object)
                continue
            values, bad = _parse_numbers(raw)
            if bad is not None:
                if name in REQUIRED_COLUMNS or any(name.startswith(p) for p in PREFIXES.values()):
                    raise MetaBaseError(
                        f"{source}: column {name!r} row {bad + 2} holds {raw[bad]!r}, which is not a number"
                    )
                columns[name] = np.array(["" if v is None else str(v) for v in raw], dtype=object)
            else:
                columns[name] = values
        encoders = set(columns["encoder"].tolist())
        if not encoders <= set(ENCODERS):
            raise MetaBaseError(
                f"{source}: column 'encoder' holds {', '.join(sorted(encoders - set(ENCODERS)))}; "
                f"allowed: {', '.join(ENCODERS)}"
            )
        for name in ("set", "config_id"):
            if any(v == "" for v in columns[name].tolist()):
                raise MetaBaseError(f"{source}: column {name!r} has empty values")
        for name in ("patch_size", "batch_size", "learning_rate", "fidelity_mp"):
            if not np.all(np.isfinite(columns[name])):
                raise MetaBaseError(f"{source}: column {name!r} has empty or non-finite values")
        keep = np.isfinite(columns[TARGET])
        base = cls(columns, order, source)
        if not keep.all():
            base = base.subset(keep)
            base.dropped_rows = int((~keep).sum())
            log.warning("%s: dropped %d row(s) without a finite %s", source, base.dropped_rows, TARGET)
        if base.n_rows == 0:
            raise MetaBaseError(f"{source}: no row has a finite {TARGET}")
        return base


def _parse_numbers(raw: Sequence[Any]) -> tuple[np.ndarray, int | None]:
    """Floats for a column ('' / nan / none -> NaN, true/false -> 1/0); the index of the first bad value, or None."""
    out = np.empty(len(raw), dtype=float)
    for i, value in enumerate(raw):
        if value is None:
            out[i] = np.nan
            continue
        if isinstance(value, bool):
            out[i] = float(value)
            continue
        if isinstance(value, int | float | np.number):
            out[i] = float(value)
            continue
        text = str(value).strip().lower()
        if text in ("", "nan", "none", "null", "na"):
            out[i] = np.nan
        elif text in ("true", "false"):
            out[i] = 1.0 if text == "true" else 0.0
        else:
            try:
                out[i] = float(text)
            except ValueError:
                return out, i
    return out, None


def load_metabase(path: str | Path) -> MetaBase:
    """Read the meta-base CSV at ``path``; raises :class:`MetaBaseError` naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise MetaBaseError(f"{path}: meta-base file not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise MetaBaseError(f"{path}: the meta-base file is empty (no header line)")
        header = list(reader.fieldnames)
        rows = list(reader)
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:  # checked on the header, so that an empty-but-wrong file says the same
        raise MetaBaseError(
            f"{path}: the meta-base lacks required column(s) {', '.join(missing)}; "
            f"it needs {', '.join(REQUIRED_COLUMNS)} (rebuild it with the meta-base builder)"
        )
    return MetaBase.from_rows(rows, source=str(path))


# ----------------------------------------------------------------------------------------------------------------------
# 2. Features


def parse_variant(name: str) -> tuple[str, ...]:
    """The feature groups of a variant name, in canonical order; ``hp`` is always included.

    >>> parse_variant("hc+eng")
    ('hp', 'hc', 'eng')
    """
    name = VARIANT_ALIASES.get(name, name)
    parts = [VARIANT_ALIASES.get(p.strip(), p.strip()) for p in name.split("+") if p.strip()]
    parts = [q for p in parts for q in p.split("+")]
    unknown = [p for p in parts if p not in GROUPS]
    if unknown:
        raise ConfigError(
            f"unknown feature group(s) {', '.join(unknown)} in variant {name!r}; "
            f"groups are {', '.join(GROUPS)} (or 'all'), joined with '+'"
        )
    chosen = {"hp", *parts}
    return tuple(g for g in GROUPS if g in chosen)


def _encoder_flag(values: np.ndarray) -> np.ndarray:
    """1.0 for resnet50, 0.0 for resnet18; numeric input is taken as that flag already."""
    values = np.asarray(values)
    if values.dtype.kind in "fiub":
        return values.astype(float)
    flags = np.array([ENCODERS.index(str(v)) for v in values.tolist()], dtype=float)
    return flags


def _backbone_factor(values) -> np.ndarray:
    """0.5 for resnet18, 2 for resnet50 (thesis 4.6.4)."""
    return np.where(_encoder_flag(np.asarray(values)) > 0.5, BACKBONE_FACTOR["resnet50"], BACKBONE_FACTOR["resnet18"])


class _FeatureBuilder:
    """Turns meta-base columns into the design matrix of one variant. ``fit`` sees training rows only: it fixes the
    column lists, fits the optical reduction on the training sets and the per-column medians that fill gaps."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.groups = parse_variant(variant)
        self.hc: list[str] = []
        self.eng: list[str] = []
        self.user: list[str] = []
        self.opt: list[str] = []
        self.optical: OpticalReduction | None = None
        self.medians = np.zeros(0)

    @property
    def uses_optical(self) -> bool:
        return any(g in self.groups for g in ("opt_pca", "opt_cos", "opt_pca_x", "opt_cos_x"))

    @property
    def needs_classes(self) -> bool:
        return any(g in self.groups for g in ("opt_pca_x", "opt_cos_x"))

    @property
    def input_columns(self) -> list[str]:
        """Raw columns ``transform`` reads."""
        names = list(HYPERPARAMETERS)
        if "fid" in self.groups:
            names.append("fidelity_mp")
        names += self.hc + self.eng + self.user + self.opt
        if self.needs_classes and "hc_classes" not in names:
            names.append("hc_classes")
        return names

    @property
    def feature_names(self) -> list[str]:
        names = list(HYPERPARAMETERS)
        if "fid" in self.groups:
            names.append("log_fidelity_mp")
        names += self.hc + self.eng + self.user
        if "opt_raw" in self.groups:
            names += self.opt
        sets = self.optical.set_names if self.optical else []
        pcs = [f"pca_opt_{i + 1}" for i in range(PCA_COMPONENTS)]
        cos = [f"cos_opt_{s}" for s in sets]
        if "opt_pca" in self.groups:
            names += pcs
        if "opt_cos" in self.groups:
            names += cos
        if "opt_pca_x" in self.groups:
            names += [f"{n}_x" for n in pcs]
        if "opt_cos_x" in self.groups:
            names += [f"{n}_x" for n in cos]
        return names

    def fit(self, base: MetaBase) -> _FeatureBuilder:
        for group in ("hc", "eng", "user"):
            if group in self.groups:
                names = base.prefixed(PREFIXES[group])
                if not names:
                    raise MetaBaseError(f"{base.source}: variant {self.variant!r} needs {PREFIXES[group]}* columns")
                setattr(self, group, names)
        if "opt_raw" in self.groups or self.uses_optical:
            self.opt = base.prefixed(PREFIXES["opt"])
            if not self.opt:
                raise MetaBaseError(f"{base.source}: variant {self.variant!r} needs opt_* (radiomics) columns")
        if self.needs_classes and "hc_classes" not in base.columns:
            raise MetaBaseError(f"{base.source}: variant {self.variant!r} needs the hc_classes column")
        if self.uses_optical:
            sets = base.columns["set"]
            raw = np.column_stack([base.columns[c] for c in self.opt])
            vectors = {}
            for name in sorted(set(sets.tolist())):
                with np.errstate(all="ignore"):
                    vectors[name] = np.nanmean(raw[sets == name], axis=0)
            self.optical = OpticalReduction().fit(vectors)
        matrix = self._raw_matrix(base.columns)
        with np.errstate(all="ignore"):
            medians = np.nanmedian(matrix, axis=0) if len(matrix) else np.zeros(matrix.shape[1])
        self.medians = np.where(np.isfinite(medians), medians, 0.0)
        return self

    def _raw_matrix(self, columns: Mapping[str, Any]) -> np.ndarray:
        missing = [name for name in self.input_columns if name not in columns]
        if missing:
            raise ConfigError(f"meta-model input lacks column(s) {', '.join(missing)}")
        n = len(np.asarray(columns["patch_size"]))

        def col(name: str) -> np.ndarray:
            values = np.asarray(columns[name])
            values = np.broadcast_to(values, (n,)) if values.ndim == 0 else values
            return _encoder_flag(values) if name == "encoder" else values.astype(float)

        parts = [col(name) for name in HYPERPARAMETERS]
        if "fid" in self.groups:
            parts.append(np.log(np.maximum(col("fidelity_mp"), 1e-12)))
        parts += [col(name) for name in self.hc + self.eng + self.user]
        if "opt_raw" in self.groups:
            parts += [col(name) for name in self.opt]
        blocks = [np.column_stack(parts)]
        if self.uses_optical:
            assert self.optical is not None
            raw = np.column_stack([col(name) for name in self.opt]) if self.opt else np.zeros((n, 0))
            pcs = self.optical.pca(raw)
            cos = self.optical.cosine(raw)
            factor = None
            if self.needs_classes:
                factor = col("learning_rate") * _backbone_factor(col("encoder")) * col("hc_classes")
            if "opt_pca" in self.groups:
                blocks.append(pcs)
            if "opt_cos" in self.groups:
                blocks.append(cos)
            if "opt_pca_x" in self.groups:
                blocks.append(pcs * factor[:, None])
            if "opt_cos_x" in self.groups:
                blocks.append(cos * factor[:, None])
        return np.hstack(blocks)

    def transform(self, columns: Mapping[str, Any]) -> np.ndarray:
        matrix = self._raw_matrix(columns)
        return np.where(np.isfinite(matrix), matrix, self.medians)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "hc": self.hc,
            "eng": self.eng,
            "user": self.user,
            "opt": self.opt,
            "optical": self.optical.to_dict() if self.optical else None,
            "medians": self.medians.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _FeatureBuilder:
        self = cls(data["variant"])
        self.hc, self.eng, self.user, self.opt = (list(data[k]) for k in ("hc", "eng", "user", "opt"))
        self.optical = OpticalReduction.from_dict(data["optical"]) if data.get("optical") else None
        self.medians = np.asarray(data["medians"], dtype=float)
        return self


# ----------------------------------------------------------------------------------------------------------------------
# 3. Models


def _set_standardised(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(y, dtype=float)
    for g in np.unique(groups):
        mask = groups == g
        std = y[mask].std()
        out[mask] = (y[mask] - y[mask].mean()) / (std if std > 1e-12 else 1.0)
    return out


def _set_grades(y: np.ndarray, groups: np.ndarray, bins: int = 10) -> np.ndarray:
    """Within-group quantile grades 0..bins-1 (thesis: ten bins, worst 10 % lowest); ties share the lower grade."""
    out = np.empty(len(y), dtype=float)
    for g in np.unique(groups):
        mask = groups == g
        ranks = stats.rankdata(y[mask], method="min") - 1
        out[mask] = np.minimum(bins - 1, np.floor(ranks * bins / mask.sum()))
    return out


class _Forest:
    """sklearn random forest; exported to plain tree arrays (:class:`_ForestArrays`) for saving."""

    def __init__(self, seed: int, *, target: str, max_depth: int = 7, n_estimators: int = 200) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.target = target
        self.model = RandomForestRegressor(
            n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=N_JOBS
        )

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> _Forest:
        self.model.fit(x, _set_standardised(y, groups) if self.target == "set_z" else y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.n_jobs = 1  # threads would sum the trees in a varying order: not bit-for-bit reproducible
        return self.model.predict(x)

    def portable(self) -> _ForestArrays:
        return _ForestArrays.from_sklearn(self.model)


class _ForestArrays:
    """A regression forest as plain arrays; ``predict`` reproduces sklearn's ``predict`` exactly (float32 inputs
    compared with float64 thresholds, trees summed in order, then divided by their number)."""

    FORMAT = "appliance-forest-v1"

    def __init__(self, trees: list[dict[str, np.ndarray]]) -> None:
        self.trees = trees

    @classmethod
    def from_sklearn(cls, forest) -> _ForestArrays:
        trees = []
        for estimator in forest.estimators_:
            tree = estimator.tree_
            if tree.value.shape[1:] != (1, 1):
                raise ModelFileError("only single-output regression forests can be exported")
            trees.append(
                {
                    "children_left": tree.children_left.astype(np.int64),
                    "children_right": tree.children_right.astype(np.int64),
                    "feature": tree.feature.astype(np.int64),
                    "threshold": tree.threshold.astype(np.float64),
                    "value": tree.value[:, 0, 0].astype(np.float64),
                }
            )
        return cls(trees)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x32 = np.asarray(x, dtype=np.float32)
        rows = np.arange(len(x32))
        total = np.zeros(len(x32), dtype=np.float64)
        for tree in self.trees:
            left, right, feature, threshold = (
                tree["children_left"],
                tree["children_right"],
                tree["feature"],
                tree["threshold"],
            )
            node = np.zeros(len(x32), dtype=np.int64)
            while True:
                inner = left[node] != -1
                if not inner.any():
                    break
                go_left = x32[rows, np.where(inner, feature[node], 0)] <= threshold[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            total += tree["value"][node]
        return total / len(self.trees)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "trees": [{k: v.tolist() for k, v in tree.items()} for tree in self.trees]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _ForestArrays:
        if data.get("format") != cls.FORMAT:
            raise ModelFileError(f"forest file format is {data.get('format')!r}, expected {cls.FORMAT!r}")
        int_keys = ("children_left", "children_right", "feature")
        trees = [
            {k: np.asarray(tree[k], dtype=np.int64 if k in int_keys else np.float64) for k in (*int_keys, "threshold")}
            | {"value": np.asarray(tree["value"], dtype=np.float64)}
            for tree in data["trees"]
        ]
        return cls(trees)


class _Boosted:
    """xgboost regressor or ranker; saved with xgboost's own JSON format (no code runs on load)."""

    def __init__(self, seed: int, *, kind: str, n_estimators: int = 150, max_depth: int = 4, eta: float = 0.05):
        import xgboost as xgb

        self.kind = kind
        common = {
            "n_estimators": n_estimators,
            "max_depth": max_depth,
            "learning_rate": eta,
            "n_jobs": XGB_THREADS,
            "tree_method": "hist",
            "random_state": seed,
        }
        if kind in ("reg", "reg_setz"):
            self.model = xgb.XGBRegressor(objective="reg:squarederror", **common)
        elif kind == "pairwise":
            self.model = xgb.XGBRanker(
                objective="rank:pairwise", lambdarank_pair_method="mean", lambdarank_num_pair_per_sample=8, **common
            )
        elif kind == "ndcg":
            self.model = xgb.XGBRanker(
                objective="rank:ndcg", lambdarank_pair_method="mean", lambdarank_num_pair_per_sample=8, **common
            )
        else:
            raise ValueError(kind)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> _Boosted:
        if self.kind == "reg":
            self.model.fit(x, y)
            return self
        if self.kind == "reg_setz":
            self.model.fit(x, _set_standardised(y, groups))
            return self
        names, qid = np.unique(groups, return_inverse=True)
        order = np.argsort(qid, kind="stable")
        labels = _set_grades(y, groups) if self.kind == "ndcg" else y
        self.model.fit(x[order], labels[order], qid=qid[order])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x), dtype=float)

    def portable(self) -> _BoosterFile:
        return _BoosterFile(bytes(self.model.get_booster().save_raw("json")))


class _BoosterFile:
    """An xgboost booster held as its JSON model text (what is saved), predicting with a booster loaded from it."""

    FORMAT = "xgboost-json"

    def __init__(self, raw_json: bytes) -> None:
        import xgboost as xgb

        self.raw = bytes(raw_json)
        self.booster = xgb.Booster(params={"nthread": XGB_THREADS})
        self.booster.load_model(bytearray(self.raw))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(np.asarray(x, dtype=np.float32)), dtype=float)


class _Ensemble:
    """Mean of member models' scores, each standardised by the mean and std of its scores on the training rows
    (a fixed affine map, so a configuration's score does not depend on which others are scored with it)."""

    def __init__(self, seed: int, *, members: Sequence[str]) -> None:
        self.seed = seed
        self.member_names = tuple(members)
        self.members: list[Any] = []
        self.shift = np.zeros(0)
        self.scale = np.ones(0)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> _Ensemble:
        fitted = [MODELS[name].factory(self.seed).fit(x, y, groups) for name in self.member_names]
        return self.compose(fitted, x)

    def compose(self, fitted: Sequence[Any], x_train: np.ndarray) -> _Ensemble:
        self.members = list(fitted)
        scores = np.array([member.predict(x_train) for member in self.members])
        self.shift = scores.mean(axis=1)
        scale = scores.std(axis=1)
        self.scale = np.where(scale > 1e-12, scale, 1.0)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _EnsembleFile.combine([m.predict(x) for m in self.members], self.shift, self.scale)

    def portable(self) -> _EnsembleFile:
        return _EnsembleFile([m.portable() for m in self.members], self.shift, self.scale)


class _EnsembleFile:
    FORMAT = "appliance-ensemble-v1"

    def __init__(self, members: list[Any], shift: np.ndarray, scale: np.ndarray) -> None:
        self.members, self.shift, self.scale = members, np.asarray(shift, float), np.asarray(scale, float)

    @staticmethod
    def combine(scores: Sequence[np.ndarray], shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
        total = np.zeros(len(scores[0]))
        for score, a, b in zip(scores, shift, scale, strict=True):
            total += (score - a) / b
        return total / len(scores)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.combine([m.predict(x) for m in self.members], self.shift, self.scale)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "shift": self.shift.tolist(),
            "scale": self.scale.tolist(),
            "members": [_predictor_json(member) for member in self.members],
        }


def _predictor_json(predictor: Any) -> dict[str, Any]:
    """A predictor as JSON data; an xgboost member keeps its model text verbatim (exact round trip)."""
    if isinstance(predictor, _BoosterFile):
        return {"format": _BoosterFile.FORMAT, "model": predictor.raw.decode()}
    return predictor.to_json()


def _predictor_from_json(data: Mapping[str, Any]) -> Any:
    kind = data.get("format")
    if kind == _ForestArrays.FORMAT:
        return _ForestArrays.from_json(data)
    if kind == _BoosterFile.FORMAT:
        return _BoosterFile(data["model"].encode())
    if kind == _EnsembleFile.FORMAT:
        members = [_predictor_from_json(member) for member in data["members"]]
        return _EnsembleFile(members, np.asarray(data["shift"]), np.asarray(data["scale"]))
    raise ModelFileError(f"unknown meta-model predictor format {kind!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A meta-model kind. ``factory(seed)`` gives an object with ``fit(x, y, groups)`` and ``predict(x)``.

    ``pointwise``: it predicts IoU itself (RMSE is reported). ``deterministic``: the seed does not change it
    (evaluation then fits it once per fold and repeats the result for every seed). ``members``: registered models
    an ensemble averages (evaluation reuses their fits).
    """

    name: str
    factory: Callable[[int], Any]
    pointwise: bool
    deterministic: bool
    description: str = ""
    members: tuple[str, ...] = ()


RF_TREES = 100
XGB_TREES = 150

MODELS: dict[str, ModelSpec] = {}


def _register(spec: ModelSpec) -> None:
    MODELS[spec.name] = spec


_register(
    ModelSpec(
        "rf_d7",
        lambda seed: _Forest(seed, target="iou", n_estimators=RF_TREES),
        pointwise=True,
        deterministic=False,
        description=f"random forest, max depth 7, {RF_TREES} trees, raw IoU (the paper's best)",
    )
)
_register(
    ModelSpec(
        "rf_d7_setz",
        lambda seed: _Forest(seed, target="set_z", n_estimators=RF_TREES),
        pointwise=False,
        deterministic=False,
        description=f"random forest, max depth 7, {RF_TREES} trees, IoU standardised within each set",
    )
)
_register(
    ModelSpec(
        "xgb_reg",
        lambda seed: _Boosted(seed, kind="reg", n_estimators=XGB_TREES),
        pointwise=True,
        deterministic=True,
        description=f"XGBRegressor, {XGB_TREES} trees, depth 4, eta 0.05, raw IoU",
    )
)
_register(
    ModelSpec(
        "xgb_reg_setz",
        lambda seed: _Boosted(seed, kind="reg_setz", n_estimators=XGB_TREES),
        pointwise=False,
        deterministic=True,
        description=f"XGBRegressor, {XGB_TREES} trees, depth 4, eta 0.05, IoU standardised within each set",
    )
)
# xgboost's "mean" pair sampling does not follow random_state: both rankers give the same model for every seed.
_register(
    ModelSpec(
        "xgb_rank",
        lambda seed: _Boosted(seed, kind="pairwise", n_estimators=XGB_TREES),
        pointwise=False,
        deterministic=True,
        description=f"XGBRanker rank:pairwise (RankNet loss, as the thesis' LambdaMART), raw IoU, per set, "
        f"{XGB_TREES} trees",
    )
)
_register(
    ModelSpec(
        "xgb_ndcg",
        lambda seed: _Boosted(seed, kind="ndcg", n_estimators=XGB_TREES),
        pointwise=False,
        deterministic=True,
        description=f"XGBRanker rank:ndcg (LambdaMART), within-set decile grades 0..9, per set, {XGB_TREES} trees",
    )
)
_register(
    ModelSpec(
        "ens",
        lambda seed: _Ensemble(seed, members=("rf_d7_setz", "xgb_rank")),
        pointwise=False,
        deterministic=False,
        description="mean of standardised rf_d7_setz and xgb_rank scores",
        members=("rf_d7_setz", "xgb_rank"),
    )
)
DEFAULT_MODELS = ("rf_d7", "rf_d7_setz", "xgb_reg", "xgb_rank", "xgb_ndcg", "ens")


def _spec(model: str | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if model not in MODELS:
        raise ConfigError(f"unknown meta-model {model!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model]


# ----------------------------------------------------------------------------------------------------------------------
# 4. Metrics and leave-one-dataset-out evaluation


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


def _resolve_fidelity(base: MetaBase, fidelity: float | None) -> float:
    if fidelity is None:
        return float(max(base.fidelities))
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

    def __init__(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, first_seed: int) -> None:
        self.x, self.y, self.groups, self.first_seed = x, y, groups, first_seed
        self.fitted: dict[tuple[str, int], Any] = {}

    def get(self, spec: ModelSpec, seed: int) -> Any:
        key = (spec.name, self.first_seed if spec.deterministic else seed)
        if key not in self.fitted:
            if spec.members:
                members = [self.get(MODELS[name], seed) for name in spec.members]
                self.fitted[key] = spec.factory(key[1]).compose(members, self.x)
            else:
                self.fitted[key] = spec.factory(key[1]).fit(self.x, self.y, self.groups)
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

    For each held-out set the models train on the other sets' rows at ``fidelity`` (default: the largest in the
    meta-base; with ``use_all_fidelities`` or a ``+fid`` variant: on all their rows, with log(fidelity) as a feature)
    and are scored on the held-out set's rows at ``fidelity``. ``variants=None`` takes :data:`DEFAULT_VARIANTS` that the
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
            fits = _FoldFits(x_train, y_train, groups, first_seed=seeds[0])
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


# ----------------------------------------------------------------------------------------------------------------------
# 5. The shipped meta-model


class MetaModel:
    """A meta-model fitted on every set of a meta-base; saved as JSON only (no pickle, nothing executes on load).

    ``predict(rows)`` takes the raw input columns (:attr:`input_columns`: hyperparameters, set-level and engineered
    meta-features, as a mapping of name -> value or array, or a list of such dicts) and returns scores: higher is
    better (IoU, within-set standardised IoU or ranking score, depending on the model kind).
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
        """Fit ``model`` on ``variant`` features of every set's rows at ``fidelity`` (all rows for ``+fid``)."""
        spec = _spec(model)
        if spec.name not in MODELS:
            raise ConfigError(f"only registered meta-models can be shipped, not {spec.name!r}")
        fidelity = _resolve_fidelity(metabase, fidelity)
        all_fidelities = "fid" in parse_variant(variant)
        train = metabase if all_fidelities else metabase.subset(metabase.at_fidelity(fidelity))
        builder = _FeatureBuilder(variant).fit(train)
        estimator = spec.factory(seed).fit(
            builder.transform(train.columns), train.columns[TARGET], _groups(train, all_fidelities)
        )
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
        )

    def predict(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not isinstance(rows, Mapping):
            rows = {name: np.array([row[name] for row in rows]) for name in rows[0]} if len(rows) else {}
            if not rows:
                return np.zeros(0)
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


# ----------------------------------------------------------------------------------------------------------------------
# 6. Ranking the search space for a new set


def rank_configurations(
    model: MetaModel,
    set_features: Mapping[str, float],
    configurations: Iterable[PipelineConfig] | None = None,
    fidelity: float | None = None,
) -> list[tuple[PipelineConfig, float]]:
    """Score every configuration (default: the 576 of the search space) for a set described by ``set_features``
    (its ``hc_*``, ``user_*`` and ``opt_*`` values; ``eng_*`` are computed per configuration) and return
    ``(configuration, score)`` best first (ties keep the configurations' order)."""
    from appliance.automl.metafeatures import engineered_features

    if configurations is None:
        from appliance.automl.search_space import search_space

        configurations = search_space()
    configurations = list(configurations)
    if not configurations:
        return []
    columns: dict[str, Any] = {
        name: np.array([getattr(c, name) for c in configurations], dtype=object if name == "encoder" else float)
        for name in HYPERPARAMETERS
    }
    columns["fidelity_mp"] = float(model.fidelity if fidelity is None else fidelity)
    needed = model.input_columns
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
    scores = model.predict(columns)
    order = np.argsort(-scores, kind="stable")
    return [(configurations[i], float(scores[i])) for i in order]
