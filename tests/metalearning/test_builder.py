"""The meta-base builder: balanced plans, the CSV store, and resuming after a kill."""

import collections
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from appliance.errors import ConfigError
from appliance.metalearning.builder import (
    IDENTITY_COLUMNS,
    OUTCOME_COLUMNS,
    BuildSettings,
    build_metabase,
    parse_configs,
    parse_curve,
    plan_jobs,
    read_metabase_rows,
    row_key,
    steps_for_work,
    stratified_configurations,
    write_rows,
)
from appliance.pipeline.config import PAPER_DEFAULT, SEARCH_SPACE, PipelineConfig


@pytest.mark.parametrize("count", [48, 50, 7])
def test_stratified_sample_balances_every_value(count):
    configs = stratified_configurations(count, seed=3)
    assert len({c.id for c in configs}) == count
    for name, values in SEARCH_SPACE.items():
        tally = collections.Counter(getattr(c, name) for c in configs)
        assert set(tally) <= set(values)
        if count >= len(values):
            assert max(tally.values()) - min(tally[v] for v in values) <= 1, name


def test_stratified_sample_is_seeded():
    assert [c.id for c in stratified_configurations(48, seed=1)] == [
        c.id for c in stratified_configurations(48, seed=1)
    ]
    assert [c.id for c in stratified_configurations(48, seed=1)] != [
        c.id for c in stratified_configurations(48, seed=2)
    ]


def test_stratified_sample_refuses_impossible_counts():
    with pytest.raises(ConfigError, match="between 1 and 576"):
        stratified_configurations(577, seed=0)


def test_plan_interleaves_sets_and_differs_per_set(tmp_path):
    dirs = [tmp_path / "alpha", tmp_path / "beta"]
    jobs = plan_jobs(dirs, configs_per_set=4, seed=0, curve=(1.0,))
    assert [job.set_name for job in jobs] == ["alpha", "beta"] * 4
    alpha = [job.config.id for job in jobs if job.set_name == "alpha"]
    beta = [job.config.id for job in jobs if job.set_name == "beta"]
    assert alpha != beta


def test_chosen_configurations_run_on_every_set_instead_of_a_sample(tmp_path):
    other = PipelineConfig(patch_size=64, batch_size=4)
    chosen = parse_configs(f"default, {other.id}")
    assert chosen == (PAPER_DEFAULT, other)
    jobs = plan_jobs([tmp_path / "alpha", tmp_path / "beta"], configs_per_set=48, seed=0, curve=(1.0, 32.0),
                     configs=chosen)  # fmt: skip
    assert [(job.set_name, job.config) for job in jobs] == [
        ("alpha", PAPER_DEFAULT), ("beta", PAPER_DEFAULT), ("alpha", other), ("beta", other)
    ]  # fmt: skip


@pytest.mark.parametrize("text", ["c-0000000000", "default,default", "resnet18", ""])
def test_unknown_or_repeated_configurations_are_refused(text):
    with pytest.raises(ConfigError, match="configuration"):
        parse_configs(text)


def test_steps_for_work_rounds_up_to_at_least_one_step():
    assert steps_for_work(PipelineConfig(patch_size=256, batch_size=32), 0.5) == 1  # one step is 2.1 MP
    assert steps_for_work(PipelineConfig(patch_size=64, batch_size=4), 0.1) == 7  # 16384 px per step


@pytest.mark.parametrize("text", ["", "1,0.5", "0,1", "one"])
def test_bad_curves_are_refused(text):
    with pytest.raises(ConfigError, match="fidelity"):
        parse_curve(text)


def _row(set_name="s", config_id="c-1", point=1.0, iou=0.5):
    return {
        "set": set_name,
        "config_id": config_id,
        "seed": 0,
        "fidelity_mp": point,
        "run_fidelity_mp": 1.0,
        "val_iou": iou,
        "patch_size": 64,
    }


