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

Each write is its own short transaction, so a process killed at any moment leaves a consistent file.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

SCHEMA: dict[str, tuple[dict, str | tuple[str, ...]]] = {
    "runs": (
        {
            "id": str,
            "set_name": str,
            "set_dir": str,
            "status": str,
            "budget_seconds": float,
            "top_n": int,
            "seed": int,
            "device": str,
            "gpu_memory_gb": float,
            "ranking_source": str,
            "split": str,
            "run_dir": str,
            "winner_config_id": str,
            "validation_iou": float,
            "test_iou": float,
            "model_id": str,
            "halving_seconds": float,
            "error": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
        },
        "id",
    ),
    "rankings": (
        {"run_id": str, "rank": int, "config_id": str, "config": str, "predicted_score": float},
        ("run_id", "rank"),
    ),
    "trials": (
        {
            "run_id": str,
            "rank": int,
            "config_id": str,
            "config": str,
            "predicted_score": float,
            "status": str,
            "dropped_after_step": int,
            "reason": str,
            "probe_peak_memory_mb": float,
            "checkpoint": str,
        },
        ("run_id", "rank"),
    ),
    "step_results": (
        {
            "run_id": str,
            "step": int,
            "rank": int,
            "config_id": str,
            "seconds_trained": float,
            "total_seconds_trained": float,
            "optimizer_steps": int,
            "work_mp": float,
            "validation_iou": float,
            "validation_iou_per_class": str,
            "peak_memory_mb": float,
            "wall_seconds": float,
            "checkpoint": str,
            "finished_at": str,
        },
        ("run_id", "step", "rank"),
    ),
    "steps": (
        {"run_id": str, "step": int, "active": str, "survivors": str, "seconds": float, "finished_at": str},
        ("run_id", "step"),
    ),
    "events": ({"id": int, "run_id": str, "at": str, "level": str, "message": str}, "id"),
    "models": (
        {
            "id": str,
            "run_id": str,
            "set_name": str,
            "config_id": str,
            "path": str,
            "validation_iou": float,
            "test_iou": float,
            "created_at": str,
            "active": int,
        },
        "id",
    ),
}


def now() -> str:
    """UTC time stamp, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """The SQLite store. Opening creates the file and the tables when missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.path)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.enable_wal()
        for name, (columns, pk) in SCHEMA.items():
            self.db[name].create(columns, pk=pk, if_not_exists=True)
        self.db["events"].create_index(["run_id"], if_not_exists=True)

    def close(self) -> None:
        self.db.close()

    # -- runs ---------------------------------------------------------------------------------

    def create_run(self, **fields) -> str:
        run_id = f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        self.db["runs"].insert({"id": run_id, "status": "created", "created_at": now(), **fields})
        return run_id

    def run(self, run_id: str) -> dict:
        return self.db["runs"].get(run_id)

    def runs(self) -> list[dict]:
        return list(self.db["runs"].rows_where(order_by="created_at desc"))

    def update_run(self, run_id: str, **fields) -> None:
        self.db["runs"].update(run_id, fields)

    def unfinished_runs(self, set_dir: str | None = None) -> list[dict]:
        where, args = "status not in ('finished', 'failed')", []
        if set_dir is not None:
            where, args = where + " and set_dir = ?", [set_dir]
        return list(self.db["runs"].rows_where(where, args, order_by="created_at"))

    # -- ranking and trials -------------------------------------------------------------------

    def save_ranking(self, run_id: str, ranking: Iterable[tuple[str, dict, float]]) -> None:
        rows = [
            {"run_id": run_id, "rank": rank, "config_id": config_id, "config": json.dumps(config), "predicted_score": s}
            for rank, (config_id, config, s) in enumerate(ranking, start=1)
        ]
        with self.db.conn:
            self.db["rankings"].delete_where("run_id = ?", [run_id])
            self.db["rankings"].insert_all(rows)

    def ranking(self, run_id: str) -> list[dict]:
        return list(self.db["rankings"].rows_where("run_id = ?", [run_id], order_by="rank"))

    def add_trial(self, run_id: str, rank: int, config_id: str, config: dict, predicted_score: float | None) -> None:
        self.db["trials"].insert(
            {
                "run_id": run_id,
                "rank": rank,
                "config_id": config_id,
                "config": json.dumps(config),
                "predicted_score": predicted_score,
                "status": "active",
            },
            ignore=True,
        )

    def trials(self, run_id: str, status: str | None = None) -> list[dict]:
        where, args = "run_id = ?", [run_id]
        if status is not None:
            where, args = where + " and status = ?", [run_id, status]
        return list(self.db["trials"].rows_where(where, args, order_by="rank"))

    def update_trial(self, run_id: str, rank: int, **fields) -> None:
        self.db["trials"].update((run_id, rank), fields)

    # -- halving steps ------------------------------------------------------------------------

    def record_step_result(self, run_id: str, step: int, rank: int, **fields) -> None:
        self.db["step_results"].insert(
            {"run_id": run_id, "step": step, "rank": rank, "finished_at": now(), **fields}, replace=True
        )

    def step_results(self, run_id: str, step: int | None = None) -> list[dict]:
        where, args = "run_id = ?", [run_id]
        if step is not None:
            where, args = where + " and step = ?", [run_id, step]
        return list(self.db["step_results"].rows_where(where, args, order_by="step, rank"))

    def finish_step(self, run_id: str, step: int, *, active: list[int], survivors: list[int], seconds: float) -> None:
        """Record a finished step and drop the trials that did not survive it, in one transaction."""
        with self.db.conn:
            self.db["steps"].insert(
                {
                    "run_id": run_id,
                    "step": step,
                    "active": json.dumps(active),
                    "survivors": json.dumps(survivors),
                    "seconds": seconds,
                    "finished_at": now(),
                },
                replace=True,
            )
            for rank in active:
                if rank not in survivors:
                    self.db["trials"].update((run_id, rank), {"status": "dropped", "dropped_after_step": step})

    def finished_steps(self, run_id: str) -> list[dict]:
        return list(self.db["steps"].rows_where("run_id = ?", [run_id], order_by="step"))

    # -- events and models --------------------------------------------------------------------

    def event(self, run_id: str | None, message: str, *, level: str = "info") -> None:
        self.db["events"].insert({"run_id": run_id, "at": now(), "level": level, "message": message})

    def events(self, run_id: str | None = None, limit: int = 200) -> list[dict]:
        where, args = ("run_id = ?", [run_id]) if run_id else (None, None)
        return list(self.db["events"].rows_where(where, args, order_by="id desc", limit=limit))

    def register_model(self, **fields) -> str:
        model_id = f"model-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        self.db["models"].insert({"id": model_id, "created_at": now(), "active": 0, **fields})
        return model_id

    def models(self) -> list[dict]:
        return list(self.db["models"].rows_where(order_by="created_at desc"))
