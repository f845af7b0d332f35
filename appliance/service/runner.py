"""``appliance run``: watchers, the training worker, the inference worker and the status page, supervised.

Components (each a thread, or for the page a process) are listed in :class:`Service.components`; the main thread
restarts any that died, and writes every component's state with a heartbeat into the store's ``components`` table
once a second, which ``appliance health`` reads. One service per data dir (a lock file enforces it), so at start-up
any job still marked running was interrupted by a crash and is queued again.

Scanning is level-triggered: watchdog events (inotify, or polling for SMB/NFS shares) only say *where* to look, and a
full rescan at start-up and every ``rescan_interval`` catches files written while the service was down or whose
events were lost. SIGTERM (or Ctrl-C) stops gracefully: the inference worker finishes its current image, training is
interrupted and stays resumable from its checkpoints.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from appliance.service.children import child_environment, die_with_parent
from appliance.service.disk import inference_space
from appliance.service.files import rotate_log
from appliance.service.images import ImageDetector
from appliance.service.inference import InferenceWorker
from appliance.service.intake import Intake
from appliance.service.lock import ServiceLock
from appliance.service.training import TrainingSupervisor
from appliance.settings import Settings
from appliance.store import Store

PAGE_SCRIPT = Path(__file__).resolve().parents[2] / "streamlit_app" / "app.py"
IDLE_WAIT_SECONDS = 0.5
ERROR_BACKOFF_SECONDS = 2.0


def log_line(message: str) -> None:
    print(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}", flush=True)


@dataclass
class Component:
    """One supervised part: ``step`` is called in a loop on its own thread (with its own store)."""

    name: str
    make: Callable[[Store], Callable[[threading.Event], bool]]
    state: Callable[[], tuple[str, str]] = lambda: ("running", "")
    thread: threading.Thread | None = None
    restarts: int = 0
    failures: int = 0
    last_error: str = ""
    extra: dict = field(default_factory=dict)


class _Events(FileSystemEventHandler):
    def __init__(self, route: Callable[[str], None], wake: threading.Event):
        self.route = route
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.route(os.fsdecode(path))
        self.wake.set()


class Service:
    """The running appliance. ``run()`` blocks until SIGTERM/SIGINT (or ``stop()``)."""

    def __init__(self, settings: Settings, *, log: Callable[[str], None] = log_line, page: bool = True):
        settings = resolved(settings)
        self.settings = settings
        self.log = log
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.lock = ServiceLock(settings.data_dir, inboxes=(settings.labelled_inbox, settings.images_inbox))
        self.store: Store | None = None
        self.intake: Intake | None = None
        self.detector: ImageDetector | None = None
        self.training: TrainingSupervisor | None = None
        self.inference: InferenceWorker | None = None
        self.observer = None
        self.page_process: subprocess.Popen | None = None
        self.page_enabled = page and PAGE_SCRIPT.is_file()
        self._store_error: str | None = None
        self.components: list[Component] = [
            Component("scanner", self._scanner, lambda: ("running", self._scanner_detail())),
            Component("training", self._training_worker, lambda: self._worker_state(self.training)),
            Component("inference", self._inference_worker, lambda: ("running", self._inference_detail())),
        ]

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        settings = self.settings
        self.lock.acquire()
        for folder in (settings.labelled_inbox, settings.images_inbox, settings.results, settings.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.store_path)
        self.store.forget_components()  # the last service's parts; this one's register themselves
        for job in self.store.recover_jobs():
            message = f"job {job.id} ({job.kind} {(job.key or '')[:16]}) was interrupted; now {job.status}"
            self.store.event(None, message, level="warning")
            self.log(message)
        self.store.event(None, f"service started (pid {os.getpid()})")
        self.log(
            f"appliance running on {settings.data_dir.resolve()}: drop labelled sets into {settings.labelled_inbox}, "
            f"images into {settings.images_inbox}/<project>/; results in {settings.results}"
        )
        self._start_observer()
        for component in self.components:
            self._start_thread(component)
        if self.page_enabled:
            self._start_page()

    def run(self) -> int:
        """Start, supervise until a stop signal, stop gracefully; returns the exit code."""
        previous = {
            sig: signal.signal(sig, lambda *_: self.stop_event.set()) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while not self.stop_event.wait(1.0):
                try:
                    self.supervise()
                except sqlite3.OperationalError as error:  # a full disk or a locked store: the next beat retries
                    self._report_store_error(error)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _report_store_error(self, error: Exception) -> None:
        message = f"the store could not be written ({error}); retrying every second"
        if message != self._store_error:
            self._store_error = message
            self.log(message)

    def supervise(self) -> None:
        """Restart what died and record every component's state."""
        pid = os.getpid()
        if self.observer is not None and not self.observer.is_alive():
            self.log("file watcher stopped; restarting it")
            self._start_observer()
        self.store.component_beat(
            "watcher",
            state="running" if self.observer.is_alive() else "down",
            detail=self._watch_mode(),
            interval=1,
            pid=pid,
        )
        for component in self.components:
            if component.thread is None or not component.thread.is_alive():
                component.restarts += 1
                self.log(f"{component.name} stopped unexpectedly; restarting it")
                self._start_thread(component)
            state, detail = component.state()
            if component.last_error:
                detail = f"{detail} (last error: {component.last_error})".strip()
            providers = self.inference.providers_in_use() if component.name == "inference" and self.inference else ()
            self.store.component_beat(
                component.name, state=state, detail=detail, interval=1, pid=pid, onnx_providers=providers
            )
        if self.page_enabled:
            rotate_log(self.settings.logs_dir / "page.log")
            if self.page_process.poll() is not None:
                self.log(f"status page exited with code {self.page_process.returncode}; restarting it")
                self._start_page()
            address = f"http://{self.settings.page_address}:{self.settings.page_port}"
            self.store.component_beat("page", state="running", detail=address, interval=1, pid=self.page_process.pid)
        self.store.component_beat("service", state="running", detail="", interval=1, pid=pid)

    def stop(self) -> None:
        """Graceful stop: workers finish their current item; training is interrupted resumably."""
        self.stop_event.set()
        self.wake.set()
        if self.observer is not None:
            self.observer.stop()
        for component in self.components:
            if component.thread is not None:
                component.thread.join(timeout=60)
        if self.page_process is not None and self.page_process.poll() is None:
            self.page_process.terminate()
            try:
                self.page_process.wait(10)
            except subprocess.TimeoutExpired:
                self.page_process.kill()
        if self.store is not None:
            for row in self.store.components():
                self.store.component_beat(row.name, state="stopped", detail="", interval=1, pid=row.pid)
            self.store.event(None, "service stopped")
        self.lock.release()
        self.log("service stopped")

    # -- components ---------------------------------------------------------------------------

    def _start_thread(self, component: Component) -> None:
        def loop() -> None:
            store = Store(self.settings.store_path)
            step = component.make(store)
            while not self.stop_event.is_set():
                try:
                    busy = step(self.stop_event)
                    component.failures = 0
                except Exception as error:  # a component must survive one bad item; the error is recorded
                    component.failures += 1
                    component.last_error = f"{type(error).__name__}: {error}"
                    try:
                        store.event(None, f"{component.name}: {component.last_error}", level="error")
                    except sqlite3.Error:  # the store itself is failing (a full disk): the log has it
                        pass
                    self.log(f"{component.name} error: {traceback.format_exc()}")
                    self.stop_event.wait(min(ERROR_BACKOFF_SECONDS * component.failures, 60))
                    continue
                if not busy:
                    self.stop_event.wait(IDLE_WAIT_SECONDS)
            store.close()

        component.thread = threading.Thread(target=loop, name=component.name, daemon=True)
        component.thread.start()

    def _scanner(self, store: Store) -> Callable[[threading.Event], bool]:
        self.intake = Intake(self.settings, store, log=self.log)
        self.detector = ImageDetector(self.settings, store, log=self.log)
        tick = min(IDLE_WAIT_SECONDS, self.settings.stable_seconds / 2)
        last_rescan = [float("-inf")]

        def step(stop: threading.Event) -> bool:
            if time.monotonic() - last_rescan[0] >= self.settings.rescan_interval:
                self.intake.scan()
                self.detector.rescan()
                last_rescan[0] = time.monotonic()
            self.intake.tick()
            self.detector.tick()
            self.wake.wait(tick)
            self.wake.clear()
            return True

        return step

    def _training_worker(self, store: Store) -> Callable[[threading.Event], bool]:
        self.training = TrainingSupervisor(self.settings, store, log=self.log)
        return self.training.run_once

    def _inference_worker(self, store: Store) -> Callable[[threading.Event], bool]:
        self.inference = InferenceWorker(self.settings, store, log=self.log)
        paused = [False]

        def step(stop: threading.Event) -> bool:
            allowed, message = inference_space(self.settings)
            if not allowed:
                if not paused[0]:
                    store.event(None, f"inference waits: {message}", level="warning")
                    self.log(f"inference waits: {message}")
                paused[0] = True
                return False
            paused[0] = False
            return self.inference.run_once()

        return step

    def _route(self, path: str) -> None:
        if self.intake is not None and _is_below(path, self.settings.labelled_inbox):
            self.intake.notice(path)
        elif self.detector is not None and _is_below(path, self.settings.images_inbox):
            self.detector.notice(path)

    def _watch_mode(self) -> str:
        if self.settings.polling:
            mode = f"polling every {self.settings.polling_interval:g} s"
        else:
            mode = "file events"
        return f"{mode}, full rescan every {self.settings.rescan_interval:g} s"

    def _start_observer(self) -> None:
        if self.settings.polling:
            observer = PollingObserver(timeout=self.settings.polling_interval)
        else:
            observer = Observer()
        handler = _Events(self._route, self.wake)
        for folder in (self.settings.labelled_inbox, self.settings.images_inbox):
            observer.schedule(handler, str(folder), recursive=True)
        observer.daemon = True
        observer.start()
        self.observer = observer

    def _start_page(self) -> None:
        command = [sys.executable, "-m", "streamlit", "run", str(PAGE_SCRIPT), "--server.headless", "true"]
        command += ["--server.address", self.settings.page_address, "--server.port", str(self.settings.page_port)]
        command += ["--client.toolbarMode", "viewer", "--browser.gatherUsageStats", "false"]
        rotate_log(self.settings.logs_dir / "page.log")
        log = open(self.settings.logs_dir / "page.log", "ab")
        self.page_process = subprocess.Popen(
            command,
            env=child_environment(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        log.close()

    # -- state for health ---------------------------------------------------------------------

    def _scanner_detail(self) -> str:
        if self.intake is None or self.detector is None:
            return "starting"
        paused = f"; intake of sets paused: {self.intake.paused}" if self.intake.paused else ""
        return f"{self.intake.pending} set(s) and {self.detector.pending} image(s) waiting to be complete{paused}"

    def _inference_detail(self) -> str:
        if self.inference is None:
            return "starting"
        providers = self.inference.providers_in_use()
        sessions = f"; sessions on {', '.join(providers)}" if providers else ""
        return f"{self.inference.processed} image(s) segmented{sessions}"

    @staticmethod
    def _worker_state(worker: TrainingSupervisor | None) -> tuple[str, str]:
        return ("starting", "") if worker is None else (worker.state, worker.detail)


def resolved(settings: Settings) -> Settings:
    """The settings with absolute folders (file events report absolute paths)."""
    return settings.with_values(
        data_dir=settings.data_dir.resolve(),
        inbox_dir=settings.inbox.resolve(),
        results_dir=settings.results.resolve(),
    )


def _is_below(path: str, folder: Path) -> bool:
    try:
        Path(path).relative_to(folder)
    except ValueError:
        return False
    return True
