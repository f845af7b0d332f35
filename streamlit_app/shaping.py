"""Pure functions that turn store rows into what the status page shows. No Streamlit, no SQLite: the store's typed
rows (:mod:`appliance.store.rows`) in, plain dicts, lists and numbers out, so each one is unit-tested on its own
(``tests/page/test_shaping.py``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from appliance.automl.schedule import selection_score, step_count
from appliance.service.health import component_alive
from appliance.store import RUNNING_RUN, JobStatus, RunStatus
from appliance.store.rows import (
    Activation,
    ClusterNode,
    Component,
    Event,
    Intake,
    Job,
    Model,
    Run,
    StepResult,
    Trial,
)

SURVIVING = ("active", "winner")


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time stamp from the store as an aware datetime (UTC when it has no zone), or None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def local_time(text: str | None, tz=None) -> str:
    """A store time stamp (UTC, ISO 8601) as ``"YYYY-MM-DD HH:MM:SS"`` in the page's local time zone (or ``tz``).

    >>> local_time("2026-01-01T12:00:00+00:00", tz=UTC), local_time(None)
    ('2026-01-01 12:00:00', '')
    """
    moment = parse_time(text)
    return "" if moment is None else f"{moment.astimezone(tz):%Y-%m-%d %H:%M:%S}"


def event_rows(events: Iterable[Event], *, with_run: bool = True) -> list[dict]:
    """Events for a table: local time, level, run (or "service"), message."""
    rows = []
    for e in events:
        row = {"at": local_time(e.at), "level": e.level}
        if with_run:
            row["run"] = e.run_id or "service"
        row["message"] = e.message
        rows.append(row)
    return rows


def format_duration(seconds: float | None) -> str:
    """``"-"``, ``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``.

    >>> format_duration(42.4), format_duration(185), format_duration(7620), format_duration(None)
    ('42 s', '3 min 05 s', '2 h 07 min', '-')
    """
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_bytes(count: float | None) -> str:
    """Bytes as ``"512 B"``, ``"3.2 MB"``, ``"41.0 GB"`` (powers of 1024).

    >>> format_bytes(512), format_bytes(3.2 * 1024**2), format_bytes(41 * 1024**3)
    ('512 B', '3.2 MB', '41.0 GB')
    """
    if count is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


# -- overview -----------------------------------------------------------------------------------------------------


def component_health(components: Iterable[Component], *, clock: float) -> list[dict]:
    """One row per service component: state, detail, seconds since its heartbeat and whether it is alive
    (:func:`appliance.service.health.component_alive`, the rule of ``appliance health``)."""
    rows = []
    for component in components:
        beat = component.heartbeat
        age = None if beat is None else max(0.0, clock - beat)
        alive = component_alive(component.state, beat, component.interval, clock=clock)
        rows.append(
            {
                "component": component.name,
                "ok": alive,
                "status": "alive" if alive else "not responding",
                "state": component.state or "",
                "last heartbeat": "never" if age is None else f"{format_duration(age)} ago",
                "detail": component.detail or "",
            }
        )
    return rows


def short_node(node_id: str | None) -> str:
    """A Ray node id (56 hex digits) as the page shows it; "here" for a slice the appliance trained itself."""
    return node_id[:8] if node_id else "here"


def cluster_node_rows(nodes: Iterable[ClusterNode], step_results: Iterable[StepResult] = ()) -> list[dict]:
    """One row per cluster node as the head last saw it, with how many of the shown run's slices it trained."""
    trained: dict[str, int] = {}
    for result in step_results:
        if result.node:
            trained[result.node] = trained.get(result.node, 0) + 1
    return [
        {
            "node": short_node(node.node_id),
            "address": node.address or "",
            "alive": bool(node.alive),
            "device": node.device or "(no worker yet)",
            "trials at once": node.slots or 0,
            "free memory": format_bytes(node.free_memory_mb * 2**20) if node.free_memory_mb is not None else "",
            "running": node.running or ("idle" if node.alive else "-"),
            "slices of this run": trained.get(node.node_id, 0),
            "last seen": local_time(node.seen_at),
        }
        for node in nodes
    ]


def trial_nodes(step_results: Iterable[StepResult]) -> dict[int, str]:
    """Each trial's node, as ``rank -> short node id`` (its slices in step order, "→" where it moved)."""
    nodes: dict[int, list[str]] = {}
    for result in sorted(step_results, key=lambda r: (r.rank, r.step)):
        name = short_node(result.node)
        if not nodes.get(result.rank) or nodes[result.rank][-1] != name:
            nodes.setdefault(result.rank, []).append(name)
    return {rank: " → ".join(names) for rank, names in nodes.items()}


