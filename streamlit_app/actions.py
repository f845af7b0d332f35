"""The page's admin actions. Each one writes through :class:`appliance.store.Store` in one transaction.

Manual activation records a decision like the automatic rule of :mod:`appliance.service.activation` does, with
the two models' own test-split scores as the numbers and a reason saying it was done by hand; the inference
worker picks the project's active model up with its next image.
"""

from __future__ import annotations

from appliance.store import Store


class ActionError(ValueError):
    """An admin action that cannot be done as asked (the message says why)."""


def activate(store: Store, *, project: str, model_id: str, note: str) -> int:
    """Make ``model_id`` the active model of ``project``; returns the decision's id."""
    model = store.model(model_id)
    if model is None:
        known = ", ".join(m["id"] for m in store.models()) or "none"
        raise ActionError(f"model {model_id!r} is not in the registry; registered models: {known}")
    if not model.get("path"):
        raise ActionError(f"model {model_id} has no exported files yet (its export did not finish)")
    active = store.active_model(project)
    if active is not None and active["id"] == model_id:
        raise ActionError(f"model {model_id} is already the active model of project {project}")
    decision = store.record_activation(
        project=project,
        model_id=model_id,
        previous_model_id=None if active is None else active["id"],
        new_score=model.get("test_iou"),
        previous_score=None if active is None else active.get("test_iou"),
        activated=True,
        reason=f"{note} on the status page (test IoU on each model's own test split)",
    )
    store.event(model.get("run_id"), f"model {model_id} activated for project {project} by hand: {note}")
    return decision


def retry_job(store: Store, *, job_id: int) -> None:
    """Queue a failed job again with fresh attempts."""
    job = store.job(job_id)
    if job is None:
        raise ActionError(f"job {job_id} does not exist")
    if not store.retry(job_id):
        raise ActionError(f"job {job_id} is {job['status']}, not failed: only failed jobs can be retried")
    store.event(None, f"job {job_id} ({job['kind']}, project {job['project']}) queued again by hand")
