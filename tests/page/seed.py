"""Seed a real SQLite store the way the appliance fills it, fast, for the page's tests and benchmark.

``seed_typical`` writes through :class:`appliance.store.Store`'s methods what a day of the service leaves behind:
two finished training runs (with QC files and exported model folders), one run halfway through successive halving,
a failed run, the activation decisions between the two models, the job queue, an accepted and a rejected labelled
set, segmented images of the bundled demo sample (real overlays, real measurements from their masks), an image that
could not be read, component heartbeats and events. ``seed_results`` adds many segmented images with measurements in
bulk (the same rows ``Store.finish_image`` writes, inserted in one transaction), for the 10,000-row case.
"""

from __future__ import annotations

import json
import math
import random
import time
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path

import numpy as np

from appliance.automl.schedule import HalvingSchedule
from appliance.data.io import read_image, read_mask, write_png
from appliance.pipeline.outputs import write_results
from appliance.pipeline.overlay import comparison_panel, overlay
from appliance.pipeline.result_names import result_files
from appliance.pipeline.task import segmentation_of_labels
from appliance.settings import Settings
from appliance.store import Store

DEMO_SET = Path(str(files("appliance") / "demo_data" / "labelled" / "usiigaci_phase_cells_demo"))
PROJECT = "phase-demo"
OTHER_PROJECT = "nuclei-screen"
SET_NAME = "usiigaci_phase_cells_demo"
ENCODERS = ("resnet18", "resnet50")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _config(index: int) -> dict:
    return {
        "patch_size": (128, 64, 256)[index % 3],
        "batch_size": (16, 8, 32, 4)[index % 4],
        "learning_rate": (0.001, 0.0005, 0.01)[index % 3],
        "encoder": ENCODERS[index % 2],
        "flip": 0.5 if index % 2 == 0 else 0.0,
        "brightness_blur": 0.5 if index % 3 == 0 else 0.0,
        "grid_distortion": 0.5 if index % 5 == 0 else 0.0,
    }


