"""Every page rendered by Streamlit's AppTest (the real script runner) against real SQLite stores: none, empty,
a typical day, and 10,000 segmented images. Plus the password gate and the activation action."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from appliance.store import Store
from tests.page.conftest import APP, PAGES
from tests.page.seed import PROJECT, seed_typical

TITLES = {
    "views/overview.py": "Overview",
    "views/training.py": "Training runs",
    "views/models.py": "Models",
    "views/results.py": "Results",
    "views/problems.py": "Problems",
}


def open_page(page: str) -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not app.exception, app.exception
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def texts(app: AppTest) -> str:
    """Everything a person reads on the page, as one string."""
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "success", "warning", "error"):
        parts += [str(element.value) for element in getattr(app, kind)]
    parts += [f"{m.label} {m.value}" for m in app.metric]
    for frame in app.dataframe:
        parts.append(frame.value.to_string())
    return "\n".join(parts)


@pytest.mark.parametrize("page", PAGES)
def test_page_without_a_store_says_nothing_yet(page, page_env, tmp_path):
    page_env(tmp_path / "not-created")
    app = open_page(page)
    assert app.title[0].value == TITLES[page]
    assert "Nothing yet" in texts(app) or page == "views/overview.py"
    assert not (tmp_path / "not-created" / "appliance.sqlite").exists()  # the page never creates the store


@pytest.mark.parametrize("page", PAGES)
def test_page_with_an_empty_store(page, page_env, empty_store):
    page_env(empty_store)
    app = open_page(page)
    assert app.title[0].value == TITLES[page]
    shown = texts(app)
    assert "Traceback" not in shown
    if page != "views/problems.py":
        assert "Nothing yet" in shown


EXPECTED = {
    "views/overview.py": ["Service", "inference", "scanner", "GPU", "ONNX Runtime provider",
                          "reported by the inference worker", "Free disk",
                          "Segmentation jobs", "service started"],
    "views/training.py": ["Successive halving", "Budget used", "Budget left", "Halving ends (ETA)",
                          "Meta-model: predicted vs realised", "Spearman", "Ranked by:",
                          "This appliance's meta-base: no learning curves yet"],
    "views/models.py": ["Active model", "Activation history", "first model of the project", "Test-split QC per class",
                        "cell", "Learning curve", "was not activated: not better than Otsu thresholding",
                        "Objects on the test images", "AP@0.5", "0.610", "9.0%"],
    "views/results.py": ["Recent images", "Segmented", "Trends per day", "Measurements", "cell"],
    "views/problems.py": ["plate7_labels", "masks/img03.png", "scan_0042.tif", "not a readable TIFF",
                          "OutOfMemoryError"],
}  # fmt: skip


@pytest.mark.parametrize("page", PAGES)
def test_page_with_a_typical_store(page, page_env, typical_store):
    page_env(typical_store)
    app = open_page(page)
    shown = texts(app)
    for text in EXPECTED[page]:
        assert text in shown, f"{text!r} missing on {page}"


@pytest.mark.parametrize("page", PAGES)
def test_page_with_10000_result_rows(page, page_env, big_store):
    page_env(big_store)
    app = open_page(page)
    assert app.title[0].value == TITLES[page]
    if page == "views/results.py":
        assert "Showing the newest 1000 of 20006 rows" in texts(app)
        assert app.dataframe[-1].value.shape[0] == 1000


def test_training_opens_on_the_live_run_and_shows_a_finished_ones_winner(page_env, typical_store):
    page_env(typical_store)
    app = open_page("views/training.py")
    run = app.selectbox(key="training_run")
    assert run.value.endswith("· nuclei_fluo · halving")
    finished = next(option for option in run.options if option.endswith("· finished"))
    run.select(finished).run()
    assert not app.exception
    shown = texts(app)
    assert "Winner c-" in shown and "test IoU" in shown
    assert "Halving ends (ETA)" not in shown
    assert "Race of " in shown and "the winner trains" in shown


def test_results_filters_by_project_and_date(page_env, big_store):
    page_env(big_store)
    app = open_page("views/results.py")
    app.selectbox(key="results_project").select("nuclei-screen").run()
    assert not app.exception
    assert set(app.dataframe[-1].value["project"]) == {"nuclei-screen"}
    first = app.dataframe[-1].value["processed_at"].min()[:10]
    import datetime as dt

    day = dt.date.fromisoformat(first)
    app.date_input(key="results_from").set_value(day).run()
    app.date_input(key="results_to").set_value(day).run()
    assert not app.exception
    assert set(app.dataframe[-1].value["processed_at"].str[:10]) == {first}


def test_every_page_asks_for_the_password(page_env, typical_store):
    page_env(typical_store, password="s3cret pass")
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not app.exception
    assert [t.value for t in app.title] == ["Microscope AutoML appliance"]
    assert "Overview" not in texts(app)
    with pytest.raises(ValueError):  # no page is registered before login, so none can be opened by its path
        app.switch_page("views/problems.py")
    app.text_input(key="login_password").input("wrong")
    app.button[0].click().run()
    assert [e.value for e in app.error] == ["Wrong password."]
    assert "Overview" not in [t.value for t in app.title]
    app.text_input(key="login_password").input("s3cret pass")
    app.button[0].click().run()
    assert not app.exception
    assert app.title[0].value == "Overview"
    app.switch_page("views/problems.py").run()
    assert app.title[0].value == "Problems"


def test_activation_needs_a_password_to_be_configured(page_env, typical_store):
    page_env(typical_store)
    app = open_page("views/models.py")
    assert "Admin actions need a page password" in texts(app)


def test_roll_back_with_confirmation(page_env, tmp_path):
    seed_typical(tmp_path)
    page_env(tmp_path, password="pw")
    store = Store(tmp_path / "appliance.sqlite")
    active = store.active_model(PROJECT).id
    previous = next(a for a in store.activations(PROJECT) if a.model_id == active).previous_model_id
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    app.text_input(key="login_password").input("pw")
    app.button[0].click().run()
    app.switch_page("views/models.py").run()
    assert not app.exception
    form_select = next(s for s in app.selectbox if s.label == "Model to make active")
    assert form_select.value == f"{previous} (previously active: roll back)"
    password = next(t for t in app.text_input if t.label.startswith("Page password"))
    submit = next(b for b in app.button if b.label == "Activate")

    password.input("pw")
    submit.click().run()  # not confirmed
    assert "Tick the confirmation first." in [w.value for w in app.warning]
    assert store.active_model(PROJECT).id == active

    next(c for c in app.checkbox if c.label.startswith("Yes,")).check()
    next(t for t in app.text_input if t.label.startswith("Page password")).input("wrong")
    next(b for b in app.button if b.label == "Activate").click().run()
    assert "Wrong password; nothing changed." in [e.value for e in app.error]
    assert store.active_model(PROJECT).id == active

    next(c for c in app.checkbox if c.label.startswith("Yes,")).check()
    next(t for t in app.text_input if t.label.startswith("Page password")).input("pw")
    next(b for b in app.button if b.label == "Activate").click().run()
    assert not app.exception
    assert store.active_model(PROJECT).id == previous
    decision = store.activations(PROJECT)[-1]
    assert (decision.model_id, decision.previous_model_id, decision.activated) == (previous, active, 1)
    assert decision.reason.startswith("roll back on the status page")


def test_a_failed_job_can_be_retried_from_the_problems_page(page_env, tmp_path):
    seed_typical(tmp_path)
    page_env(tmp_path, password="pw")
    store = Store(tmp_path / "appliance.sqlite")
    (failed,) = store.jobs(status="failed")
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    app.text_input(key="login_password").input("pw")
    app.button[0].click().run()
    app.switch_page("views/problems.py").run()
    assert not app.exception
    assert next(s for s in app.selectbox if s.label == "Failed job to run again").value.startswith(f"job {failed.id}")
    next(t for t in app.text_input if t.label.startswith("Page password")).input("pw")
    next(b for b in app.button if b.label == "Retry with fresh attempts").click().run()
    assert not app.exception
    assert f"Job {failed.id} is queued again." in [s.value for s in app.success]
    job = store.job(failed.id)
    assert job.status == "queued" and job.attempts == 0
    assert store.events()[0].message.startswith(f"job {failed.id} (segment, ")


def test_password_guessing_is_slowed_down_for_every_session(page_env, typical_store, monkeypatch):
    from streamlit_app import common

    monkeypatch.setattr(common, "_throttle", common.LoginThrottle(free_failures=3, first_wait=600))
    page_env(typical_store, password="s3cret")
    for _ in range(3):  # each guess in a fresh session, as a script would
        app = AppTest.from_file(str(APP), default_timeout=60).run()
        app.text_input(key="login_password").input("guess")
        app.button[0].click().run()
        assert "Wrong password." in [e.value for e in app.error]
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    app.text_input(key="login_password").input("s3cret")
    app.button[0].click().run()  # even the right password waits now
    assert any(e.value.startswith("Too many wrong passwords; try again in") for e in app.error)
    assert "Overview" not in [t.value for t in app.title]


def test_the_login_throttle_doubles_the_wait_and_forgets_old_failures():
    from streamlit_app.common import LoginThrottle

    throttle = LoginThrottle(free_failures=2, window=100, max_wait=5)
    for now in (0.0, 1.0):
        assert throttle.wait_seconds("a", now) == 0
        throttle.failed("a", now)
    assert throttle.wait_seconds("a", 1.0) == 2.0 and throttle.wait_seconds("b", 1.0) == 0
    throttle.failed("a", 3.0)
    assert throttle.wait_seconds("a", 3.0) == 4.0
    throttle.failed("a", 7.0)
    assert throttle.wait_seconds("a", 7.0) == 5.0  # at most max_wait
    assert throttle.wait_seconds("a", 150.0) == 0  # failures older than the window are forgotten
    throttle.failed("a", 150.0)
    throttle.succeeded("a")
    assert throttle.wait_seconds("a", 150.0) == 0


def test_no_live_fragment_captures_the_store_of_the_page_thread():
    """Fragment reruns may run on another thread, where a captured SQLite connection raises ProgrammingError."""
    import ast

    pages = Path(APP).parent / "views"
    captured = []
    for path in sorted(pages.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "live":
                names = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
                captured += [f"{path.name}:{node.lineno}" for name in names if name.lstrip("_") == "store"]
    assert captured == []


def test_images_of_a_project_without_a_model_are_a_problem_with_the_fix(page_env, tmp_path):
    seed_typical(tmp_path)
    store = Store(tmp_path / "appliance.sqlite")
    store.enqueue("segment", "typo-1", payload={}, project="hela-scren")  # a typo in the folder name
    page_env(tmp_path)
    app = open_page("views/problems.py")
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any(
        text.startswith("1 image(s) of project hela-scren waiting since")
        and "no labelled set was ever accepted for project hela-scren" in text
        and "`project: hela-scren`" in text
        for text in errors
    ), errors


def test_a_model_worse_than_otsu_is_kept_out_by_the_quality_gate_and_the_page_says_why(
    page_env, tmp_path, untrained_model, demo_set_dir
):
    """The real rule on a real (untrained) model; then Models and Problems say why and how."""
    from appliance.data.labelled_set import load_labelled_set
    from appliance.data.splits import split_stems
    from appliance.service.activation import decide_activation

    store = Store(tmp_path / "appliance.sqlite")
    labelled_set = load_labelled_set(demo_set_dir)
    split = split_stems(labelled_set.stems, seed=0)
    run = store.create_run(set_name=labelled_set.name, set_dir=str(demo_set_dir), split=split.to_dict())
    model = store.register_model(run_id=run, set_name=labelled_set.name, path="")
    store.finish_export(run, model, str(untrained_model))
    job, _ = store.enqueue("train", "set-1", payload={}, project="hela")
    store.claim("train", "worker", lease_seconds=60)
    store.complete(job, "worker")
    decision = decide_activation(store, model_id=model, project="hela")
    assert not decision.activated and store.active_model("hela") is None
    store.enqueue("segment", "img-1", payload={}, project="hela")  # an image of the project, waiting
    page_env(tmp_path)

    models = open_page("views/models.py")
    warnings = [w.value for w in models.warning]
    assert any(w.startswith(f"Model {model} was not activated: not better than Otsu thresholding") for w in warnings)
    assert any(f"`appliance activate hela {model}`" in w for w in warnings), warnings
    problems = open_page("views/problems.py")
    errors = [e.value for e in problems.error]
    assert any(f"its model {model} was not activated: {decision.reason}" in e for e in errors), errors


def test_results_offers_the_selected_images_object_files(page_env, typical_store):
    page_env(typical_store)
    app = open_page("views/results.py")
    labels = [button.proto.label for button in app.get("download_button")]
    for kind in ("objects table (CSV)", "object labels (TIFF", "outlines (ImageJ ROI set)", "outlines (GeoJSON"):
        assert any(label.startswith(kind) for label in labels), (kind, labels)


def test_models_builds_a_bioimageio_package_on_request_and_says_why_it_cannot(page_env, tmp_path):
    seed_typical(tmp_path)
    page_env(tmp_path)
    store = Store(tmp_path / "appliance.sqlite")
    active = store.active_model(PROJECT)
    app = open_page("views/models.py")
    build = next(b for b in app.button if b.label.startswith("Build a BioImage.IO package"))
    build.click().run()  # the seeded run's set folder is not there: no test image to package with
    assert not app.exception
    assert any("are gone from" in e.value and "--test-image" in e.value for e in app.error), app.error

    (Path(active.path) / "bioimageio.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # built earlier
    app = open_page("views/models.py")
    labels = [button.proto.label for button in app.get("download_button")]
    assert any(label.startswith("Download the BioImage.IO package") for label in labels), labels


def test_training_shows_the_cluster_nodes_and_which_node_trained_each_trial(page_env, tmp_path):
    store = Store(tmp_path / "appliance.sqlite")
    run_id = store.create_run(set_name="phase", budget_seconds=600.0, top_n=2, seed=0)
    for rank, config_id in ((1, "c-aaaaaaaaaa"), (2, "c-bbbbbbbbbb")):
        store.add_trial(run_id, rank, config_id, {"patch_size": 128}, 0.5)
    node_a, node_b = "a1" * 28, "b2" * 28
    store.see_nodes(
        [
            {"node_id": node_a, "address": "10.0.0.2", "slots": 1, "alive": 1},
            {"node_id": node_b, "address": "10.0.0.3", "slots": 2, "alive": 1},
        ]
    )
    store.update_node(node_a, device="NVIDIA RTX 4070", free_memory_mb=6144.0, running=f"run {run_id} rank 1 step 2")
    store.see_nodes([{"node_id": node_a, "address": "10.0.0.2", "slots": 1, "alive": 1}])  # node b died
    for rank, node in ((1, node_a), (2, node_b)):
        store.record_step_result(
            run_id, 0, rank, config_id=f"c-{rank}", validation_iou=0.5, wall_seconds=9.0, node=node
        )
    store.close()
    page_env(tmp_path)
    shown = texts(open_page("views/training.py"))
    assert "Cluster" in shown and "1 of 2 node(s) alive, 1 trial(s) at once" in shown
    assert "NVIDIA RTX 4070" in shown and "6.0 GB" in shown and f"run {run_id} rank 1 step 2" in shown
    assert "a1a1a1a1" in shown and "b2b2b2b2" in shown  # the trials table's "trained on"
