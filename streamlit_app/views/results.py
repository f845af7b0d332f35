"""Results: recent segmented images with overlays, their measurements, per-project trends and a CSV download."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from appliance.pipeline.result_names import ResultFiles
from appliance.store import Store
from streamlit_app import common, shaping

TABLE_ROWS = 1000
ALL = "All projects"


def filters(store) -> dict:
    projects = store.projects()
    left, middle, right = st.columns([2, 1, 1])
    project = left.selectbox("Project", [ALL, *projects], key="results_project")
    start = middle.date_input("From", value=None, key="results_from")
    end = right.date_input("To (inclusive)", value=None, key="results_to")
    return {
        "project": None if project == ALL else project,
        "since": start.isoformat() if isinstance(start, date) else None,
        "until": (end + timedelta(days=1)).isoformat() if isinstance(end, date) else None,
    }


def counts(store, chosen: dict) -> None:
    status = store.image_status_counts(project=chosen["project"])
    a, b, c, d = st.columns(4)
    a.metric("Segmented", status.get("done", 0))
    b.metric("Waiting", status.get("queued", 0))
    c.metric("Not segmented", sum(status.get(s, 0) for s in ("failed", "missing", "superseded")))
    d.metric("Projects", len(store.projects()) if chosen["project"] is None else 1)


def recent(store, chosen: dict) -> None:
    st.subheader("Recent images")
    images = store.recent_images(**chosen)
    if not images:
        common.nothing_yet("no segmented image within these filters")
        return
    labels = {f"{i.project}/{i.relpath} · {shaping.local_time(i.processed_at)}": i.id for i in images}
    image_id = labels[st.selectbox(f"Image (newest {len(images)})", list(labels), key="results_image")]
    image = next(i for i in images if i.id == image_id)
    left, right = st.columns([3, 2])
    with left:
        overlay = Path(image.overlay_path) if image.overlay_path else None
        if overlay is not None and overlay.is_file():
            st.image(str(overlay), caption=f"{image.project}/{image.relpath} (overlay)", width="stretch")
        else:
            st.caption(f"No overlay file at {overlay}")
    with right:
        rows = shaping.measurement_table(store.measurement_rows(image_id=image_id))
        st.markdown(f"**Measurements** (model {image.model_id})")
        st.dataframe(measurement_card(rows), hide_index=True, width="stretch")
        if image.mask_path:
            object_downloads(ResultFiles.of_mask(image.mask_path), image.id)


OBJECT_FILES = (
    ("objects_csv", "objects table (CSV)", "text/csv"),
    ("objects", "object labels (TIFF: Fiji, napari)", "image/tiff"),
    ("rois", "outlines (ImageJ ROI set)", "application/zip"),
    ("geojson", "outlines (GeoJSON: QuPath)", "application/geo+json"),
)


def object_downloads(files: ResultFiles, image_id: int) -> None:
    """The image's per-object files, one download button each (files an older version did not write are left out)."""
    present = [(getattr(files, field), label, mime) for field, label, mime in OBJECT_FILES]
    present = [(path, label, mime) for path, label, mime in present if path.is_file()]
    for path, label, mime in present:
        st.download_button(
            f"{label}, {shaping.format_bytes(path.stat().st_size)}",
            data=path.read_bytes,
            file_name=path.name,
            mime=mime,
            key=f"objects-{image_id}-{path.name}",
            on_click="ignore",
        )


def measurement_card(rows: list[dict]) -> pd.DataFrame:
    """One column per class, one row per measurement: fits beside the overlay."""
    labels = {
        "pixel_fraction": "confluence",
        "object_count": "objects",
        "area_mean_px": "mean area (px)",
        "area_median_px": "median area (px)",
        "area_mean_um2": "mean area (µm²)",
    }
    card = {"measurement": list(labels.values())}
    for r in rows:
        card[str(r.get("class_name") or r.get("class_index"))] = [
            "-" if r.get(key) is None else (f"{r[key]:.3f}" if isinstance(r[key], float) else str(r[key]))
            for key in labels
        ]
    return pd.DataFrame(card)


def trends(store, chosen: dict) -> None:
    st.subheader("Trends per day")
    rows = store.daily_trends(**chosen)
    if not rows:
        common.nothing_yet("no measurements within these filters")
        return
    frame = pd.DataFrame(rows)
    frame["series"] = frame["project"] + " · " + frame["class"]
    frame["day"] = pd.to_datetime(frame["day"])
    days = frame["day"].nunique()
    if days < 2:
        st.caption("One day of measurements so far: a trend needs two days or more; each point is a day's mean.")
    left, right = st.columns(2)
    for column, field, title in (
        (left, "mean_confluence", "mean confluence (pixel fraction)"),
        (right, "mean_objects", "mean objects per image"),
    ):
        chart = (
            alt.Chart(frame)
            .mark_line(point=True)
            .encode(
                x=alt.X("day:T", title="day"),
                y=alt.Y(f"{field}:Q", title=title),
                color=alt.Color("series:N", title="project · class"),
                tooltip=["project", "class", "day:T", "images", alt.Tooltip(f"{field}:Q", format=".3f")],
            )
            .properties(height=240)
        )
        column.altair_chart(chart, width="stretch")


def table(store, chosen: dict) -> None:
    st.subheader("Measurements")
    total = store.measurement_count(**chosen)
    if not total:
        common.nothing_yet("no measurements within these filters")
        return
    path = store.path

    def csv_bytes() -> bytes:  # runs when the button is clicked, maybe on another thread: its own connection
        own = Store(path)
        try:
            return shaping.csv_text(shaping.measurement_table(own.measurement_rows(**chosen))).encode()
        finally:
            own.close()

    name = f"measurements-{chosen['project'] or 'all'}.csv"
    st.download_button(
        f"Download CSV ({total} rows)", data=csv_bytes, file_name=name, mime="text/csv", on_click="ignore"
    )
    rows = shaping.measurement_table(store.measurement_rows(**chosen, limit=TABLE_ROWS))
    if total > TABLE_ROWS:
        st.caption(f"Showing the newest {TABLE_ROWS} of {total} rows; the CSV has them all.")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def body(chosen: dict) -> None:
    store = common.open_store()
    common.guarded("Counts", lambda: counts(store, chosen))
    common.guarded("Recent images", lambda: recent(store, chosen))
    common.guarded("Trends", lambda: trends(store, chosen))
    common.guarded("Measurements", lambda: table(store, chosen))


common.require_login()
st.title("Results")
_store = common.store_or_note()
if _store is not None:
    _chosen = filters(_store)
    common.live(lambda: body(_chosen))
