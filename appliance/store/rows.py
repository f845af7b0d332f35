"""The store's rows as typed, frozen dataclasses: one class per table, its fields the table's columns in order.

These classes are the schema: :data:`appliance.store.SCHEMA` is derived from them (a field's SQL type from its
annotation; a ``dict``/``list`` field is a JSON text column, encoded on write and decoded on read), so a column is
declared once. Every field defaults to None, as a column of a row written by an older version may be empty.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self


@dataclass(frozen=True, slots=True)
class Row:
    """Base of the typed rows; ``table`` and ``primary_key`` say where a class is stored."""

    table: ClassVar[str]
    primary_key: ClassVar[str | tuple[str, ...]]

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> Self | None:
        """The typed row of a raw SQLite row (JSON columns decoded; text that is not JSON reads as None; columns
        this version does not know are ignored)."""
        if row is None:
            return None
        json_columns = _json_columns(cls)
        values = {}
        for name in _column_types(cls):
            value = row.get(name)
            if name in json_columns and isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = None
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (for tables, CSV and JSON)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True)
class Run(Row):
    """One AutoML run on a labelled set."""

    table: ClassVar[str] = "runs"
    primary_key: ClassVar[str] = "id"

    id: str | None = None
    set_name: str | None = None
    set_dir: str | None = None
    project: str | None = None
    status: str | None = None  # a RunStatus
    budget_seconds: float | None = None
    top_n: int | None = None
    seed: int | None = None
    device: str | None = None
    gpu_memory_gb: float | None = None
    ranking_source: str | None = None
    selection_metric: str | None = None
    split: dict | None = None  # appliance.data.splits.Split.to_dict()
    run_dir: str | None = None
    winner_config_id: str | None = None
    validation_iou: float | None = None
    test_iou: float | None = None
    model_id: str | None = None
    halving_seconds: float | None = None
    plan: dict | None = None  # the race plan (appliance.automl.race)
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True, slots=True)
class RankedConfig(Row):
    """The meta-model's predicted score of one configuration for a run (rank 1 = best)."""

    table: ClassVar[str] = "rankings"
    primary_key: ClassVar[tuple[str, ...]] = ("run_id", "rank")

    run_id: str | None = None
    rank: int | None = None
    config_id: str | None = None
    config: dict | None = None
    predicted_score: float | None = None


@dataclass(frozen=True, slots=True)
class Trial(Row):
    """A configuration that entered a run's race."""

    table: ClassVar[str] = "trials"
    primary_key: ClassVar[tuple[str, ...]] = ("run_id", "rank")

    run_id: str | None = None
    rank: int | None = None
    config_id: str | None = None
    config: dict | None = None
    predicted_score: float | None = None
    status: str | None = None  # a TrialStatus
    dropped_after_step: int | None = None
    reason: str | None = None
    probe_peak_memory_mb: float | None = None
    checkpoint: str | None = None


@dataclass(frozen=True, slots=True)
class StepResult(Row):
    """One trial's result in one halving step."""

    table: ClassVar[str] = "step_results"
    primary_key: ClassVar[tuple[str, ...]] = ("run_id", "step", "rank")

    run_id: str | None = None
    step: int | None = None
    rank: int | None = None
    config_id: str | None = None
    seconds_trained: float | None = None
    total_seconds_trained: float | None = None
    optimizer_steps: int | None = None
    work_mp: float | None = None
    validation_iou: float | None = None
    validation_iou_per_class: list | None = None
    validation_score: float | None = None
    peak_memory_mb: float | None = None
    wall_seconds: float | None = None
    checkpoint: str | None = None
    finished_at: str | None = None
    node: str | None = None  # the cluster node that trained the slice (None: the appliance's own process)


