"""Halving on a real loopback Ray cluster (a head and two worker nodes on this machine, one CPU each): the same
decisions as in-process, a worker killed mid-step, the head process killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance.automl.executors import LocalExecutor
from appliance.automl.halving import SuccessiveHalving, enter_trials
from appliance.automl.last_stretch import PARTS
from appliance.automl.memory import MemoryGroup
from appliance.automl.ranking import fallback_ranking
from appliance.data.labelled_set import load_labelled_set
from appliance.store import Store, TrialStatus
from tests.automl.cluster_fakes import FakeBackendFactory

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]


class FrozenClock:
    """The head's clock under test: the fake trainers report the seconds they were given, and no time passes."""

    def __call__(self) -> float:
        return 1000.0


@pytest.fixture(scope="module")
def cluster():
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            # a killed node is declared dead within about a second (Ray's default: tens of seconds)
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2},
        },
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _new_run(store: Store, top_n: int, budget: float) -> str:
    ranking = fallback_ranking()
    run_id = store.create_run(set_name="fake", budget_seconds=budget, top_n=top_n, seed=0)
    enter_trials(store, run_id, ranking.configurations, ranking.scores, top_n)
    return run_id


def _decisions(store: Store, run_id: str) -> tuple:
    steps = [(s.step, sorted(s.active), sorted(s.survivors)) for s in store.finished_steps(run_id)]
    slices = sorted((r.step, r.rank) for r in store.step_results(run_id))
    winner = store.trials(run_id, status=TrialStatus.WINNER)[0].config_id
    return steps, slices, winner


def test_a_race_on_two_workers_makes_the_decisions_of_the_local_executor(cluster, tmp_path):
    from appliance.automl.cluster import RayExecutor

    factory = FakeBackendFactory()
    decisions, observed = {}, []
    for name in ("local", "ray"):
        store = Store(tmp_path / name / "state.sqlite")
        run_id = _new_run(store, top_n=8, budget=400.0)
        backend = factory(lambda config, steps, seconds: None)
        executor = (
            LocalExecutor(backend, clock=FrozenClock())
            if name == "local"
            else RayExecutor(
                factory,
                store=store,
                run_id=run_id,
                address=cluster[0].address,
                on_throughput=lambda config, steps, seconds: observed.append(config.id),
            )
        )
        if name == "ray":  # the throughput table of a worker's device is measured there, with its one thread
            assert executor.probe.name.endswith("(1 threads)")
            assert executor.probe.training(MemoryGroup(64, 4, "resnet18")) > 0
        halving = SuccessiveHalving(
            store,
            run_id,
            backend,
            budget_seconds=400.0,
            run_dir=tmp_path / name,
            clock=FrozenClock(),
            executor=executor,
        )
        halving.run()
        executor.close()
        decisions[name] = _decisions(store, run_id)
        if name == "ray":
            results = store.step_results(run_id)
            assert len({r.node for r in results}) == 2  # both workers trained
            # each slice's speed reached the head (the winner's last slice: one per part)
            parts = [r for r in results if r.step == max(x.step for x in results)]
            assert sorted(observed) == sorted([r.config_id for r in results] + [parts[0].config_id] * (PARTS - 1))
            for rank in {r.rank for r in results}:  # continued from its checkpoint on whichever worker: totals add up
                rows = sorted((r for r in results if r.rank == rank), key=lambda r: r.step)
                assert rows[-1].total_seconds_trained == pytest.approx(sum(r.seconds_trained for r in rows))
            # two slots: the first two of 8 start together with a quarter of the step each (an eighth on one slot)
            first = {r.rank: r.seconds_trained for r in store.step_results(run_id, 0)}
            assert first[1] == pytest.approx(400.0 / 4 / 4, abs=0.01) and first[2] == pytest.approx(first[1], abs=0.01)
            nodes = store.cluster_nodes()
            assert sum(n.slots or 0 for n in nodes if n.alive) == 2 and all(n.running is None for n in nodes)
            assert all(n.device.startswith("cpu") for n in nodes if n.slots)  # what each worker trains on
    assert decisions["ray"] == decisions["local"]
    assert decisions["ray"][0][-1][2] and len(decisions["ray"][0]) == 4  # 8 → 4 → 2 → 1


def test_a_worker_killed_mid_step_loses_only_its_slice_which_runs_again_on_the_other(cluster, tmp_path):
    from appliance.automl.cluster import RayExecutor

    head, workers = cluster
    markers = tmp_path / "markers"
    markers.mkdir()
    store = Store(tmp_path / "state.sqlite")
    run_id = _new_run(store, top_n=4, budget=400.0)
    factory = FakeBackendFactory(delay=0.5, markers=str(markers))
    executor = RayExecutor(factory, store=store, run_id=run_id, address=head.address)
    killed = {}

    def kill_the_first_worker_to_start_training():
        while not killed:
            started = sorted(markers.glob("*-step-0"))
            if started:
                node_id, pid = started[0].read_text().split()
                node = next(w for w in workers if w.node_id == node_id)
                os.kill(int(pid), signal.SIGKILL)  # the worker process mid-slice, then its machine
                head.remove_node(node, allow_graceful=False)
                killed.update(node=node_id, slice=started[0].name)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_worker_to_start_training, daemon=True)
    killer.start()
    try:
        SuccessiveHalving(store, run_id, None, budget_seconds=400.0, run_dir=tmp_path / run_id, executor=executor).run()
    finally:
        executor.close()
        workers[:] = [w for w in workers if w.node_id != killed.get("node")]
        while len(workers) < 2:  # the next test gets two workers again
            workers.append(head.add_node(num_cpus=1))
        head.wait_for_nodes()
    results = store.step_results(run_id)
    assert len(results) == len({(r.step, r.rank) for r in results})  # nothing recorded twice
    assert killed["node"] not in {r.node for r in results}  # its slice ended nowhere but on the other worker
    assert {t.status for t in store.trials(run_id)} <= {TrialStatus.WINNER, TrialStatus.ACTIVE, TrialStatus.DROPPED}
    assert not store.trials(run_id, status=TrialStatus.FAILED)
    lost = [e.message for e in store.events(run_id) if "was lost" in e.message]
    assert len(lost) == 1 and "runs again from its last checkpoint" in lost[0]
    assert [len(s.active) for s in store.finished_steps(run_id)] == [4, 2, 1]
    deadline = time.monotonic() + 60
    while any(n.alive for n in store.cluster_nodes() if n.node_id == killed["node"]):  # until Ray declares it dead
        assert time.monotonic() < deadline
        time.sleep(0.5)
        executor.record_nodes()


