"""Feature-set variants of the meta-model: which meta-features (``+``-joined groups) go into it, and the builder
that turns meta-base rows (or a new set's features) into model inputs, with the optical reductions fitted on the
training sets only."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from appliance.errors import ConfigError
from appliance.metalearning.base import (
    BACKBONE_FACTOR,
    GROUPS,
    HYPERPARAMETERS,
    PREFIXES,
    VARIANT_ALIASES,
    MetaBase,
    MetaBaseError,
)
from appliance.pipeline.config import ENCODERS

log = logging.getLogger(__name__)

PCA_COMPONENTS = 4
"""Principal components of the optical set vectors the meta-model uses."""


@contextmanager
def _quiet() -> Iterator[None]:
    """No floating-point or all-NaN warnings: a column every row lacks (e.g. radiomics features missing from the
    living meta-base's rows) is expected and filled afterwards."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


class OpticalReduction:
    """Set-level radiomics reduced as in the thesis (4.6.3) for the meta-model: z-score feature-wise over the
    *training* sets' vectors (a missing value takes the feature's mean), then the first 4 principal components (the
    SVD's signs fixed so the largest loading is positive) and the cosine similarity to each training set. The fitted
    state is plain lists (:meth:`to_dict` / :meth:`from_dict`), stored inside ``metamodel.json``.

    Only the set-level z-score is needed: the paper also z-scores every image vector before averaging them per set,
    but that is one affine map per feature for all images, which averaging keeps and the set-level z-score cancels
    (``tests/automl/test_optical.py`` checks it numerically)."""

    def __init__(self) -> None:
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.components = np.zeros((PCA_COMPONENTS, 0))
        self.set_names: list[str] = []
        self.set_unit: np.ndarray = np.zeros((0, 0))  # training sets' z-scored vectors, unit length

    def fit(self, set_vectors: Mapping[str, np.ndarray]) -> OpticalReduction:
        self.set_names = sorted(set_vectors)
        raw = np.array([np.asarray(set_vectors[s], dtype=float) for s in self.set_names], dtype=float)
        with _quiet():
            mean = np.nanmean(raw, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        raw = np.where(np.isfinite(raw), raw, mean)
        scale = raw.std(axis=0)
        self.mean, self.scale = mean, np.where(scale > 1e-12, scale, 1.0)
        z = (raw - self.mean) / self.scale
        components = np.zeros((PCA_COMPONENTS, raw.shape[1]))
        if len(z) > 1 and raw.shape[1] > 0:
            _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            k = min(PCA_COMPONENTS, vt.shape[0])
            vt = vt[:k]
            signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])  # fix the SVD's sign ambiguity
            components[:k] = vt * np.where(signs == 0, 1.0, signs)[:, None]
        self.components = components
        self.set_unit = _unit_rows(z)
        return self

    def _z(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=float)
        rows = np.where(np.isfinite(rows), rows, self.mean)
        return (rows - self.mean) / self.scale

    def pca(self, rows: np.ndarray) -> np.ndarray:
        """(n, 4) principal components of raw ``opt_*`` rows."""
        return self._z(rows) @ self.components.T

    def cosine(self, rows: np.ndarray) -> np.ndarray:
        """(n, training sets) cosine similarity of raw ``opt_*`` rows to each training set (columns: ``set_names``)."""
        return _unit_rows(self._z(rows)) @ self.set_unit.T

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "set_names": list(self.set_names),
            "set_unit": self.set_unit.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpticalReduction:
        self = cls()
        self.mean = np.asarray(data["mean"], dtype=float)
        self.scale = np.asarray(data["scale"], dtype=float)
        self.components = np.asarray(data["components"], dtype=float).reshape(PCA_COMPONENTS, len(self.mean))
        self.set_names = list(data["set_names"])
        self.set_unit = np.asarray(data["set_unit"], dtype=float).reshape(len(self.set_names), len(self.mean))
        return self


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 1e-12)


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
                with _quiet():
                    vectors[name] = np.nanmean(raw[sets == name], axis=0)
            self.optical = OpticalReduction().fit(vectors)
        matrix = self._raw_matrix(base.columns)
        with _quiet():
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