@dataclass(frozen=True, slots=True)
class Step(Row):
    """A finished halving step (a step with a row is never repeated)."""

    table: ClassVar[str] = "steps"
    primary_key: ClassVar[tuple[str, ...]] = ("run_id", "step")

    run_id: str | None = None
    step: int | None = None
    active: list | None = None
    survivors: list | None = None
    seconds: float | None = None
    finished_at: str | None = None

    @property
    def decided(self) -> bool:
        """True when the step chose among two or more trials. A step with one trial decides nothing: it is the
        winner's last stretch (cooled down, validated in parts and rolled back: :mod:`appliance.automl.last_stretch`),
        not a constant-rate learning curve."""
        return len(self.active or []) > 1


@dataclass(frozen=True, slots=True)
class Event(Row):
    """A line of the log people read."""

    table: ClassVar[str] = "events"
    primary_key: ClassVar[str] = "id"

    id: int | None = None
    run_id: str | None = None
    at: str | None = None
    level: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Throughput(Row):
    """Steps per second of one memory group (``kind`` ``train``) or prediction batch (``predict``) on a device."""

    table: ClassVar[str] = "throughput"
    primary_key: ClassVar[tuple[str, ...]] = ("device", "code_version", "kind", "patch_size", "batch_size", "encoder")

    device: str | None = None
    code_version: str | None = None
    kind: str | None = None
    patch_size: int | None = None
    batch_size: int | None = None
    encoder: str | None = None
    steps_per_second: float | None = None
    source: str | None = None
    measured_at: str | None = None


@dataclass(frozen=True, slots=True)
class Model(Row):
    """An exported model in the registry (``path`` empty until its export finished)."""

    table: ClassVar[str] = "models"
    primary_key: ClassVar[str] = "id"

    id: str | None = None
    run_id: str | None = None
    set_name: str | None = None
    project: str | None = None
    config_id: str | None = None
    path: str | None = None
    validation_iou: float | None = None
    test_iou: float | None = None
    created_at: str | None = None
    active: int | None = None


@dataclass(frozen=True, slots=True)
class Job(Row):
    """A job of the work queue (``kind`` a JobKind, ``status`` a JobStatus)."""

    table: ClassVar[str] = "jobs"
    primary_key: ClassVar[str] = "id"

    id: int | None = None
    kind: str | None = None
    key: str | None = None
    project: str | None = None
    payload: dict | None = None
    status: str | None = None
    attempts: int | None = None
    max_attempts: int | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    heartbeat_at: str | None = None
    not_before: float | None = None
    error: str | None = None
    result: dict | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True, slots=True)
class Intake(Row):
    """The intake's decision on one labelled-set folder: accepted (with its project, copy and job) or rejected (with
    every problem, ``{"file": ..., "message": ...}`` each)."""

    table: ClassVar[str] = "labelled_sets"
    primary_key: ClassVar[str] = "id"

    id: int | None = None
    name: str | None = None
    inbox_path: str | None = None
    signature: str | None = None
    content_hash: str | None = None
    status: str | None = None
    problems: list | None = None
    project: str | None = None
    store_dir: str | None = None
    job_id: int | None = None
    detected_at: str | None = None


@dataclass(frozen=True, slots=True)
class Image(Row):
    """One version (path + content hash) of an image seen in the images inbox."""

    table: ClassVar[str] = "images"
    primary_key: ClassVar[str] = "id"

    id: str | None = None
    project: str | None = None
    relpath: str | None = None
    path: str | None = None
    content_hash: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    status: str | None = None  # a JobStatus
    job_id: int | None = None
    model_id: str | None = None
    mask_path: str | None = None
    overlay_path: str | None = None
    error: str | None = None
    detected_at: str | None = None
    landed_at: float | None = None
    processed_at: str | None = None
    processed_time: float | None = None


@dataclass(frozen=True, slots=True)
class StoredMeasurement(Row):
    """One class's measurements of the latest version of an image (``row``: the CSV row)."""

    table: ClassVar[str] = "measurements"
    primary_key: ClassVar[tuple[str, ...]] = ("image_id", "class_index")

    image_id: str | None = None
    project: str | None = None
    relpath: str | None = None
    model_id: str | None = None
    class_index: int | None = None
    row: dict | None = None


