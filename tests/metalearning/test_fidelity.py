"""The fidelity-aware meta-model: it scores configurations after a given number of MP of training, saves as JSON,
and its per-fidelity and extrapolation report; on the synthetic meta-base of ``test_metamodel``."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from appliance import metalearning as mm
from appliance.cli import main
from appliance.errors import ConfigError
from appliance.metalearning import learners
from appliance.metalearning.fidelity import EXTRAPOLATION_METRICS, standardise_by
from tests.metalearning.test_metamodel import synthetic_rows, with_long_curves, write_csv


@pytest.fixture(autouse=True)
def small_forests(monkeypatch):
    monkeypatch.setattr(learners, "RF_TREES", 12)  # the factories read it when called


@pytest.fixture(scope="module")
def metabase(tmp_path_factory):
    path = write_csv(tmp_path_factory.mktemp("fid") / "metabase.csv", synthetic_rows(n_sets=4, configs_per_set=14))
    return mm.load_metabase(path)


def _set_rows(base: mm.MetaBase, name: str, fidelity: float) -> dict[str, np.ndarray]:
    mask = (base.columns["set"] == name) & base.at_fidelity(fidelity)
    return {column: values[mask] for column, values in base.columns.items()}


def test_the_fidelity_aware_model_scores_after_a_given_training_amount_and_round_trips(metabase, tmp_path):
    model = mm.MetaModel.fit(metabase, mm.FIDELITY_AWARE_MODEL, "hp+hc+eng", seed=0)
    assert model.fidelity_aware and model.variant == "hp+hc+eng+fid" and model.fidelity == 2.0
    assert model.fidelity_range == (0.5, 2.0) and model.trained_rows == metabase.n_rows  # every curve point
    rows = _set_rows(metabase, "set1", 2.0)
    at_half, at_two = model.predict(rows, fidelity_mp=0.5), model.predict(rows, fidelity_mp=2.0)
    # the synthetic IoU rises with training: within-set standardised over all points, later points score higher
    assert at_two.mean() > at_half.mean() + 0.5
    assert np.array_equal(model.predict(rows), at_two)  # the rows' own fidelity_mp (2 MP)
    assert np.array_equal(model.predict({k: v for k, v in rows.items() if k != "fidelity_mp"}), at_two)  # default
    per_row = np.where(np.arange(len(at_two)) % 2 == 0, 0.5, 2.0)
    assert np.array_equal(model.predict(rows, fidelity_mp=per_row), np.where(per_row == 0.5, at_half, at_two))

    model.save(tmp_path)
    meta = json.loads((tmp_path / "metamodel-meta.json").read_text())
    assert meta["model"] == "rf_d7_curve" and meta["fidelity_aware"] is True and meta["fidelity_range"] == [0.5, 2.0]
    assert json.loads((tmp_path / "metamodel.json").read_text())["format"] == "appliance-forest-v1"  # no pickle
    loaded = mm.MetaModel.load(tmp_path)
    assert loaded.fidelity_aware and loaded.label == model.label and "fidelity-aware" in loaded.label
    for mp in (0.5, 1.0, 2.0, 40.0):
        assert np.array_equal(loaded.predict(rows, fidelity_mp=mp), model.predict(rows, fidelity_mp=mp))
    features = {c: float(rows[c][0]) for c in rows if c.startswith(("hc_", "user_", "opt_"))}
    low = {c.id: s for c, s in mm.rank_configurations(loaded, features, fidelity=0.5)}
    high = {c.id: s for c, s in mm.rank_configurations(loaded, features, fidelity=2.0)}
    assert len(low) == 576 and np.mean(list(high.values())) > np.mean(list(low.values()))


def test_the_job_ranking_of_a_fidelity_aware_model_scores_each_configuration_at_its_own_training_amount(
    metabase, tmp_path
):
    from appliance.automl.ranking import rank_for_set

    mm.MetaModel.fit(metabase, mm.FIDELITY_AWARE_MODEL, "hp+hc+eng", seed=0).save(tmp_path / "aware")
    mm.MetaModel.fit(metabase, "rf_d7", "hp+hc+eng", seed=0).save(tmp_path / "plain")
    rows = _set_rows(metabase, "set1", 2.0)
    features = {c: float(rows[c][0]) for c in rows if c.startswith(("hc_", "user_", "opt_"))}
    ranking, fallback = rank_for_set(features, models_dir=tmp_path / "aware")
    assert fallback is None and ranking.fidelity_range == (0.5, 2.0)
    n = len(ranking.configurations)
    at_two = ranking.score_at([2.0] * n)
    assert np.allclose(at_two, ranking.scores)  # the plain scores are at the model's own fidelity (2 MP)
    at_half = ranking.score_at([0.5] * n)
    mixed = ranking.score_at([0.5 if i % 2 else 2.0 for i in range(n)])
    assert np.allclose(mixed, [at_half[i] if i % 2 else at_two[i] for i in range(n)])
    assert np.mean(at_two) > np.mean(at_half)
    plain, _ = rank_for_set(features, models_dir=tmp_path / "plain")
    assert plain.score_at is None and plain.fidelity_range is None


def test_a_single_fidelity_model_ignores_the_training_amount_and_old_meta_files_still_load(metabase, tmp_path):
    model = mm.MetaModel.fit(metabase, "rf_d7", "hp+hc+eng", seed=0)
    rows = _set_rows(metabase, "set2", 2.0)
    assert not model.fidelity_aware and model.fidelity_range == (2.0, 2.0)
    assert np.array_equal(model.predict(rows, fidelity_mp=0.5), model.predict(rows))
    model.save(tmp_path)
    meta_path = tmp_path / "metamodel-meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("fidelity_aware", "fidelity_range", "living_runs", "label"):  # as written before these existed
        del meta[key]
    meta_path.write_text(json.dumps(meta))
    loaded = mm.MetaModel.load(tmp_path)
    assert loaded.fidelity_range == (2.0, 2.0) and loaded.living_runs == ()
    assert np.array_equal(loaded.predict(rows), model.predict(rows))


def test_evaluate_asks_a_fidelity_aware_model_for_the_training_amount(metabase):
    with pytest.raises(ConfigError, match=r"rf_d7_curve takes the training amount .* hp\+hc\+eng\+fid"):
        mm.evaluate(metabase, models=["rf_d7_curve"], variants=["hp+hc+eng"], seeds=[0])
    table = mm.evaluate(metabase, models=["rf_d7_curve"], variants=["hp+hc+eng"], seeds=[0], use_all_fidelities=True)
    assert math.isfinite(table.summary("rf_d7_curve", "hp+hc+eng+fid")["z"][0])


def test_standardising_by_the_points_seen():
    assert np.allclose(standardise_by(np.array([3.0, 5.0]), np.array([1.0, 3.0])), [1.0, 3.0])  # mean 2, std 1
    assert np.allclose(standardise_by(np.array([2.0]), np.array([1.0, 1.0])), [1.0])  # constant reference: std 1


def test_the_per_fidelity_report_and_extrapolation(metabase):
    report = mm.evaluate_fidelities(metabase, seeds=[0])
    assert report.fidelities == [0.5, 1.0, 2.0] and report.sets == metabase.sets
    assert (
        report.model == "rf_d7_curve"
        and report.variant == "hp+hc+eng+fid"
        and report.baseline == ("rf_d7", "hp+hc+eng")
    )
    assert set(report.extrapolation) == {(0.5, 1.0), (0.5, 2.0), (1.0, 2.0)}
    for fidelity in report.fidelities:
        for which in ("aware", "baseline"):
            summary = report.per_fidelity_summary(fidelity, which)
            assert summary["z"][0] > 0.3 and math.isfinite(summary["kendall"][0]), (fidelity, which, summary)
    extrapolated = report.extrapolation_summary(0.5, 2.0)
    assert all(math.isfinite(extrapolated[m][0]) for m in EXTRAPOLATION_METRICS)
    # the synthetic IoU rises by 0.075 from 0.5 to 2 MP; a forest cannot predict past what it was fitted on
    assert extrapolated["mae"][0] > 0.2 and extrapolated["mae"][0] == pytest.approx(extrapolated["mae_at_cut"][0])
    markdown = report.to_markdown()
    assert "| 2 | rf_d7_curve/hp+hc+eng+fid |" in markdown and "| 2 | rf_d7/hp+hc+eng |" in markdown
    assert "| 0.5 | 2 |" in markdown and "| 1 | 2 |" in markdown
    json.dumps(report.to_dict(), allow_nan=False)


def test_the_per_fidelity_report_needs_two_fidelities_and_a_fidelity_aware_model(metabase):
    with pytest.raises(ConfigError, match="2 or more fidelities"):
        mm.evaluate_fidelities(metabase.subset(metabase.at_fidelity(2.0)), seeds=[0])
    with pytest.raises(ConfigError, match="not fidelity-aware"):
        mm.evaluate_fidelities(metabase, model="rf_d7", seeds=[0])


def test_a_model_fitted_at_one_fidelity_is_scored_at_every_longer_point(tmp_path):
    rows = with_long_curves(synthetic_rows(n_sets=4, configs_per_set=12))
    long = mm.load_metabase(write_csv(tmp_path / "long.csv", rows))
    report = mm.evaluate_fidelities(long, seeds=[0], fixed=("rf_d7", "hp+hc+eng", 2), extrapolation=False)
    assert report.extrapolation == {} and report.fixed == ("rf_d7", "hp+hc+eng", 2.0)
    assert report.configurations_per_set(32.0) == "3" and report.configurations_per_set(2.0) == "15"
    # at its own fidelity the fixed model is the baseline fitted there: the same forest, the same numbers
    assert np.array_equal(report.per_fidelity[(2.0, "fixed")], report.per_fidelity[(2.0, "baseline")])
    assert np.isfinite(report.per_fidelity[(32.0, "fixed")]).all()
    markdown = report.to_markdown()
    assert "| 32 | rf_d7/hp+hc+eng @2 |" in markdown and "fitted on the points at 2 MP only" in markdown
    assert report.to_dict()["fixed"] == ["rf_d7", "hp+hc+eng", 2.0]
    with pytest.raises(ConfigError, match="fitted at one fidelity"):
        mm.evaluate_fidelities(long, seeds=[0], fixed=("rf_d7_curve", "hp+hc+eng+fid", 2))
    with pytest.raises(ConfigError, match="no rows at fidelity 3 MP"):
        mm.evaluate_fidelities(long, seeds=[0], fixed=("rf_d7", "hp+hc+eng", 3))


def test_evaluate_fidelity_aware_on_the_command_line(tmp_path):
    path = write_csv(tmp_path / "m.csv", synthetic_rows(n_sets=3, configs_per_set=10))
    runner = CliRunner()
    result = runner.invoke(main, ["metamodel", "evaluate", "--metabase", str(path), "--fidelity-aware", "--seeds", "0"])
    assert result.exit_code == 0, result.output
    assert "| fit ≤ F (MP) | scored at G (MP) |" in result.stdout and "seeds 0 (" in result.stdout
    refused = runner.invoke(
        main, ["metamodel", "evaluate", "--metabase", str(path), "--fidelity-aware", "--models", "x"]
    )
    assert refused.exit_code == 2 and "--fidelity-aware" in refused.output
    against = ["--fidelity-aware", "--seeds", "0", "--against", "xgb_reg/hp+hc+eng@1"]
    compared = runner.invoke(main, ["metamodel", "evaluate", "--metabase", str(path), *against])
    assert compared.exit_code == 0, compared.output
    assert "| 2 | xgb_reg/hp+hc+eng @1 |" in compared.stdout
    for bad in ("xgb_reg@1", "xgb_reg/hp+hc+eng@zero", "xgb_reg/hp+hc+eng"):
        refused = runner.invoke(
            main, ["metamodel", "evaluate", "--metabase", str(path), "--fidelity-aware", "--against", bad]
        )
        assert refused.exit_code == 2 and "MODEL/VARIANT@MP" in refused.output, bad


def test_the_saved_fidelity_aware_model_ranks_without_heavy_imports(metabase, tmp_path):
    mm.MetaModel.fit(metabase, mm.FIDELITY_AWARE_MODEL, "hp+hc+eng", seed=0).save(tmp_path)
    code = (
        "import sys\n"
        "from appliance.metalearning import MetaModel, rank_configurations\n"
        "from tests.metalearning.test_metamodel import synthetic_set_features\n"
        f"model = MetaModel.load({str(tmp_path)!r})\n"
        "assert len(rank_configurations(model, synthetic_set_features(1), fidelity=40.0)) == 576\n"
        "print(sorted(m for m in ('sklearn', 'xgboost', 'torch') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
