"""Objects, not pixels: a boundary-class (instances) model against connected components of a semantic model.

For each set with instance masks, on its seeded split (80/10/10, the appliance's), the paper's default configuration
is trained twice for the same time T on the same machine, one after the other:

* ``semantic``: the network learns the set's class map; objects are its connected components (what every semantic
  tool gives, and what the appliance gave before instance mode).
* ``instances``: the network learns background / interior / boundary from the instance masks; objects come from a
  seeded watershed of its probabilities, the seed depth chosen on the validation images
  (:mod:`appliance.pipeline.task`).
* ``semantic + watershed`` (a row of its own, from the semantic model above): the same watershed on the semantic
  model's foreground probability (interior probability := foreground probability, no boundary), its seed depth chosen
  on the validation images the same way. It says how much of the instances model's gain is the watershed and how
  much the boundary class.

Both are scored on the test images against the set's own instance masks: AP at IoU 0.5 (TP / (TP + FP + FN), as
Cellpose and StarDist report it), F1, count error, and the class map's foreground IoU. Objects below the appliance's
``min_object_px`` are dropped from both, as the appliance does. Results append to a JSON-lines file (one line per
set and model); ``--table`` prints the Markdown table.

    python benchmarks/instances.py --sets dsb2018_fluo_nuclei,usiigaci_phase_cells --seconds 300 \\
        --out benchmarks/results/instances-cpu.jsonl
    python benchmarks/instances.py --table benchmarks/results/instances-cpu.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from appliance.data.labelled_set import (
    SEMANTIC,
    LabelledSet,
    load_labelled_set,
    read_split_images,
    read_split_instances,
)
from appliance.pipeline.config import PAPER_DEFAULT
from appliance.pipeline.device import device_name, resolve_device
from appliance.pipeline.instances import choose_seed_depth, instance_scores, instances_from_probabilities, softmax
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.task import TASKS
from appliance.pipeline.workflow import train_configuration
from appliance.settings import SHARED_DATASETS, Settings
from appliance.version import code_version


def run_cell(set_dir: Path, task: str, *, seconds: float, seed: int, device: str | None, min_object_px: int) -> dict:
    labelled_set = load_labelled_set(set_dir)
    if not labelled_set.instance_paths:
        raise SystemExit(f"{set_dir} has no instances/ folder: nothing to score objects against")
    labelled_set = dataclasses.replace(labelled_set, metadata={**labelled_set.metadata, "task": task})
    with tempfile.TemporaryDirectory() as out:
        report = train_configuration(
            labelled_set,
            PAPER_DEFAULT,
            seconds=seconds,
            out_dir=out,
            seed=seed,
            device=device,
            progress=False,
            min_object_px=min_object_px,
        )
        watershed = (
            semantic_watershed(labelled_set, report, min_object_px=min_object_px)
            if task == SEMANTIC and labelled_set.num_classes == 1
            else None
        )
    objects = report.test_objects
    return {
        "set": set_dir.name,
        "model": task,
        "seconds": seconds,
        "seed": seed,
        "steps": report.steps,
        "test_images": len(report.split.test),
        "test_iou": report.test.mean_foreground_iou,
        **{key: objects[key] for key in ("ap", "f1", "count_error", "true_objects", "predicted_objects")},
        "device": device_name(resolve_device(device)),
        "code_version": code_version(),
        "min_object_px": min_object_px,
        "seed_depth_px": report.metrics.get("seed_depth_px"),
        **({"watershed": watershed} if watershed else {}),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def semantic_watershed(labelled_set: LabelledSet, report, *, min_object_px: int) -> dict:
    """The instances watershed on a one-class semantic model's probabilities: (background, foreground, 0)."""
    predictor = OnnxPredictor(report.out_dir)

    def probabilities(stems: tuple[str, ...]) -> list[np.ndarray]:
        images, _ = read_split_images(labelled_set, stems)
        return [np.concatenate([p, np.zeros_like(p[:1])]) for p in (softmax(predictor.logits(i)) for i in images)]

    validation, test = report.split.validation, report.split.test
    depth, _ = choose_seed_depth(
        probabilities(validation), read_split_instances(labelled_set, validation), min_object_px=min_object_px
    )
    predictions = [
        instances_from_probabilities(p, seed_depth_px=depth, min_object_px=min_object_px) for p in probabilities(test)
    ]
    scores = instance_scores(read_split_instances(labelled_set, test), predictions)
    keys = ("ap", "f1", "count_error", "true_objects", "predicted_objects")
    return {**{key: scores[key] for key in keys}, "seed_depth_px": depth}


def table(rows: list[dict]) -> str:
    lines = [
        "| set | T | model | test images | true objects | found | AP@0.5 | F1 | count error | foreground IoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['seconds'] / 60:g} min | {r['model']} | {r['test_images']} | {r['true_objects']} | "
            f"{r['predicted_objects']} | {r['ap']:.3f} | {r['f1']:.3f} | {r['count_error']:.1%} | {r['test_iou']:.3f} |"
        )
        if "watershed" in r:
            w = r["watershed"]
            lines.append(
                f"| {r['set']} | {r['seconds'] / 60:g} min | semantic + watershed (depth {w['seed_depth_px']:g} px) | "
                f"{r['test_images']} | {w['true_objects']} | {w['predicted_objects']} | {w['ap']:.3f} | "
                f"{w['f1']:.3f} | {w['count_error']:.1%} | {r['test_iou']:.3f} |"
            )
    by_set: dict[tuple, dict] = {}
    for r in rows:
        by_set.setdefault((r["set"], r["seconds"], r["seed"]), {})[r["model"]] = r
    wins = [cell["instances"]["ap"] > cell["semantic"]["ap"] for cell in by_set.values() if len(cell) == 2]
    lines.append("")
    cells = f"{sum(wins)}/{len(wins)} cells (set × T × seed)"
    lines.append(f"- instances model AP@0.5 above the semantic model's (connected components) in {cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="dsb2018_fluo_nuclei,usiigaci_phase_cells", help="Comma-separated sets.")
    parser.add_argument("--seconds", type=float, default=300.0, help="Training time T of each model.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/instances.jsonl"))
    parser.add_argument("--table", type=Path, default=None, help="Print the Markdown table of a results file and exit.")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    done = set()
    if args.out.exists():
        done = {
            (r["set"], r["model"], r["seconds"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines())
        }
    min_object_px = Settings().min_object_px
    for name in args.sets.split(","):
        for task in TASKS:
            if (name, task, args.seconds, args.seed) in done:
                continue
            row = run_cell(
                SHARED_DATASETS / name,
                task,
                seconds=args.seconds,
                seed=args.seed,
                device=args.device,
                min_object_px=min_object_px,
            )
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
    print(table([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    main()
