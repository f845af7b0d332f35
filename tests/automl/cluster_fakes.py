"""A trial backend that Ray workers can build (plain data, importable by the worker processes), and a head process
for the restart test: ``python -m tests.automl.cluster_fakes ADDRESS STATE_DIR``."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.automl.executors import DoesNotFit, TrainedSlice, Validation

TOP_N = 6
BUDGET = 600.0


def quality(config_id: str) -> float:
    return (int(config_id[2:], 16) % 1000) / 1000


@dataclass(frozen=True)
class FakeBackendFactory:
    """Builds :class:`FakeBackend` on a worker. ``delay``: real seconds each training slice takes; ``markers``: a
    folder where each slice writes ``rank-R-step-S`` (holding the worker's node id and process id) when its training
    starts."""

    delay: float = 0.0
    markers: str | None = None
    too_big: tuple[str, ...] = ()

    def __call__(self, on_throughput) -> FakeBackend:
        return FakeBackend(self, on_throughput)


class FakeBackend:
    """Score = quality(config) · (1 − e^(−seconds/2)); training reports exactly the seconds it is given. Slices of
    10 s and more score their configuration's quality, so two executors that share a step differently (one slot or
    two) must still make the same decisions."""

    selection_metric = "mean IoU"

    def __init__(self, spec: FakeBackendFactory, on_throughput):
        self.spec, self.on_throughput = spec, on_throughput

    def start(self, config):
        return {"config": config.to_dict(), "config_id": config.id, "seconds": 0.0, "steps": 0}

    def load(self, path: Path):
        return json.loads(Path(path).read_text())

    def save(self, trainer, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(trainer))

    def probe(self, trainer):
        if trainer["config_id"] in self.spec.too_big:
            raise DoesNotFit(9000.0, "needs 9000 MB, cap 8192 MB")
        return None

    def train(self, trainer, seconds: float, *, cooldown=0.0, part=(0.0, 1.0), rate=1.0) -> TrainedSlice:
        if self.spec.markers:
            import ray

            step = trainer["steps"]
            marker = Path(self.spec.markers) / f"rank-{trainer['config_id']}-step-{step}"
            partial = marker.with_suffix(".partial")
            partial.write_text(f"{ray.get_runtime_context().get_node_id()} {os.getpid()}")
            partial.rename(marker)  # whole, for the test that watches the folder
        time.sleep(self.spec.delay)
        trainer["seconds"] += seconds
        trainer["steps"] += 1
        from appliance.pipeline.config import PipelineConfig

        self.on_throughput(PipelineConfig.from_dict(trainer["config"]), 5, 1.0)
        return TrainedSlice(seconds, trainer["seconds"], trainer["steps"], trainer["steps"] * 0.1)

    def restore(self, trainer, path: Path) -> None:  # its scores only rise: nothing ever rolls back
        raise AssertionError(f"{trainer['config_id']} rolled back to {path}")

    def validate(self, trainer) -> Validation:
        score = quality(trainer["config_id"]) * (1 - math.exp(-trainer["seconds"] / 2))
        return Validation(score, [score])

    def peak_memory_mb(self):
        return None


def drive(address: str, state_dir: Path, *, delay: float) -> None:
    """The head: create the run (first time) or resume it, and race it on the cluster."""
    from appliance.automl.cluster import RayExecutor
    from appliance.automl.halving import SuccessiveHalving, enter_trials
    from appliance.automl.ranking import fallback_ranking
    from appliance.store import Store

    store = Store(state_dir / "state.sqlite")
    runs = store.runs()
    if runs:
        run_id = runs[0].id
    else:
        ranking = fallback_ranking()
        run_id = store.create_run(set_name="fake", budget_seconds=BUDGET, top_n=TOP_N, seed=0)
        enter_trials(store, run_id, ranking.configurations, ranking.scores, TOP_N)
    executor = RayExecutor(FakeBackendFactory(delay=delay), store=store, run_id=run_id, address=address)
    SuccessiveHalving(
        store, run_id, executor=executor, backend=None, budget_seconds=BUDGET, run_dir=state_dir / run_id
    ).run()
    executor.close()


if __name__ == "__main__":
    drive(sys.argv[1], Path(sys.argv[2]), delay=float(sys.argv[3]))
