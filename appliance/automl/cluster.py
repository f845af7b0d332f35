"""Halving on a Ray cluster: a step's slices train side by side, one trial per device (``executor = "ray"``).

The appliance's own process stays the *head*: it plans the race, decides shares and survivors and is the only
writer of the SQLite store. Each device of the cluster gets one :class:`TrialWorker` actor (one per GPU, or one per
``ray_cpus_per_trial`` CPUs on a cluster without GPUs); a worker builds the trial backend once for the run (it reads
the labelled set where the data dir is mounted) and runs :func:`~appliance.automl.executors.run_slice` for each task
it is handed. Checkpoints travel through the data dir, which every machine mounts at the same path
(docs/cluster.md).

Faults: a worker that dies or hangs loses the slice it ran, never more; the slice is handed to another worker from
the trial's last recorded checkpoint (the head records a slice only when it ended, so nothing counts twice), and a
replacement actor is requested, placed by Ray when a device is free again. The head restarting resumes the run from
the store like any other interrupted run; the actors of the dead head die with it.

Why Ray and not a scheduler of our own: placement (one actor per GPU), node liveness and actor failure detection are
its job, and a lab can join a workstation with one ``ray start`` command.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.automl.executors import SliceOutcome, SliceStatus, SliceTask, TrialBackend, run_slice
from appliance.errors import ApplianceError
from appliance.pipeline.config import PipelineConfig
from appliance.store import Store

POLL_SECONDS = 1.0
"""How long the head waits on the cluster between two looks at its nodes."""
NODE_REFRESH_SECONDS = 5.0
"""How often the head records the nodes in the store (the page shows them)."""
HANG_GRACE_SECONDS = 120.0
"""A slice still running this long after twice its share is taken for hung: its worker is killed, the slice lost."""
PLACEMENT_GRACE_SECONDS = 30.0
"""How long a new executor waits for the workers it requested beyond the first (a worker starts in seconds)."""
NO_WORKER_SECONDS = 300.0
"""How long the head waits for a first worker (or, all lost, a new one) before the run stops, resumable."""


class NoWorkers(ApplianceError):
    """Trials are left to train and the cluster has no worker to train them."""


class ClusterError(ApplianceError):
    """The Ray cluster cannot be reached or used."""


@dataclass(frozen=True)
class BackendSpec:
    """How a worker builds the run's trial backend (:class:`~appliance.automl.backend.TorchBackend`): plain data,
    sent to every worker; the labelled set is read where the data dir is mounted."""

    set_dir: str
    split: dict
    seed: int
    gpu_memory_gb: float
    min_object_px: int = 0

    def __call__(self, on_throughput: Callable[[PipelineConfig, int, float], None]) -> TrialBackend:
        from appliance.automl.backend import TorchBackend
        from appliance.data.labelled_set import load_labelled_set
        from appliance.data.splits import Split

        return TorchBackend(
            load_labelled_set(Path(self.set_dir)),
            Split.from_dict(self.split),
            seed=self.seed,
            gpu_memory_gb=self.gpu_memory_gb,
            on_throughput=on_throughput,
            min_object_px=self.min_object_px,
        )


class TrialWorker:
    """One device of the cluster (a Ray actor): trains the slices it is handed, measures its device when asked."""

    def __init__(self, backend_factory: Callable[..., TrialBackend], cpus: int):
        import ray
        import torch

        from appliance.pipeline.device import resolve_device

        self.device = resolve_device(None)  # Ray shows the actor its own GPU only (CUDA_VISIBLE_DEVICES)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, cpus))
        self.backend_factory = backend_factory
        self.node_id = ray.get_runtime_context().get_node_id()
        self.backend: TrialBackend | None = None
        self.observed: list[tuple[dict, int, float]] = []

    def describe(self) -> dict:
        import ray

        from appliance.pipeline.device import device_name, free_memory_mb

        return {
            "node_id": self.node_id,
            "address": f"{socket.gethostname()} ({ray.util.get_node_ip_address()})",
            "device": device_name(self.device),
            "free_memory_mb": free_memory_mb(self.device),
            "pid": os.getpid(),
        }

    def run(self, task: SliceTask) -> tuple[SliceOutcome, list[tuple[dict, int, float]], dict]:
        """Train one slice; returns its outcome, the training throughput it observed and the node's state after."""
        if self.backend is None:
            self.backend = self.backend_factory(
                lambda config, steps, seconds: self.observed.append((config.to_dict(), steps, seconds))
            )
        self.observed = []
        outcome = run_slice(self.backend, task, node=self.node_id)
        return outcome, self.observed, self.describe()

    def measure_training(self, group) -> float:
        from appliance.automl.throughput import measure_group

        return measure_group(group, self.device)

    def measure_prediction(self, encoder: str) -> float:
        from appliance.automl.throughput import measure_prediction

        return measure_prediction(encoder, self.device)


