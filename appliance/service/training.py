"""The training worker: one training job at a time, each in its own child process.

The supervisor (a thread of ``appliance run``) claims a ``train`` job, starts
``python -m appliance.service.training <job id>`` with the settings in its environment, renews the job's lease while
the child lives and records the outcome. The child trains (``appliance.automl.job.train_set``, which resumes an
unfinished run of the same set from its last checkpoints, or reuses a finished one), then applies the activation
rule. A separate
process keeps the watchers and inference alive if training crashes or runs out of memory, releases all GPU memory
after each job, and dies with the service (``PR_SET_PDEATHSIG``), so a killed service never leaves training orphaned.

On shutdown the child gets SIGINT: halving stops, the run stays resumable from its checkpoints, and the job is given
back without counting an attempt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from appliance.faults import fault_point
from appliance.service.children import child_environment, die_with_parent
from appliance.service.disk import training_must_stop, training_space
from appliance.service.files import rotate_log
from appliance.service.jobs import TRAIN, TrainingRequest
from appliance.settings import Settings
from appliance.store import Job, JobStatus, RunStatus, Store

SHUTDOWN, DISK = "shutdown", "disk"
DISK_FULL_MARKERS = ("No space left on device", "database or disk is full", "[Errno 28]")
STOP_GRACE_SECONDS = 30.0
RETRY_AFTER_SECONDS = 10.0


class TrainingSupervisor:
    """Runs the training jobs of the queue one after the other; ``run_once`` does one job."""

    def __init__(self, settings: Settings, store: Store, *, log: Callable[[str], None] = print):
        self.settings = settings
        self.store = store
        self.log = log
        self.owner = f"training@{socket.gethostname()}:{os.getpid()}"
        self.state = "idle"
        self.detail = ""
        self._disk_message: str | None = None
        self.child_command = [sys.executable, "-m", "appliance.service.training"]

    def run_once(self, stop: threading.Event) -> bool:
        """Claim and run one job; True when one ran. Waits (False) while the disk is below the reserve."""
        allowed, message = training_space(self.settings)
        if not allowed:
            if message != self._disk_message:
                self.store.event(None, f"training waits: {message}", level="warning")
                self.log(f"training waits: {message}")
            self._disk_message = message
            self.state, self.detail = "waiting for disk", message
            return False
        if self._disk_message is not None:
            self.store.event(None, "training resumes: free space is above the reserve again")
            self._disk_message = None
        job = self.store.claim(TRAIN, self.owner, lease_seconds=self.settings.lease_seconds)
        if job is None:
            self.state, self.detail = "idle", ""
            return False
        self._run(job, stop)
        self.state, self.detail = "idle", ""
        return True

    def _run(self, job: Job, stop: threading.Event) -> None:
        request = TrainingRequest.from_payload(job.payload)
        self.state, self.detail = "training", f"job {job.id}: {request.set_name} for {request.project}"
        self.log(f"training job {job.id} (attempt {job.attempts}): {self.detail}")
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.logs_dir / f"train-job-{job.id}.log"
        result_path = self.settings.logs_dir / f"train-job-{job.id}.json"
        result_path.unlink(missing_ok=True)
        rotate_log(log_path)
        with open(log_path, "ab") as log_file:
            child = subprocess.Popen(
                [*self.child_command, str(job.id), str(result_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_environment(self.settings),
                preexec_fn=die_with_parent,
            )
            stopped = self._watch(child, job, stop)
        tail = "" if stopped or child.returncode == 0 else _tail(log_path)
        if stopped == SHUTDOWN:
            self.store.release(job.id, self.owner, note="interrupted by shutdown; resumes from its checkpoints")
            self.log(f"training job {job.id} stopped for shutdown; it resumes at the next start")
        elif stopped == DISK or any(marker in tail for marker in DISK_FULL_MARKERS):
            _, message = training_must_stop(self.settings)
            reason = message if stopped == DISK else f"the disk filled up ({tail[-300:]})"
            self.store.release(
                job.id, self.owner, retry_after=RETRY_AFTER_SECONDS, note=f"paused for disk space: {reason}"
            )
            self.store.event(None, f"training job {job.id} paused, no attempt spent: {reason}", level="warning")
            self.log(f"training job {job.id} paused for disk space; it resumes from its checkpoints")
        elif child.returncode == 0 and result_path.is_file():
            result = json.loads(result_path.read_text())
            self.store.complete(job.id, self.owner, result)
            self.log(f"training job {job.id} done: {result.get('summary', '')}")
        else:
            status = self.store.fail(
                job.id, self.owner, f"exit code {child.returncode}: {tail}", retry_after=RETRY_AFTER_SECONDS
            )
            level = "error" if status == JobStatus.FAILED else "warning"
            self.store.event(
                None, f"training job {job.id} failed (exit {child.returncode}), now {status}: {tail}", level=level
            )
            self.log(f"training job {job.id} failed, now {status}; log: {log_path}")

    def _watch(self, child: subprocess.Popen, job: Job, stop: threading.Event) -> str | None:
        """Renew the lease while the child runs; interrupt it (resumably) on ``stop`` or when the disk runs low.
        Returns why it was stopped (:data:`SHUTDOWN`, :data:`DISK`) or None when it ended by itself."""
        beat = max(self.settings.lease_seconds / 3, 0.5)
        while child.poll() is None:
            reason = SHUTDOWN if stop.wait(min(beat, 1.0)) else DISK if training_must_stop(self.settings)[0] else None
            if reason is not None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                return reason
            self.store.heartbeat(job.id, self.owner, lease_seconds=self.settings.lease_seconds)
            rotate_log(self.settings.logs_dir / f"train-job-{job.id}.log")
        return None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-1500:]


def finished_run(store: Store, set_dir: str, budget: float, top_n: int, seed: int) -> dict | None:
    """A finished run of this managed set with a registered model, if there is one (a job retried after the
    training finished must not train again)."""
    for run in store.runs():
        if (
            run.set_dir == set_dir
            and run.status == RunStatus.FINISHED
            and run.model_id
            and run.budget_seconds == budget
            and run.top_n == top_n
            and run.seed == seed
        ):
            return run
    return None


def run_job(job_id: int, settings: Settings, *, log: Callable[[str], None] = print) -> dict:
    """Train (or resume, or reuse) the run of a training job, then apply the activation rule."""
    from appliance.service.activation import decide_activation

    store = Store(settings.store_path)
    request = TrainingRequest.from_payload(store.job(job_id).payload)
    set_dir = str(Path(request.set_dir).resolve())
    run = finished_run(store, set_dir, request.budget, settings.top_n, settings.seed)
    if run is None:
        from appliance.automl.job import train_set  # the training stack: ~10 s of imports a finished run need not pay

        result = train_set(set_dir, settings, budget=request.budget, log=log, store=store, project=request.project)
        run = result.run
    else:
        log(f"run {run.id} of this set already finished; applying the activation rule only")
    fault_point("trained")
    decision = decide_activation(
        store,
        model_id=run.model_id,
        project=request.project,
        quality_gate=settings.quality_gate,
        engine_cache=settings.engine_cache_dir,
    )
    fault_point("activated")
    verb = "activated" if decision.activated else "not activated"
    summary = f"run {run.id}: model {run.model_id} {verb} for {request.project} ({decision.reason})"
    log(summary)
    return {"run_id": run.id, "model_id": run.model_id, "activated": decision.activated, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m appliance.service.training JOB_ID RESULT_JSON`` with the service's settings in
    its environment (:func:`appliance.service.children.child_environment`)."""
    from appliance.data.io import atomic_write

    job_id, result_path = (argv or sys.argv[1:])[:2]
    # A service started in the background by a shell (`nohup appliance run &`) hands SIGINT on ignored, and Python
    # then installs no handler: the shutdown's SIGINT would be lost and the child killed after the grace period.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = Settings.from_env()
    try:
        result = run_job(int(job_id), settings, log=lambda message: print(message, flush=True))
    except KeyboardInterrupt:
        print("interrupted; the run resumes from its checkpoints", flush=True)
        return 130
    atomic_write(result_path, lambda tmp: Path(tmp).write_text(json.dumps(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
