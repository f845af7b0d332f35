"""AutoML quality at a fixed budget: our pipeline against the paper's default and against random search.

On one real set, with the same wall-clock budget T and the same seeded split, it runs

* ours: meta-model ranking (or the documented fallback when no meta-model ships), successive halving
  over the top n, winner tested;
* default: the paper's default configuration (batch 16, patch 128, LR 0.001, flip) trained for T;
* random: successive halving over n configurations drawn at random from the 576;

and prints the test mean foreground IoU of each and the differences. The three run one after the
other on the same machine, so compare them only within one run of this script.

    python benchmarks/automl.py                       # CPU mode: T = 4 min, n = 8
    python benchmarks/automl.py --gpu                 # GPU mode: T = 30 min, n = 50
    python benchmarks/automl.py --set DIR --budget 10m --top 16 --seed 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.automl.job import train_set
from appliance.automl.ranking import Ranking
from appliance.automl.search_space import search_space
from appliance.data.labelled_set import load_labelled_set
from appliance.pipeline.config import PAPER_DEFAULT
from appliance.pipeline.workflow import train_configuration
from appliance.settings import Settings, parse_duration

DEFAULT_SET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dsb2018_fluo_nuclei"


def random_ranking(seed: int) -> Ranking:
    configurations = list(search_space())
    order = np.random.default_rng(seed).permutation(len(configurations))
    return Ranking(tuple(configurations[i] for i in order), (None,) * len(order), f"random (seed {seed})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET)
    parser.add_argument("--gpu", action="store_true", help="GPU mode: T = 30 min, n = 50 (needs CUDA).")
    parser.add_argument("--budget", default=None, help="Budget T, like 4m or 30m.")
    parser.add_argument("--top", type=int, default=None, help="Configurations in halving (n).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    budget = parse_duration(args.budget or ("30m" if args.gpu else "4m"))
    top_n = args.top or (50 if args.gpu else 8)
    device = "cuda" if args.gpu else "cpu"
    labelled_set = load_labelled_set(args.set)
    print(f"set {labelled_set.name}: {len(labelled_set)} images; T = {budget:.0f} s, n = {top_n}, {device}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", default_budget=budget, top_n=top_n, seed=args.seed)
        for name, ranking in (("ours", None), ("random", random_ranking(args.seed))):
            started = time.perf_counter()
            job = train_set(args.set, settings, device=device, resume=False, ranking=ranking)
            results[name] = (job.test.mean_foreground_iou, time.perf_counter() - started, job.run["winner_config_id"])
            print(
                f"  {name:<8} test IoU {results[name][0]:.3f}  ({job.run['ranking_source']}; winner {results[name][2]})"
            )
        started = time.perf_counter()
        report = train_configuration(
            labelled_set,
            PAPER_DEFAULT,
            seconds=budget,
            out_dir=Path(tmp) / "default",
            seed=args.seed,
            device=device,
            progress=False,
        )
        results["default"] = (report.test.mean_foreground_iou, time.perf_counter() - started, PAPER_DEFAULT.id)
        print(f"  {'default':<8} test IoU {results['default'][0]:.3f}  (paper default {PAPER_DEFAULT.id})")

    print()
    print(f"{'method':<8} {'test IoU':>8} {'wall s':>7}")
    for name, (iou, seconds, _) in results.items():
        print(f"{name:<8} {iou:>8.3f} {seconds:>7.0f}")
    ours = results["ours"][0]
    print(f"ours − default: {ours - results['default'][0]:+.3f} IoU")
    print(f"ours − random:  {ours - results['random'][0]:+.3f} IoU")


if __name__ == "__main__":
    main()
