"""The meta-base: measured (set, configuration, fidelity) → validation IoU rows, and the builder that makes them.

A *run* trains one configuration on one set from scratch with the module library and records a
learning curve: validation IoU after given amounts of training *work*, measured in megapixels (MP)
of training patches processed (``steps · batch · patch²``). Work, unlike seconds, means the same on
a 2-core CPU and on a GPU, so rows built on different machines can be pooled, and the meta-model can
be asked for a configuration's score at the work that successive halving will give it on the
machine at hand. Each curve point becomes one row; ``fidelity_mp`` is the point, ``run_fidelity_mp``
the run's last point.

The store is one CSV file (``models/metabase.csv``). A run's rows are written together, after the
run, by an atomic rewrite of the whole file under a file lock; so killing the builder loses at most
the runs in flight, and re-running it skips every run already in the file (no duplicates). The
meta-feature columns are recomputed on each rewrite for the sets being built, from a per-set cache
(``<csv>.features.json``), so improved meta-feature code refreshes old rows without retraining.

Validation: the set is split 80/10/10 with the run's seed (:func:`~appliance.data.splits.split_stems`);
IoU is measured on centre crops of at most :data:`VALIDATION_CROP` px of at most
:data:`MAX_VALIDATION_IMAGES` validation images, so that evaluating a curve point costs a fraction
of training it.
"""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import math
import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from appliance.data.io import atomic_write
from appliance.data.labelled_set import LabelledSet, load_labelled_set, read_split_images
from appliance.data.splits import Split, split_stems
from appliance.errors import ConfigError
from appliance.pipeline.config import PAPER_DEFAULT, SEARCH_SPACE, PipelineConfig
from appliance.pipeline.device import device_name, process_peak_memory_mb, reset_peak_memory, resolve_device
from appliance.pipeline.evaluation import evaluate
from appliance.pipeline.patches import PatchCache
from appliance.pipeline.trainer import Trainer
from appliance.version import code_version

DEFAULT_CURVE_MP: tuple[float, ...] = (0.5, 1.0, 2.0)
VALIDATION_CROP = 512
MAX_VALIDATION_IMAGES = 4
FEATURES_VERSION = 1

IDENTITY_COLUMNS: tuple[str, ...] = ("set", "config_id", *SEARCH_SPACE, "seed", "fidelity_mp", "run_fidelity_mp")
OUTCOME_COLUMNS: tuple[str, ...] = (
    "val_iou",
    "val_iou_per_class",
    "work_mp",
    "steps",
    "train_seconds",
    "eval_seconds",
    "validation_images",
    "device",
    "peak_memory_mb",
    "code_version",
    "finished_at",
)
FEATURE_PREFIXES: tuple[str, ...] = ("hc_", "eng_", "user_", "opt_")
_NUMERIC_IDENTITY = {"patch_size": int, "batch_size": int, "seed": int}


# -- plan -------------------------------------------------------------------------------------------


def parse_curve(text: str | Sequence[float]) -> tuple[float, ...]:
    """Curve points in MP, from ``"0.5,1,2"`` or a sequence: positive and strictly increasing.

    >>> parse_curve("0.5, 1, 2")
    (0.5, 1.0, 2.0)
    """
    try:
        values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError as error:
        raise ConfigError(f"fidelity {text!r}: give megapixels of training work like '0.5,1,2' ({error})") from None
    if not values or any(v <= 0 for v in values) or any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError(f"fidelity {text!r}: give positive, strictly increasing megapixel values like '0.5,1,2'")
    return values


