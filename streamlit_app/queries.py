"""Read-only queries the page needs and :class:`appliance.store.Store` does not offer (yet).

Each takes a ``Store`` and reads ``store.db`` with one SELECT, so each can move into ``store.py`` as a method
unchanged. All of them tolerate a store written by an older appliance: a missing table reads as no rows.
The 10,000-image case is why the results queries filter, aggregate and limit in SQL rather than in Python.
"""

from __future__ import annotations

from appliance.store import Store

RECENT_IMAGES = 200


def has_table(store: Store, name: str) -> bool:
    return store.db[name].exists()


def rows_where(store: Store, table: str, where: str | None = None, args=None, **options) -> list[dict]:
    """``sqlite_utils`` ``rows_where`` as a list; no rows when the table does not exist yet."""
    if not has_table(store, table):
        return []
    return list(store.db[table].rows_where(where, args, **options))


def queue_counts(store: Store) -> list[tuple[str, str, int]]:
    """``(kind, status, count)`` of the job queue."""
    if not has_table(store, "jobs"):
        return []
    return store.db.execute("select kind, status, count(*) from jobs group by kind, status order by kind").fetchall()


def recent_events(store: Store, *, levels: tuple[str, ...] | None = None, limit: int = 50) -> list[dict]:
    """The newest events of every run and of the service, optionally only of some levels."""
    where, args = None, None
    if levels:
        where, args = f"level in ({', '.join('?' for _ in levels)})", list(levels)
    return rows_where(store, "events", where, args, order_by="id desc", limit=limit)


def projects(store: Store) -> list[str]:
    """Every project the appliance knows: with images, with an active model or from an accepted set (a rejected
    set's project does not exist yet)."""
    names: set[str] = set()
    for table, column, where in (
        ("images", "project", "1"),
        ("projects", "name", "1"),
        ("labelled_sets", "project", "status = 'accepted'"),
    ):
        if has_table(store, table):
            names.update(r[0] for r in store.db.execute(f"select distinct {column} from {table} where {where}") if r[0])
    return sorted(names)


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


def image_status_counts(store: Store, *, project: str | None = None) -> dict[str, int]:
    if not has_table(store, "images"):
        return {}
    where, args = _image_filter(project, None, None)
    return dict(store.db.execute(f"select status, count(*) from images where {where} group by status", args).fetchall())


def recent_images(
    store: Store,
    *,
    project: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = RECENT_IMAGES,
) -> list[dict]:
    """The newest segmented images (status ``done``), newest first, within the filters."""
    where, args = _image_filter(project, since, until)
    return rows_where(
        store,
        "images",
        f"status = 'done' and {where}",
        args,
        order_by="processed_at desc, rowid desc",
        limit=limit,
        select="id, project, relpath, model_id, overlay_path, mask_path, processed_at",
    )


def measurement_rows(
    store: Store,
    *,
    project: str | None = None,
    since: str | None = None,
    until: str | None = None,
    image_id: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Measurement rows (latest version of each image) within the filters, newest image first, with the image's
    processing time (at most ``limit``). ``row`` is the JSON of one measurement."""
    if not (has_table(store, "measurements") and has_table(store, "images")):
        return []
    where, args = _image_filter(project, since, until, prefix="i.")
    if image_id:
        where, args = where + " and m.image_id = ?", [*args, image_id]
    return [
        dict(zip(("project", "relpath", "model_id", "row", "processed_at"), r, strict=True))
        for r in store.db.execute(
            "select m.project, m.relpath, m.model_id, m.row, i.processed_at from measurements m"
            f" join images i on i.id = m.image_id where {where} order by i.processed_at desc, m.relpath, m.class_index"
            + ("" if limit is None else f" limit {int(limit)}"),
            args,
        )
    ]


def measurement_count(
    store: Store, *, project: str | None = None, since: str | None = None, until: str | None = None
) -> int:
    if not (has_table(store, "measurements") and has_table(store, "images")):
        return 0
    where, args = _image_filter(project, since, until, prefix="i.")
    return store.db.execute(
        f"select count(*) from measurements m join images i on i.id = m.image_id where {where}", args
    ).fetchone()[0]


def daily_trends(
    store: Store, *, project: str | None = None, since: str | None = None, until: str | None = None
) -> list[dict]:
    """Per project, day and class: images, mean confluence (pixel fraction) and mean and total object counts."""
    if not (has_table(store, "measurements") and has_table(store, "images")):
        return []
    where, args = _image_filter(project, since, until, prefix="i.")
    columns = ("project", "day", "class", "images", "mean_confluence", "mean_objects", "objects")
    return [
        dict(zip(columns, r, strict=True))
        for r in store.db.execute(
            "select m.project, substr(i.processed_at, 1, 10) as day,"
            " coalesce(json_extract(m.row, '$.class_name'), 'class ' || m.class_index) as class_name,"
            " count(*), avg(json_extract(m.row, '$.pixel_fraction')), avg(json_extract(m.row, '$.object_count')),"
            " sum(json_extract(m.row, '$.object_count'))"
            f" from measurements m join images i on i.id = m.image_id where {where}"
            " group by m.project, day, class_name order by day, m.project, class_name",
            args,
        )
    ]


def problem_images(store: Store, *, limit: int = 500) -> list[dict]:
    """Images that were not segmented (failed, missing, superseded), newest first."""
    return rows_where(
        store,
        "images",
        "status in ('failed', 'missing', 'superseded')",
        order_by="rowid desc",
        limit=limit,
        select="project, relpath, status, error, detected_at",
    )


def failed_jobs(store: Store, *, limit: int = 200) -> list[dict]:
    return rows_where(
        store,
        "jobs",
        "status = 'failed'",
        order_by="id desc",
        limit=limit,
        select="id, kind, project, attempts, error, finished_at",
    )


def failed_runs(store: Store) -> list[dict]:
    return rows_where(
        store, "runs", "status = 'failed'", order_by="created_at desc", select="id, set_name, error, finished_at"
    )


def images_waiting_for_a_model(store: Store) -> list[dict]:
    """Per project whose images wait in the queue without an active model: how many, since when, and the latest
    training job of that project (None when no labelled set was ever accepted for it)."""
    if not has_table(store, "jobs"):
        return []
    active = store.active_projects()
    rows = store.db.execute(
        "select project, count(*), min(created_at) from jobs where kind = 'segment' and status = 'queued'"
        " group by project order by project"
    ).fetchall()
    waiting = []
    for project, count, since in rows:
        if project in active:
            continue
        training = store.db.execute(
            "select id, status, error from jobs where kind = 'train' and project = ? order by id desc limit 1",
            [project],
        ).fetchone()
        job = None if training is None else dict(zip(("id", "status", "error"), training, strict=True))
        decisions = store.activations(project) if has_table(store, "activations") else []
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