def write_tiny_onnx(path: Path) -> Path:
    """A real, valid ONNX graph (one 1×1 convolution: grey image → 2 logits), standing in for an exported U-Net."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[[[-1.0]]], [[[1.0]]]], dtype=np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, "height", "width"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _demo(stem: str) -> tuple[np.ndarray, np.ndarray]:
    return read_image(DEMO_SET / "images" / f"{stem}.png"), read_mask(DEMO_SET / "masks" / f"{stem}.png")


def _plan(n_trials: int, budget: float) -> dict:
    """A recorded race plan as :meth:`appliance.automl.race.RacePlan.to_dict` writes it."""
    schedule = HalvingSchedule(n_trials, budget, 1.2)
    return {
        "n": n_trials,
        "search": True,
        "reason": "the largest n whose first slices reach 30 optimiser steps",
        "floor_steps": 30,
        "schedule": schedule.to_dict(),
        "trials": [
            {
                "config_id": f"c-{rank:02d}",
                "predicted_score": 0.5,
                "value": 1.0,
                "steps_per_second": 12.0,
                "mpix_per_second": 3.1,
                "throughput_source": "probe",
                "first_slice_steps": 40.0,
            }
            for rank in range(1, n_trials + 1)
        ],
    }


def _finished_run(store: Store, data_dir: Path, *, started: datetime, n_trials: int, quality: float) -> str:
    """A finished run with its trials, steps, QC files and exported, registered model. Returns the model id."""
    run_id = store.create_run(
        set_name=SET_NAME,
        set_dir=str(data_dir / "sets" / SET_NAME),
        project=PROJECT,
        budget_seconds=240.0,
        top_n=n_trials,
        seed=0,
        gpu_memory_gb=8.0,
        split={"train": ["set1", "set2", "set4", "set6"], "validation": ["set3"], "test": ["set5"]},
    )
    run_dir = data_dir / "runs" / run_id
    store.update_run(run_id, run_dir=str(run_dir), started_at=_iso(started), status="halving", device="cuda")
    store.update_run(run_id, ranking_source="meta-model (xgb-rank)", plan=_plan(n_trials, 240.0))
    rng = random.Random(n_trials)
    predicted = sorted((round(0.55 + 0.3 * rng.random(), 3) for _ in range(n_trials)), reverse=True)
    final = {}
    for rank in range(1, n_trials + 1):
        config = _config(rank)
        store.add_trial(run_id, rank, f"c-{rank:02d}{run_id[-4:]}", config, predicted[rank - 1])
        final[rank] = quality - 0.25 * rng.random()
    active = list(range(1, n_trials + 1))
    steps = int(math.log2(n_trials)) + 1
    clock = started
    for step in range(steps):
        for rank in active:
            iou = final[rank] * (0.55 + 0.45 * (step + 1) / steps)
            clock += timedelta(seconds=240 / steps / len(active))
            store.record_step_result(
                run_id,
                step,
                rank,
                config_id=f"c-{rank:02d}{run_id[-4:]}",
                seconds_trained=240 / steps / len(active) * 0.8,
                total_seconds_trained=240 / steps * (step + 1) / len(active),
                optimizer_steps=40 * (step + 1),
                work_mp=0.26 * (step + 1),
                validation_iou=iou,
                validation_iou_per_class=json.dumps([iou]),
                peak_memory_mb=900.0 + 40 * rank,
                wall_seconds=240 / steps / len(active),
                checkpoint=str(run_dir / "trials" / f"rank-{rank:03d}" / f"step-{step}.pt"),
            )
        survivors = sorted(active, key=lambda r: final[r], reverse=True)[: max(1, len(active) // 2)]
        if step == steps - 1:
            survivors = survivors[:1]
        store.finish_step(run_id, step, active=active, survivors=sorted(survivors), seconds=240 / steps)
        store.event(run_id, f"step {step + 1}/{steps} done: {len(survivors)} of {len(active)} continue")
        active = sorted(survivors)
    winner = active[0]
    store.update_trial(run_id, winner, status="winner")
    winner_iou = final[winner]
    image, mask = _demo("set5")
    prediction = mask.copy()
    prediction[:, : prediction.shape[1] // 8] = 0
    write_png(run_dir / "qc" / "set5.png", comparison_panel(image, mask, prediction))
    test = {
        "overall": {"iou": [0.93, winner_iou - 0.02], "dice": [0.96, 0.8], "mean_foreground_iou": winner_iou - 0.02},
        "task": "instances",
        "objects": {"ap": 0.61, "f1": 0.76, "precision": 0.8, "recall": 0.72, "count_error": 0.09,
                    "true_objects": 57, "predicted_objects": 52},
    }  # fmt: skip
    (run_dir / "qc" / "test.json").write_text(json.dumps(test))
    model_id = store.register_model(
        run_id=run_id,
        set_name=SET_NAME,
        project=PROJECT,
        config_id=f"c-{winner:02d}{run_id[-4:]}",
        path="",
        validation_iou=winner_iou,
        test_iou=winner_iou - 0.02,
    )
    model_dir = Settings(data_dir=data_dir).trained_models_dir / model_id
    write_tiny_onnx(model_dir / "model.onnx")
    (model_dir / "model.json").write_text(
        json.dumps({"format": 1, "model_file": "model.onnx", "class_names": ["cell"], "config": _config(winner)})
    )
    store.finish_export(
        run_id,
        model_id,
        str(model_dir),
        winner_config_id=f"c-{winner:02d}{run_id[-4:]}",
        validation_iou=winner_iou,
        test_iou=winner_iou - 0.02,
        halving_seconds=238.5,
        finished_at=_iso(clock + timedelta(seconds=20)),
    )
    store.event(run_id, f"winner: test IoU {winner_iou - 0.02:.3f}; exported to {model_dir}")
    return model_id


def _live_run(store: Store, data_dir: Path) -> str:
    """A run in its second halving step: 8 trials, step 1 done (4 survive), 2 of 4 slices of step 2 recorded."""
    started = datetime.now(UTC) - timedelta(seconds=150)
    run_id = store.create_run(
        set_name="nuclei_fluo",
        set_dir=str(data_dir / "sets" / "nuclei_fluo"),
        budget_seconds=600.0,
        top_n=8,
        seed=0,
        gpu_memory_gb=8.0,
        split={"train": ["a"], "validation": ["b"], "test": ["c"]},
    )
    store.update_run(
        run_id,
        run_dir=str(data_dir / "runs" / run_id),
        started_at=_iso(started),
        status="halving",
        device="cuda",
        ranking_source="meta-model (xgb-rank)",
    )
    for rank in range(1, 9):
        store.add_trial(run_id, rank, f"c-live{rank:02d}", _config(rank + 3), round(0.82 - 0.02 * rank, 3))
    scores = {rank: 0.45 + 0.05 * ((rank * 7) % 8) / 8 for rank in range(1, 9)}
    for rank in range(1, 9):
        store.record_step_result(
            run_id,
            0,
            rank,
            config_id=f"c-live{rank:02d}",
            seconds_trained=12.0,
            total_seconds_trained=12.0,
            optimizer_steps=30,
            work_mp=0.5,
            validation_iou=scores[rank],
            validation_iou_per_class=json.dumps([scores[rank]]),
            peak_memory_mb=1500.0,
            wall_seconds=15.0,
        )
    survivors = sorted(sorted(scores, key=scores.get, reverse=True)[:4])
    store.finish_step(run_id, 0, active=list(range(1, 9)), survivors=survivors, seconds=120.0)
    for rank in survivors[:2]:
        store.record_step_result(
            run_id,
            1,
            rank,
            config_id=f"c-live{rank:02d}",
            seconds_trained=20.0,
            total_seconds_trained=32.0,
            optimizer_steps=80,
            work_mp=1.0,
            validation_iou=scores[rank] + 0.08,
            validation_iou_per_class=json.dumps([scores[rank] + 0.08]),
            peak_memory_mb=1500.0,
            wall_seconds=24.0,
        )
    store.event(run_id, "step 1/4 done: 4 of 8 continue (best validation IoU 0.495)")
    store.event(run_id, "step 2/4: 4 trial(s) to train")
    return run_id


def _segment(store: Store, data_dir: Path, project: str, stem: str, model_id: str, *, owner: str) -> None:
    """Register, queue, claim and finish one image of the demo sample like the service does (real files)."""
    image, mask = _demo(stem)
    relpath = f"2026-11-21/{stem}.png"
    image_id = f"{project}-{stem}"
    store.add_image(
        id=image_id,
        project=project,
        relpath=relpath,
        path=str(DEMO_SET / "images" / f"{stem}.png"),
        content_hash=stem,
        size=1,
        mtime_ns=1,
        status="queued",
        detected_at=_iso(datetime.now(UTC)),
        landed_at=time.time(),
    )
    job_id, _ = store.enqueue("segment", image_id, payload={"image_id": image_id}, project=project)
    store.update_image(image_id, job_id=job_id)
    job = store.claim("segment", owner, lease_seconds=60, projects=[project])
    files = result_files(data_dir / "results" / project, f"2026-11-21/{stem}")
    result = segmentation_of_labels(mask, min_object_px=10)
    rows = write_results(
        files, image, result, class_names=["cell"], image_name=relpath, pixel_size_um=0.65, min_object_px=10
    )
    store.finish_image(
        job.key,
        job.id,
        owner,
        rows=rows,
        model_id=model_id,
        mask_path=str(files.mask),
        overlay_path=str(files.overlay),
        error=None,
    )


def seed_typical(data_dir: str | Path) -> Path:
    """A store (and the files its rows point to) like one day of a running appliance; returns the store path."""
    data_dir = Path(data_dir)
    store = Store(data_dir / "appliance.sqlite")
    try:
        day = datetime.now(UTC) - timedelta(days=1)
        old_model = _finished_run(store, data_dir, started=day - timedelta(days=6), n_trials=8, quality=0.78)
        new_model = _finished_run(store, data_dir, started=day, n_trials=16, quality=0.84)
        for model_id, previous, reason in (
            (old_model, None, "first model of the project"),
            (new_model, old_model, "test IoU on 1 image(s) of usiigaci_phase_cells_demo: new 0.812 >= active 0.754"),
        ):
            model = store.model(model_id)
            store.record_activation(
                project=PROJECT,
                model_id=model_id,
                previous_model_id=previous,
                new_score=model.test_iou,
                previous_score=None if previous is None else store.model(previous).test_iou,
                activated=True,
                reason=reason,
            )
        rushed = _finished_run(store, data_dir, started=day + timedelta(hours=2), n_trials=2, quality=0.31)
        store.record_activation(
            project=PROJECT,
            model_id=rushed,
            previous_model_id=new_model,
            new_score=store.model(rushed).test_iou,
            previous_score=None,
            activated=False,
            reason=(
                "not better than Otsu thresholding: test mean IoU with background on 1 image(s) of "
                f"usiigaci_phase_cells_demo 0.152 <= Otsu's 0.414. Registered, not active; train it with a larger "
                f"budget, or activate it by hand on the Models page or with `appliance activate {PROJECT} {rushed}`"
            ),
            baseline_score=0.414,
            model_mean_iou=0.152,
        )
        live = _live_run(store, data_dir)
        failed = store.create_run(set_name="he_tissue", set_dir=str(data_dir / "sets" / "he_tissue"), budget_seconds=60)
        store.update_run(
            failed,
            status="failed",
            error="OutOfMemoryError: every configuration ran out of memory",
            finished_at=_iso(datetime.now(UTC)),
        )
        store.event(failed, "failed: every configuration ran out of GPU memory", level="error")

        for name, project, status, problems in (
            (SET_NAME, PROJECT, "accepted", []),
            ("nuclei_fluo", OTHER_PROJECT, "accepted", []),
            (
                "plate7_labels",
                "plate7",
                "rejected",
                [
                    {"file": "masks/img03.png", "message": "has no image with the same stem; add images/img03.tif"},
                    {"file": "images/img09.tif", "message": "is 512x512 but its mask is 256x256; export both again"},
                ],
            ),
        ):
            job_id = None
            if status == "accepted":
                job_id, _ = store.enqueue("train", f"hash-{name}", payload={"set_dir": name}, project=project)
                job = store.claim("train", "training@seed:1", lease_seconds=600)
                if name == SET_NAME:
                    store.complete(job.id, "training@seed:1", {"model_id": new_model})
            store.record_intake(
                name=name,
                inbox_path=str(data_dir / "inbox" / "labelled" / name),
                signature=name,
                content_hash=f"hash-{name}",
                status=status,
                problems=problems,
                project=project,
                store_dir=str(data_dir / "sets" / name) if status == "accepted" else None,
                job_id=job_id,
            )
        store.event(None, "labelled set plate7_labels rejected with 2 problem(s)", level="warning")
        owner = "inference@seed:1"
        for stem in ("set1", "set2", "set3", "set4", "set6", "set7"):
            _segment(store, data_dir, PROJECT, stem, new_model, owner=owner)
        store.add_image(
            id="broken",
            project=PROJECT,
            relpath="2026-11-21/scan_0042.tif",
            path=str(data_dir / "inbox" / "images" / PROJECT / "2026-11-21" / "scan_0042.tif"),
            content_hash="x",
            size=10,
            mtime_ns=1,
            status="failed",
            error="not a readable TIFF (truncated file); save it again from the microscope software",
            detected_at=_iso(datetime.now(UTC)),
        )
        job_id, _ = store.enqueue("segment", "broken", payload={"image_id": "broken"}, project=PROJECT)
        store.update_image("broken", job_id=job_id)
        job = store.claim("segment", owner, lease_seconds=60, projects=[PROJECT])
        store.give_up(job.id, owner, store.image("broken").error)
        store.event(None, f"image {PROJECT}/2026-11-21/scan_0042.tif not segmented: truncated TIFF", level="error")
        store.enqueue("segment", "waiting-1", payload={}, project=OTHER_PROJECT)
        store.enqueue("segment", "waiting-2", payload={}, project=OTHER_PROJECT)
        clock = time.time()
        for name, state, detail in (
            ("service", "running", ""),
            ("watcher", "running", "file events, full rescan every 60 s"),
            ("scanner", "running", "0 set(s) and 0 image(s) waiting to be complete"),
            ("training", "training", f"run {live}"),
            ("inference", "running", "6 image(s) segmented"),
            ("page", "running", "http://127.0.0.1:8501"),
        ):
            providers = ("CPUExecutionProvider",) if name == "inference" else ()
            store.component_beat(name, state=state, detail=detail, interval=1, pid=4242, onnx_providers=providers)
        store.db["components"].update("scanner", {"heartbeat": clock - 120})  # one stale heartbeat
        store.event(None, "service started (pid 4242)")
    finally:
        store.close()
    return data_dir / "appliance.sqlite"


def seed_results(data_dir: str | Path, count: int, *, projects: tuple[str, ...] = (PROJECT, OTHER_PROJECT)) -> int:
    """Add ``count`` segmented images (two classes each, so 2 × ``count`` measurement rows) spread over 30 days,
    in one transaction. Returns the number of measurement rows written."""
    data_dir = Path(data_dir)
    store = Store(data_dir / "appliance.sqlite")
    overlay_path = data_dir / "results" / "bulk_overlay.png"
    image, mask = _demo("set8")
    write_png(overlay_path, overlay(image, mask))
    rng = random.Random(count)
    start = datetime.now(UTC) - timedelta(days=30)
    images, rows = [], []
    for index in range(count):
        project = projects[index % len(projects)]
        at = start + timedelta(seconds=index * 30 * 86400 / count)
        relpath = f"{at:%Y-%m-%d}/well_{index:05d}.tif"
        image_id = f"bulk{index:06d}"
        images.append(
            {
                "id": image_id,
                "project": project,
                "relpath": relpath,
                "path": str(data_dir / "inbox" / "images" / project / relpath),
                "content_hash": image_id,
                "size": 1_048_576,
                "mtime_ns": index,
                "status": "done",
                "model_id": "model-bulk",
                "overlay_path": str(overlay_path),
                "detected_at": _iso(at),
                "processed_at": _iso(at + timedelta(seconds=2)),
                "processed_time": at.timestamp() + 2,
            }
        )
        confluence = min(0.95, 0.2 + 0.5 * index / count + 0.05 * rng.random())
        for class_index, name in ((1, "cell"), (2, "debris")):
            fraction = confluence if class_index == 1 else 0.02 * rng.random()
            objects = int(fraction * 400 + rng.randint(0, 10))
            rows.append(
                {
                    "image_id": image_id,
                    "project": project,
                    "relpath": relpath,
                    "model_id": "model-bulk",
                    "class_index": class_index,
                    "row": json.dumps(
                        {
                            "image": relpath,
                            "class_index": class_index,
                            "class_name": name,
                            "pixel_fraction": round(fraction, 6),
                            "object_count": objects,
                            "area_mean_px": round(fraction * 262144 / max(objects, 1), 2) if objects else None,
                            "area_median_px": None,
                            "area_min_px": 12 if objects else None,
                            "area_max_px": 900 if objects else None,
                            "area_mean_um2": None,
                            "area_median_um2": None,
                            "area_min_um2": None,
                            "area_max_um2": None,
                        }
                    ),
                }
            )
    with store.db.conn:
        store.db["images"].insert_all(images, batch_size=1000)
        store.db["measurements"].insert_all(rows, batch_size=1000)
    store.close()
    return len(rows)