@dataclass
class _Worker:
    actor: Any
    ready: Any  # the ObjectRef of its first describe(): done once Ray has placed it
    info: dict | None = None
    busy: bool = False


@dataclass
class _InFlight:
    worker: _Worker
    task: SliceTask
    submitted: float


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (``host:port`` of its head), or start a Ray instance on this machine (all its
    GPUs, or CPUs) when ``address`` is empty; once per process."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address or None, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(
            f"cannot reach {where}: {error}. Start the head with `ray start --head` (docs/cluster.md) and set "
            'ray_address to the address it prints, or set executor = "local"'
        ) from None


def cluster_slots(cpus_per_trial: int, nodes: list[dict] | None = None) -> tuple[int, dict]:
    """Trials the cluster's live nodes (``ray.nodes()`` unless given) can train at once, and the resources each
    trial's worker asks for: one GPU each when the cluster has GPUs (CPU-only nodes then train none: equal shares on
    unequal devices would be unfair), else ``cpus_per_trial`` CPUs each."""
    import ray

    live = [node for node in (ray.nodes() if nodes is None else nodes) if node.get("Alive")]
    if any(node["Resources"].get("GPU", 0) for node in live):
        resources = {"num_gpus": 1, "num_cpus": 0}
    else:
        resources = {"num_cpus": cpus_per_trial}
    return sum(_node_slots(node["Resources"], resources, cpus_per_trial) for node in live), resources