def queue_summary(counts: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """``(kind, status, count)`` rows as ``{kind: {status: count}}`` with every status present (0 when none).

    >>> queue_summary([("segment", "queued", 3), ("train", "done", 1)])["train"]
    {'queued': 0, 'running': 0, 'done': 1, 'failed': 0}
    """
    statuses = ("queued", "running", "done", "failed")
    summary: dict[str, dict[str, int]] = {}
    for kind, status, count in counts:
        summary.setdefault(kind, dict.fromkeys(statuses, 0))
        summary[kind][status] = summary[kind].get(status, 0) + count
    return summary


def disk_state(free: int, total: int, reserve_gb: float) -> dict:
    """Free space on the data disk against the training reserve."""
    reserve = reserve_gb * 1024**3
    return {
        "free": format_bytes(free),
        "total": format_bytes(total),
        "used_fraction": 0.0 if total <= 0 else 1 - free / total,
        "below_reserve": free < reserve,
        "reserve": format_bytes(reserve),
    }


# -- training runs ------------------------------------------------------------------------------------------------


def halving_chart_rows(step_results: Iterable[StepResult], trials: Iterable[Trial]) -> list[dict]:
    """Validation IoU of every trial after every step (steps counted from 1), with the trial's status and whether it
    is still in the race (``active`` or ``winner``): the data of the live successive-halving chart. Trials are named
    in words, "configuration 3 of 12" in the race's order, with their settings for the hover."""
    trials = list(trials)
    status = {t.rank: t for t in trials}
    position = {rank: index for index, rank in enumerate(sorted(status), start=1)}
    rows = []
    for r in step_results:
        trial = status.get(r.rank, Trial())
        state = trial.status or "active"
        name = f"configuration {position[r.rank]} of {len(trials)}" if r.rank in position else f"#{r.rank}"
        rows.append(
            {
                "trial": name,
                "configuration": r.config_id,
                "settings": config_summary(trial.config),
                "rank": r.rank,
                "step": r.step + 1,
                "validation_score": selection_score(r),
                "status": state,
                "survivor": state in SURVIVING,
            }
        )
    return sorted(rows, key=lambda row: (row["rank"], row["step"]))


def race_plan(run: Run) -> dict | None:
    """The budget-aware race plan recorded with a run, for people: n, the steps, each step's budget, the winner's
    share, why this n, and each trial's throughput on the device. None for a run without a plan (older runs)."""
    plan = run.plan
    if not isinstance(plan, dict) or "schedule" not in plan:
        return None
    schedule = plan["schedule"]
    return {
        "n": plan["n"],
        "search": plan.get("search", True),
        "reason": plan.get("reason", ""),
        "active": " → ".join(str(a) for a in schedule["active"]),
        "step_budgets": ", ".join(format_duration(s) for s in schedule["step_seconds"]),
        "race_budget": format_duration(schedule["budget_seconds"]),
        "winner_share": schedule["winner_share"],
        "floor_steps": plan.get("floor_steps"),
        "trials": [
            {
                "configuration": t["config_id"],
                "MPix/s": round(t["mpix_per_second"], 3),
                "steps/s": round(t["steps_per_second"], 2),
                "throughput": t.get("throughput_source"),
                "first-slice steps (planned)": round(t["first_slice_steps"]),
                # a fidelity-aware meta-model scores each configuration after what it would train here
                "scored after (MP)": None if t.get("predicted_at_mp") is None else round(t["predicted_at_mp"], 1),
            }
            for t in plan.get("trials", [])
        ],
    }


def living_metabase_line(rows: int, runs: int, sets: Sequence[str], devices: Sequence[str]) -> str:
    """What the data dir's living meta-base holds, for people.

    >>> living_metabase_line(0, 0, (), ())
    "This appliance's meta-base: no learning curves yet (each finished, ranked run adds its own)."
    >>> living_metabase_line(14, 2, ("hela",), ("cpu",))
    "This appliance's meta-base: 14 learning-curve points from 2 run(s) on hela (cpu)."
    """
    if not rows:
        return "This appliance's meta-base: no learning curves yet (each finished, ranked run adds its own)."
    where = ", ".join(sets) + (f" ({', '.join(devices)})" if devices else "")
    return f"This appliance's meta-base: {rows} learning-curve points from {runs} run(s) on {where}."


def test_image_count(run: Run | None) -> int | None:
    """How many test images a run's test IoU rests on (None when its split is unknown).

    >>> test_image_count(Run(split={"train": ["a", "b"], "validation": ["c"], "test": ["d", "e"]}))
    2
    """
    try:
        return len(run.split["test"])
    except (AttributeError, TypeError, KeyError):
        return None


def budget_progress(run: Run, step_results: Sequence[StepResult], n_trials: int, *, now: datetime) -> dict:
    """Budget of the successive halving of a run: seconds used and left, fraction, ETA and the step reached.

    Used = the wall seconds of the recorded slices (time a resumed run spent before a restart still counts, as in
    the halving schedule itself); while the run trains, the time since its last recorded slice is added. A finished
    run reports its measured halving time. The ETA is when the budget runs out (halving then stops; the winner's
    test and export follow, which take seconds to a minute).
    """
    budget = float(run.budget_seconds or 0.0)
    status = run.status or ""
    steps_total = step_count(n_trials) if n_trials else 0
    recorded = sum(float(r.wall_seconds or 0.0) for r in step_results)
    if status in (RunStatus.FINISHED, RunStatus.EXPORTING) and run.halving_seconds:
        used = float(run.halving_seconds)
    else:
        used = recorded
        if status == RunStatus.HALVING:
            last = max((parse_time(r.finished_at) for r in step_results if r.finished_at), default=None)
            since = last or parse_time(run.started_at)
            if since is not None:
                used += max(0.0, (now - since).total_seconds())
    left = max(0.0, budget - used) if status in (RunStatus.HALVING, RunStatus.RANKING, RunStatus.CREATED) else 0.0
    step_reached = 1 + max((r.step for r in step_results), default=-1)
    return {
        "budget_seconds": budget,
        "used_seconds": used,
        "left_seconds": left,
        "fraction": 0.0 if budget <= 0 else min(1.0, used / budget),
        "eta": None if not left else now.timestamp() + left,
        "steps_total": steps_total,
        "step_reached": step_reached,
        "running": status in RUNNING_RUN,
    }


def predicted_vs_realised(trials: Iterable[Trial], step_results: Iterable[StepResult]) -> list[dict]:
    """For every trial with at least one validation score: the meta-model's predicted score, the last (realised)
    validation IoU, the step it was reached at, and the trial's status."""
    last: dict[int, StepResult] = {}
    for r in step_results:
        if r.validation_iou is None:
            continue
        if r.rank not in last or r.step > last[r.rank].step:
            last[r.rank] = r
    rows = []
    for t in trials:
        result = last.get(t.rank)
        if result is None:
            continue
        rows.append(
            {
                "rank": t.rank,
                "configuration": t.config_id,
                "predicted": t.predicted_score,
                "realised": result.validation_iou,
                "after step": result.step + 1,
                "status": t.status,
            }
        )
    return rows


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None with fewer than 3 pairs or no spread.

    >>> round(rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]), 6), round(rank_correlation([1, 2, 3], [3, 2, 1]), 6)
    (1.0, -1.0)
    """
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
    if len(pairs) < 3:
        return None

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return None
    return cov / (sx * sy)


def config_summary(config: Mapping | None) -> str:
    """``"patch 128, batch 16, lr 0.001, resnet18, flip 0.5"`` from a trial's configuration."""
    if not isinstance(config, Mapping):
        return ""
    parts = []
    for key, label in (("patch_size", "patch"), ("batch_size", "batch"), ("learning_rate", "lr")):
        if key in config:
            parts.append(f"{label} {config[key]:g}" if isinstance(config[key], float) else f"{label} {config[key]}")
    if "encoder" in config:
        parts.append(str(config["encoder"]))
    for key, label in (("flip", "flip"), ("brightness_blur", "bright/blur"), ("grid_distortion", "grid")):
        if config.get(key):
            parts.append(f"{label} {config[key]:g}")
    return ", ".join(parts)


