"""Training runs: the live successive-halving race, the budget, the meta-model's predictions and the run's events."""

from __future__ import annotations

from datetime import UTC, datetime

import altair as alt
import pandas as pd
import streamlit as st

from appliance.automl.schedule import step_count
from appliance.metalearning.base import LIVING_METABASE, summarise_metabase
from appliance.pipeline.task import SELECTION_METRICS, SEMANTIC
from appliance.store import RUNNING_RUN, Run, RunStatus, StepResult, Trial, TrialStatus
from streamlit_app import common, shaping

IOU_SCALE = alt.Scale(domain=[0, 1])  # the whole range: a 0.300-0.314 zoom makes noise look like progress
STATUS_COLOURS = {"winner": "#d62728", "active": "#1f77b4", "dropped": "#9e9e9e", "failed": "#ff7f0e"}


def halving_chart(rows: list[dict], steps_total: int, metric: str) -> alt.LayerChart:
    """The validation score the race selects on (``metric``) per trial per step: dropped trials thin and grey,
    trials still in the race (and the winner) in colour with a legend of their own."""
    frame = pd.DataFrame(rows)
    steps = list(range(1, max(steps_total, max(r["step"] for r in rows)) + 1))  # steps to come stay on the axis
    x = alt.X("step:O", title="halving step", axis=alt.Axis(labelAngle=0), scale=alt.Scale(domain=steps))
    y = alt.Y("validation_score:Q", title=f"validation {metric} (0-1)", scale=IOU_SCALE)
    tooltip = [
        "trial",
        "settings",
        "configuration",
        "step",
        alt.Tooltip("validation_score:Q", title=f"validation {metric}", format=".3f"),
        "status",
    ]
    dropped = (
        alt.Chart(frame[~frame["survivor"]])
        .mark_line(point=alt.OverlayMarkDef(size=20, color="#b0b0b0"), color="#b0b0b0", strokeWidth=1, opacity=0.7)
        .encode(x=x, y=y, detail="trial:N", tooltip=tooltip)
    )
    survivors = frame[frame["survivor"]]
    colour = alt.Color("trial:N", legend=alt.Legend(title="still in the race"))
    if (survivors["status"] == TrialStatus.WINNER).any():
        colour = alt.Color("trial:N", legend=alt.Legend(title="winner"), scale=alt.Scale(range=["#d62728"]))
    alive = (
        alt.Chart(survivors)
        .mark_line(point=alt.OverlayMarkDef(size=60, filled=True), strokeWidth=3)
        .encode(x=x, y=y, color=colour, tooltip=tooltip)
    )
    return alt.layer(dropped, alive).properties(height=320)


def run_label(run: Run) -> str:
    return f"{run.id} · {run.set_name or '?'} · {run.status}"


def budget(run: Run, results: list[StepResult], trials: list[Trial]) -> None:
    progress = shaping.budget_progress(run, results, len(trials), now=datetime.now(UTC))
    a, b, c, d = st.columns(4)
    a.metric("Status", run.status or "?")
    b.metric("Budget used", shaping.format_duration(progress["used_seconds"]))
    c.metric("Budget left", shaping.format_duration(progress["left_seconds"]) if progress["running"] else "-")
    if progress["eta"]:
        eta = datetime.fromtimestamp(progress["eta"]).astimezone()
        d.metric("Halving ends (ETA)", f"{eta:%H:%M:%S}")
    else:
        d.metric("Budget", shaping.format_duration(progress["budget_seconds"]))
    st.progress(
        progress["fraction"],
        text=f"{progress['fraction']:.0%} of {shaping.format_duration(progress['budget_seconds'])} · "
        f"step {min(progress['step_reached'], progress['steps_total'])} of {progress['steps_total']} · "
        f"{sum(t.status in shaping.SURVIVING for t in trials)} of {len(trials)} trials in the race",
    )
    if run.status == RunStatus.FINISHED:
        st.caption(
            f"Winner {run.winner_config_id}: validation IoU {run.validation_iou or 0:.3f}, "
            f"test IoU {run.test_iou or 0:.3f}, model {run.model_id}"
        )
    if run.error:
        st.error(run.error)


def ranking_source(run: Run) -> None:
    """Which meta-model ranked the run, and what this appliance's own runs have taught the living meta-base."""
    local = summarise_metabase(common.settings().data_dir / LIVING_METABASE)
    st.caption(
        f"Ranked by: {run.ranking_source or 'not ranked yet'}. "
        + shaping.living_metabase_line(local.rows, local.runs, local.sets, local.devices)
    )


def plan(run: Run) -> None:
    summary = shaping.race_plan(run)
    if summary is None:
        return
    if not summary["search"]:
        st.warning(
            f"No search: {summary['reason']}. Configuration {summary['trials'][0]['configuration']} trained for "
            f"all {summary['race_budget']} instead; give the set a larger budget for a search."
            if summary["trials"]
            else f"No search: {summary['reason']}."
        )
        return
    st.caption(
        f"Race of {summary['n']} configurations ({summary['active']}) over {summary['race_budget']}, step budgets "
        f"{summary['step_budgets']}; the winner trains {summary['winner_share']:.0%} of it. n: {summary['reason']}."
    )
    with st.expander("Throughput of the racing configurations on this device"):
        st.dataframe(summary["trials"], hide_index=True, width="stretch")


