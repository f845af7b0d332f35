"""Read-only queries of the status page: :class:`~appliance.store.Store` inherits them.

Every one tolerates a store written by an older appliance: a missing table reads as no rows. The 10,000-image case
is why the results queries filter, aggregate and limit in SQL rather than in Python.
"""

from __future__ import annotations

from typing import TypeVar

import sqlite_utils

from appliance.store.rows import Event, Image, Job, Row, Run, StoredMeasurement

R = TypeVar("R", bound=Row)


def _image_filter(project: str | None, since: str | None, until: str | None, prefix: str = "") -> tuple[str, list]:
    clauses, args = [], []
    if project:
        clauses.append(f"{prefix}project = ?")
        args.append(project)
    if since:
        clauses.append(f"{prefix}processed_at >= ?")
        args.append(since)
    if until:
        clauses.append(f"{prefix}processed_at < ?")
        args.append(until)
    return (" and ".join(clauses) or "1"), args


def measurement_row(text: str | None) -> dict:
    """A stored measurement row (JSON text) as a dict; empty when it is not JSON."""
    return StoredMeasurement.from_row({"row": text}).row or {}


class PageReads:
    """The page's SELECTs (mixed into :class:`~appliance.store.Store`, whose ``db`` they read)."""

    db: sqlite_utils.Database

    def has_table(self, name: str) -> bool:
        return self.db[name].exists()

    def _rows_where(self, kind: type[R], where: str | None = None, args=None, **options) -> list[R]:
        """``sqlite_utils`` ``rows_where`` of ``kind``'s table as typed rows (columns not selected are None); no rows
        when the table does not exist yet."""
        if not self.has_table(kind.table):
            return []
        return [kind.from_row(row) for row in self.db[kind.table].rows_where(where, args, **options)]

    def queue_counts(self) -> list[tuple[str, str, int]]:
        """``(kind, status, count)`` of the job queue."""
        if not self.has_table("jobs"):
            return []
        return self.db.execute("select kind, status, count(*) from jobs group by kind, status order by kind").fetchall()

    def recent_events(self, *, levels: tuple[str, ...] | None = None, limit: int = 50) -> list[Event]:
        """The newest events of every run and of the service, optionally only of some levels."""
        where, args = None, None
        if levels:
            where, args = f"level in ({', '.join('?' for _ in levels)})", list(levels)
        return self._rows_where(Event, where, args, order_by="id desc", limit=limit)

    def projects(self) -> list[str]:
        """Every project the appliance knows: with images, with an active model or from an accepted set (a rejected
        set's project does not exist yet)."""
        names: set[str] = set()
        for table, column, where in (
            ("images", "project", "1"),
            ("projects", "name", "1"),
            ("labelled_sets", "project", "status = 'accepted'"),
        ):
            if self.has_table(table):
                names.update(
                    r[0] for r in self.db.execute(f"select distinct {column} from {table} where {where}") if r[0]
                )
        return sorted(names)

    def image_status_counts(self, *, project: str | None = None) -> dict[str, int]:
        if not self.has_table("images"):
            return {}
        where, args = _image_filter(project, None, None)
        return dict(
            self.db.execute(f"select status, count(*) from images where {where} group by status", args).fetchall()
        )

    def recent_images(
        self,
        *,
        project: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 200,
    ) -> list[Image]:
        """The newest segmented images (status ``done``), newest first, within the filters."""
        where, args = _image_filter(project, since, until)
        return self._rows_where(
            Image,
            f"status = 'done' and {where}",
            args,
            order_by="processed_at desc, rowid desc",
            limit=limit,
            select="id, project, relpath, model_id, overlay_path, mask_path, processed_at",
        )

    def measurement_rows(
        self,
        *,
        project: str | None = None,
        since: str | None = None,
        until: str | None = None,
        image_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Measurement rows (latest version of each image) within the filters, newest image first, with the image's
        processing time (at most ``limit``). ``row``: one measurement row (a dict)."""
        if not (self.has_table("measurements") and self.has_table("images")):
            return []
        where, args = _image_filter(project, since, until, prefix="i.")
        if image_id:
            where, args = where + " and m.image_id = ?", [*args, image_id]
        return [
            {
                "project": project,
                "relpath": relpath,
                "model_id": model_id,
                "row": measurement_row(text),
                "processed_at": at,
            }
            for project, relpath, model_id, text, at in self.db.execute(
                "select m.project, m.relpath, m.model_id, m.row, i.processed_at from measurements m"
                f" join images i on i.id = m.image_id where {where}"
                " order by i.processed_at desc, m.relpath, m.class_index"
                + ("" if limit is None else f" limit {int(limit)}"),
                args,
            )
        ]

    def measurement_count(
        self, *, project: str | None = None, since: str | None = None, until: str | None = None
    ) -> int:
        if not (self.has_table("measurements") and self.has_table("images")):
            return 0
        where, args = _image_filter(project, since, until, prefix="i.")
        return self.db.execute(
            f"select count(*) from measurements m join images i on i.id = m.image_id where {where}", args
        ).fetchone()[0]

    def daily_trends(
        self, *, project: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[dict]:
        """Per project, day and class: images, mean confluence (pixel fraction) and mean and total object counts."""
        if not (self.has_table("measurements") and self.has_table("images")):
            return []
        where, args = _image_filter(project, since, until, prefix="i.")
        columns = ("project", "day", "class", "images", "mean_confluence", "mean_objects", "objects")
        return [
            dict(zip(columns, r, strict=True))
            for r in self.db.execute(
                "select m.project, substr(i.processed_at, 1, 10) as day,"
                " coalesce(json_extract(m.row, '$.class_name'), 'class ' || m.class_index) as class_name,"
                " count(*), avg(json_extract(m.row, '$.pixel_fraction')), avg(json_extract(m.row, '$.object_count')),"
                " sum(json_extract(m.row, '$.object_count'))"
                f" from measurements m join images i on i.id = m.image_id where {where}"
                " group by m.project, day, class_name order by day, m.project, class_name",
                args,
            )
        ]

    def problem_images(self, *, limit: int = 500) -> list[Image]:
        """Images that were not segmented (failed, missing, superseded), newest first."""
        return self._rows_where(
            Image,
            "status in ('failed', 'missing', 'superseded')",
            order_by="rowid desc",
            limit=limit,
            select="project, relpath, status, error, detected_at",
        )

    def failed_jobs(self, *, limit: int = 200) -> list[Job]:
        return self._rows_where(
            Job,
            "status = 'failed'",
            order_by="id desc",
            limit=limit,
            select="id, kind, project, attempts, error, finished_at",
        )

    def failed_runs(self) -> list[Run]:
        return self._rows_where(
            Run, "status = 'failed'", order_by="created_at desc", select="id, set_name, error, finished_at"
        )

    def images_waiting_for_a_model(self) -> list[dict]:
        """Per project whose images wait in the queue without an active model: how many, since when, and the latest
        training job of that project (None when no labelled set was ever accepted for it)."""
        if not self.has_table("jobs"):
            return []
        active = self.active_projects()
        rows = self.db.execute(
            "select project, count(*), min(created_at) from jobs where kind = 'segment' and status = 'queued'"
            " group by project order by project"
        ).fetchall()
        waiting = []
        for project, count, since in rows:
            if project in active:
                continue
            training = self.db.execute(
                "select id, status, error from jobs where kind = 'train' and project = ? order by id desc limit 1",
                [project],
            ).fetchone()
            job = None if training is None else Job(id=training[0], status=training[1], error=training[2])
            decisions = self.activations(project) if self.has_table("activations") else []
            waiting.append(
                {
                    "project": project,
                    "images": count,
                    "since": since,
                    "training": job,
                    "decision": decisions[-1] if decisions else None,
                }
            )
        return waiting
