"""The meta-base: learning curves of configurations on labelled sets (one CSV row per set x configuration x
fidelity), the names of its columns, and the checks that say which file and which column is wrong."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.errors import ConfigError
from appliance.pipeline.config import ENCODERS

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

    @property
    def common_fidelity(self) -> float:
        """The largest curve point every builder run reached (the smallest of their last points, ``run_fidelity_mp``),
        so that a model fitted there sees every configuration the builder measured; long curves of a few
        configurations do not move it. The largest point when the column is missing or only living rows have it."""
        last = self.columns.get("run_fidelity_mp")
        if last is None or last.dtype == object:
            return float(max(self.fidelities))
        built = (self.sources == "") & np.isfinite(last)
        reached = last[built]
        return (
            float(reached.min())
            if len(reached) and self.at_fidelity(reached.min()).any()
            else float(max(self.fidelities))
        )

    @property
    def sources(self) -> np.ndarray:
        """Each row's ``source`` as text: ``"run <id>"`` for a living meta-base row, ``""`` for a builder's row (and
        for every row of a meta-base without the column)."""
        sources = self.columns.get("source")
        if sources is None or sources.dtype != object:
            return np.full(self.n_rows, "", dtype=object)
        return np.array([s or "" for s in sources.tolist()], dtype=object)

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


LIVING_METABASE = "metabase.csv"
"""The living meta-base's file in the data dir (:mod:`appliance.automl.living`): what this appliance's runs measured."""


@dataclass(frozen=True)
class MetabaseSummary:
    """How much a meta-base CSV holds: rows (curve points), runs, and the sets and devices they came from."""

    rows: int
    runs: int
    sets: tuple[str, ...]
    devices: tuple[str, ...]


def summarise_metabase(path: str | Path) -> MetabaseSummary:
    """Count a meta-base CSV without loading it as a table (cheap enough for the status page); an absent file holds
    nothing. A run is one ``source`` (the living meta-base's ``run <id>``), else one (set, configuration, seed)."""
    path = Path(path)
    if not path.is_file():
        return MetabaseSummary(0, 0, (), ())
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    runs = {row.get("source") or (row.get("set"), row.get("config_id"), row.get("seed")) for row in rows}
    return MetabaseSummary(
        rows=len(rows),
        runs=len(runs),
        sets=tuple(sorted({row["set"] for row in rows if row.get("set")})),
        devices=tuple(sorted({row["device"] for row in rows if row.get("device")})),
    )