def stratified_configurations(count: int, seed: int) -> list[PipelineConfig]:
    """``count`` distinct configurations in which every value of every hyperparameter appears equally
    often (to within one when ``count`` is not a multiple of the number of values), seeded.

    Each hyperparameter's column is a shuffled, balanced list of its values; rows that collide are
    repaired by swapping one value with another row (which keeps the balance).
    """
    total = math.prod(len(values) for values in SEARCH_SPACE.values())
    if not 1 <= count <= total:
        raise ConfigError(f"configs per set must be between 1 and {total}, got {count}")
    rng = np.random.default_rng(seed)
    names = list(SEARCH_SPACE)
    columns = []
    for name in names:
        values = list(SEARCH_SPACE[name])
        column = values * (count // len(values)) + list(rng.permutation(values)[: count % len(values)])
        columns.append([column[i] for i in rng.permutation(count)])
    rows = [list(row) for row in zip(*columns, strict=True)]
    for _ in range(100_000):
        keys = [tuple(row) for row in rows]
        duplicates = [i for i, key in enumerate(keys) if keys.index(key) != i]
        if not duplicates:
            break
        i, j, c = duplicates[0], int(rng.integers(count)), int(rng.integers(len(names)))
        rows[i][c], rows[j][c] = rows[j][c], rows[i][c]
    else:  # pragma: no cover - only for counts close to the whole space
        raise ConfigError(f"could not draw {count} distinct balanced configurations; use fewer")
    return [PipelineConfig(**dict(zip(names, row, strict=True))) for row in rows]


def parse_configs(text: str) -> tuple[PipelineConfig, ...]:
    """Chosen configurations from ``"default,c-1a2b3c4d5e"``: ``default`` is the paper default, the rest ids of the
    search space (as the page and ``appliance runs`` show them)."""
    from appliance.automl.search_space import search_space

    by_id = {config.id: config for config in search_space()}
    chosen = []
    for item in (part.strip() for part in text.split(",")):
        if item == "default":
            chosen.append(PAPER_DEFAULT)
        elif item in by_id:
            chosen.append(by_id[item])
        else:
            raise ConfigError(
                f"configuration {item!r} is not in the search space; give 'default' or ids like "
                f"{PAPER_DEFAULT.id}, separated by commas"
            )
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"configurations {text!r}: each may be given once")
    return tuple(chosen)


def set_seed(set_name: str, seed: int) -> int:
    """Seed of a set's configuration sample: stable across runs and machines."""
    return (zlib.crc32(set_name.encode()) + seed) % 2**32


@dataclass(frozen=True)
class Job:
    set_dir: Path
    set_name: str
    config: PipelineConfig
    seed: int
    curve: tuple[float, ...]

    @property
    def key(self) -> tuple:
        return (self.set_name, self.config.id, self.seed, self.curve[-1])


def plan_jobs(
    set_dirs: Sequence[Path],
    *,
    configs_per_set: int,
    seed: int,
    curve: tuple[float, ...],
    configs: Sequence[PipelineConfig] = (),
) -> list[Job]:
    """All runs, interleaved across sets (config 1 of every set, then config 2, ...) so that a partial
    build covers every set equally. Each set gets its own stratified sample of ``configs_per_set``, or the same
    chosen ``configs`` (long curves of a few configurations on every set)."""

    def sample(set_dir: Path) -> Sequence[PipelineConfig]:
        return configs or stratified_configurations(configs_per_set, set_seed(set_dir.name, seed))

    per_set = [[Job(Path(d), Path(d).name, c, seed, curve) for c in sample(Path(d))] for d in set_dirs]
    return [jobs[i] for i in range(len(per_set[0]) if per_set else 0) for jobs in per_set]


# -- one run ----------------------------------------------------------------------------------------


@dataclass
class PreparedSet:
    """What every run on one set shares: the set, its split, training images and validation crops."""

    labelled_set: LabelledSet
    split: Split
    train_images: list[np.ndarray]
    train_masks: list[np.ndarray]
    validation_images: list[np.ndarray]
    validation_masks: list[np.ndarray]
    validation_names: tuple[str, ...]
    training_patches: PatchCache = field(init=False)

    def __post_init__(self) -> None:
        self.training_patches = PatchCache(
            self.train_images, self.train_masks, num_classes=self.labelled_set.num_classes
        )

    @classmethod
    def load(cls, set_dir: Path, seed: int) -> PreparedSet:
        labelled_set = load_labelled_set(set_dir)
        split = split_stems(labelled_set.stems, seed=seed)
        train_images, train_masks = read_split_images(labelled_set, split.train)
        names = split.validation[:MAX_VALIDATION_IMAGES]
        images, masks = read_split_images(labelled_set, names)
        crops = [centre_crop(image, mask, VALIDATION_CROP) for image, mask in zip(images, masks, strict=True)]
        return cls(
            labelled_set=labelled_set,
            split=split,
            train_images=train_images,
            train_masks=train_masks,
            validation_images=[image for image, _ in crops],
            validation_masks=[mask for _, mask in crops],
            validation_names=names,
        )


