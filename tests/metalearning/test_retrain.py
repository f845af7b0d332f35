"""Retraining the meta-model with the living meta-base: activated only when its leave-one-dataset-out z is not below
the active model's, kept under the data dir where ranking finds it; a bad living meta-base is named, never changed."""

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from appliance import metalearning as mm
from appliance.automl.metafeatures import engineered_features
from appliance.automl.search_space import search_space
from appliance.cli import main
from appliance.metalearning import learners
from appliance.metalearning.retrain import ACTIVE_FILE, HISTORY_FILE, MODELS_DIR, RETRAIN_REPORT, combine, query_groups
from tests.metalearning.test_metamodel import synthetic_quality, synthetic_rows, synthetic_set_features, write_csv

SEEDS = (0,)


@pytest.fixture(autouse=True)
def small_forests(monkeypatch):
    monkeypatch.setattr(learners, "RF_TREES", 12)  # the factories read it when called


def living_rows(set_index: int, run: str, *, name: str | None = None, garbage: bool = False, seed: int = 0):
    """A halving run as the appliance records it: 8 trials, then the best 4, then 2; each trial trains for as many
    MP as its speed gives it in a step's time. ``garbage``: IoU unrelated to the configuration, all at 2 MP."""
    rng = np.random.default_rng(seed)
    features = synthetic_set_features(set_index)
    space = list(search_space())
    configs = [space[i] for i in rng.choice(len(space), size=8, replace=False)]
    base = 0.8 + rng.uniform(-0.05, 0.05)
    speed = {c.id: 2.0 * (1.5 if c.encoder == "resnet18" else 1.0) * (c.batch_size / 8) ** 0.3 for c in configs}
    curves: dict[str, list[tuple[float, float]]] = {}
    alive = configs
    for step in range(3):
        for config in alive:
            mp = speed[config.id] * 5 * (step + 1)
            iou = base + synthetic_quality(features, config) + 0.01 * math.log2(mp) + rng.normal(scale=0.004)
            if garbage:
                mp, iou = 2.0, rng.uniform(0.2, 0.9)
            curves.setdefault(config.id, []).append((mp, float(np.clip(iou, 0, 1))))
        alive = sorted(alive, key=lambda c: -curves[c.id][-1][1])[: len(alive) // 2]
        if garbage:
            break
    rows = []
    for config in configs:
        for mp, iou in curves[config.id]:
            rows.append(
                {
                    "set": name or f"lab{set_index}",
                    "config_id": config.id,
                    **config.to_dict(),
                    "seed": 0,
                    "fidelity_mp": mp,
                    "run_fidelity_mp": curves[config.id][-1][0],
                    "val_iou": iou,
                    "device": "cuda:0 (test)",
                    "mpix_per_second": speed[config.id],
                    "source": f"run {run}",
                    **features,
                    **engineered_features(features, config),
                }
            )
    return rows


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped folder: a small meta-base and the RF-d7 model fitted on it at 2 MP."""
    folder = tmp_path_factory.mktemp("models")
    path = write_csv(folder / "metabase.csv", synthetic_rows(n_sets=4, configs_per_set=12))
    learners.RF_TREES, trees = 12, learners.RF_TREES
    try:
        mm.MetaModel.fit(mm.load_metabase(path), "rf_d7", "hp+hc+eng", seed=0).save(folder)
    finally:
        learners.RF_TREES = trees
    return folder


def _living(tmp_path, rows):
    data = tmp_path / "data"
    data.mkdir()
    return data, write_csv(data / "metabase.csv", rows)


def test_living_rows_are_judged_per_halving_step_and_meta_base_rows_per_fidelity():
    rows = living_rows(4, "a") + synthetic_rows(n_sets=1, configs_per_set=2)
    groups = query_groups(mm.MetaBase.from_rows([{**r, "source": r.get("source", "")} for r in rows]))
    living = [g for g in groups.tolist() if "|" in g]
    assert sorted({g.rsplit(" ", 1)[1] for g in living}) == ["0", "1", "2"]
    assert [living.count(f"lab4|run a|step {k}") for k in range(3)] == [8, 4, 2]
    assert sorted(set(groups.tolist()) - set(living)) == ["set0@0.5", "set0@1", "set0@2"]


def test_a_candidate_that_ranks_as_well_is_activated_where_ranking_finds_it(shipped, tmp_path, monkeypatch):
    data, living_csv = _living(tmp_path, living_rows(4, "a") + living_rows(5, "b", seed=1))
    before = living_csv.read_bytes()
    assert mm.active_metamodel_dir(data, shipped) == shipped
    # the same recipe as the active model: at 2 MP it sees no living row, so both fit the same forest -> a tie
    monkeypatch.setenv("APPLIANCE_METAMODEL_DIR", str(shipped))
    args = ["metamodel", "train", "--living", "--data-dir", str(data), "--metabase", str(shipped / "metabase.csv")]
    result = CliRunner().invoke(main, [*args, "--model", "rf_d7", "--variant", "hp+hc+eng", "--seeds", "0"])
    assert result.exit_code == 0, result.output
    assert "activated: candidate LODO z" in result.output and "equals the active model's" in result.output
    assert "| candidate: rf_d7/hp+hc+eng" in result.output and "z (living sets)" in result.output

    active = mm.active_metamodel_dir(data, shipped)
    assert active.parent == data / MODELS_DIR and active.name.endswith("-rf_d7")
    pointer = json.loads((data / MODELS_DIR / ACTIVE_FILE).read_text())
    assert pointer["directory"] == active.name and pointer["replaced"]["directory"] == str(shipped)
    assert pointer["lodo_z"] == pytest.approx(pointer["replaced"]["lodo_z"])
    assert mm.MetaModel.load(active).model == "rf_d7" and "Activated" in (active / RETRAIN_REPORT).read_text()
    (entry,) = [json.loads(line) for line in (data / MODELS_DIR / HISTORY_FILE).read_text().splitlines()]
    assert entry["activated"] and entry["candidate"] == active.name and entry["living_sets"] == ["lab4", "lab5"]
    assert living_csv.read_bytes() == before  # only read


def test_the_lab_s_own_curves_train_a_fidelity_aware_candidate(shipped, tmp_path):
    data, _ = _living(tmp_path, living_rows(4, "a") + living_rows(5, "b", seed=1) + living_rows(0, "c", seed=2))
    result = mm.retrain_with_living(shipped / "metabase.csv", data, shipped, seeds=SEEDS)
    assert result.comparison is not None and result.comparison.living == ["lab0", "lab4", "lab5"]
    assert math.isfinite(result.candidate_z) and math.isfinite(result.active_z)
    assert result.activated == (result.candidate_z >= result.active_z)  # the rule, whichever way it went here
    candidate = mm.MetaModel.load(result.candidate_dir)  # kept for inspection either way
    assert candidate.fidelity_aware and candidate.living_runs == ("run a", "run b", "run c")
    assert candidate.fidelity_range[1] == pytest.approx(max(r["fidelity_mp"] for r in living_rows(5, "b", seed=1)))
    expected = result.candidate_dir if result.activated else shipped
    assert mm.active_metamodel_dir(data, shipped) == expected


def test_garbage_living_rows_make_a_worse_candidate_and_the_active_model_stays(shipped, tmp_path):
    # copies of the shipped sets' features with IoU unrelated to the configuration, at the active model's 2 MP:
    # the same recipe fitted with them learns noise for exactly the held-out sets' features
    rows = []
    for index in range(4):
        for copy in range(3):
            rows += living_rows(
                index, f"g{index}{copy}", name=f"copy{index}-{copy}", garbage=True, seed=10 * index + copy
            )
    data, living_csv = _living(tmp_path, rows)
    before = living_csv.read_bytes()
    result = mm.retrain_with_living(
        shipped / "metabase.csv", data, shipped, model="rf_d7", variant="hp+hc+eng", seeds=SEEDS
    )
    assert not result.activated and result.candidate_z < result.active_z - 0.2, (result.candidate_z, result.active_z)
    assert "is below the active model's" in result.reason
    shipped_sets = [s for s in result.comparison.sets if s.startswith("set")]
    assert (
        result.comparison.mean("candidate", sets=shipped_sets)[0]
        < result.comparison.mean("active", sets=shipped_sets)[0]
    )
    assert mm.active_metamodel_dir(data, shipped) == shipped and not (data / MODELS_DIR / ACTIVE_FILE).exists()
    assert "Not activated" in (result.candidate_dir / RETRAIN_REPORT).read_text()
    assert living_csv.read_bytes() == before


def test_one_living_set_is_too_few_to_judge(shipped, tmp_path):
    data, _ = _living(tmp_path, living_rows(4, "a") + living_rows(4, "a2", seed=3))
    result = mm.retrain_with_living(shipped / "metabase.csv", data, shipped, seeds=SEEDS)
    assert not result.activated and result.candidate_dir is None and result.comparison is None
    assert "holds 1 set(s) with a usable halving step (lab4); at least 2 are needed" in result.reason
    assert mm.active_metamodel_dir(data, shipped) == shipped
    (entry,) = [json.loads(line) for line in (data / MODELS_DIR / HISTORY_FILE).read_text().splitlines()]
    assert not entry["activated"] and entry["candidate"] is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no living meta-base here"),
        ("", "empty (no header line)"),
        ("set,config_id\n", "lacks required column(s)"),
        ("header-only", "no rows"),
        ("not-a-number", "'hc_images' row 3 holds 'many'"),
        ("no-source", "needs a 'source'"),
    ],
)
def test_a_bad_living_metabase_is_named_and_left_unchanged(shipped, tmp_path, content, message):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "metabase.csv"
    rows = living_rows(4, "a") + living_rows(5, "b")
    if content == "header-only":
        write_csv(path, rows)
        path.write_text(path.read_text().splitlines()[0] + "\n")
    elif content == "not-a-number":
        rows[1]["hc_images"] = "many"
        write_csv(path, rows)
    elif content == "no-source":
        write_csv(path, [{k: v for k, v in row.items() if k != "source"} for row in rows])
    elif content is not None:
        path.write_text(content)
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(mm.LivingMetaBaseError, match=re.escape(message)) as error:
        mm.retrain_with_living(shipped / "metabase.csv", data, shipped, seeds=SEEDS)
    assert str(path) in str(error.value)
    assert (path.read_bytes() if path.exists() else None) == before
    assert not (data / MODELS_DIR).exists()  # nothing fitted, nothing recorded


def test_the_command_line_names_a_missing_living_metabase(shipped, tmp_path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_METAMODEL_DIR", str(shipped))
    args = ["metamodel", "train", "--living", "--data-dir", str(tmp_path), "--metabase", str(shipped / "metabase.csv")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and str(tmp_path / "metabase.csv") in result.output
    assert "no living meta-base here" in result.output
    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "--out" in refused.output


def test_an_unreadable_pointer_falls_back_to_the_shipped_model(shipped, tmp_path):
    pointer = tmp_path / MODELS_DIR / ACTIVE_FILE
    pointer.parent.mkdir()
    pointer.write_text("{not json")
    assert mm.active_metamodel_dir(tmp_path, shipped) == shipped
    pointer.write_text(json.dumps({"directory": "gone"}))
    assert mm.active_metamodel_dir(tmp_path, shipped) == shipped


def test_nothing_new_keeps_the_active_model_without_fitting(shipped, tmp_path):
    data, living_csv = _living(tmp_path, living_rows(4, "a") + living_rows(5, "b", seed=1))
    combined = combine(mm.load_metabase(shipped / "metabase.csv"), mm.load_living_metabase(living_csv))
    active = data / MODELS_DIR / "by-hand"
    mm.MetaModel.fit(combined, mm.FIDELITY_AWARE_MODEL, "hp+hc+eng", seed=0).save(active)
    (data / MODELS_DIR / ACTIVE_FILE).write_text(json.dumps({"directory": "by-hand"}))
    assert mm.active_metamodel_dir(data, shipped) == active
    result = mm.retrain_with_living(shipped / "metabase.csv", data, shipped, seeds=SEEDS)
    assert not result.activated and result.candidate_dir is None and "nothing new" in result.reason
    assert result.active_dir == active and "with 2 living run(s)" in result.active_label