def race(run: Run, results: list[StepResult], trials: list[Trial]) -> None:
    st.subheader("Successive halving")
    plan(run)
    rows = shaping.halving_chart_rows(results, trials)
    if not rows:
        common.nothing_yet("no trial has finished its first slice")
        return
    metric = run.selection_metric or SELECTION_METRICS[SEMANTIC]
    st.caption(f"Survivors are chosen on validation {metric}.")
    st.altair_chart(halving_chart(rows, step_count(len(trials)), metric), width="stretch")


def predictions(results: list[StepResult], trials: list[Trial]) -> None:
    st.subheader("Meta-model: predicted vs realised")
    rows = shaping.predicted_vs_realised(trials, results)
    if not rows or all(r["predicted"] is None for r in rows):
        common.nothing_yet("no evaluated configuration with a predicted score (a fallback ranking predicts none)")
        if rows:
            st.dataframe(rows, hide_index=True, width="stretch")
        return
    rho = shaping.rank_correlation([r["predicted"] for r in rows], [r["realised"] for r in rows])
    left, right = st.columns([3, 2])
    with left:
        chart = (
            alt.Chart(pd.DataFrame(rows))
            .mark_circle(size=70)
            .encode(
                x=alt.X("predicted:Q", title="predicted score", scale=alt.Scale(zero=False)),
                y=alt.Y("realised:Q", title="realised validation IoU (0-1)", scale=IOU_SCALE),
                color=alt.Color(
                    "status:N",
                    scale=alt.Scale(
                        domain=[s for s in STATUS_COLOURS if any(r["status"] == s for r in rows)],
                        range=[c for s, c in STATUS_COLOURS.items() if any(r["status"] == s for r in rows)],
                    ),
                ),
                tooltip=["rank", "configuration", "predicted", "realised", "after step", "status"],
            )
            .properties(height=260)
        )
        st.altair_chart(chart, width="stretch")
    with right:
        st.metric("Spearman ρ (predicted, realised)", "-" if rho is None else f"{rho:.2f}")
        st.caption("Realised = the last validation IoU a trial reached (dropped trials stop early).")
    common.score_table(rows, ("predicted", "realised"))


def run_events(store, run_id: str) -> None:
    st.subheader("Events")
    rows = store.events(run_id, limit=100)
    if not rows:
        common.nothing_yet("no events for this run")
        return
    st.dataframe(shaping.event_rows(rows, with_run=False), hide_index=True, width="stretch")


def body() -> None:
    store = common.store_or_note()
    if store is None:
        return
    runs = store.runs()
    if not runs:
        common.nothing_yet("no training run; drop a labelled set into the inbox")
        return
    runs = sorted(runs, key=lambda r: r.status not in RUNNING_RUN)  # live run first
    labels = {run_label(r): r.id for r in runs}
    run_id = labels[st.selectbox("Run", list(labels), key="training_run")]
    run = store.run(run_id)
    trials = store.trials(run_id)
    results = store.step_results(run_id)
    common.guarded("Budget", lambda: budget(run, results, trials))
    common.guarded("Ranking", lambda: ranking_source(run))
    common.guarded("Halving", lambda: race(run, results, trials))
    common.guarded("Predictions", lambda: predictions(results, trials))
    common.guarded("Trials", lambda: trial_table(trials, results))
    common.guarded("Cluster", lambda: cluster(store, results))
    common.guarded("Events", lambda: run_events(store, run_id))


def cluster(store, results: list[StepResult]) -> None:
    """The Ray cluster's nodes (``executor = "ray"``): device, free memory, what each trains now."""
    nodes = store.cluster_nodes()
    if not nodes:
        return
    st.subheader("Cluster")
    alive = [n for n in nodes if n.alive]
    st.caption(
        f"{len(alive)} of {len(nodes)} node(s) alive, {sum(n.slots or 0 for n in alive)} trial(s) at once; "
        "as the training process last saw them (every few seconds during a race)."
    )
    st.dataframe(shaping.cluster_node_rows(nodes, results), hide_index=True, width="stretch")


def trial_table(trials: list[Trial], results: list[StepResult]) -> None:
    trained_on = shaping.trial_nodes(results)
    with st.expander(f"All {len(trials)} trials"):
        st.dataframe(
            [
                {
                    "rank": t.rank,
                    "configuration": t.config_id,
                    "settings": shaping.config_summary(t.config),
                    "predicted": t.predicted_score,
                    "status": t.status,
                    "dropped after step": None if t.dropped_after_step is None else t.dropped_after_step + 1,
                    "reason": t.reason,
                    "trained on": trained_on.get(t.rank, ""),
                }
                for t in trials
            ],
            hide_index=True,
            width="stretch",
        )


common.require_login()
st.title("Training runs")
common.live(body)