def test_write_rows_skips_duplicates_and_refreshes_features(tmp_path):
    path = tmp_path / "mb.csv"
    assert write_rows(path, [_row(), _row(point=0.5)], lambda row: {"hc_images": 3.0}) == 2
    assert write_rows(path, [_row(iou=0.9), _row(config_id="c-2")], lambda row: {"hc_images": 4.0}) == 1
    rows = read_metabase_rows(path)
    assert len(rows) == 3
    assert [row["val_iou"] for row in rows if row["config_id"] == "c-1" and row["fidelity_mp"] == "1.0"] == ["0.5"]
    assert {row["hc_images"] for row in rows} == {"4.0"}
    # a function that returns None keeps a row's own features
    write_rows(path, [], lambda row: None)
    assert {row["hc_images"] for row in read_metabase_rows(path)} == {"4.0"}


def test_build_in_process_writes_complete_rows(tmp_path, demo_set_dir):
    out = tmp_path / "mb.csv"
    settings = BuildSettings(
        set_dirs=(demo_set_dir,), out_csv=out, configs_per_set=2, curve=(0.01, 0.02), optical_images=0, device="cpu"
    )
    assert build_metabase(settings, log=lambda message: None) == 2
    rows = read_metabase_rows(out)
    assert len(rows) == 4
    for row in rows:
        assert set(IDENTITY_COLUMNS) | set(OUTCOME_COLUMNS) <= set(row)
        assert 0.0 <= float(row["val_iou"]) <= 1.0
        assert float(row["work_mp"]) >= float(row["fidelity_mp"])
        assert row["hc_images"] == "8.0" and row["eng_patches_per_image"]
    assert build_metabase(settings, log=lambda message: None) == 0
    assert len(read_metabase_rows(out)) == 4


def _count_runs(path) -> int:
    if not path.is_file():
        return 0
    with path.open(newline="") as handle:
        return len({(row["set"], row["config_id"]) for row in csv.DictReader(handle)})


@pytest.mark.slow
def test_killed_builder_resumes_without_duplicates(tmp_path, demo_set_dir):
    out = tmp_path / "mb.csv"
    command = [
        sys.executable,
        "-m",
        "appliance.cli",
        "metabase",
        "build",
        "--sets",
        str(demo_set_dir),
        "--out",
        str(out),
        "--configs-per-set",
        "4",
        "--fidelity",
        "0.01,0.03",
        "--optical-images",
        "0",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while _count_runs(out) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the builder finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {row_key(row): row for row in read_metabase_rows(out)}
    assert 1 <= len(before) // 2 < 4

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    assert f"{len(before) // 2} of 4 runs done" in resumed.stdout
    rows = read_metabase_rows(out)
    keys = [row_key(row) for row in rows]
    assert len(keys) == len(set(keys)) == 8
    for key, row in before.items():  # rows written before the kill are kept as they were
        after = next(r for r in rows if row_key(r) == key)
        assert after["val_iou"] == row["val_iou"] and after["finished_at"] == row["finished_at"]


def test_with_the_sets_features_cached_the_builder_needs_no_pyradiomics(tmp_path, demo_set, demo_set_dir, monkeypatch):
    """The GPU check image has no pyradiomics: the builder runs there on the features computed here."""
    from appliance.metalearning.builder import FEATURES_VERSION, features_file

    out = tmp_path / "mb.csv"
    signature = {
        "version": FEATURES_VERSION,
        "images": len(demo_set),
        "optical_images": 20,
        "metadata": demo_set.metadata,
    }
    features = {"hc_images": 8.0, "hc_classes": 1.0, "hc_mean_shape": 256.0, "opt_firstorder_Mean": 0.25}
    features_file(out).write_text(
        json.dumps({demo_set.name: {"signature": signature, "seconds": 1.0, "features": features}})
    )
    monkeypatch.setitem(sys.modules, "radiomics", None)
    settings = BuildSettings(
        set_dirs=(demo_set_dir,), out_csv=out, configs_per_set=1, curve=(0.01,), optical_images=20, device="cpu"
    )
    assert build_metabase(settings, log=lambda message: None) == 1
    (row,) = read_metabase_rows(out)
    assert row["opt_firstorder_Mean"] == "0.25" and row["eng_patches_per_image"]
