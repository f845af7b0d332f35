"""The appliance's state in one SQLite file: the single source of truth that the CLI, the service and the page read.

Tables (all created on open; WAL journal, so the page can read while training writes):

* ``runs``: one AutoML run on a labelled set: budget, top n, seed, split, status, winner, exported model.
* ``rankings``: the meta-model's predicted score of every configuration for a run (rank 1 = best).
* ``trials``: configurations that entered successive halving: rank, predicted score, status
  (``active``, ``dropped``, ``winner``, ``failed``, ``does_not_fit``), probe peak memory, checkpoint.
* ``step_results``: one row per trial per halving step: seconds trained, optimiser steps, validation IoU
  (mean and per class), peak memory, wall seconds (training + evaluation + checkpoint).
* ``steps``: one row per finished halving step with its survivors; a step with a row is never repeated.
* ``events``: a log of what happened, for people.
* ``models``: the model registry: every exported model with its scores.
* ``throughput``: per device name and code version, training steps per second of each memory group (patch × batch
  × encoder; ``kind`` ``train``), from a probe or from real training slices, and prediction tiles per second per
  encoder (``kind`` ``predict``) (:mod:`appliance.automl.throughput`).

The service's tables:

* ``jobs``: the work queue (``kind`` ``train`` or ``segment``), one row per ``(kind, key)`` so the same work is
  never queued twice. Status ``queued`` → ``running`` (leased to one worker until ``lease_expires``, renewed by
  heartbeats) → ``done`` or, after ``max_attempts`` tries, ``failed``.
* ``labelled_sets``: every intake decision on a folder of ``inbox/labelled``: its file signature, content hash,
  ``accepted`` or ``rejected`` with every problem, the managed copy and the training job.
* ``images``: every version (path + content hash) of an image seen in ``inbox/images``, its status and results.
* ``measurements``: one row per class of the latest version of each segmented image (``measurements.csv`` is
  written from these rows, so a row can never appear twice).
* ``activations``: every model activation decision with both scores; ``projects``: the active model per project.
* ``components``: the service's parts (watchers, workers, page) with their state and last heartbeat.

Each write is its own short transaction, so a process killed at any moment leaves a consistent file. Claiming a
job is one ``UPDATE … RETURNING`` statement, so two workers never get the same job. Each thread opens its own
:class:`Store` (SQLite connections are not shared between threads).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import sqlite_utils

from appliance.errors import ApplianceError, readable
from appliance.store.reads import PageReads, measurement_row
from appliance.store.rows import (
    Activation,
    ClusterNode,
    Component,
    Event,
    Image,
    Intake,
    Job,
    Model,
    RankedConfig,
    Run,
    Step,
    StepResult,
    Throughput,
    Trial,
    json_columns,
    schema,
)

SCHEMA: dict[str, tuple[dict[str, type], str | tuple[str, ...]]] = schema()
"""``{table: ({column: SQL type}, primary key)}``, derived from the row classes of :mod:`appliance.store.rows`."""

SCHEMA_VERSION = 5
"""Bumped with every change to :data:`SCHEMA` (``tests/store/test_schema.py`` holds the fingerprint of each). 1: the
store before versions were recorded (``PRAGMA user_version`` 0); 2: activation decisions keep the quality gate's
numbers; 3: components report their ONNX Runtime providers; 4: a run records the validation metric it selects on
and each slice its score in that metric (objects' AP@0.5 for an instances set); runs and models record their project
(an older store's are filled in on upgrade); 5: each slice records the cluster node that trained it, and the
cluster's nodes have a table. Opening an older store adds what it
lacks, in place; a newer one is refused."""


class RunStatus(StrEnum):
    """Where a training run is (``runs.status``), in order; ``FAILED`` can follow any of the others."""

    CREATED = "created"
    RANKING = "ranking"
    HALVING = "halving"
    EXPORTING = "exporting"
    FINISHED = "finished"
    FAILED = "failed"


RUNNING_RUN = (RunStatus.CREATED, RunStatus.RANKING, RunStatus.HALVING, RunStatus.EXPORTING)
"""Run statuses of a run that has not ended."""


class TrialStatus(StrEnum):
    """A configuration's place in a run's race (``trials.status``)."""

    ACTIVE = "active"
    DROPPED = "dropped"
    WINNER = "winner"
    DOES_NOT_FIT = "does_not_fit"
    FAILED = "failed"


class JobStatus(StrEnum):
    """A queued job's or a landed image's state (``jobs.status``, ``images.status``)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    MISSING = "missing"  # an image that disappeared before it was segmented
    SUPERSEDED = "superseded"  # a newer version of the image or set replaced it


QUEUED, RUNNING, DONE, FAILED = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED


JSON_COLUMNS = json_columns()
"""Columns stored as JSON text (a row class's ``dict`` and ``list`` fields): written from dicts and lists and read
back as them (text that is not JSON reads as None), so no caller parses them."""


def _encoded(table: str, fields: Mapping) -> dict:
    return {
        name: json.dumps(value) if name in JSON_COLUMNS.get(table, ()) and not isinstance(value, str | None) else value
        for name, value in fields.items()
    }


def _epoch_seconds() -> float:
    return time.time()  # looked up at each call, so a patched time.time reaches the store too


def _columns(table: str, fields: Mapping) -> dict:
    """``fields`` when each is a column of ``table`` (:data:`SCHEMA`); a misspelt or unknown name is a TypeError
    that lists the table's columns, never SQL built from an arbitrary keyword."""
    columns = SCHEMA[table][0]
    unknown = sorted(set(fields) - set(columns))
    if unknown:
        raise TypeError(f"{table} has no column {', '.join(unknown)}; its columns: {', '.join(columns)}")
    return _encoded(table, fields)


def _intake(row: dict | None) -> Intake | None:
    """An intake row; a problem list that is not JSON reads as one problem saying so (the decision stays visible)."""
    intake = Intake.from_row(row)
    if intake is not None and not isinstance(intake.problems, list):
        problems = (
            []
            if not row.get("problems")
            else [{"file": "", "message": f"unreadable problem list: {row['problems']!r}"}]
        )
        intake = dataclasses.replace(intake, problems=problems)
    return intake


class NewerStoreError(ApplianceError):
    """The store was written by a newer version of the appliance."""


def now() -> str:
    """UTC time stamp, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store(PageReads):
    """The SQLite store. Opening creates the file and the tables when missing (or upgrades an older one).

    ``clock`` gives the epoch seconds that job leases, retry delays, landing times and heartbeats are stamped and
    compared with (tests pass a fake one instead of waiting)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] | None = None):
        self.clock = clock if clock is not None else _epoch_seconds
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.path)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.enable_wal()
        if self.schema_version() != SCHEMA_VERSION:
            self._upgrade()

    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _upgrade(self) -> None:
        """Create what a new or older store lacks (tables, columns, indexes) and record the schema version, in one
        transaction (another process opening the same file at the same moment waits, then finds it done)."""
        with self.transaction():
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise NewerStoreError(
                    f"{self.path} was written by a newer appliance (store schema {version}; this version knows up to "
                    f"{SCHEMA_VERSION}): run that version again, or this one on a copy of the data dir from before "
                    "the upgrade"
                )
            for name, (columns, pk) in SCHEMA.items():
                self.db[name].create(columns, pk=pk, if_not_exists=True)
                have = self.db[name].columns_dict
                for column, kind in columns.items():
                    if column not in have:  # a store written by an older version gains the new columns
                        self.db[name].add_column(column, kind)
            self.db["events"].create_index(["run_id"], if_not_exists=True)
            self.db["jobs"].create_index(["kind", "key"], unique=True, if_not_exists=True)
            self.db["jobs"].create_index(["status", "kind"], if_not_exists=True)
            self.db["images"].create_index(["project", "relpath"], if_not_exists=True)
            self.db["labelled_sets"].create_index(["inbox_path"], if_not_exists=True)
            if version < 4:
                self._fill_model_projects()
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _fill_model_projects(self) -> None:
        """Schema 4 records each model's project; an older store's models get theirs from the activation decision
        that names them, else the intake of the set their run trained on (its managed copy is the run's
        ``set_dir``), else the set's name (a set's default project)."""
        self.db.execute(
            """
            update models set project = coalesce(
                (select a.project from activations a where a.model_id = models.id order by a.id desc limit 1),
                (select l.project from labelled_sets l join runs r on l.store_dir = r.set_dir
                  where r.id = models.run_id and l.project is not null order by l.rowid desc limit 1),
                set_name)
            where project is null
            """
        )
        self.db.execute(
            "update runs set project = (select m.project from models m where m.run_id = runs.id limit 1)"
            " where project is null"
        )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction that takes the write lock when it begins (``BEGIN IMMEDIATE``), waiting up to the
        busy timeout for other writers. A deferred transaction that reads first fails at once with "database is
        locked" when another process wrote in between, which is what killed training runs under load."""
        if self.db.conn.in_transaction:  # nested: a savepoint inside the outer transaction
            with self.db.atomic():
                yield
            return
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.rollback()
            raise
        try:
            self.db.conn.execute("COMMIT")
        except BaseException:
            self.db.rollback()
            raise

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        set_name: str,
        set_dir: str | None = None,
        project: str | None = None,
        budget_seconds: float | None = None,
        top_n: int | None = None,
        seed: int | None = None,
        gpu_memory_gb: float | None = None,
        split: Mapping | None = None,
    ) -> str:
        """A new run (status ``created``) of the set at ``set_dir`` for ``project``; ``split`` is the seeded split
        (:meth:`appliance.data.splits.Split.to_dict`). Returns its id."""
        run_id = f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        row = {
            "id": run_id,
            "status": RunStatus.CREATED.value,
            "created_at": now(),
            "set_name": set_name,
            "set_dir": set_dir,
            "project": project,
            "budget_seconds": budget_seconds,
            "top_n": top_n,
            "seed": seed,
            "gpu_memory_gb": gpu_memory_gb,
            "split": split,
        }
        self.db["runs"].insert(_encoded("runs", row))
        return run_id

    def run(self, run_id: str) -> Run:
        return Run.from_row(self.db["runs"].get(run_id))

    def runs(self) -> list[Run]:
        return [Run.from_row(row) for row in self.db["runs"].rows_where(order_by="created_at desc")]

    def update_run(self, run_id: str, **fields) -> None:
        """Set columns of a run (names checked against the schema)."""
        self.db["runs"].update(run_id, _columns("runs", fields))

    def unfinished_runs(self, set_dir: str | None = None) -> list[Run]:
        where, args = f"status not in ('{RunStatus.FINISHED}', '{RunStatus.FAILED}')", []
        if set_dir is not None:
            where, args = where + " and set_dir = ?", [set_dir]
        return [Run.from_row(row) for row in self.db["runs"].rows_where(where, args, order_by="created_at")]

    # -- ranking and trials -------------------------------------------------------------------

    def save_ranking(self, run_id: str, ranking: Iterable[tuple[str, dict, float]]) -> None:
        rows = [
            _encoded(
                "rankings",
                {"run_id": run_id, "rank": rank, "config_id": config_id, "config": config, "predicted_score": s},
            )
            for rank, (config_id, config, s) in enumerate(ranking, start=1)
        ]
        with self.transaction():
            self.db["rankings"].delete_where("run_id = ?", [run_id])
            self.db["rankings"].insert_all(rows)

    def enter_race(
        self,
        run_id: str,
        ranking: Iterable[tuple[str, dict, float | None]],
        trials: Iterable[tuple[int, str, dict, float | None]],
        plan: dict,
    ) -> None:
        """Record a run's ranking, its trials ``(rank, config_id, config, predicted_score)`` and its race plan in one
        transaction, so a run killed while planning has either all of them or none (and then plans again)."""
        with self.transaction():
            self.save_ranking(run_id, ranking)
            for rank, config_id, config, score in trials:
                self.add_trial(run_id, rank, config_id, config, score)
            self.update_run(run_id, plan=plan)

    def ranking(self, run_id: str) -> list[RankedConfig]:
        return [
            RankedConfig.from_row(r) for r in self.db["rankings"].rows_where("run_id = ?", [run_id], order_by="rank")
        ]

    def add_trial(self, run_id: str, rank: int, config_id: str, config: dict, predicted_score: float | None) -> None:
        row = {
            "run_id": run_id,
            "rank": rank,
            "config_id": config_id,
            "config": config,
            "predicted_score": predicted_score,
            "status": TrialStatus.ACTIVE.value,
        }
        self.db["trials"].insert(_encoded("trials", row), ignore=True)

    def trials(self, run_id: str, status: str | None = None) -> list[Trial]:
        where, args = "run_id = ?", [run_id]
        if status is not None:
            where, args = where + " and status = ?", [run_id, status]
        return [Trial.from_row(row) for row in self.db["trials"].rows_where(where, args, order_by="rank")]

    def update_trial(self, run_id: str, rank: int, **fields) -> None:
        """Set columns of a trial (names checked against the schema)."""
        self.db["trials"].update((run_id, rank), _columns("trials", fields))

    # -- halving steps ------------------------------------------------------------------------

    def record_step_result(self, run_id: str, step: int, rank: int, **fields) -> None:
        """A trial's result in a step; with ``checkpoint``, the trial continues from it (one transaction, so a kill
        never leaves a result whose checkpoint the trial does not know)."""
        row = _columns("step_results", {"run_id": run_id, "step": step, "rank": rank, "finished_at": now(), **fields})
        with self.transaction():
            self.db["step_results"].insert(row, replace=True)
            if fields.get("checkpoint"):
                self.db["trials"].update((run_id, rank), {"checkpoint": fields["checkpoint"]})

    def step_results(self, run_id: str, step: int | None = None) -> list[StepResult]:
        where, args = "run_id = ?", [run_id]
        if step is not None:
            where, args = where + " and step = ?", [run_id, step]
        return [
            StepResult.from_row(row) for row in self.db["step_results"].rows_where(where, args, order_by="step, rank")
        ]

    def finish_step(self, run_id: str, step: int, *, active: list[int], survivors: list[int], seconds: float) -> None:
        """Record a finished step and drop the trials that did not survive it, in one transaction."""
        with self.transaction():
            row = {
                "run_id": run_id,
                "step": step,
                "active": active,
                "survivors": survivors,
                "seconds": seconds,
                "finished_at": now(),
            }
            self.db["steps"].insert(_encoded("steps", row), replace=True)
            for rank in active:
                if rank not in survivors:
                    self.db["trials"].update(
                        (run_id, rank), {"status": TrialStatus.DROPPED.value, "dropped_after_step": step}
                    )

    def finished_steps(self, run_id: str) -> list[Step]:
        return [Step.from_row(row) for row in self.db["steps"].rows_where("run_id = ?", [run_id], order_by="step")]

    # -- training throughput ------------------------------------------------------------------

    def record_throughput(
        self, device: str, code_version: str, group, steps_per_second: float, *, source: str, kind: str = "train"
    ) -> None:
        """Keep the latest steps per second of ``group`` (a :class:`~appliance.automl.memory.MemoryGroup`; for
        ``kind="predict"`` a tile size × batch of prediction)."""
        self.db["throughput"].insert(
            {
                "device": device,
                "code_version": code_version,
                "kind": kind,
                "patch_size": group.patch_size,
                "batch_size": group.batch_size,
                "encoder": group.encoder,
                "steps_per_second": steps_per_second,
                "source": source,
                "measured_at": now(),
            },
            replace=True,
        )

    def throughput(self, device: str, code_version: str) -> list[Throughput]:
        rows = self.db["throughput"].rows_where(
            "device = ? and code_version = ?", [device, code_version], order_by="kind, patch_size, batch_size, encoder"
        )
        return [Throughput.from_row(row) for row in rows]

    # -- events and models --------------------------------------------------------------------

    def event(self, run_id: str | None, message: str, *, level: str = "info") -> None:
        self.db["events"].insert({"run_id": run_id, "at": now(), "level": level, "message": readable(message)})

    def events(self, run_id: str | None = None, limit: int = 200) -> list[Event]:
        where, args = ("run_id = ?", [run_id]) if run_id else (None, None)
        return [
            Event.from_row(row) for row in self.db["events"].rows_where(where, args, order_by="id desc", limit=limit)
        ]

    def unfinished_models(self, run_id: str) -> list[str]:
        """Ids of the run's registry rows whose export never finished (empty path: the run was killed while
        exporting)."""
        rows = self.db.execute(
            "select id from models where run_id = ? and (path = '' or path is null) order by id", [run_id]
        ).fetchall()
        return [row[0] for row in rows]

    def register_model(
        self,
        *,
        run_id: str,
        set_name: str,
        path: str,
        project: str | None = None,
        config_id: str | None = None,
        validation_iou: float | None = None,
        test_iou: float | None = None,
    ) -> str:
        """A new registry row (``path`` empty until :meth:`finish_export`); rows of the same run whose export never
        finished are dropped first, so a run resumed during its export registers its model once."""
        model_id = f"model-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        row = {
            "id": model_id,
            "created_at": now(),
            "active": 0,
            "run_id": run_id,
            "set_name": set_name,
            "project": project,
            "config_id": config_id,
            "path": path,
            "validation_iou": validation_iou,
            "test_iou": test_iou,
        }
        with self.transaction():
            self.db.execute("delete from models where run_id = ? and (path = '' or path is null)", [run_id])
            self.db["models"].insert(row)
        return model_id

    def finish_export(self, run_id: str, model_id: str, path: str, **run_fields) -> None:
        """In one transaction: the model's files are at ``path`` and its run is finished."""
        with self.transaction():
            self.db["models"].update(model_id, {"path": path})
            self.db["runs"].update(
                run_id, _columns("runs", {"status": RunStatus.FINISHED.value, "model_id": model_id, **run_fields})
            )

    def models(self) -> list[Model]:
        return [Model.from_row(row) for row in self.db["models"].rows_where(order_by="created_at desc")]

    # -- job queue ----------------------------------------------------------------------------

    def enqueue(
        self, kind: str, key: str, *, payload: dict | None = None, project: str | None = None, max_attempts: int = 3
    ) -> tuple[int, bool]:
        """Queue a job unless one with the same ``(kind, key)`` exists; returns ``(job id, newly queued)``."""
        with self.transaction():
            cursor = self.db.execute(
                "insert or ignore into jobs (kind, key, project, payload, status, attempts, max_attempts, not_before,"
                " created_at) values (?, ?, ?, ?, ?, 0, ?, 0, ?)",
                [
                    kind,
                    key,
                    project,
                    _encoded("jobs", {"payload": dict(payload or {})})["payload"],
                    QUEUED,
                    max_attempts,
                    now(),
                ],
            )
            created = cursor.rowcount == 1
        job_id = self.db.execute("select id from jobs where kind = ? and key = ?", [kind, key]).fetchone()[0]
        return job_id, created

    def job(self, job_id: int) -> Job | None:
        return next((Job.from_row(row) for row in self.db["jobs"].rows_where("id = ?", [job_id])), None)

    def jobs(self, kind: str | None = None, status: str | None = None) -> list[Job]:
        clauses, args = [], []
        for column, value in (("kind", kind), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        rows = self.db["jobs"].rows_where(" and ".join(clauses) or None, args or None, order_by="id")
        return [Job.from_row(row) for row in rows]

    def claim(
        self, kind: str, owner: str, *, lease_seconds: float, projects: Iterable[str] | None = None
    ) -> Job | None:
        """Lease the oldest claimable job of ``kind`` to ``owner``: queued (and past ``not_before``), or running
        with an expired lease (its worker died). ``projects`` limits the claim to jobs of those projects."""
        clock = self.clock()
        where = "kind = ? and ((status = 'queued' and not_before <= ?) or (status = 'running' and lease_expires < ?))"
        args: list = [kind, clock, clock]
        if projects is not None:
            projects = list(projects)
            if not projects:
                return None
            where += f" and project in ({', '.join('?' for _ in projects)})"
            args += projects
        with self.transaction():
            # a worker that died (or hung) holding a job spent an attempt; out of attempts, the job ends here
            self.db.execute(
                "update jobs set status = 'failed', finished_at = ?, lease_owner = null,"
                " error = coalesce(error || ' | ', '') || 'its worker stopped responding ' || attempts ||"
                " ' time(s); no attempts left'"
                " where kind = ? and status = 'running' and lease_expires < ? and attempts >= max_attempts",
                [now(), kind, clock],
            )
            row = self.db.execute(
                f"update jobs set status = 'running', attempts = attempts + 1, lease_owner = ?, lease_expires = ?,"
                f" heartbeat_at = ?, started_at = ? where id = (select id from jobs where {where} order by id limit 1)"
                " returning id",
                [owner, clock + lease_seconds, now(), now(), *args],
            ).fetchone()
        return None if row is None else self.job(row[0])

    def heartbeat(self, job_id: int, owner: str, *, lease_seconds: float) -> bool:
        """Renew ``owner``'s lease; False when the job is no longer leased to it."""
        with self.transaction():
            cursor = self.db.execute(
                "update jobs set lease_expires = ?, heartbeat_at = ? where id = ? and lease_owner = ?"
                " and status = 'running'",
                [self.clock() + lease_seconds, now(), job_id, owner],
            )
        return cursor.rowcount == 1

    def complete(self, job_id: int, owner: str, result: dict | None = None) -> bool:
        with self.transaction():
            cursor = self.db.execute(
                "update jobs set status = 'done', result = ?, error = null, finished_at = ?, lease_owner = null"
                " where id = ? and lease_owner = ? and status = 'running'",
                [_encoded("jobs", {"result": dict(result or {})})["result"], now(), job_id, owner],
            )
        return cursor.rowcount == 1

    def fail(self, job_id: int, owner: str, error: str, *, retry_after: float = 0.0) -> str:
        """Record a failed attempt: queued again after ``retry_after`` seconds while attempts remain, else failed.
        Returns the job's new status."""
        with self.transaction():
            row = self.db.execute(
                "update jobs set status = case when attempts < max_attempts then 'queued' else 'failed' end,"
                " error = ?, not_before = ?, lease_owner = null,"
                " finished_at = case when attempts < max_attempts then null else ? end"
                " where id = ? and lease_owner = ? and status = 'running' returning status",
                [readable(error), self.clock() + retry_after, now(), job_id, owner],
            ).fetchone()
        return row[0] if row else self.job(job_id).status

    def release(self, job_id: int, owner: str, *, retry_after: float = 0.0, note: str | None = None) -> None:
        """Give a job back without counting the attempt (shutdown, or its input is not ready yet)."""
        with self.transaction():
            self.db.execute(
                "update jobs set status = 'queued', attempts = max(attempts - 1, 0), lease_owner = null,"
                " not_before = ?, error = coalesce(?, error) where id = ? and lease_owner = ? and status = 'running'",
                [self.clock() + retry_after, None if note is None else readable(note), job_id, owner],
            )

    def recover_jobs(self) -> list[Job]:
        """At start-up, when no other worker can be alive: running jobs were interrupted by a crash. Each is
        queued again (the interrupted attempt counts) or failed when out of attempts. Returns the jobs touched."""
        with self.transaction():
            rows = self.db.execute(
                "update jobs set status = case when attempts < max_attempts then 'queued' else 'failed' end,"
                " error = 'interrupted (the service stopped while it ran)', lease_owner = null, not_before = 0,"
                " finished_at = case when attempts < max_attempts then null else ? end"
                " where status = 'running' returning id",
                [now()],
            ).fetchall()
        return [self.job(row[0]) for row in rows]

    def supersede_jobs(self, kind: str, *, inbox_path: str, keep: int) -> list[int]:
        """Cancel the queued jobs of ``kind`` for an earlier version of the set dropped at ``inbox_path`` (all but
        ``keep``); running jobs go on. Returns the ids cancelled."""
        with self.transaction():
            rows = self.db.execute(
                "update jobs set status = 'superseded', finished_at = ?,"
                " error = 'a newer version of the set was dropped (job ' || ? || ')'"
                " where kind = ? and status = 'queued' and id != ? and json_extract(payload, '$.inbox_path') = ?"
                " returning id",
                [now(), keep, kind, keep, inbox_path],
            ).fetchall()
        return sorted(row[0] for row in rows)

    def retry(self, job_id: int) -> bool:
        """Queue a failed job again with fresh attempts (an admin's retry, or the same set dropped again); False
        when the job is not failed."""
        with self.transaction():
            cursor = self.db.execute(
                "update jobs set status = 'queued', attempts = 0, not_before = 0, error = null, finished_at = null,"
                " lease_owner = null where id = ? and status = 'failed'",
                [job_id],
            )
        return cursor.rowcount == 1

    # -- intake of labelled sets --------------------------------------------------------------

    def record_intake(
        self,
        *,
        name: str,
        inbox_path: str,
        signature: str,
        content_hash: str | None,
        status: str,
        problems: Sequence[Mapping] = (),
        project: str | None = None,
        store_dir: str | None = None,
        job_id: int | None = None,
    ) -> int:
        """Record the intake's decision on a labelled set folder (``status`` "accepted" or "rejected"), with the
        problems that rejected it (``{"file": ..., "message": ...}`` each) or the project, managed copy and
        training job of an accepted one."""
        row = {
            "detected_at": now(),
            "name": name,
            "inbox_path": inbox_path,
            "signature": signature,
            "content_hash": content_hash,
            "status": status,
            "problems": [dict(problem) for problem in problems],
            "project": project,
            "store_dir": store_dir,
            "job_id": job_id,
        }
        return self.db["labelled_sets"].insert(_encoded("labelled_sets", row)).last_pk

    def last_intake(self, inbox_path: str) -> Intake | None:
        rows = self.db["labelled_sets"].rows_where("inbox_path = ?", [inbox_path], order_by="id desc", limit=1)
        return next((_intake(row) for row in rows), None)

    def intakes(self) -> list[Intake]:
        """Every intake decision, newest first."""
        return [_intake(row) for row in self.db["labelled_sets"].rows_where(order_by="id desc")]

    # -- images and measurements --------------------------------------------------------------

    def image(self, image_id: str) -> Image | None:
        return next((Image.from_row(row) for row in self.db["images"].rows_where("id = ?", [image_id])), None)

    def latest_image(self, project: str, relpath: str) -> Image | None:
        rows = self.db["images"].rows_where(
            "project = ? and relpath = ?", [project, relpath], order_by="landed_at desc, rowid desc", limit=1
        )
        return next((Image.from_row(row) for row in rows), None)

    def images(self, project: str | None = None, status: str | None = None) -> list[Image]:
        clauses, args = [], []
        for column, value in (("project", project), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        rows = self.db["images"].rows_where(" and ".join(clauses) or None, args or None, order_by="rowid")
        return [Image.from_row(row) for row in rows]

    def add_image(self, **fields) -> bool:
        """Insert an image version; False when this path + content hash is already known."""
        fields = _columns("images", fields)
        with self.transaction():
            cursor = self.db.execute(
                f"insert or ignore into images ({', '.join(fields)}) values ({', '.join('?' for _ in fields)})",
                list(fields.values()),
            )
        return cursor.rowcount == 1

    def result_path_of(self, project: str, relpath: str) -> str | None:
        """The mask path an earlier version of this image path was given, if any."""
        row = self.db.execute(
            "select mask_path from images where project = ? and relpath = ? and mask_path is not null"
            " order by rowid desc limit 1",
            [project, relpath],
        ).fetchone()
        return None if row is None else row[0]

    def result_path_owner(self, project: str, mask_path: str) -> str | None:
        """The image path whose results are written to ``mask_path``, if any."""
        row = self.db.execute(
            "select relpath from images where project = ? and mask_path = ? limit 1", [project, mask_path]
        ).fetchone()
        return None if row is None else row[0]

    def requeue_image(self, image_id: str, *, size: int, mtime_ns: int) -> bool:
        """An older version of a path came back (A → B → A): it is the path's latest version again and its job is
        queued once more, so the results follow the content that is there. False when its job is running."""
        with self.transaction():
            image = self.image(image_id)
            cursor = self.db.execute(
                "update jobs set status = 'queued', attempts = 0, not_before = 0, error = null, finished_at = null,"
                " lease_owner = null where id = ? and status != 'running'",
                [image.job_id],
            )
            if cursor.rowcount != 1:
                return False
            self.db["images"].update(
                image_id,
                {"status": QUEUED, "size": size, "mtime_ns": mtime_ns, "landed_at": self.clock(), "error": None},
            )
        return True

    def update_image(self, image_id: str, **fields) -> None:
        """Set columns of an image (names checked against the schema)."""
        self.db["images"].update(image_id, _columns("images", fields))

    def finish_image(self, image_id: str, job_id: int, owner: str, *, rows: list[dict], **fields) -> bool:
        """In one transaction: the image is done, its measurement rows replace those of any older version of the
        same path, and its job is done. False (and nothing written) when the job is no longer leased to ``owner``."""
        image = self.image(image_id)
        with self.transaction():
            cursor = self.db.execute(
                "update jobs set status = 'done', finished_at = ?, lease_owner = null, error = null"
                " where id = ? and lease_owner = ? and status = 'running'",
                [now(), job_id, owner],
            )
            if cursor.rowcount != 1:
                return False
            self.db.execute(
                "delete from measurements where project = ? and relpath = ?", [image.project, image.relpath]
            )
            self.db["measurements"].insert_all(
                _encoded(
                    "measurements",
                    {
                        "image_id": image_id,
                        "project": image.project,
                        "relpath": image.relpath,
                        "model_id": fields.get("model_id"),
                        "class_index": row["class_index"],
                        "row": row,
                    },
                )
                for row in rows
            )
            self.db["images"].update(image_id, _columns("images", {"status": DONE, "processed_at": now(), **fields}))
        return True

    def measurements(self, project: str) -> list[dict]:
        """The measurement rows of a project, by path then class, with the image's relative path and model."""
        rows = self.db.execute(
            "select m.relpath, m.model_id, m.row, i.processed_at from measurements m join images i on i.id = m.image_id"
            " where m.project = ? order by m.relpath, m.class_index",
            [project],
        ).fetchall()
        return [
            {**measurement_row(text), "path": relpath, "model_id": model_id, "processed_at": at}
            for relpath, model_id, text, at in rows
        ]

    # -- projects and activation --------------------------------------------------------------

    def model(self, model_id: str) -> Model | None:
        return next((Model.from_row(row) for row in self.db["models"].rows_where("id = ?", [model_id])), None)

    def active_model(self, project: str) -> Model | None:
        rows = list(self.db["projects"].rows_where("name = ?", [project]))
        if not rows or not rows[0]["active_model_id"]:
            return None
        return self.model(rows[0]["active_model_id"])

    def active_projects(self) -> dict[str, str]:
        """Project → active model id, for projects that have one."""
        return {
            row["name"]: row["active_model_id"] for row in self.db["projects"].rows_where("active_model_id is not null")
        }

    def record_activation(
        self,
        *,
        project: str,
        model_id: str,
        previous_model_id: str | None,
        new_score: float | None,
        previous_score: float | None,
        activated: bool,
        reason: str,
        baseline_score: float | None = None,
        model_mean_iou: float | None = None,
    ) -> int:
        """Store an activation decision and make ``project`` the model's project; when ``activated``, make the model
        the project's active one, in one go.
        ``baseline_score`` and ``model_mean_iou``: the quality gate's numbers (test mean IoU with background of
        Otsu thresholding and of the model), when it was applied."""
        with self.transaction():
            decision = (
                self.db["activations"]
                .insert(
                    {
                        "project": project,
                        "model_id": model_id,
                        "previous_model_id": previous_model_id,
                        "new_score": new_score,
                        "previous_score": previous_score,
                        "activated": int(activated),
                        "reason": reason,
                        "baseline_score": baseline_score,
                        "model_mean_iou": model_mean_iou,
                        "decided_at": now(),
                    }
                )
                .last_pk
            )
            self.db["models"].update(model_id, {"project": project})  # decided for a project: the model's project
            if activated:
                if previous_model_id:
                    self.db["models"].update(previous_model_id, {"active": 0})
                self.db["models"].update(model_id, {"active": 1})
                self.db["projects"].insert(
                    {"name": project, "active_model_id": model_id, "updated_at": now()}, replace=True
                )
        return decision

    def activations(self, project: str | None = None) -> list[Activation]:
        where, args = ("project = ?", [project]) if project else (None, None)
        return [Activation.from_row(row) for row in self.db["activations"].rows_where(where, args, order_by="id")]

    def decision_for(self, model_id: str) -> Activation | None:
        rows = self.db["activations"].rows_where("model_id = ?", [model_id], order_by="id desc", limit=1)
        return next((Activation.from_row(row) for row in rows), None)

    # -- service components -------------------------------------------------------------------

    def forget_components(self) -> None:
        self.db["components"].delete_where()

    def component_beat(
        self,
        name: str,
        *,
        state: str,
        detail: str = "",
        interval: float,
        pid: int,
        onnx_providers: Sequence[str] = (),
    ) -> None:
        self.db["components"].insert(
            {
                "name": name,
                "pid": pid,
                "state": state,
                "detail": detail,
                "interval": interval,
                "heartbeat": self.clock(),
                "at": now(),
                "onnx_providers": ",".join(onnx_providers),
            },
            replace=True,
        )

    def components(self) -> list[Component]:
        return [Component.from_row(row) for row in self.db["components"].rows_where(order_by="name")]

    # -- cluster --------------------------------------------------------------------------------

    def see_nodes(self, nodes: Sequence[Mapping]) -> None:
        """Record the cluster's nodes as Ray reports them now (``node_id``, ``address``, ``alive`` and what else is
        known); a node Ray no longer lists stays, marked not alive."""
        with self.transaction():
            self.db.execute("update cluster_nodes set alive = 0")
            for node in nodes:
                self.db["cluster_nodes"].upsert(
                    {**_columns("cluster_nodes", node), "seen_at": now()}, pk="node_id", alter=False
                )

    def update_node(self, node_id: str, **fields) -> None:
        """Change what is known of one node (``running``, ``free_memory_mb``, ``device``, ``alive`` …)."""
        self.db["cluster_nodes"].upsert(
            {**_columns("cluster_nodes", fields), "node_id": node_id, "seen_at": now()}, pk="node_id", alter=False
        )

    def cluster_nodes(self) -> list[ClusterNode]:
        return [ClusterNode.from_row(row) for row in self.db["cluster_nodes"].rows_where(order_by="address, node_id")]

    def give_up(self, job_id: int, owner: str, error: str) -> None:
        """Fail a job at once, attempts left or not (its input can never work, e.g. an unreadable image)."""
        with self.transaction():
            self.db.execute(
                "update jobs set status = 'failed', error = ?, finished_at = ?, lease_owner = null"
                " where id = ? and lease_owner = ? and status = 'running'",
                [readable(error), now(), job_id, owner],
            )