def centre_crop(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The central ``size × size`` part of an image and its mask (the whole of a smaller side)."""
    height, width = mask.shape
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[top : top + size, left : left + size], mask[top : top + size, left : left + size]


def steps_for_work(config: PipelineConfig, megapixels: float) -> int:
    """Optimiser steps that process at least ``megapixels`` of training patches (at least one step).

    >>> steps_for_work(PipelineConfig(patch_size=128, batch_size=8), 1.0)
    8
    """
    return max(1, math.ceil(megapixels * 1e6 / (config.patch_size**2 * config.batch_size)))


def run_job(job: Job, prepared: PreparedSet, *, device: torch.device) -> list[dict]:
    """Train ``job.config`` from scratch and evaluate it at each curve point; one row per point."""
    labelled_set = prepared.labelled_set
    k = labelled_set.num_classes
    reset_peak_memory(device)
    patches = prepared.training_patches(job.config.patch_size)
    trainer = Trainer(job.config, in_channels=labelled_set.channels, num_classes=k, seed=job.seed, device=device)
    rows, evaluation, eval_seconds = [], None, 0.0
    for point in job.curve:
        target = steps_for_work(job.config, point)
        if evaluation is None or target > trainer.steps:
            trainer.train(patches, max_steps=target - trainer.steps)
            started = time.perf_counter()
            evaluation = evaluate(
                trainer.predict,
                prepared.validation_images,
                prepared.validation_masks,
                num_classes=k,
                names=prepared.validation_names,
            )
            eval_seconds += time.perf_counter() - started
        rows.append(
            {
                "set": job.set_name,
                "config_id": job.config.id,
                **job.config.to_dict(),
                "seed": job.seed,
                "fidelity_mp": point,
                "run_fidelity_mp": job.curve[-1],
                "val_iou": evaluation.mean_foreground_iou,
                "val_iou_per_class": json.dumps(evaluation.overall.iou[1:]),
                "work_mp": trainer.pixels_seen / 1e6,
                "steps": trainer.steps,
                "train_seconds": round(trainer.seconds, 3),
                "eval_seconds": round(eval_seconds, 3),
                "validation_images": len(prepared.validation_images),
            }
        )
    provenance = {
        "device": device_name(device),
        "peak_memory_mb": round(process_peak_memory_mb(device), 1),
        "code_version": code_version(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return [{**row, **provenance} for row in rows]


# -- the store --------------------------------------------------------------------------------------


def row_key(row: dict) -> tuple:
    """Identity of a row: set, configuration, seed, run fidelity and curve point."""
    return (row["set"], row["config_id"], int(row["seed"]), float(row["run_fidelity_mp"]), float(row["fidelity_mp"]))


def run_key(row: dict) -> tuple:
    return (row["set"], row["config_id"], int(row["seed"]), float(row["run_fidelity_mp"]))


def read_metabase_rows(path: str | Path) -> list[dict]:
    """Rows of a meta-base CSV as dicts of strings (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def features_file(csv_path: str | Path) -> Path:
    """Where the builder keeps a meta-base's set-level meta-features: ``<csv>.features.json`` beside it."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".features.json")


def combine_metabases(paths: Sequence[str | Path], out: str | Path) -> dict:
    """Write the rows of every meta-base in ``paths`` (e.g. the builder's many short runs and its long curves of a
    few configurations) to the one CSV ``out``; returns their set-level meta-features merged. Refuses rows that two
    files both hold, and sets whose meta-features were computed by different code."""
    rows, owner, features = [], {}, {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"{path}: no such meta-base file")
        for row in read_metabase_rows(path):
            key = row_key(row)
            if key in owner:
                raise ConfigError(
                    f"{path}: the row of set {key[0]}, configuration {key[1]}, seed {key[2]}, run to {key[3]:g} MP, "
                    f"point {key[4]:g} MP is already in {owner[key]}; give each run in one file only"
                )
            owner[key] = path
            rows.append(row)
        cached = features_file(path)
        for set_name, entry in (json.loads(cached.read_text()) if cached.is_file() else {}).items():
            known = features.setdefault(set_name, entry)
            if known.get("signature") != entry.get("signature"):
                raise ConfigError(
                    f"{cached}: the meta-features of {set_name} were computed by other code than in the files before "
                    "it; rebuild them (appliance metabase build refreshes features without retraining)"
                )
    if not rows:
        raise ConfigError(f"{', '.join(map(str, paths))}: the meta-bases hold no rows")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_metabase_csv(Path(out), rows)
    return features


def write_metabase_csv(path: Path, rows: list[dict]) -> None:
    """Replace the CSV at ``path`` atomically with ``rows`` (columns in :func:`ordered_columns` order)."""
    columns = ordered_columns(rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def ordered_columns(rows: Iterable[dict]) -> list[str]:
    """Identity and outcome columns first, then the meta-features by group, each group sorted."""
    seen = {column for row in rows for column in row}
    fixed = [c for c in (*IDENTITY_COLUMNS, *OUTCOME_COLUMNS) if c in seen]
    groups = [sorted(c for c in seen if c.startswith(prefix)) for prefix in FEATURE_PREFIXES]
    rest = sorted(seen - set(fixed) - {c for group in groups for c in group})
    return fixed + [c for group in groups for c in group] + rest


@contextmanager
def _locked(path: Path):
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_rows(path: Path, new_rows: list[dict], features: Callable[[dict], dict | None]) -> int:
    """Add ``new_rows`` to the CSV at ``path`` (skipping any whose key is already there) and rewrite it
    atomically with meta-features from ``features(row)`` (None keeps the row's own). Returns rows added."""
    with _locked(path):
        rows = read_metabase_rows(path)
        keys = {row_key(row) for row in rows}
        added = [row for row in new_rows if row_key(row) not in keys]
        rows.extend(added)
        refreshed = []
        for row in rows:
            update = features(row)
            if update is not None:
                row = {k: v for k, v in row.items() if not k.startswith(FEATURE_PREFIXES)} | update
            refreshed.append(row)
        write_metabase_csv(path, refreshed)
    return len(added)


class FeatureCache:
    """Set-level meta-features per set, computed once and kept in ``<csv>.features.json``."""

    def __init__(self, path: Path, *, metadata: dict[str, dict], optical_images: int, seed: int):
        self.path = path
        self.metadata = metadata
        self.optical_images = optical_images
        self.seed = seed
        self.entries: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}

    def _signature(self, labelled_set: LabelledSet) -> dict:
        return {
            "version": FEATURES_VERSION,
            "images": len(labelled_set),
            "optical_images": self.optical_images,
            "metadata": self.metadata.get(labelled_set.name, labelled_set.metadata),
        }

    def cached(self, labelled_set: LabelledSet) -> dict | None:
        """The set's entry (``features`` and the ``seconds`` they took) when it was computed as this cache computes
        it (same feature code, image count, optical sample and metadata); else None."""
        entry = self.entries.get(labelled_set.name)
        return entry if entry is not None and entry["signature"] == self._signature(labelled_set) else None

    def get(self, labelled_set: LabelledSet) -> dict[str, float]:
        from appliance.automl.metafeatures import set_features

        entry = self.cached(labelled_set)
        if entry is None:
            signature = self._signature(labelled_set)
            started = time.perf_counter()
            features = set_features(
                labelled_set, metadata=signature["metadata"], optical_images=self.optical_images, seed=self.seed
            )
            entry = {"signature": signature, "seconds": round(time.perf_counter() - started, 1), "features": features}
            self.entries[labelled_set.name] = entry
            with _locked(self.path):
                on_disk = json.loads(self.path.read_text()) if self.path.is_file() else {}
                on_disk[labelled_set.name] = entry
                atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(on_disk, indent=1, sort_keys=True)))
        return entry["features"]


