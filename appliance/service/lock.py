"""One service per data dir and per inbox: an exclusive lock on ``<data dir>/service.lock`` and on each inbox folder
itself (nothing is written there), released when the process dies.

Kept free of heavy imports so that ``appliance health`` answers in well under a second.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from appliance.errors import ServiceError

LOCK_FILE = "service.lock"


class ServiceLock:
    """An exclusive lock on ``<data dir>/service.lock`` held while a service runs (released when the process dies)."""

    def __init__(self, data_dir: Path, *, inboxes: tuple[Path, ...] = ()):
        self.path = data_dir / LOCK_FILE
        self.inboxes = inboxes
        self._handle = None
        self._inbox_handles: list[int] = []

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ServiceError(
                f"a service already runs on {self.path.parent} (pid {holder}); stop it first, or use another data dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        try:
            for inbox in dict.fromkeys(Path(inbox).resolve() for inbox in self.inboxes):
                self._lock_inbox(inbox)
        except ServiceError:
            self.release()
            raise

    def _lock_inbox(self, inbox: Path) -> None:
        """Lock the folder itself (a directory can be flock'ed read-only): two services with different data dirs
        on one inbox would train the same sets and segment the same images."""
        inbox.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ServiceError(
                f"another service already watches {inbox} (with another data dir); stop it, or give this one "
                "its own inbox"
            ) from None
        self._inbox_handles.append(descriptor)

    def release(self) -> None:
        for descriptor in self._inbox_handles:
            os.close(descriptor)  # closing the descriptor releases its lock
        self._inbox_handles = []
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def service_running(data_dir: Path) -> bool:
    """True when a process holds the service lock of ``data_dir``."""
    path = data_dir / LOCK_FILE
    if not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
