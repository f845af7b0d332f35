"""Models: the registry per project, test-split QC, learning curves, activation history, downloads and activation."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from appliance.automl.schedule import selection_score
from appliance.pipeline.task import SELECTION_METRICS, SEMANTIC
from appliance.service.packaging import package_path
from appliance.store import Model
from streamlit_app import actions, common, shaping

OVERLAYS_SHOWN = 4


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def registry(store) -> tuple[list[Model], dict[str, str]]:
    models = store.models()
    projects = shaping.model_projects(models)
    return models, projects


def quality(store, model: Model) -> None:
    run = store.run(model.run_id) if model.run_id else None
    run_dir = Path(run.run_dir) if run and run.run_dir else None
    metadata = read_json(Path(model.path) / "model.json") if model.path else None
    class_names = (metadata or {}).get("class_names") or []
    left, right = st.columns(2)
    with left:
        st.markdown("**Test-split QC per class**")
        report = read_json(run_dir / "qc" / "test.json") if run_dir else None
        scores = shaping.per_class_scores(report, class_names)
        if scores:
            common.score_table(scores, ("IoU", "Dice"))
            count = len((report or {}).get("per_image") or {})
            st.caption(
                f"On {count} test image(s) the model never saw in training"
                + (" — few: read the numbers as rough" if count < 5 else "")
            )
        else:
            common.nothing_yet("no test report (qc/test.json) for this model's run")
        objects = (report or {}).get("objects")
        if objects:
            st.markdown("**Objects on the test images** (matched at IoU > 0.5, as Cellpose and StarDist count)")
            st.dataframe(pd.DataFrame([shaping.object_scores(objects)]), hide_index=True, width="stretch")
            if report.get("seed_depth_px"):
                st.caption(
                    f"Objects drawn by the watershed with seed depth {report['seed_depth_px']:g} px, chosen on the "
                    "validation images (deeper: touching objects are split only at deeper necks)."
                )
    with right:
        metric = getattr(run, "selection_metric", None) or SELECTION_METRICS[SEMANTIC]
        st.markdown(f"**Learning curve of the winner** (validation {metric} after each halving step)")
        curve = [
            {
                "step": r.step + 1,
                "validation": selection_score(r),
                "seconds trained": r.total_seconds_trained,
            }
            for r in (store.step_results(model.run_id) if model.run_id else [])
            if r.config_id == model.config_id
        ]
        if curve:
            chart = (
                alt.Chart(pd.DataFrame(curve))
                .mark_line(point=True)
                .encode(
                    x=alt.X("seconds trained:Q", title="seconds trained"),
                    y=alt.Y("validation:Q", title=f"validation {metric} (0-1)", scale=alt.Scale(domain=[0, 1])),
                    tooltip=["step", "seconds trained", "validation"],
                )
                .properties(height=220)
            )
            st.altair_chart(chart, width="stretch")
        else:
            common.nothing_yet("no recorded halving steps for this model")
    if run_dir is None:
        return
    panels = sorted(p for p in (run_dir / "qc").glob("*.png") if p.name != "halving.png")
    if panels:
        st.markdown("**Test images: image | truth | prediction**")
        columns = st.columns(min(len(panels), 2))
        for index, panel in enumerate(panels[:OVERLAYS_SHOWN]):
            columns[index % len(columns)].image(str(panel), caption=panel.stem, width="stretch")
        if len(panels) > OVERLAYS_SHOWN:
            st.caption(f"{len(panels) - OVERLAYS_SHOWN} more in {run_dir / 'qc'}")


def downloads(store, model: Model) -> None:
    folder = Path(model.path) if model.path else None
    files = [folder / name for name in ("model.onnx", "model.json")] if folder else []
    if not files or not all(f.is_file() for f in files):
        common.nothing_yet("no exported files for this model")
        return
    bioimageio_download(store, model)
    columns = st.columns(len(files))
    for column, file in zip(columns, files, strict=True):
        column.download_button(
            f"Download {file.name} ({shaping.format_bytes(file.stat().st_size)})",
            data=file.read_bytes if file.suffix == ".onnx" else file.read_bytes(),
            file_name=f"{model.id}-{file.name}",
            mime="application/octet-stream" if file.suffix == ".onnx" else "application/json",
            key=f"download-{model.id}-{file.name}",
            on_click="ignore",
        )


def bioimageio_download(store, model: Model) -> None:
    """The BioImage Model Zoo package (ilastik, deepImageJ, QuPath): built on request, then offered for download."""
    package = package_path(model)
    if not package.is_file():
        if st.button("Build a BioImage.IO package (ilastik, deepImageJ, QuPath)", key=f"bioimageio-{model.id}"):
            with st.spinner("Packaging the model (ONNX and TorchScript weights, test tensors, cover)…"):
                try:
                    actions.build_package(store, model_id=model.id)
                except actions.ActionError as error:
                    st.error(str(error))
                    return
            st.rerun()
        return
    st.download_button(
        f"Download the BioImage.IO package ({shaping.format_bytes(package.stat().st_size)})",
        data=package.read_bytes,
        file_name=f"{model.id}.bioimageio.zip",
        mime="application/zip",
        key=f"download-{model.id}-bioimageio",
        on_click="ignore",
    )


def admin(store, project: str, models: list[dict]) -> None:
    """Activate a model or roll back to the previous one, with the password as confirmation."""
    st.subheader("Activate or roll back")
    if not common.password_required():
        st.info("Admin actions need a page password: set APPLIANCE_PAGE_PASSWORD and restart the page.")
        return
    active = store.active_model(project)
    previous = shaping.rollback_target(store.activations(project), active.id if active else None)
    choices = [m.id for m in models if m.path and (active is None or m.id != active.id)]
    if not choices:
        common.nothing_yet("no other exported model to activate for this project")
        return
    labels = {(f"{i} (previously active: roll back)" if i == previous else i): i for i in choices}
    default = choices.index(previous) if previous in choices else 0
    with st.form(f"activate-{project}", clear_on_submit=True):
        model_id = labels[st.selectbox("Model to make active", list(labels), index=default)]
        confirmed = st.checkbox(
            f"Yes, segment new images of {project} with this model instead of "
            f"{active.id if active else 'none (no active model)'}"
        )
        password = st.text_input("Page password (confirms the action)", type="password")
        submitted = st.form_submit_button("Activate")
    if submitted:
        if not confirmed:
            st.warning("Tick the confirmation first.")
        elif not common.password_matches(password, common.settings().page_password):
            st.error("Wrong password; nothing changed.")
        else:
            note = "roll back" if model_id == previous else "manual activation"
            try:
                actions.activate(store, project=project, model_id=model_id, note=note)
            except actions.ActionError as error:
                st.error(str(error))
            else:
                st.success(f"{model_id} is now the active model of {project}.")


def project_view(store, project: str, models: list[dict]) -> None:
    active = store.active_model(project)
    st.markdown(f"Active model: **{active.id}**" if active else "Active model: **none**")
    history = store.activations(project)
    if history and not history[-1].activated:  # the newest decision kept a model out: say why, prominently
        st.warning(f"Model {history[-1].model_id} was not activated: {history[-1].reason}")
    decisions = {a.model_id: a for a in history}
    table = [
        {
            "model": m.id,
            "active": bool(active and active.id == m.id),
            "created": shaping.local_time(m.created_at),
            "configuration": m.config_id,
            "validation IoU": m.validation_iou,
            "test IoU": m.test_iou,
            "test images": shaping.test_image_count(store.run(m.run_id) if m.run_id else None),
            "decision": getattr(decisions.get(m.id), "reason", None),
        }
        for m in models
    ]
    common.score_table(table, ("validation IoU", "test IoU"))
    st.subheader("Activation history")
    history = shaping.activation_history(history)
    if history:
        common.score_table(history, ("new score", "its score"))
    else:
        common.nothing_yet("no activation decision for this project")


def details(store, project: str) -> None:
    """The live part: registry, history and the chosen model's quality (reruns every few seconds)."""
    models, projects = registry(store)
    in_project = [m for m in models if projects[m.id] == project]
    if sorted(set(projects.values())) != st.session_state.get("models_projects"):
        st.rerun()  # a new project or model appeared: refresh the whole page (its project list)
    common.guarded("Registry", lambda: project_view(store, project, in_project))
    st.subheader("Model details")
    active = store.active_model(project)
    ids = [m.id for m in in_project]
    default = ids.index(active.id) if active and active.id in ids else 0
    model_id = st.selectbox("Model", ids, index=default, key=f"models_detail_{project}")
    model = next(m for m in in_project if m.id == model_id)
    common.guarded("Quality", lambda: quality(store, model))
    common.guarded("Downloads", lambda: downloads(store, model))


def body() -> None:
    store = common.store_or_note()
    if store is None:
        return
    models, projects = registry(store)
    names = sorted(set(projects.values()))
    st.session_state["models_projects"] = names
    if not models:
        common.nothing_yet("no model registered; a model appears here when a training run finishes")
        common.live(lambda: details_or_wait(common.open_store()))
        return
    project = st.selectbox("Project", names, key="models_project")
    # a fragment's reruns may run on another thread: it opens that thread's store instead of capturing this one
    common.live(lambda: details(common.open_store(), project))
    # outside the refreshing part, so that a half-filled confirmation is not disturbed
    common.guarded("Activation", lambda: admin(store, project, [m for m in models if projects[m.id] == project]))


def details_or_wait(store) -> None:
    if store.models():
        st.rerun()


common.require_login()
st.title("Models")
body()
