"""The page's admin actions. Each one writes through :class:`appliance.store.Store` in one transaction.

Manual activation is :func:`appliance.service.activation.activate_by_hand` (the command line's too); the inference
worker picks the project's active model up with its next image.
"""

from __future__ import annotations

from pathlib import Path

from appliance.errors import ApplianceError
from appliance.service.activation import ActivationError, activate_by_hand
from appliance.service.packaging import package_model
from appliance.store import Store


class ActionError(ValueError):
    """An admin action that cannot be done as asked (the message says why)."""


def activate(store: Store, *, project: str, model_id: str, note: str) -> int:
    """Make ``model_id`` the active model of ``project``; returns the decision's id."""
    try:
        return activate_by_hand(store, project=project, model_id=model_id, note=f"{note} on the status page")
    except ActivationError as error:
        raise ActionError(str(error)) from error


def retry_job(store: Store, *, job_id: int) -> None:
    """Queue a failed job again with fresh attempts."""
    job = store.job(job_id)
    if job is None:
        raise ActionError(f"job {job_id} does not exist")
    if not store.retry(job_id):
        raise ActionError(f"job {job_id} is {job.status}, not failed: only failed jobs can be retried")
    store.event(None, f"job {job_id} ({job.kind}, project {job.project}) queued again by hand")


def build_package(store: Store, *, model_id: str) -> Path:
    """Write the model's BioImage Model Zoo package beside its ONNX file (the command line's
    ``appliance export-bioimageio`` writes the same package elsewhere)."""
    try:
        path = package_model(store, model_id)
    except ApplianceError as error:
        raise ActionError(str(error)) from error
    store.event(None, f"BioImage.IO package of {model_id} written to {path} from the status page")
    return path
