"""Problems: rejected labelled sets and images that were not segmented, each with its reason and what to do."""

from __future__ import annotations

import streamlit as st

from streamlit_app import actions, common, shaping


def rejected_sets(store) -> None:
    st.subheader("Rejected labelled sets")
    rows = shaping.rejected_set_rows(store.intakes())
    if not rows:
        st.success("No rejected labelled set.")
        return
    sets = len({r["folder"] for r in rows})
    st.error(
        f"{sets} set(s) rejected with {len(rows)} problem(s). Fix the files named below; the set is checked again."
    )
    st.dataframe(rows, hide_index=True, width="stretch")


def images(store) -> None:
    st.subheader("Images not segmented")
    rows = store.problem_images()
    if not rows:
        st.success("Every image found so far was segmented or is waiting for its turn.")
        return
    st.warning(f"{len(rows)} image(s) not segmented.")
    st.dataframe(
        [
            {
                "project": r.project,
                "image": r.relpath,
                "status": r.status,
                "reason": r.error,
                "found": shaping.local_time(r.detected_at),
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
    )


def waiting_for_a_model(store) -> None:
    st.subheader("Images waiting for a model")
    rows = store.images_waiting_for_a_model()
    if not rows:
        st.success("No image waits for a model.")
        return
    for row in rows:
        level, sentence = shaping.waiting_reason(row["project"], row["training"], row.get("decision"))
        since = shaping.local_time(row["since"])
        text = f"{row['images']} image(s) of project {row['project']} waiting since {since}: {sentence}"
        (st.error if level == "error" else st.info)(text)


def jobs_and_runs(store) -> None:
    st.subheader("Failed jobs and runs")
    jobs, runs = store.failed_jobs(), store.failed_runs()
    if not jobs and not runs:
        st.success("No failed job or training run.")
        return
    if runs:
        st.markdown("**Training runs**")
        st.dataframe(
            [{"run": r.id, "set": r.set_name, "error": r.error, "at": shaping.local_time(r.finished_at)}
             for r in runs],
            hide_index=True,
            width="stretch",
        )  # fmt: skip
    if jobs:
        st.markdown("**Jobs** (out of attempts)")
        st.dataframe(
            [{"job": j.id, "kind": j.kind, "project": j.project, "attempts": j.attempts,
              "error": j.error, "at": shaping.local_time(j.finished_at)} for j in jobs],
            hide_index=True,
            width="stretch",
        )  # fmt: skip
        retry_form(store, jobs)


def retry_form(store, jobs: list[dict]) -> None:
    """Queue a failed job again once its cause is fixed (also: ``appliance retry JOB`` or drop the set again)."""
    if not common.password_required():
        st.caption(
            "To retry a job: `appliance retry JOB`, or drop the same set again. Set a page password to do it here."
        )
        return
    labels = {f"job {j.id} ({j.kind}, {j.project})": j.id for j in jobs}
    with st.form("retry-job", clear_on_submit=True):
        job_id = labels[st.selectbox("Failed job to run again", list(labels))]
        password = st.text_input("Page password (confirms the action)", type="password")
        submitted = st.form_submit_button("Retry with fresh attempts")
    if submitted:
        if not common.password_matches(password, common.settings().page_password):
            st.error("Wrong password; nothing changed.")
            return
        try:
            actions.retry_job(store, job_id=job_id)
        except actions.ActionError as error:
            st.error(str(error))
        else:
            st.success(f"Job {job_id} is queued again.")


def warnings(store) -> None:
    st.subheader("Warnings and errors")
    common.events_table(store, levels=("warning", "error"), limit=100, empty="no warning or error events")


def body() -> None:
    store = common.store_or_note()
    if store is None:
        return
    common.guarded("Rejected sets", lambda: rejected_sets(store))
    common.guarded("Images", lambda: images(store))
    common.guarded("Waiting for a model", lambda: waiting_for_a_model(store))
    common.guarded("Failed work", lambda: jobs_and_runs(store))
    common.guarded("Events", lambda: warnings(store))


common.require_login()
st.title("Problems")
common.live(body)