# -- models -------------------------------------------------------------------------------------------------------


def model_projects(models: Iterable[Model]) -> dict[str, str]:
    """Model id → project (each model records its own; see :class:`appliance.store.Store`)."""
    return {m.id: m.project or m.set_name or "(no project)" for m in models}


def per_class_scores(test: Mapping | None, class_names: Sequence[str]) -> list[dict]:
    """Rows of class name, test IoU and Dice from a run's ``qc/test.json`` (index 0 is the background)."""
    if not test:
        return []
    overall = test.get("overall") or {}
    iou, dice = overall.get("iou") or [], overall.get("dice") or []
    rows = []
    for index, score in enumerate(iou):
        name = "background" if index == 0 else (class_names[index - 1] if index - 1 < len(class_names) else str(index))
        rows.append({"class": name, "IoU": score, "Dice": dice[index] if index < len(dice) else None})
    return rows


def object_scores(objects: Mapping) -> dict:
    """One row of a test report's object scores (``instance_scores``), formatted for people.

    >>> row = object_scores({"ap": 0.5, "f1": 0.6667, "precision": 0.75, "recall": 0.6, "count_error": 0.125,
    ...                      "true_objects": 10, "predicted_objects": 8})
    >>> row["AP@0.5"], row["F1"], row["count error"], row["found"]
    ('0.500', '0.667', '12.5%', 8)
    """
    return {
        **{
            label: f"{objects[key]:.3f}"
            for key, label in (("ap", "AP@0.5"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall"))
        },
        "count error": f"{objects['count_error']:.1%}",
        "true objects": objects["true_objects"],
        "found": objects["predicted_objects"],
    }


def activation_history(activations: Iterable[Activation]) -> list[dict]:
    """The decisions of a project, newest first, with both numbers behind each."""
    rows = []
    for a in sorted(activations, key=lambda a: a.id, reverse=True):
        rows.append(
            {
                "decided": local_time(a.decided_at),
                "model": a.model_id,
                "activated": bool(a.activated),
                "new score": a.new_score,
                "active model": a.previous_model_id,
                "its score": a.previous_score,
                "reason": a.reason,
            }
        )
    return rows


def rollback_target(activations: Iterable[Activation], active_model_id: str | None) -> str | None:
    """The model that was active before the current one (from the latest decision that activated the current one)."""
    for a in sorted(activations, key=lambda a: a.id, reverse=True):
        if a.activated and a.model_id == active_model_id:
            return a.previous_model_id
    return None


# -- results ------------------------------------------------------------------------------------------------------


def measurement_table(rows: Iterable[Mapping]) -> list[dict]:
    """Measurement rows of the store (``row``: one row of :func:`appliance.pipeline.measurements.measure`)
    flattened into one dict per image and class."""
    table = []
    for r in rows:
        values = dict(r.get("row") or {})
        table.append(
            {
                "project": r.get("project"),
                "image": r.get("relpath") or values.get("image"),
                "processed_at": r.get("processed_at"),
                "model_id": r.get("model_id"),
                **{k: v for k, v in values.items() if k != "image"},
            }
        )
    return table


def csv_text(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV text (header first); None as an empty cell."""
    import csv
    import io

    columns = list(columns or (rows[0].keys() if rows else []))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


# -- problems -----------------------------------------------------------------------------------------------------


def rejected_set_rows(intakes: Iterable[Intake]) -> list[dict]:
    """One row per problem of each rejected labelled set (file and what to do), newest set first."""
    rows = []
    for intake in intakes:
        if intake.status != "rejected":
            continue
        problems = intake.problems or [{"file": "", "message": "rejected (no problem recorded)"}]
        for problem in problems:
            if isinstance(problem, Mapping):
                file, message = problem.get("file", ""), problem.get("message", "")
            else:
                file, message = "", str(problem)
            rows.append(
                {
                    "set": intake.name,
                    "checked": local_time(intake.detected_at),
                    "file": file,
                    "problem": message,
                    "folder": intake.inbox_path,
                }
            )
    return rows


def waiting_reason(project: str, training: Job | None, decision: Activation | None = None) -> tuple[str, str]:
    """``(level, sentence)``: why a project's images wait for a model and what to do; level ``error`` when
    nothing will ever end the wait by itself.

    >>> waiting_reason("hela", None)[0]
    'error'
    >>> waiting_reason("hela", Job(id=4, status="running"))[1]
    'training job 4 for hela is running; its images are segmented once its model is activated'
    """
    if training is None:
        return "error", (
            f"no labelled set was ever accepted for project {project}, so no model will come: check the folder "
            f"name for a typo (images go to inbox/images/<project>/), or drop a labelled set with "
            f"`project: {project}` in its dataset.yaml"
        )
    if training.status in ("failed", "superseded"):
        return "error", (
            f"the training of project {project} {training.status} (job {training.id}: "
            f"{training.error or 'no reason recorded'}); fix it and run `appliance retry {training.id}` "
            "or retry it below"
        )
    if training.status == JobStatus.DONE:
        if decision is not None and not decision.activated:
            return "error", (
                f"training job {training.id} of project {project} finished, but its model "
                f"{decision.model_id} was not activated: {decision.reason}"
            )
        return "error", (
            f"training job {training.id} of project {project} finished without an active model (not activated); "
            "activate a model on the Models page"
        )
    return "info", (
        f"training job {training.id} for {project} is {training.status}; its images are segmented once its "
        "model is activated"
    )
