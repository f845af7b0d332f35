"""The last stretch of training: the configuration's constant learning rate against one that ends with a cooldown.

For each set and configuration, on the set's seeded split (the product's 80/10/10), as a race's winner trains: a
first stretch of ``--warm`` seconds at the constant rate, a checkpoint, then the last stretch from that checkpoint
twice, side by side in one process: ``--stretch`` seconds at the constant rate, and the same number of optimiser
steps (same seed, so the same batches) ending with the cooldown a race's winner gets: the learning rate decays
linearly to zero over the last fraction of the stretch that makes it :data:`~appliance.pipeline.learning_rate.COOLDOWN`
of the trial's training (``--cooldown`` sets the fraction of the stretch instead; 1: all of it). Both are
scored on the validation and the test images (mean foreground IoU of the set's classes; sets with ``instances/``
are scored as semantic sets, as the AutoML matrix does).

Prints one Markdown row per set and configuration, then its last line:
``mean cooldown − constant <x> validation, <y> test IoU over <n> runs (<device>)``.

    python benchmarks/cooldown.py --sets usiigaci_phase_cells,cpm15_he_nuclei --configs default,c-7e0e5eea7a
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.data.labelled_set import load_labelled_set  # noqa: E402
from appliance.data.splits import split_stems  # noqa: E402
from appliance.metalearning.builder import parse_configs  # noqa: E402
from appliance.pipeline.device import device_name, resolve_device  # noqa: E402
from appliance.pipeline.learning_rate import cooldown_fraction  # noqa: E402
from appliance.pipeline.patches import make_training_patches  # noqa: E402
from appliance.pipeline.task import evaluate_split, network_classes, read_training_split  # noqa: E402
from appliance.pipeline.trainer import Trainer  # noqa: E402
from appliance.settings import SHARED_DATASETS


def score(labelled_set, stems, trainer: Trainer) -> float:
    predict = lambda image: trainer.logits(image)  # noqa: E731
    return evaluate_split(labelled_set, stems, predict).classes.mean_foreground_iou


def run(
    set_dir: Path, config, *, warm: float, stretch: float, cooldown: float | None, seed: int, device, work: Path
) -> dict:
    labelled_set = dataclasses.replace(load_labelled_set(set_dir), instance_paths=())  # a semantic set
    split = split_stems(labelled_set.stems, seed=seed)
    classes = network_classes(labelled_set)
    images, targets = read_training_split(labelled_set, split.train)
    patches = make_training_patches(images, targets, patch_size=config.patch_size, num_classes=classes)
    trainer = Trainer(config, in_channels=labelled_set.channels, num_classes=classes, seed=seed, device=device)
    trainer.train(patches, seconds=warm)
    checkpoint = trainer.save(work / f"{set_dir.name}-{config.id}.pt")
    warm_steps = trainer.steps
    row = {"set": set_dir.name, "config_id": config.id, "warm_steps": warm_steps, "device": device_name(device)}
    row["warm_validation"] = score(labelled_set, split.validation, trainer)
    constant = trainer.train(patches, seconds=stretch)
    steps = constant.steps
    row["stretch_steps"] = steps
    row["constant_validation"] = score(labelled_set, split.validation, trainer)
    row["constant_test"] = score(labelled_set, split.test, trainer)
    trainer.close()
    trainer = Trainer.load(checkpoint, device=device)
    row["cooldown"] = cooldown_fraction(trainer.seconds, constant.seconds) if cooldown is None else cooldown
    trainer.train(patches, max_steps=steps, cooldown=row["cooldown"])
    row["cooldown_validation"] = score(labelled_set, split.validation, trainer)
    row["cooldown_test"] = score(labelled_set, split.test, trainer)
    trainer.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sets", default="usiigaci_phase_cells", help="Comma-separated set names (in ../shared) or paths."
    )
    parser.add_argument("--configs", default="default", help="Comma-separated configuration ids, or 'default'.")
    parser.add_argument("--warm", type=float, default=60.0, help="Seconds at the constant rate before the stretch.")
    parser.add_argument("--stretch", type=float, default=150.0, help="Seconds of the constant last stretch.")
    parser.add_argument(
        "--cooldown",
        type=float,
        default=None,
        help="Fraction of the stretch to cool down over (default: the product's).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="Append each row as a JSON line here.")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    print(
        "| set | configuration | warm steps (validation) | stretch steps (cooldown) | validation constant / cooldown | "
        "test constant / cooldown |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in args.sets.split(","):
            set_dir = Path(name) if Path(name).is_dir() else SHARED_DATASETS / name
            for config in parse_configs(args.configs):
                row = run(
                    set_dir,
                    config,
                    warm=args.warm,
                    cooldown=args.cooldown,
                    stretch=args.stretch,
                    seed=args.seed,
                    device=device,
                    work=Path(work),
                )
                rows.append(row)
                if args.out:
                    with args.out.open("a") as out:
                        out.write(json.dumps(row) + "\n")
                print(
                    f"| {row['set']} | {row['config_id']} | {row['warm_steps']} ({row['warm_validation']:.3f}) | "
                    f"{row['stretch_steps']} ({row['cooldown']:.2f}) | "
                    f"{row['constant_validation']:.3f} / {row['cooldown_validation']:.3f} | "
                    f"{row['constant_test']:.3f} / {row['cooldown_test']:.3f} |",
                    flush=True,
                )
    validation = statistics.mean(r["cooldown_validation"] - r["constant_validation"] for r in rows)
    test = statistics.mean(r["cooldown_test"] - r["constant_test"] for r in rows)
    print(
        f"mean cooldown − constant {validation:+.3f} validation, {test:+.3f} test IoU over {len(rows)} runs "
        f"({device_name(device)})"
    )


if __name__ == "__main__":
    main()
