"""Overview: is the appliance alive, on what hardware, how full is its disk and its queue, what happened lately."""

from __future__ import annotations

import shutil
import subprocess
import time

import streamlit as st

from appliance.service.disk import disk_space
from streamlit_app import common, shaping


@st.cache_data(ttl=60, show_spinner=False)
def gpu_info() -> list[dict]:
    """Name and memory of each NVIDIA GPU from ``nvidia-smi`` (empty when there is none)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in output.strip().splitlines():
        name, used, total = (part.strip() for part in line.rsplit(",", 2))
        gpus.append({"name": name, "used_mb": float(used), "total_mb": float(total)})
    return gpus


@st.cache_data(ttl=300, show_spinner=False)
def onnx_providers() -> tuple[list[str], str]:
    """ONNX Runtime's providers on this machine and the one new sessions run on (the first the predictor asks for;
    ONNX Runtime falls back to the next when one fails)."""
    import onnxruntime

    from appliance.pipeline.predictor import default_providers

    return onnxruntime.get_available_providers(), default_providers()[0]


def components(store) -> None:
    st.subheader("Service")
    rows = shaping.component_health(store.components(), clock=time.time())
    if not rows:
        common.nothing_yet("no heartbeats; the service (`appliance run`) has not started on this data folder")
        return
    down = [r["component"] for r in rows if not r["ok"]]
    if down:
        st.error(f"Not responding: {', '.join(down)}")
    else:
        st.success(f"All {len(rows)} components alive")
    st.dataframe([{k: v for k, v in r.items() if k != "ok"} for r in rows], hide_index=True, width="stretch")


def hardware(store) -> None:
    settings = common.settings()
    st.subheader("Hardware")
    gpu_column, onnx_column, disk_column = st.columns(3)
    with gpu_column:
        gpus = gpu_info()
        if gpus:
            for gpu in gpus:
                st.metric("GPU", gpu["name"])
                st.caption(
                    f"memory {gpu['used_mb'] / 1024:.1f} of {gpu['total_mb'] / 1024:.1f} GB in use; "
                    f"training capped to {settings.gpu_memory_gb:g} GB"
                )
        else:
            st.metric("GPU", "none")
            st.caption("No NVIDIA GPU found (nvidia-smi): training and inference run on the CPU.")
    with onnx_column:
        available, first = onnx_providers()
        inference = next((c for c in store.components() if c.name == "inference"), None) if store else None
        reported = next(iter(inference.providers), None) if inference else None
        st.metric("ONNX Runtime provider", (reported or first).replace("ExecutionProvider", ""))
        source = "reported by the inference worker" if reported else "chosen for new inference sessions"
        st.caption(f"{source}; available: {', '.join(available)}")
    with disk_column:
        free, total = disk_space(settings.data_dir)
        disk = shaping.disk_state(free, total, settings.disk_reserve_gb)
        st.metric("Free disk", disk["free"], help=str(settings.data_dir.resolve()))
        st.progress(disk["used_fraction"], text=f"{disk['used_fraction']:.0%} of {disk['total']} used")
        if disk["below_reserve"]:
            st.warning(f"Below the training reserve of {disk['reserve']}: new training waits.")


def queue(store) -> None:
    st.subheader("Queue")
    summary = shaping.queue_summary(store.queue_counts())
    if not summary:
        common.nothing_yet("no jobs queued so far")
        return
    columns = st.columns(max(len(summary), 2))
    for column, (kind, counts) in zip(columns, sorted(summary.items()), strict=False):
        with column:
            st.markdown(f"**{ {'train': 'Training', 'segment': 'Segmentation'}.get(kind, kind) } jobs**")
            a, b, c, d = st.columns(4)
            a.metric("queued", counts["queued"])
            b.metric("running", counts["running"])
            c.metric("done", counts["done"])
            d.metric("failed", counts["failed"])


def events(store) -> None:
    st.subheader("Recent events")
    common.events_table(store, levels=None, limit=30, empty="no events")


def body() -> None:
    store = common.open_store()
    if store is None:
        common.store_or_note()
        hardware(None)
        return
    common.guarded("Service", lambda: components(store))
    common.guarded("Hardware", lambda: hardware(store))
    common.guarded("Queue", lambda: queue(store))
    common.guarded("Events", lambda: events(store))


common.require_login()
st.title("Overview")
common.live(body)
