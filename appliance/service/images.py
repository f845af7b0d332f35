"""Detection of new images in ``inbox/images/<project>/`` (any depth): stable files become segment jobs.

A file is read only after its size and modification time stayed the same for ``stable_seconds`` (seen at least
twice, that far apart), so a TIFF still being written is not picked up. Each version of a file (relative path +
content hash) is registered once in the ``images`` table and gets one ``segment`` job; a changed file is a new
version and is segmented again. Jobs of a project without an active model wait in the queue until one is activated.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.data.io import is_image_file
from appliance.data.labelled_set import NAME_PATTERN, NAME_RULE
from appliance.errors import readable, utf8_problem
from appliance.service.files import file_hash, is_candidate, stat_key
from appliance.service.jobs import SEGMENT
from appliance.settings import Settings
from appliance.store import JobStatus, Store, now


def image_id(project: str, relpath: str, content_hash: str) -> str:
    """The id of one version of an image: its project, relative path and content."""
    return hashlib.sha256(f"{project}/{relpath}@{content_hash}".encode()).hexdigest()[:24]


class ImageDetector:
    """Turns files that stopped changing into registered images and queued segment jobs.

    ``notice`` (file events, any thread) and ``rescan`` (start-up, periodic) feed candidates; ``tick`` checks them.
    """

    def __init__(self, settings: Settings, store: Store, *, log: Callable[[str], None] = print):
        self.settings = settings
        self.store = store
        self.log = log
        self.inbox = settings.images_inbox
        self._lock = threading.Lock()
        self._noticed: set[Path] = set()
        self._pending: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> (size, mtime_ns), since when
        self._warned: set[str] = set()

    @property
    def pending(self) -> int:
        """Files seen but not yet stable."""
        return len(self._pending)

    def notice(self, path: str | Path) -> None:
        path = Path(path)
        with self._lock:
            if path.is_dir():
                self._noticed.update(p for p in path.rglob("*") if p.is_file())
            else:
                self._noticed.add(path)

    def rescan(self) -> int:
        """Every file under the inbox becomes a candidate; returns how many files were found."""
        found = []
        for folder, dirs, names in os.walk(self.inbox):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(Path(folder) / name for name in names)
        with self._lock:
            self._noticed.update(found)
        return len(found)

    def tick(self, clock: float | None = None) -> list[str]:
        """Check candidates; register the ones that are stable. Returns the ids of newly registered images."""
        clock = time.monotonic() if clock is None else clock
        with self._lock:
            candidates = self._noticed | set(self._pending)
            self._noticed = set()
        registered = []
        for path in sorted(candidates):
            try:
                new = self._check(path, clock)
            except Exception as error:  # one file must not stop the detection of the others
                self._pending.pop(path, None)
                self._warn_once(f"{path}: could not be checked ({type(error).__name__}: {error})", level="error")
                continue
            if new:
                registered.append(new)
        return registered

    def _check(self, path: Path, clock: float) -> str | None:
        where = self._place(path)
        if where is None:
            self._pending.pop(path, None)
            return None
        project, relpath = where
        key = stat_key(path)
        if key is None:
            self._pending.pop(path, None)
            return None
        latest = self.store.latest_image(project, relpath)
        if latest is not None and (latest.size, latest.mtime_ns) == key:
            self._pending.pop(path, None)
            return None
        seen = self._pending.get(path)
        if seen is None or seen[0] != key:
            self._pending[path] = (key, clock)
            return None
        if clock - seen[1] < self.settings.stable_seconds:
            return None
        self._pending.pop(path, None)
        return self._register(path, project, relpath, key)

    def _place(self, path: Path) -> tuple[str, str] | None:
        """``(project, relative path)`` of an image file under the inbox, or None (with a warning once)."""
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return None
        if any(not is_candidate(part) for part in relative.parts) or not is_image_file(path):
            return None
        if problem := next(filter(None, map(utf8_problem, relative.parts)), None):
            self._warn_once(f"{path}: {problem}; rename the file to have it segmented")
            return None
        if len(relative.parts) < 2:
            self._warn_once(f"{path}: images must be in a project folder, like {self.inbox}/<project>/{path.name}")
            return None
        project = relative.parts[0]
        if not NAME_PATTERN.match(project):
            self._warn_once(
                f"{self.inbox / project}: {project!r} is not a valid project name ({NAME_RULE}); rename the folder"
            )
            return None
        return project, Path(*relative.parts[1:]).as_posix()

    def _warn_once(self, message: str, *, level: str = "warning") -> None:
        message = readable(message)
        if message not in self._warned:
            self._warned.add(message)
            self.store.event(None, message, level=level)
            self.log(message)

    def _register(self, path: Path, project: str, relpath: str, key: tuple[int, int]) -> str | None:
        try:
            content_hash = file_hash(path)
        except OSError:
            return None
        if stat_key(path) != key:  # changed while hashing: look again later
            self._pending[path] = (stat_key(path) or key, time.monotonic())
            return None
        identifier = image_id(project, relpath, content_hash)
        known = self.store.image(identifier)
        if known is not None:
            latest = self.store.latest_image(project, relpath)
            if latest.id == identifier:  # same content, touched or copied again: remember the new stat
                self.store.update_image(identifier, size=key[0], mtime_ns=key[1])
                return None
            # an earlier content of this path is back (A → B → A): its results must replace B's
            if not self.store.requeue_image(identifier, size=key[0], mtime_ns=key[1]):
                return None
            self.log(f"image {project}/{relpath} is back to an earlier content; segmented again")
            return identifier
        self.store.add_image(
            id=identifier,
            project=project,
            relpath=relpath,
            path=str(path),
            content_hash=content_hash,
            size=key[0],
            mtime_ns=key[1],
            status=JobStatus.QUEUED,
            detected_at=now(),
            landed_at=time.time(),
        )
        job_id, _ = self.store.enqueue(
            SEGMENT,
            identifier,
            payload={"image_id": identifier},
            project=project,
            max_attempts=self.settings.max_attempts,
        )
        self.store.update_image(identifier, job_id=job_id)
        waiting = "" if self.store.active_model(project) else " (waits for the project's first model)"
        self.log(f"image {project}/{relpath} queued as job {job_id}{waiting}")
        return identifier
