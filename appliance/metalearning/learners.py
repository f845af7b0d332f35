"""The learners a meta-model can be: random forests, gradient-boosted regressors and rankers, their ensemble, and
their JSON files (no pickle)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from appliance.errors import ConfigError, ModelFileError
from appliance.metalearning.base import N_JOBS, XGB_THREADS

log = logging.getLogger(__name__)


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
    an ensemble averages (evaluation reuses their fits). ``fidelity_aware``: it is fitted on every learning-curve
    point with the training amount as an input (its variant gets ``+fid``) and its target is standardised within
    each *set* over all of the set's points, so that its scores compare configurations across training amounts
    (the other models' set-relative targets are standardised within each set *and* fidelity).
    """

    name: str
    factory: Callable[[int], Any]
    pointwise: bool
    deterministic: bool
    description: str = ""
    members: tuple[str, ...] = ()
    fidelity_aware: bool = False


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
_register(
    ModelSpec(
        "rf_d7_curve",
        lambda seed: _Forest(seed, target="set_z", n_estimators=RF_TREES),
        pointwise=False,
        deterministic=False,
        description=f"random forest, max depth 7, {RF_TREES} trees, on every learning-curve point with log training "
        "MP as a feature; IoU standardised within each set over all its points (fidelity-aware)",
        fidelity_aware=True,
    )
)
DEFAULT_MODELS = ("rf_d7", "rf_d7_setz", "xgb_reg", "xgb_rank", "xgb_ndcg", "ens")
FIDELITY_AWARE_MODEL = "rf_d7_curve"
"""The fidelity-aware meta-model: it predicts a configuration's score after a given number of MP of training."""


def _spec(model: str | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if model not in MODELS:
        raise ConfigError(f"unknown meta-model {model!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model]