def test_a_head_killed_mid_race_resumes_it_on_restart_with_nothing_lost_or_counted_twice(cluster, tmp_path):
    head, _ = cluster
    command = [sys.executable, "-m", "tests.automl.cluster_fakes", head.address, str(tmp_path), "0.5"]
    first = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store_path = tmp_path / "state.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if store_path.exists() and (runs := Store(store_path).runs()):
            if len(Store(store_path).step_results(runs[0].id)) >= 3:  # inside step 1 (6 trials)
                break
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    store = Store(store_path)
    run_id = store.runs()[0].id
    before = {(r.step, r.rank): r for r in store.step_results(run_id)}
    assert 3 <= len(before) < 6 and not store.finished_steps(run_id)
    subprocess.run(command, cwd=REPOSITORY, check=True, timeout=180, stdout=subprocess.DEVNULL)
    after = {(r.step, r.rank): r for r in store.step_results(run_id)}
    assert len(store.step_results(run_id)) == len(after)  # nothing counted twice
    for key, row in before.items():  # nothing recorded before the kill was redone
        assert after[key] == row
    assert [len(s.active) for s in store.finished_steps(run_id)] == [6, 3, 1]
    assert len(store.trials(run_id, status=TrialStatus.WINNER)) == 1


def test_a_cluster_with_gpus_trains_one_trial_per_gpu_and_none_on_its_cpu_nodes(monkeypatch):
    from appliance.automl import cluster as cluster_module

    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 64.0}},
        {"NodeID": "d", "Alive": False, "Resources": {"CPU": 8.0, "GPU": 4.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert cluster_module.cluster_slots(4) == (3, {"num_gpus": 1, "num_cpus": 0})
    assert [cluster_module._node_slots(n["Resources"], {"num_gpus": 1}, 4) for n in nodes[:3]] == [2, 1, 0]
    monkeypatch.setattr(ray, "nodes", lambda: nodes[2:])  # no live GPU: CPU cores, ray_cpus_per_trial each
    assert cluster_module.cluster_slots(4) == (16, {"num_cpus": 4})


@pytest.mark.slow
def test_a_training_job_with_executor_ray_races_on_the_workers_and_exports_on_the_head(
    cluster, tmp_path, demo_set_dir, measured_cpu_throughput
):
    from appliance.automl.job import train_set
    from appliance.automl.throughput import ThroughputTable
    from appliance.pipeline.predictor import OnnxPredictor
    from appliance.settings import Settings

    torch = pytest.importorskip("torch")
    settings = Settings(
        data_dir=tmp_path / "data",
        default_budget=16.0,
        top_n=4,
        race_floor_steps=2,
        executor="ray",
        ray_address=cluster[0].address,
    )
    measured_cpu_throughput(settings.store_path)  # this machine's table, copied for the workers' one-thread device
    store = Store(settings.store_path)
    here = ThroughputTable.load(store, torch.device("cpu"))
    worker_device = here.device.rsplit("(", 1)[0] + "(1 threads)"
    for row in store.throughput(here.device, here.version):
        group = MemoryGroup(row.patch_size, row.batch_size, row.encoder)
        store.record_throughput(worker_device, row.code_version, group, row.steps_per_second, source=row.source,
                                kind=row.kind)  # fmt: skip
    assert ThroughputTable.load(store, worker_device).measured
    # two trials whatever this machine's load does to its measured speed (the plan's n is tested in test_race.py)
    result = train_set(demo_set_dir, settings, ranking=fallback_ranking(), store=store, trials=2)
    assert result.run.status == "finished" and result.run.device == f"ray: {worker_device}"
    assert "device_measurement_seconds" not in result.timings  # the workers' device was known: nothing probed
    assert result.run.plan["schedule"]["slots"] == 2 and result.run.plan["n"] == 2
    nodes = {n.node_id for n in store.cluster_nodes()}
    assert {r.node for r in result.step_results} <= nodes and None not in {r.node for r in result.step_results}
    assert all(n.running is None for n in store.cluster_nodes())  # the run's workers stopped after its race
    assert all(r.optimizer_steps >= 1 for r in result.step_results if r.step == 0)  # real slices on the workers
    assert OnnxPredictor(result.model_dir).predict(load_labelled_set(demo_set_dir).read(0)[0]).ndim == 2


def test_with_no_ray_address_the_appliance_starts_a_ray_instance_of_its_own(tmp_path):
    script = (
        "from appliance.automl.cluster import connect; import ray; connect(''); "
        "print(int(ray.cluster_resources()['CPU'])); ray.shutdown()"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == os.cpu_count()