class RayExecutor:
    """Runs slices on the cluster's workers (see the module docstring); ``store`` shows the nodes to the page."""

    def __init__(
        self,
        backend_factory: Callable[..., TrialBackend],
        *,
        store: Store,
        run_id: str,
        cpus_per_trial: int = 1,
        on_throughput: Callable[[PipelineConfig, int, float], None] | None = None,
        address: str | None = None,
        wait_for_workers: float = NO_WORKER_SECONDS,
    ):
        import ray

        connect(address)
        self._ray = ray
        self.backend_factory = backend_factory
        self.store = store
        self.run_id = run_id
        self.cpus_per_trial = cpus_per_trial
        self.on_throughput = on_throughput or (lambda config, steps, seconds: None)
        self.wait_for_workers = wait_for_workers
        self._workers: list[_Worker] = []
        self._in_flight: dict[Any, _InFlight] = {}  # ObjectRef -> slice
        self._refreshed = 0.0
        self._refresh(force=True)
        self._wait_until(lambda: self.slots > 0, what="a first worker")
        # the race is planned on the slots there are: give every requested worker a moment to start
        placing = time.monotonic()
        while self.slots < len(self._workers) and time.monotonic() - placing < PLACEMENT_GRACE_SECONDS:
            time.sleep(0.2)
            self._note_placed()

    # -- the executor protocol ------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """Placed workers (each trains one slice at a time)."""
        return sum(1 for worker in self._workers if worker.info is not None)

    def submit(self, task: SliceTask) -> Hashable:
        worker = next(w for w in self._workers if w.info is not None and not w.busy)
        worker.busy = True
        ref = worker.actor.run.remote(task)
        self._in_flight[ref] = _InFlight(worker, task, time.monotonic())
        self.store.update_node(
            worker.info["node_id"], running=f"run {task.run_id} rank {task.rank} step {task.step + 1}"
        )
        return ref

    def wait(self) -> list[tuple[Hashable, SliceOutcome]]:
        """The slices that ended (at least one), or ``[]`` once a worker is free when none was running."""
        waited = time.monotonic()
        while True:
            self._refresh()
            if not self._in_flight:
                if self.slots > 0:
                    return []
                if time.monotonic() - waited > self.wait_for_workers:
                    raise NoWorkers(
                        f"no worker of the Ray cluster has been available for {self.wait_for_workers:.0f} s: the run "
                        "stays resumable; start the workers again (docs/cluster.md) and the service resumes it"
                    )
                time.sleep(POLL_SECONDS)
                continue
            ready, _ = self._ray.wait(list(self._in_flight), num_returns=1, timeout=POLL_SECONDS)
            if ready:
                ready, _ = self._ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=0)
                return [(ref, self._collect(ref)) for ref in ready]
            self._kill_hung()

    def close(self) -> None:
        """Stop the run's workers (their devices are free for the next run) and record the nodes as they are."""
        for worker in self._workers:
            self._ray.kill(worker.actor)
            if worker.info is not None:
                self.store.update_node(worker.info["node_id"], running=None)
        self._workers, self._in_flight = [], {}
        self.record_nodes()

    # -- throughput probing on a worker's device ------------------------------------------------

    @property
    def probe(self) -> WorkerProbe:
        worker = next(w for w in self._workers if w.info is not None)
        return WorkerProbe(worker.info["device"], worker.actor, self._ray)

    # -- internals ------------------------------------------------------------------------------

    def _collect(self, ref) -> SliceOutcome:
        flight = self._in_flight.pop(ref)
        worker, task = flight.worker, flight.task
        try:
            outcome, observed, info = self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as error:  # the slice itself raised: as it would here
            raise error.as_instanceof_cause() from None
        except self._ray.exceptions.RayError as error:  # the actor, its process or its node died
            node = (worker.info or {}).get("node_id")
            self._workers.remove(worker)
            if node:
                self.store.update_node(node, running=None)
            self._refresh(force=True)  # a replacement, placed when a device is free
            where = f" on node {node[:12]}" if node else ""
            return SliceOutcome(task.rank, SliceStatus.LOST, f"its worker{where} was lost ({type(error).__name__})")
        worker.busy, worker.info = False, {**worker.info, **info}
        self.store.update_node(info["node_id"], running=None, free_memory_mb=info["free_memory_mb"])
        for config, steps, seconds in observed:
            self.on_throughput(PipelineConfig.from_dict(config), steps, seconds)
        return outcome

    def _kill_hung(self) -> None:
        now = time.monotonic()
        for flight in self._in_flight.values():
            if now - flight.submitted > 2 * flight.task.share + HANG_GRACE_SECONDS:
                self._ray.kill(flight.worker.actor)  # its slice ends as lost; a replacement is requested

    def _refresh(self, *, force: bool = False) -> None:
        """Record the nodes in the store, note workers Ray has placed, and request workers up to the capacity of the
        live nodes (a worker that died is replaced; a node that joined gets its own)."""
        if not force and time.monotonic() - self._refreshed < NODE_REFRESH_SECONDS:
            self._note_placed()
            return
        self._refreshed = time.monotonic()
        capacity, resources = self.record_nodes()
        if len(self._workers) < capacity:  # the resources a worker asks for follow the nodes seen now
            remote = self._ray.remote(**resources)(TrialWorker)
            while len(self._workers) < capacity:
                actor = remote.remote(self.backend_factory, self.cpus_per_trial)
                self._workers.append(_Worker(actor, actor.describe.remote()))
        self._note_placed()

    def record_nodes(self) -> tuple[int, dict]:
        """Record the cluster's live nodes in the store (a node gone is kept, marked not alive); returns the trials
        they can train at once and the resources a trial's worker asks for (:func:`cluster_slots`)."""
        nodes = [node for node in self._ray.nodes() if node.get("Alive")]
        capacity, resources = cluster_slots(self.cpus_per_trial, nodes)
        self.store.see_nodes(
            [
                {
                    "node_id": node["NodeID"],
                    "address": node.get("NodeManagerAddress"),
                    "slots": _node_slots(node["Resources"], resources, self.cpus_per_trial),
                    "alive": 1,
                }
                for node in nodes
            ]
        )
        return capacity, resources

    def _note_placed(self) -> None:
        waiting = {w.ready: w for w in self._workers if w.info is None}
        if not waiting:
            return
        placed, _ = self._ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in placed:
            worker = waiting[ref]
            try:
                worker.info = self._ray.get(ref)
            except self._ray.exceptions.RayError:
                self._workers.remove(worker)
                continue
            self.store.update_node(
                worker.info["node_id"], device=worker.info["device"], free_memory_mb=worker.info["free_memory_mb"]
            )

    def _wait_until(self, condition: Callable[[], bool], *, what: str) -> None:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > self.wait_for_workers:
                raise NoWorkers(
                    f"the Ray cluster has offered no device for {what} in {self.wait_for_workers:.0f} s "
                    f"(its nodes: {len(self._ray.nodes())}); start a worker (docs/cluster.md) or set "
                    'executor = "local"'
                )
            time.sleep(min(POLL_SECONDS, 0.2))
            self._refresh()


def _node_slots(node_resources: dict, resources: dict, cpus_per_trial: int) -> int:
    """Trials one node trains at once when each asks for ``resources``."""
    if resources.get("num_gpus"):
        return int(node_resources.get("GPU", 0))
    return int(node_resources.get("CPU", 0)) // cpus_per_trial


@dataclass(frozen=True)
class WorkerProbe:
    """Measures a worker's device for the throughput table (:class:`~appliance.automl.throughput.DeviceProbe`)."""

    name: str
    actor: Any
    ray: Any

    def training(self, group) -> float:
        return self.ray.get(self.actor.measure_training.remote(group))

    def prediction(self, encoder: str) -> float:
        return self.ray.get(self.actor.measure_prediction.remote(encoder))