@dataclass(frozen=True, slots=True)
class Activation(Row):
    """An activation decision with both scores (and the quality gate's numbers when it was applied)."""

    table: ClassVar[str] = "activations"
    primary_key: ClassVar[str] = "id"

    id: int | None = None
    project: str | None = None
    model_id: str | None = None
    previous_model_id: str | None = None
    new_score: float | None = None
    previous_score: float | None = None
    activated: int | None = None
    reason: str | None = None
    baseline_score: float | None = None
    model_mean_iou: float | None = None
    decided_at: str | None = None


@dataclass(frozen=True, slots=True)
class Project(Row):
    """A project's active model."""

    table: ClassVar[str] = "projects"
    primary_key: ClassVar[str] = "name"

    name: str | None = None
    active_model_id: str | None = None
    updated_at: str | None = None


@dataclass(frozen=True, slots=True)
class Component(Row):
    """A part of the service (watcher, worker, page) with its state and last heartbeat (epoch seconds)."""

    table: ClassVar[str] = "components"
    primary_key: ClassVar[str] = "name"

    name: str | None = None
    pid: int | None = None
    state: str | None = None
    detail: str | None = None
    interval: float | None = None
    heartbeat: float | None = None
    at: str | None = None
    onnx_providers: str | None = (
        None  # the inference worker's: the providers its loaded sessions run on, comma-separated
    )

    @property
    def providers(self) -> list[str]:
        return [name for name in (self.onnx_providers or "").split(",") if name]


@dataclass(frozen=True, slots=True)
class ClusterNode(Row):
    """A node of the Ray cluster that trains trials (``executor = "ray"``), as the head last saw it."""

    table: ClassVar[str] = "cluster_nodes"
    primary_key: ClassVar[str] = "node_id"

    node_id: str | None = None
    address: str | None = None
    device: str | None = None  # what a trial trains on there: the GPU's name, or the CPU and its threads
    slots: int | None = None  # trials it trains at once (one per GPU, or per cpus_per_trial CPUs)
    free_memory_mb: float | None = None  # of the device (GPU), else of the machine, when last reported
    running: str | None = None  # the slice it trains now ("run … rank … step …"), None when idle
    alive: int | None = None  # 1 while Ray reports it alive
    seen_at: str | None = None


ROWS: tuple[type[Row], ...] = (
    Run,
    RankedConfig,
    Trial,
    StepResult,
    Step,
    Event,
    Throughput,
    Model,
    Job,
    Intake,
    Image,
    StoredMeasurement,
    Activation,
    Project,
    Component,
    ClusterNode,
)
"""Every table, in the order they are created."""


def _stored_type(hint: Any) -> type:
    """The SQLite column type of a field annotation: ``str``, ``int`` or ``float``; a dict or list is JSON text."""
    options = [option for option in typing.get_args(hint) if option is not type(None)] if _is_union(hint) else [hint]
    (kind,) = options
    kind = typing.get_origin(kind) or kind
    return str if kind in (dict, list) else kind


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


@functools.cache
def _column_types(cls: type[Row]) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {field.name: _stored_type(hints[field.name]) for field in dataclasses.fields(cls)}


@functools.cache
def _json_columns(cls: type[Row]) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        field.name
        for field in dataclasses.fields(cls)
        if any((typing.get_origin(option) or option) in (dict, list) for option in typing.get_args(hints[field.name]))
    )


def schema() -> dict[str, tuple[dict[str, type], str | tuple[str, ...]]]:
    """``{table: ({column: type}, primary key)}`` of every row class."""
    return {cls.table: (_column_types(cls), cls.primary_key) for cls in ROWS}


def json_columns() -> dict[str, tuple[str, ...]]:
    """``{table: columns stored as JSON text}``."""
    return {cls.table: columns for cls in ROWS if (columns := _json_columns(cls))}
