"""Intake of labelled sets from ``inbox/labelled/<set>/``.

A set is complete when a ``READY`` file, written after every other file, is in its folder (and nothing changed for
``stable_seconds``) or when nothing in it changed for ``quiet_period``. A newer version of a set cancels the queued
training jobs of its earlier versions. Its images, masks and ``dataset.yaml`` are then copied into a staging folder of
the managed store, hashing the bytes as they are copied, and the *copy* is validated (the module library's checks,
the ``dataset.yaml`` schema, and safe names), so what is validated is exactly what will be trained on.

- A bad set gets ``REJECTED.txt`` in its inbox folder listing every problem, and an event row; it is looked at
  again when anything in it changes.
- A good set moves to ``sets/<name>-<hash>/`` and a training job keyed by its content hash and project is queued:
  the same set dropped again (even under another folder name) does not retrain; a changed set does.

Nothing in the inbox is created, changed or deleted, except ``REJECTED.txt`` (written with a temporary file and a
rename, and removed again once the set is accepted).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.data.io import atomic_write
from appliance.data.labelled_set import (
    DATASET_YAML,
    IMAGES_DIR,
    MASKS_DIR,
    NAME_PATTERN,
    NAME_RULE,
    load_labelled_set,
    project_of,
)
from appliance.errors import InvalidSetError, Problem, readable, utf8_problem
from appliance.service.disk import training_space
from appliance.service.files import CHUNK, is_candidate, tree_signature
from appliance.service.jobs import TRAIN, TrainingRequest
from appliance.settings import Settings
from appliance.store import Store, now

READY_FILE = "READY"
REJECTED_FILE = "REJECTED.txt"
REJECTED_HEADER = "This labelled set was not accepted by the microscope AutoML appliance."
_UNSAFE_CHARACTERS = set('\\/:*?"<>|')
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class IntakeDecision:
    """What intake decided about one set folder."""

    folder: Path
    status: str  # accepted | rejected
    problems: tuple[Problem, ...] = ()
    project: str | None = None
    store_dir: Path | None = None
    job_id: int | None = None
    new_job: bool = False


def name_problems(folder: Path) -> list[Problem]:
    """Problems with names in a set folder: the set name (it becomes the default project and a results folder),
    names that do not survive copying to other systems, and symbolic links."""
    problems = []
    if not NAME_PATTERN.match(folder.name):
        problems.append(Problem(".", f"the set folder name {folder.name!r} is not safe: {NAME_RULE}; rename it"))
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            problems.append(Problem(relative, "is a symbolic link; copy the file itself into the set"))
            continue
        if not path.is_dir() and not path.is_file():
            problems.append(Problem(relative, "is not a regular file (a pipe, socket or device); remove it"))
            continue
        message = unsafe_name(path.name)
        if message:
            problems.append(Problem(relative, f"{message}; rename the file"))
    return problems


def unsafe_name(name: str) -> str | None:
    """Why a file name is not safe, or None."""
    if message := utf8_problem(name):
        return message
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"the name {name!r} holds control characters"
    bad = sorted(_UNSAFE_CHARACTERS & set(name))
    if bad:
        return f"the name {name!r} holds {' '.join(bad)}, which Windows and network shares do not allow"
    if name != name.strip():
        return f"the name {name!r} starts or ends with a space"
    if name.startswith("-"):
        return f"the name {name!r} starts with '-'"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    return None


def copy_set(source: Path, target: Path) -> str:
    """Copy what validation reads (``images/``, ``masks/``, ``dataset.yaml``) from ``source`` to ``target``,
    hashing the bytes copied; returns the content hash of the copy.

    Sub-folders are created empty and hidden files, temporary files and symbolic links are skipped, so that
    validation of the copy reports the same problems as validation of the source would.
    """
    entries: list[tuple[str, str]] = []
    target.mkdir(parents=True)
    for top in (IMAGES_DIR, MASKS_DIR, DATASET_YAML):
        path = source / top
        if path.is_symlink() or not path.exists():
            continue
        if path.is_file():
            entries.append((top, _copy_file(path, target / top)))
            continue
        (target / top).mkdir()
        for child in sorted(path.iterdir()):
            if child.is_symlink() or not is_candidate(child.name):
                continue
            if child.is_dir():
                (target / top / child.name).mkdir()
            elif child.is_file():
                entries.append((f"{top}/{child.name}", _copy_file(child, target / top / child.name)))
    digest = hashlib.sha256()
    for relative, file_digest in sorted(entries):
        digest.update(f"{relative}\0{file_digest}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _copy_file(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def ready_file_came_last(folder: Path) -> bool:
    """True when ``READY`` is there and no other file of the set arrived after it: copy tools that write in sorted
    order (rsync, many file managers) put ``READY`` down first, and then it says nothing about the rest. Arrival is
    the inode change time, which copies cannot carry over from the source as they do the modification time."""
    try:
        ready = (folder / READY_FILE).lstat().st_ctime_ns
    except OSError:
        return False
    for path in folder.rglob("*"):
        if path.parent == folder and path.name in (READY_FILE, REJECTED_FILE):
            continue
        try:
            if path.lstat().st_ctime_ns > ready:
                return False
        except OSError:
            return False  # vanished while we looked: still being written
    return True


def _inbox_key(folder: Path) -> str:
    """How the store names an inbox folder (a folder name need not be UTF-8)."""
    return readable(folder, limit=None)


def rejection_text(folder: Path, problems: list[Problem]) -> str:
    lines = [
        REJECTED_HEADER,
        f"Set: {readable(folder.name)}    checked: {now()}    problems: {len(problems)}",
        "",
        *(f"- {problem}" for problem in problems),
        "",
        "Fix every problem listed; the set is checked again automatically as soon as it changes "
        f"(a {READY_FILE} file speeds that up). Nothing else in this folder was changed.",
        "",
    ]
    return "\n".join(lines)


class Intake:
    """Watches the labelled inbox: decides each set folder once per version of its files.

    ``scan`` looks at every folder (start-up, periodic rescans); ``notice`` marks one folder as changed (file
    events); ``tick`` decides the folders that are due. Completion timers live in memory: after a restart a set
    without ``READY`` waits one more quiet period.
    """

    def __init__(self, settings: Settings, store: Store, *, log: Callable[[str], None] = print):
        self.settings = settings
        self.store = store
        self.log = log
        self.inbox = settings.labelled_inbox
        self._watching: dict[Path, tuple[str, float]] = {}  # folder -> (signature, since when unchanged)
        self._dirty: set[Path] = set()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.paused: str | None = None  # why intake waits for disk space, or None

    def notice(self, path: str | Path) -> None:
        """A file event under the inbox: remember which set folder it concerns."""
        try:
            relative = Path(path).relative_to(self.inbox)
        except ValueError:
            return
        if relative.parts:
            with self._lock:
                self._dirty.add(self.inbox / relative.parts[0])

    def scan(self) -> None:
        """Mark every folder in the inbox for a look at the next tick."""
        if not self.inbox.is_dir():
            return
        for entry in sorted(self.inbox.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                with self._lock:
                    self._dirty.add(entry)
            elif is_candidate(entry.name) and entry.name not in self._warned:
                self._warned.add(entry.name)
                self.store.event(
                    None, f"{entry}: not a set folder; put each labelled set in its own folder", level="warning"
                )

    @property
    def pending(self) -> int:
        """Folders that are being watched until they are complete."""
        return len(self._watching)

    def tick(self, clock: float | None = None) -> list[IntakeDecision]:
        """Decide every folder that is complete and not decided in its current state."""
        clock = time.monotonic() if clock is None else clock
        allowed, message = training_space(self.settings)
        if not allowed:  # a set is copied into the store: wait (the folders stay marked) until space is freed
            if self.paused != message:
                self.store.event(None, f"intake of labelled sets paused: {message}", level="warning")
                self.log(f"intake of labelled sets paused: {message}")
            self.paused = message
            return []
        if self.paused is not None:
            self.store.event(None, "intake of labelled sets resumes: free space is above the reserve again")
            self.paused = None
        with self._lock:
            folders = self._dirty | set(self._watching)
            self._dirty = set()
        decisions = []
        for folder in sorted(folders):
            try:
                decision = self._look(folder, clock)
            except Exception as error:  # one folder must not stop the intake of the others
                self._watching.pop(folder, None)
                self._report_once(f"labelled set {folder.name}: could not be checked ({type(error).__name__}: {error})")
                continue
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _report_once(self, message: str) -> None:
        """An error event and log line, once per distinct message (the folder is looked at again at the next
        rescan or change)."""
        message = readable(message)
        if message not in self._warned:
            self._warned.add(message)
            self.store.event(None, message, level="error")
            self.log(message)

    def _look(self, folder: Path, clock: float) -> IntakeDecision | None:
        if not folder.is_dir():
            self._watching.pop(folder, None)
            return None
        signature = tree_signature(folder, ignore=(REJECTED_FILE,))
        last = self.store.last_intake(_inbox_key(folder))
        if last is not None and last.signature == signature:
            self._watching.pop(folder, None)
            return None
        seen = self._watching.get(folder)
        if seen is None or seen[0] != signature:
            self._watching[folder] = (signature, clock)
            seen = self._watching[folder]
        ready = ready_file_came_last(folder)
        wait = self.settings.stable_seconds if ready else self.settings.quiet_period
        if clock - seen[1] < wait:
            return None
        self._watching.pop(folder, None)
        return self.decide(folder, signature)

    def decide(self, folder: Path, signature: str | None = None) -> IntakeDecision:
        """Copy, validate, and accept or reject one set folder now."""
        signature = signature or tree_signature(folder, ignore=(REJECTED_FILE,))
        sets_dir = self.settings.sets_dir
        sets_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{folder.name[:40]}-", dir=sets_dir))
        try:
            problems = name_problems(folder)
            content_hash = copy_set(folder, staging / "set")
            try:
                labelled_set = load_labelled_set(staging / "set")
            except InvalidSetError as error:
                problems += error.problems
                labelled_set = None
            if problems:
                return self._reject(folder, signature, content_hash, problems)
            project = project_of(labelled_set.metadata, folder.name)  # the inbox folder, not the staging copy
            store_dir = sets_dir / f"{folder.name}-{content_hash[:12]}"
            if not store_dir.exists():
                (staging / "set").rename(store_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        budget_minutes = labelled_set.metadata.get("budget_minutes")
        budget = float(budget_minutes) * 60 if budget_minutes else self.settings.default_budget
        request = TrainingRequest(
            set_dir=str(store_dir.resolve()),
            set_name=folder.name,
            project=project,
            budget=budget,
            content_hash=content_hash,
            inbox_path=str(folder),
        )
        job_id, created = self.store.enqueue(
            TRAIN,
            f"{content_hash}:{project}",
            payload=request.to_payload(),
            project=project,
            max_attempts=self.settings.max_attempts,
        )
        self.store.record_intake(
            name=folder.name,
            inbox_path=_inbox_key(folder),
            signature=signature,
            content_hash=content_hash,
            status="accepted",
            project=project,
            store_dir=str(store_dir),
            job_id=job_id,
        )
        retried = not created and self.store.retry(job_id)
        superseded = self.store.supersede_jobs(TRAIN, inbox_path=str(folder), keep=job_id)
        if created:
            message = (
                f"labelled set {folder.name} accepted: {len(labelled_set)} images for project {project}; "
                f"training job {job_id} queued with a budget of {budget:.0f} s"
            )
        elif retried:
            message = (
                f"labelled set {folder.name} accepted: the same content for project {project} failed before "
                f"(job {job_id}); dropped again, so it is queued again with fresh attempts"
            )
        else:
            message = (
                f"labelled set {folder.name} accepted, but the same content for project {project} is already "
                f"known (job {job_id}, {self.store.job(job_id).status}): not trained again"
            )
        if superseded:
            message += f"; queued job(s) {', '.join(map(str, superseded))} of its earlier version cancelled"
        self.store.event(None, message)
        self.log(message)
        self._remove_own_rejection(folder)
        return IntakeDecision(folder, "accepted", (), project, store_dir, job_id, created or retried)

    def _reject(self, folder: Path, signature: str, content_hash: str, problems: list[Problem]) -> IntakeDecision:
        self.store.record_intake(
            name=readable(folder.name),
            inbox_path=_inbox_key(folder),
            signature=signature,
            content_hash=content_hash,
            status="rejected",
            problems=[{"file": p.file, "message": p.message} for p in problems],
        )
        listing = "; ".join(str(p) for p in problems)
        message = readable(f"labelled set {folder.name} rejected with {len(problems)} problem(s): {listing}")
        try:
            text = rejection_text(folder, problems)
            atomic_write(folder / REJECTED_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError as error:
            message += f" (could not write {folder / REJECTED_FILE}: {error})"
        self.store.event(None, message, level="warning")
        self.log(message)
        return IntakeDecision(folder, "rejected", tuple(problems))

    def _remove_own_rejection(self, folder: Path) -> None:
        path = folder / REJECTED_FILE
        try:
            if path.is_file() and path.read_text(encoding="utf-8").startswith(REJECTED_HEADER):
                path.unlink()
        except OSError:
            pass
