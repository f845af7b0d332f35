"""The living meta-base: what every finished run measured, kept in ``<data dir>/metabase.csv``.

The shipped meta-base holds learning curves at 0.5, 1 and 2 MP of training patches from one CPU thread; a real run
trains its trials for far more, on the lab's own device and sets. Each finished run therefore appends one row per
trial and decided halving step (the trial's validation IoU after the megapixels it had trained by then) in the shipped
meta-base's columns: the set's meta-features (saved when the run was ranked), the configuration's engineered
features, the device, the throughput it implies and the code version. Rows are keyed like the builder's, so a run
recorded twice (a resumed export) adds nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from appliance.automl.metafeatures import engineered_features
from appliance.data.io import atomic_write
from appliance.metalearning.base import LIVING_METABASE
from appliance.metalearning.builder import write_rows
from appliance.pipeline.config import PipelineConfig
from appliance.store import Store
from appliance.version import code_version

FEATURES_FILE = "meta-features.json"


def save_features(run_dir: str | Path, features: dict[str, float]) -> Path:
    """Keep the set's meta-features with the run (a resumed run does not rank again)."""
    return atomic_write(Path(run_dir) / FEATURES_FILE, lambda tmp: Path(tmp).write_text(json.dumps(features)))


def run_rows(store: Store, run_id: str, features: dict[str, float]) -> list[dict]:
    """One meta-base row per trial and validated halving step of a run."""
    run = store.run(run_id)
    trials = {t.rank: t for t in store.trials(run_id)}
    steps = store.finished_steps(run_id)
    # the run's last step is the winner's last stretch (with a runner-up that came back, two): not learning curves
    final = max((step.step for step in steps), default=None)
    undecided = {step.step for step in steps if not step.decided or step.step == final}
    results = [r for r in store.step_results(run_id) if r.validation_iou is not None and r.step not in undecided]
    final_mp = {}
    for r in results:
        final_mp[r.rank] = max(final_mp.get(r.rank, 0.0), r.work_mp or 0.0)
    validation_images = len((run.split or {}).get("validation", []))
    rows = []
    for r in results:
        config = PipelineConfig.from_dict(trials[r.rank].config)
        seconds = r.total_seconds_trained or 0.0
        rows.append(
            {
                "set": run.set_name,
                "config_id": config.id,
                **config.to_dict(),
                "seed": run.seed,
                "fidelity_mp": r.work_mp,
                "run_fidelity_mp": final_mp[r.rank],
                "val_iou": r.validation_iou,
                "val_iou_per_class": ""
                if r.validation_iou_per_class is None
                else json.dumps(r.validation_iou_per_class),
                "work_mp": r.work_mp,
                "steps": r.optimizer_steps,
                "train_seconds": seconds,
                "validation_images": validation_images,
                "device": run.device,
                "peak_memory_mb": r.peak_memory_mb,
                "code_version": code_version(),
                "finished_at": r.finished_at,
                "mpix_per_second": (r.work_mp or 0.0) / seconds if seconds > 0 else "",
                "source": f"run {run_id}",
                **features,
                **engineered_features(features, config),
            }
        )
    return rows


def record_run(data_dir: str | Path, store: Store, run_id: str) -> int:
    """Append a finished run's rows to the data dir's living meta-base; returns how many were new (0 when the run
    kept no meta-features: it was ranked without the meta-model)."""
    run_dir = Path(store.run(run_id).run_dir)
    features_path = run_dir / FEATURES_FILE
    if not features_path.is_file():
        return 0
    features = json.loads(features_path.read_text())
    return write_rows(Path(data_dir) / LIVING_METABASE, run_rows(store, run_id, features), features=lambda row: None)