def load_set_metadata(path: str | Path | None) -> dict[str, dict]:
    """``{set name: dataset.yaml-style dict}`` from a YAML file, for sets that come without ``dataset.yaml``."""
    if path is None:
        return {}
    content = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise ConfigError(f"{path}: expected a mapping of set name → {{microscopy, object, magnification}}")
    return content


# -- the builder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    set_dirs: tuple[Path, ...]
    out_csv: Path
    configs_per_set: int = 48
    configs: tuple[PipelineConfig, ...] = ()  # chosen configurations instead of each set's sample
    curve: tuple[float, ...] = DEFAULT_CURVE_MP
    seed: int = 0
    workers: int = 1
    device: str | None = None
    metadata: dict = field(default_factory=dict)
    optical_images: int = 20
    limit: int | None = None


def build_metabase(settings: BuildSettings, *, log: Callable[[str], None] = print) -> int:
    """Run every planned run that the CSV does not hold yet; returns the number of runs done now."""
    jobs = plan_jobs(
        settings.set_dirs,
        configs_per_set=settings.configs_per_set,
        seed=settings.seed,
        curve=settings.curve,
        configs=settings.configs,
    )
    done = {run_key(row) for row in read_metabase_rows(settings.out_csv)}
    todo = [job for job in jobs if job.key not in done]
    if settings.limit is not None:
        todo = todo[: settings.limit]
    finished = sum(job.key in done for job in jobs)
    log(f"meta-base {settings.out_csv}: {finished} of {len(jobs)} runs done, {len(todo)} to run now")
    # Features first (they are cached), so that every row written carries them.
    cache = _feature_cache(settings)
    for set_dir in settings.set_dirs:
        cache.get(load_labelled_set(set_dir))
    if not todo:
        write_rows(settings.out_csv, [], _feature_function(settings, cache))
        return 0
    workers = max(1, settings.workers)
    if workers == 1:
        return _work(settings, todo, 0, 1, log)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        counts = pool.starmap(_work_quiet, [(settings, todo, k, workers) for k in range(workers)])
    return sum(counts)


