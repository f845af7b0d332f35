"""One training job, start to end: meta-features → ranking → race plan → successive halving → QC → ONNX → registry.

The budget ``T`` counts from the start of the job: meta-features, ranking and planning come out of it, and the
race (:mod:`appliance.automl.race`) gets what is left. Only testing the winner and exporting it come after ``T``,
and, before it, the throughput probe of a device or code version not measured yet (once: 10–20 s on a 2-core CPU,
about a second on a GPU; a set's budget should not pay for calibrating the machine).

Everything is recorded in the store as it happens; :func:`train_set` called again for the same set and
the same parameters resumes an unfinished run instead of starting over.

Files, under ``<data dir>/runs/<run id>/``: ``trials/rank-NNN/step-S.pt`` (checkpoints of trials still in
the race, and of the runner-up during the winner's last slice), ``qc/<stem>.png`` (image | truth | prediction for
each test image), ``qc/halving.png`` (every trial's validation IoU per step, the paper's Fig. 9) and
``qc/test.json``; the exported model goes to ``<data dir>/models/<model id>/`` (``model.onnx`` + ``model.json``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.automl.backend import TorchBackend
from appliance.automl.halving import SuccessiveHalving, TrialBackend, enter_race
from appliance.automl.living import LIVING_METABASE, record_run, save_features
from appliance.automl.metafeatures import set_features
from appliance.automl.race import RacePlan, plan_race, slice_overhead, slice_overheads, time_aware_order
from appliance.automl.ranking import FALLBACK_SOURCE, Ranking, fallback_ranking, rank_for_set
from appliance.automl.schedule import HalvingSchedule, selection_score
from appliance.automl.throughput import ensure_reference_measurements, record_training_throughput
from appliance.data.io import atomic_write, write_png
from appliance.data.labelled_set import LabelledSet, load_labelled_set
from appliance.data.splits import Split, split_stems
from appliance.faults import fault_point
from appliance.pipeline.evaluation import Evaluation
from appliance.pipeline.export import onnx_parity, write_model_folder
from appliance.pipeline.inference import DEFAULT_TILES
from appliance.pipeline.overlay import comparison_panel
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.task import CHOOSE, INSTANCES, SEMANTIC, evaluate_split
from appliance.settings import Settings
from appliance.store import Run, RunStatus, StepResult, Store, Trial, TrialStatus, now


@dataclass(frozen=True)
class JobResult:
    run_id: str
    run: Run
    trials: list[Trial]
    step_results: list[StepResult]
    test: Evaluation
    model_dir: Path
    timings: dict[str, float]


def find_resumable_run(store: Store, set_dir: Path, *, budget: float, top_n: int, seed: int) -> Run | None:
    """The oldest unfinished run of this set with the same budget, top n and seed, if any."""
    for run in store.unfinished_runs(str(set_dir)):
        if run.budget_seconds == budget and run.top_n == top_n and run.seed == seed:
            return run
    return None


def train_set(
    set_dir: str | Path,
    settings: Settings,
    *,
    budget: float | None = None,
    top_n: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    resume: bool = True,
    log: Callable[[str], None] = lambda message: None,
    on_slice: Callable[[dict], None] | None = None,
    store: Store | None = None,
    ranking: Ranking | None = None,
    trials: int | None = None,
    growth: float | None = None,
    include_default: bool = True,
    project: str | None = None,
) -> JobResult:
    """Run (or resume) the whole job on one labelled set for ``project`` (default: the set's own,
    :attr:`~appliance.data.labelled_set.LabelledSet.project`); returns the finished run.

    Benchmarks compare with other searches through ``ranking`` (replaces the meta-model's ranking), ``trials``
    (races exactly that many configurations instead of the budget-aware n) and ``include_default`` (False: the
    paper default does not have to race); ``growth`` with ``trials`` fixes the step budgets' growth too.
    """
    job_started = time.perf_counter()
    set_dir = Path(set_dir).resolve()
    budget = settings.default_budget if budget is None else budget
    top_n = settings.top_n if top_n is None else top_n
    seed = settings.seed if seed is None else seed
    store = store or Store(settings.store_path)
    labelled_set = load_labelled_set(set_dir)
    run = find_resumable_run(store, set_dir, budget=budget, top_n=top_n, seed=seed) if resume else None
    timings: dict[str, float] = {}
    if run is None:
        split = split_stems(labelled_set.stems, seed=seed)
        run_id = store.create_run(
            set_name=labelled_set.name,
            set_dir=str(set_dir),
            project=project or labelled_set.project,
            budget_seconds=budget,
            top_n=top_n,
            seed=seed,
            gpu_memory_gb=settings.gpu_memory_gb,
            split=split.to_dict(),
        )
        store.update_run(run_id, run_dir=str((settings.runs_dir / run_id).resolve()), started_at=now())
        log(f"run {run_id} on {labelled_set.name}: {len(labelled_set)} images, budget {budget:.0f} s, top {top_n}")
    else:
        run_id = run.id
        split = Split.from_dict(run.split)
        log(f"resuming run {run_id} on {labelled_set.name} (status {run.status})")
        store.event(run_id, "resumed")
    run_dir = Path(store.run(run_id).run_dir)
    executor = None
    try:
        backend = TorchBackend(
            labelled_set,
            split,
            seed=seed,
            device=device,
            gpu_memory_gb=settings.gpu_memory_gb,
            on_throughput=lambda config, steps, seconds: record_training_throughput(
                store, table, config, steps=steps, seconds=seconds
            ),
            min_object_px=settings.min_object_px,
        )
        executor = _executor(store, run_id, labelled_set, split, seed, settings, backend, log)
        measuring = time.perf_counter()
        table = ensure_reference_measurements(store, executor.probe if executor else backend.device, log=log)
        if time.perf_counter() - measuring > 0.5:  # a new device or code version: once, and not the set's budget
            timings["device_measurement_seconds"] = time.perf_counter() - measuring
            job_started += timings["device_measurement_seconds"]
        if not store.trials(run_id):
            store.update_run(run_id, status=RunStatus.RANKING)

            def plan_with(ranking: Ranking) -> tuple[list, RacePlan]:
                left = max(1.0, budget - (time.perf_counter() - job_started))
                candidates = time_aware_order(ranking, table, training_seconds=settings.race_min_winner_share * left)
                return candidates, plan_race(
                    candidates,
                    budget_seconds=left,
                    overhead=lambda candidate: slice_overhead(
                        candidate, validation_pixels=backend.validation_tile_pixels, table=table
                    ),
                    max_trials=top_n,
                    floor_steps=settings.race_floor_steps,
                    min_winner_share=settings.race_min_winner_share,
                    trials=trials,
                    growth=growth,
                    include_default=include_default,
                    slots=executor.slots if executor else 1,
                )

            # Whether any race fits does not depend on the order (race.py), so a budget that allows none is known
            # before the meta-features: then the default trains for all of it instead of waiting for them.
            candidates, plan = plan_with(fallback_ranking()) if ranking is None else (None, None)
            if plan is None or plan.search:
                ranking = _rank(store, run_id, labelled_set, settings, log, ranking)
                candidates, plan = plan_with(ranking)
            else:
                store.update_run(run_id, ranking_source=f"{FALLBACK_SOURCE} (no race fits: not ranked)")
            fault_point("ranked")
            enter_race(store, run_id, candidates, plan)
            timings["planning_seconds"] = time.perf_counter() - job_started
            log(plan.describe())
            store.event(run_id, plan.describe(), level="info" if plan.search else "warning")
        schedule = _recorded_schedule(store.run(run_id), len(store.trials(run_id)))
        store.update_run(
            run_id,
            status=RunStatus.HALVING,
            device=f"ray: {executor.probe.name}" if executor else str(backend.device),
            selection_metric=backend.selection_metric,
        )
        started = time.perf_counter()
        halving = SuccessiveHalving(
            store,
            run_id,
            backend,
            budget_seconds=schedule.budget_seconds,
            growth=schedule.growth,
            run_dir=run_dir,
            on_slice=on_slice,
            overhead_estimate=lambda config: slice_overheads(
                config, validation_pixels=backend.validation_tile_pixels, table=table
            ),
            keep_dropped_checkpoints=settings.keep_checkpoints == "all",
            executor=executor,
        )
        winner = halving.run()
        if executor:  # testing and exporting the winner happen here
            executor.close()
        timings["halving_seconds"] = time.perf_counter() - started
        store.update_run(run_id, status=RunStatus.EXPORTING, halving_seconds=timings["halving_seconds"])
        started = time.perf_counter()
        test, model_dir = _finish(store, run_id, labelled_set, split, winner, backend, settings, run_dir)
        timings["export_seconds"] = time.perf_counter() - started
        if labelled_set.task == SEMANTIC:  # an instances run validates interior/boundary, not the meta-base's IoU
            _remember(store, run_id, settings, log)
    except BaseException as error:
        if executor:
            executor.close()
        if not isinstance(error, KeyboardInterrupt | SystemExit):
            store.update_run(
                run_id, status=RunStatus.FAILED, error=f"{type(error).__name__}: {error}", finished_at=now()
            )
            store.event(run_id, f"failed: {error}", level="error")
        raise
    log(f"run {run_id} finished: test IoU {test.mean_foreground_iou:.3f}, model {model_dir}")
    return JobResult(
        run_id, store.run(run_id), store.trials(run_id), store.step_results(run_id), test, model_dir, timings
    )


def _executor(store, run_id, labelled_set, split, seed, settings: Settings, backend: TorchBackend, log):
    """The Ray executor when the settings ask for one (its workers measure their own device), else None: the trials
    train here, one after another."""
    if settings.executor != "ray":
        return None
    from appliance.automl.cluster import BackendSpec, RayExecutor

    executor = RayExecutor(
        BackendSpec(str(labelled_set.root), split.to_dict(), seed, settings.gpu_memory_gb, settings.min_object_px),
        store=store,
        run_id=run_id,
        cpus_per_trial=settings.ray_cpus_per_trial,
        on_throughput=backend.on_throughput,
        address=settings.ray_address,
    )
    log(f"training on the Ray cluster: {executor.slots} worker(s), device {executor.probe.name}")
    return executor


def _recorded_schedule(run: Run, trials: int) -> HalvingSchedule:
    """The race's schedule as planned; a run recorded before plans existed races its trials the paper's way."""
    if run.plan:
        return HalvingSchedule.from_dict(run.plan["schedule"])
    return HalvingSchedule(max(1, trials), run.budget_seconds)


def _remember(store: Store, run_id: str, settings: Settings, log) -> None:
    """Append what the run measured to the data dir's living meta-base; a failure there never fails the run."""
    try:
        added = record_run(settings.data_dir, store, run_id)
    except (OSError, ValueError, KeyError) as error:
        store.event(run_id, f"not added to the living meta-base: {error}", level="warning")
        return
    if added:
        log(f"{added} learning-curve point(s) added to {settings.data_dir / LIVING_METABASE}")
        store.event(run_id, f"{added} learning-curve point(s) added to the living meta-base")


def _rank(
    store: Store, run_id: str, labelled_set: LabelledSet, settings: Settings, log, ranking: Ranking | None
) -> Ranking:
    if ranking is not None:
        log(f"ranking: given ({ranking.source})")
    else:
        try:
            features = set_features(labelled_set)
        except ImportError as error:  # an image without pyradiomics (the GPU check machine): no optical features
            features = None
            missing = f"the optical meta-features need {error.name or 'pyradiomics'}, which is not installed"
        if features is None:
            ranking, fallback_reason = fallback_ranking(), missing
        else:
            save_features(store.run(run_id).run_dir, features)
            from appliance.metalearning.retrain import active_metamodel_dir

            # the model `appliance metamodel train --living` activated for this data dir, else the shipped one
            models_dir = active_metamodel_dir(settings.data_dir, settings.metamodel_dir)
            ranking, fallback_reason = rank_for_set(features, models_dir=models_dir)
        if fallback_reason:
            store.event(run_id, f"ranked with the {ranking.source}: {fallback_reason}", level="warning")
            log(f"ranking: {ranking.source} ({fallback_reason})")
        else:
            log(f"ranking: {ranking.source}, best predicted {ranking.scores[0]:.3f} for {ranking.configurations[0].id}")
    store.update_run(run_id, ranking_source=ranking.source)
    return ranking


def _finish(
    store: Store,
    run_id: str,
    labelled_set: LabelledSet,
    split: Split,
    winner: Trial,
    backend: TorchBackend,
    settings: Settings,
    run_dir: Path,
) -> tuple[Evaluation, Path]:
    """Test the winner, write overlays and the halving chart, export ONNX + JSON, register the model."""
    trainer, validation_iou = exported_weights(store, run_id, winner, backend, keep=settings.keep_checkpoints == "all")
    predict = lambda image: trainer.logits(image, tiles=DEFAULT_TILES)  # noqa: E731
    seed_depth = None
    if labelled_set.task == INSTANCES:  # the watershed's seed depth, chosen on the validation objects
        validated = evaluate_split(
            labelled_set, split.validation, predict, min_object_px=settings.min_object_px, seed_depth_px=CHOOSE
        )
        seed_depth = validated.seed_depth_px
        tried = ", ".join(f"{depth:g} px {ap:.3f}" for depth, ap in (validated.seed_depth_scores or {}).items())
        store.event(run_id, f"objects: seed depth {seed_depth:g} px chosen on the validation images (AP@0.5: {tried})")
    tested = evaluate_split(
        labelled_set, split.test, predict, min_object_px=settings.min_object_px, seed_depth_px=seed_depth
    )
    test = tested.classes
    fault_point("tested")
    qc = run_dir / "qc"
    for stem, image, mask, result in zip(split.test, tested.images, tested.masks, tested.results, strict=True):
        write_png(qc / f"{stem}.png", comparison_panel(image, mask, result.labels))
    report = {**test.to_dict(), "task": labelled_set.task, "objects": tested.objects, "seed_depth_px": seed_depth}
    atomic_write(qc / "test.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    write_halving_chart(store, run_id, qc / "halving.png")

    models_dir = settings.trained_models_dir
    for stale in store.unfinished_models(run_id):  # a kill during an earlier export left its files behind
        shutil.rmtree(models_dir / stale, ignore_errors=True)
    model_id = store.register_model(
        run_id=run_id,
        set_name=labelled_set.name,
        project=store.run(run_id).project or labelled_set.project,
        config_id=winner.config_id,
        path="",
        validation_iou=validation_iou,
        test_iou=test.mean_foreground_iou,
    )
    fault_point("registered")
    model_dir = (models_dir / model_id).resolve()
    write_model_folder(
        model_dir,
        trainer.model,
        config=trainer.config,
        in_channels=labelled_set.channels,
        class_names=list(labelled_set.class_names),
        pixel_size_um=labelled_set.pixel_size_um,
        task=labelled_set.task,
        seed_depth_px=seed_depth,
        extra={
            "set": labelled_set.name,
            "run_id": run_id,
            "model_id": model_id,
            "validation_mean_foreground_iou": validation_iou,
            "test_mean_foreground_iou": test.mean_foreground_iou,
            **({"test_objects": tested.objects} if tested.objects else {}),
        },
    )
    predictor = OnnxPredictor(model_dir, engine_cache=settings.engine_cache_dir)  # builds the served engine
    parity = onnx_parity(trainer.model, predictor, tested.images[:1])
    fault_point("exported")
    store.finish_export(
        run_id,
        model_id,
        str(model_dir),
        winner_config_id=winner.config_id,
        validation_iou=validation_iou,
        test_iou=test.mean_foreground_iou,
        finished_at=now(),
    )
    objects = tested.objects
    store.event(
        run_id,
        f"winner {winner.config_id}: test IoU {test.mean_foreground_iou:.3f}"
        + (
            f", objects AP@0.5 {objects['ap']:.3f}, F1 {objects['f1']:.3f}, count error {objects['count_error']:.1%} "
            f"({objects['predicted_objects']} found, {objects['true_objects']} true)"
            if objects
            else ""
        )
        + f"; exported to {model_dir} "
        f"(ONNX vs PyTorch max |logit diff| {parity['max_abs_logit_diff']:.1e})",
    )
    if settings.keep_checkpoints == "none":  # the run is finished: nothing resumes from its checkpoints any more
        shutil.rmtree(run_dir / "trials", ignore_errors=True)
    return test, model_dir


def exported_weights(
    store: Store, run_id: str, winner: Trial, backend: TrialBackend, *, keep: bool = False
) -> tuple[Any, float | None]:
    """The winner's weights to export (as ``backend.load`` gives them) and their validation mean IoU.

    Its last slice decides nothing; trained in parts it was validated on the way and saved its best part
    (:mod:`appliance.automl.last_stretch`), otherwise (too short for that) it is validated here. When the weights the
    winner had after its last decided slice (kept for this by the halving) validated better on the task's metric,
    those are exported: on usiigaci at T = 15 min a patch-64 winner went from validation 0.671 after its first slice
    to 0.293 after 35 more MP at a constant learning rate (test 0.232), and to 0.212 with a cooldown. The trial then
    points at the exported checkpoint, and its other checkpoints go (``keep``: they stay)."""
    rows = [row for row in store.step_results(run_id) if row.rank == winner.rank and row.checkpoint]
    last_row = next((row for row in rows if Path(row.checkpoint) == Path(winner.checkpoint)), None)
    last = backend.load(Path(winner.checkpoint))
    if last_row is not None and selection_score(last_row) is not None:
        last_score, last_iou = selection_score(last_row), last_row.validation_iou
    else:
        validation = backend.validate(last)
        last_score, last_iou = validation.selection_score, validation.mean_iou
    earlier = [
        row
        for row in rows
        if Path(row.checkpoint) != Path(winner.checkpoint)
        and selection_score(row) is not None
        and Path(row.checkpoint).is_file()
    ]
    chosen, weights, iou = winner.checkpoint, last, last_iou
    if earlier and selection_score(earlier[-1]) > last_score:
        before = earlier[-1]
        store.event(
            run_id,
            f"{winner.config_id}: its last slice lowered validation {getattr(backend, 'selection_metric', 'IoU')} "
            f"from {selection_score(before):.3f} to {last_score:.3f}; exporting its weights after "
            f"step {before.step + 1} ({before.work_mp:.1f} MP) instead",
            level="warning",
        )
        chosen, weights, iou = before.checkpoint, backend.load(Path(before.checkpoint)), before.validation_iou
        store.update_trial(run_id, winner.rank, checkpoint=chosen)
    if not keep:  # also what a kill between the choice and this left behind
        for path in Path(chosen).parent.glob("*.pt"):
            if path != Path(chosen):
                path.unlink(missing_ok=True)
    return weights, iou


def write_halving_chart(store: Store, run_id: str, path: Path) -> Path:
    """Validation IoU of every trial after every step it took part in (the paper's Fig. 9), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = store.step_results(run_id)
    winner = next((t.rank for t in store.trials(run_id) if t.status == TrialStatus.WINNER), None)
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    for rank in sorted({r.rank for r in results}):
        rows = [r for r in results if r.rank == rank and r.validation_iou is not None]
        steps = [r.step + 1 for r in rows]
        scores = [r.validation_iou for r in rows]
        if rank == winner:
            axes.plot(steps, scores, "-o", color="tab:red", linewidth=2, label=f"winner (rank {rank})", zorder=3)
        else:
            axes.plot(steps, scores, "-o", color="grey", alpha=0.4, markersize=3, linewidth=1)
    axes.set_xlabel("halving step")
    axes.set_ylabel("validation mean IoU")
    axes.set_title(f"{run_id}: every trial per step")
    axes.set_xticks(sorted({r.step + 1 for r in results}))
    axes.grid(alpha=0.3)
    if winner is not None:
        axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path
