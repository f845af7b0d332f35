"""Long learning curves: does the order of configurations after a little training hold after a lot?

Reads a meta-base CSV written by ``appliance metabase build --configs … --fidelity 0.5,1,2,4,8,16,32`` (the same chosen
configurations on every set) and prints, in markdown:

- each set's curves (validation IoU at every point, optimiser steps at the last);
- where each curve gets going: the first point at which it reaches half of its best IoU (MP and optimiser steps), and
  over all curves the steps by which half, three quarters and nine in ten of them got going (what a halving decision
  needs before it compares anything: :data:`appliance.automl.race.FLOOR_STEPS`);
- per set, Kendall τ between the configurations' order at each point and at the last, and whether the best at each
  point is the best at the last;
- its last line: ``mean Kendall tau <x> between <F> MP and <G> MP over <n> sets (<k> configurations each)``.

Only runs whose curve reaches the largest ``run_fidelity_mp`` in the file count; a set counts when at least two of
them finished on it.

    python benchmarks/long_curves.py [metabase/long.csv]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.metalearning.builder import parse_row_types, read_metabase_rows  # noqa: E402
from appliance.pipeline.config import PAPER_DEFAULT, SEARCH_SPACE, PipelineConfig  # noqa: E402

GOING = 0.5  # a curve "gets going" at the first point with at least half of its best IoU


def load_curves(path: Path) -> tuple[float, dict[str, dict[str, dict[float, dict]]]]:
    """``(top, curves)``: the largest run fidelity in the file and ``curves[set][config_id][point] = row`` of the runs
    that reach it."""
    rows = [
        {**parse_row_types(row), "val_iou": float(row["val_iou"]), "steps": int(float(row["steps"]))}
        for row in read_metabase_rows(path)
    ]
    if not rows:
        raise SystemExit(f"{path}: no rows")
    top = max(float(row["run_fidelity_mp"]) for row in rows)
    curves: dict[str, dict[str, dict[float, dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if float(row["run_fidelity_mp"]) == top:
            curves[row["set"]][row["config_id"]][float(row["fidelity_mp"])] = row
    return top, {name: dict(configs) for name, configs in curves.items() if len(configs) >= 2}


def describe(config_id: str, row: dict) -> str:
    config = PipelineConfig.from_dict({name: row[name] for name in SEARCH_SPACE})
    label = f"{config.encoder} {config.patch_size}/{config.batch_size} lr {config.learning_rate:g}"
    return f"{label} (paper default)" if config == PAPER_DEFAULT else label


def going_point(curve: dict[float, dict]) -> tuple[float, int] | None:
    best = max(row["val_iou"] for row in curve.values())
    for point in sorted(curve):
        if best > 0 and curve[point]["val_iou"] >= GOING * best:
            return point, int(curve[point]["steps"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metabase", nargs="?", type=Path, default=Path("metabase/long.csv"))
    args = parser.parse_args()
    top, curves = load_curves(args.metabase)
    if not curves:
        raise SystemExit(f"{args.metabase}: no set has two or more runs to {top:g} MP yet")
    points = sorted({p for configs in curves.values() for curve in configs.values() for p in curve})
    taus: dict[float, list[float]] = defaultdict(list)
    same_best: dict[float, int] = defaultdict(int)
    labels: dict[str, str] = {}
    going_steps: list[int] = []
    print(f"# Learning curves to {top:g} MP ({args.metabase})\n")
    for name in sorted(curves):
        configs = curves[name]
        for config_id, curve in configs.items():
            labels[config_id] = describe(config_id, next(iter(curve.values())))
        print(f"## {name}\n")
        print("| configuration | " + " | ".join(f"{p:g} MP" for p in points) + " | steps | gets going at |")
        print("|---|" + "---|" * (len(points) + 2))
        for config_id, curve in sorted(configs.items(), key=lambda item: -item[1][top]["val_iou"]):
            ious = " | ".join(f"{curve[p]['val_iou']:.3f}" if p in curve else "" for p in points)
            going = going_point(curve)
            if going is not None:
                going_steps.append(going[1])
            where = "never" if going is None else f"{going[0]:g} MP ({going[1]} steps)"
            print(f"| {labels[config_id]} | {ious} | {int(curve[top]['steps'])} | {where} |")
        final = [configs[c][top]["val_iou"] for c in configs]
        best_final = max(configs, key=lambda c: configs[c][top]["val_iou"])
        row = []
        for point in points[:-1]:
            if not all(point in configs[c] for c in configs):
                continue
            at = [configs[c][point]["val_iou"] for c in configs]
            tau = kendalltau(at, final).statistic
            if not math.isnan(tau):
                taus[point].append(tau)
            best = max(configs, key=lambda c: configs[c][point]["val_iou"])
            same_best[point] += best == best_final
            row.append(f"{point:g} MP τ {tau:.2f}{' (same best)' if best == best_final else ''}")
        print(f"\norder against {top:g} MP: " + "; ".join(row) + "\n")
    sets = len(curves)
    print("## Over the sets\n")
    print(f"| point | mean Kendall τ with {top:g} MP | sets | best at the point is best at {top:g} MP |")
    print("|---|---|---|---|")
    for point in points[:-1]:
        if taus[point]:
            print(f"| {point:g} MP | {statistics.mean(taus[point]):.2f} | {len(taus[point])} | {same_best[point]} |")
    if going_steps:
        quantiles = np.percentile(going_steps, [50, 75, 90])
        print(
            f"\n{len(going_steps)} curves got going (half of their best IoU) by "
            + ", ".join(f"{q:.0f} steps ({share})" for q, share in zip(quantiles, ("half", "3/4", "9/10"), strict=True))
        )
    sizes = sorted({len(configs) for configs in curves.values()})
    reference = 2.0 if taus.get(2.0) else points[0]
    print(
        f"\nmean Kendall tau {statistics.mean(taus[reference]):.2f} between {reference:g} MP and {top:g} MP over "
        f"{len(taus[reference])} sets ({'-'.join(map(str, sizes))} configurations each; {sets} sets with two or more)"
    )


if __name__ == "__main__":
    main()