def _feature_cache(settings: BuildSettings) -> FeatureCache:
    return FeatureCache(
        features_file(settings.out_csv),
        metadata=settings.metadata,
        optical_images=settings.optical_images,
        seed=settings.seed,
    )


def _feature_function(settings: BuildSettings, cache: FeatureCache) -> Callable[[dict], dict | None]:
    from appliance.automl.metafeatures import engineered_features

    building = {Path(d).name for d in settings.set_dirs}
    by_name = {name: cache.entries[name]["features"] for name in building if name in cache.entries}

    def features(row: dict) -> dict | None:
        if row["set"] not in by_name:
            return None
        typed = parse_row_types(row)
        config = PipelineConfig.from_dict({name: typed[name] for name in SEARCH_SPACE})
        return {**by_name[row["set"]], **engineered_features(by_name[row["set"]], config)}

    return features


def _work_quiet(settings: BuildSettings, todo: list[Job], worker: int, workers: int) -> int:
    return _work(settings, todo, worker, workers, lambda message: print(f"[worker {worker}] {message}", flush=True))


def _work(settings: BuildSettings, todo: list[Job], worker: int, workers: int, log: Callable[[str], None]) -> int:
    device = resolve_device(settings.device)
    if device.type == "cpu" and workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    cache = _feature_cache(settings)
    features = _feature_function(settings, cache)
    prepared: dict[str, PreparedSet] = {}
    count = 0
    for job in todo[worker::workers]:
        if job.set_name not in prepared:
            prepared[job.set_name] = PreparedSet.load(job.set_dir, settings.seed)
        started = time.perf_counter()
        rows = run_job(job, prepared[job.set_name], device=device)
        write_rows(settings.out_csv, rows, features)
        count += 1
        log(
            f"{job.set_name} {job.config.id} ({job.config.encoder}, patch {job.config.patch_size}, "
            f"batch {job.config.batch_size}, lr {job.config.learning_rate}): IoU "
            + " → ".join(f"{row['val_iou']:.3f}" for row in rows)
            + f" in {time.perf_counter() - started:.0f} s"
        )
    return count


def parse_row_types(row: dict) -> dict:
    """A CSV row with identity numbers converted back from strings."""
    converted = dict(row)
    for name in SEARCH_SPACE:
        if name in _NUMERIC_IDENTITY:
            converted[name] = int(row[name])
        elif name != "encoder":
            converted[name] = float(row[name])
    converted["seed"] = int(row["seed"])
    return converted
