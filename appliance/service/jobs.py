"""The work the service queues (:meth:`appliance.store.Store.enqueue`): the job kinds, and what a training job
carries from the intake that accepted a set to the training worker that trains it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

TRAIN = "train"
SEGMENT = "segment"


@dataclass(frozen=True)
class TrainingRequest:
    """A ``train`` job's payload: the managed copy of an accepted set, for which project, with which budget."""

    set_dir: str
    set_name: str
    project: str
    budget: float  # seconds
    content_hash: str | None = None
    inbox_path: str | None = None  # where it was dropped: a newer version dropped there supersedes this one

    def to_payload(self) -> dict:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: Mapping | None) -> TrainingRequest:
        """From a job's payload; keys this version does not know are ignored."""
        values = payload or {}
        return cls(**{item.name: values[item.name] for item in fields(cls) if item.name in values})
