"""The same race on one Ray worker and on two: wall time per halving step and the speed-up.

A loopback Ray cluster on this machine (a head without CPUs and 1 or 2 worker nodes of ``--threads`` CPUs each)
races the same configurations on the same real set, split and seed, through the appliance's own executor
(:class:`appliance.automl.cluster.RayExecutor`) and halving loop. So that the two runs do the same work, every slice
trains a fixed number of optimiser steps (``--steps``) instead of a time share; everything else is the real slice:
building or loading the model from a checkpoint in the shared run folder, training, validating, saving. The backend is
built on each worker (the set read there), which counts in step 1 as it does in a real run.

The last line: ``speed-up of wall time per step <x> (2 vs 1 workers, <device>)``, the mean over the steps that race
two or more trials (a step with one trial cannot go faster).

    python benchmarks/cluster.py [--set ../shared/datasets/cpm15_he_nuclei] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the workers import this module by name

from appliance.automl.cluster import BackendSpec, RayExecutor  # noqa: E402
from appliance.automl.executors import TrainedSlice  # noqa: E402
from appliance.automl.halving import SuccessiveHalving  # noqa: E402
from appliance.data.labelled_set import load_labelled_set  # noqa: E402
from appliance.data.splits import split_stems  # noqa: E402
from appliance.pipeline.config import PipelineConfig  # noqa: E402
from appliance.settings import SHARED_DATASETS  # noqa: E402
from appliance.store import Store  # noqa: E402

CONFIGURATIONS = [  # small and fast on a CPU, two encoders, so that the slices differ as in a real race
    PipelineConfig(patch_size=64, batch_size=4, learning_rate=0.001, encoder="resnet18"),
    PipelineConfig(patch_size=64, batch_size=8, learning_rate=0.0005, encoder="resnet18", flip=0.5),
    PipelineConfig(patch_size=128, batch_size=4, learning_rate=0.001, encoder="resnet18"),
    PipelineConfig(patch_size=64, batch_size=4, learning_rate=0.001, encoder="resnet50"),
]


class FixedWork:
    """The real trial backend, except that a slice trains ``steps`` optimiser steps whatever its share."""

    def __init__(self, backend, steps: int):
        self.backend, self.steps = backend, steps

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def train(self, trainer, seconds: float, *, cooldown: float = 0.0) -> TrainedSlice:
        started = time.perf_counter()
        trainer.train(self.backend.patches(trainer.config.patch_size), max_steps=self.steps, cooldown=cooldown)
        return TrainedSlice(time.perf_counter() - started, trainer.seconds, trainer.steps, trainer.pixels_seen / 1e6)


@dataclass(frozen=True)
class FixedWorkSpec:
    spec: BackendSpec
    steps: int

    def __call__(self, on_throughput):
        return FixedWork(self.spec(on_throughput), self.steps)


def race(workers: int, threads: int, spec: FixedWorkSpec, folder: Path) -> tuple[list[float], str]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(workers):
        cluster.add_node(num_cpus=threads)
    cluster.wait_for_nodes()
    try:
        store = Store(folder / f"{workers}-workers.sqlite")
        run_id = store.create_run(set_name="benchmark", budget_seconds=3600.0, top_n=len(CONFIGURATIONS), seed=0)
        for rank, config in enumerate(CONFIGURATIONS, start=1):
            store.add_trial(run_id, rank, config.id, config.to_dict(), None)
        executor = RayExecutor(spec, store=store, run_id=run_id, cpus_per_trial=threads, address=cluster.address)
        device = executor.probe.name
        SuccessiveHalving(
            store, run_id, None, budget_seconds=3600.0, run_dir=folder / f"{workers}-workers", executor=executor
        ).run()
        executor.close()
        return [step.seconds for step in store.finished_steps(run_id)], device
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default=str(SHARED_DATASETS / "cpm15_he_nuclei"))
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per slice")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores per worker")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    labelled_set = load_labelled_set(args.set)
    split = split_stems(labelled_set.stems, seed=0)
    spec = FixedWorkSpec(BackendSpec(str(Path(args.set).resolve()), split.to_dict(), 0, 8.0), args.steps)
    print(f"set {labelled_set.name}: {len(CONFIGURATIONS)} configurations, {args.steps} optimiser steps per slice")
    with tempfile.TemporaryDirectory() as folder:
        one, device = race(1, args.threads, spec, Path(folder))
        two, _ = race(2, args.threads, spec, Path(folder))
    print("| step | trials | 1 worker (s) | 2 workers (s) | speed-up |")
    print("|---|---|---|---|---|")
    active = [len(CONFIGURATIONS) // 2**step or 1 for step in range(len(one))]
    for step, (a, b, n) in enumerate(zip(one, two, active, strict=True)):
        print(f"| {step + 1} | {n} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"| all | | {sum(one):.1f} | {sum(two):.1f} | {sum(one) / sum(two):.2f} |")
    racing = [a / b for a, b, n in zip(one, two, active, strict=True) if n > 1]
    print(f"speed-up of wall time per step {statistics.mean(racing):.2f} (2 vs 1 workers, {device})")


if __name__ == "__main__":
    main()
