"""`appliance metamodel train` writes the model and a report whose table `appliance metamodel evaluate` reproduces."""

from click.testing import CliRunner

from appliance.cli import main
from appliance.metalearning import MetaModel, rank_configurations
from tests.metalearning.test_metamodel import synthetic_rows, synthetic_set_features, with_long_curves, write_csv

OPTIONS = ["--seeds", "0,1", "--models", "rf_d7,xgb_rank", "--variants", "hp+hc+eng,hp+hc+eng+user"]


def test_train_writes_model_metabase_and_a_report_that_evaluate_reproduces(tmp_path):
    metabase = write_csv(tmp_path / "built.csv", synthetic_rows(n_sets=4, configs_per_set=15))
    out = tmp_path / "models"
    runner = CliRunner()
    trained = runner.invoke(main, ["metamodel", "train", "--metabase", str(metabase), "--out", str(out), *OPTIONS])
    assert trained.exit_code == 0, trained.output
    assert "vs RF-d7 baseline" in trained.output
    report = (out / "metamodel-report.md").read_text()
    assert (out / "metamodel.json").is_file() and (out / "metabase.csv").read_bytes() == metabase.read_bytes()

    evaluated = runner.invoke(main, ["metamodel", "evaluate", "--metabase", str(out / "metabase.csv"), *OPTIONS])
    assert evaluated.exit_code == 0, evaluated.output
    table = evaluated.stdout.strip()
    assert table in report  # same seeds, same table
    assert "RF-d7" in report and "Kendall τ" in report and "is **" in report

    model = MetaModel.load(out)
    ranked = rank_configurations(model, synthetic_set_features(1))
    assert len(ranked) == 576 and len({c.id for c, _ in ranked}) == 576


def test_evaluate_names_a_missing_file(tmp_path):
    result = CliRunner().invoke(main, ["metamodel", "evaluate", "--metabase", str(tmp_path / "none.csv")])
    assert result.exit_code == 2 and "none.csv" in result.output


def test_train_combines_the_long_curves_ships_the_fidelity_aware_model_and_reports_it_at_their_points(tmp_path):
    rows = with_long_curves(synthetic_rows(n_sets=4, configs_per_set=12))
    short = write_csv(tmp_path / "metabase.csv", [r for r in rows if r["run_fidelity_mp"] == 2.0])
    long = write_csv(tmp_path / "long.csv", [r for r in rows if r["run_fidelity_mp"] == 32.0])
    out = tmp_path / "models"
    options = ["--seeds", "0", "--models", "rf_d7,xgb_reg", "--variants", "hp+hc+eng"]
    shipped = ["--model", "rf_d7_curve", "--variant", "hp+hc+eng"]
    command = ["metamodel", "train", "--metabase", str(short), "--also", str(long), "--out", str(out)]
    trained = CliRunner().invoke(main, [*command, *options, *shipped])
    assert trained.exit_code == 0, trained.output
    combined = (out / "metabase.csv").read_text().splitlines()
    assert len(combined) == 1 + len(rows)  # one header, every row of both files
    report = (out / "metamodel-report.md").read_text()
    assert "At 2 MP (every run): shipped rf_d7_curve/hp+hc+eng+fid z = " in report
    assert "At 32 MP (3 configurations per held-out set): shipped rf_d7_curve/hp+hc+eng+fid z = " in report
    assert "| rf_d7_curve | hp+hc+eng+fid |" in report  # evaluated in the main table beside the others
    assert "## Ranking at the training amounts a race reaches" in report
    for point in ("4", "8", "16", "32"):
        assert f"| {point} | 3 | rf_d7_curve/hp+hc+eng+fid, asked at F |" in report
        assert f"| {point} | 3 | rf_d7/hp+hc+eng fitted at F |" in report
    assert "| τ(0.5 MP vs 2) | τ(1 MP vs 2) |" in report
    assert "runs by their last point: 48 to 2 MP, 12 to 32 MP" in report
    model = MetaModel.load(out)
    assert model.fidelity_aware and model.fidelity_range == (0.5, 32.0)

    again = CliRunner().invoke(main, [*command[:3], str(out / "metabase.csv"), *command[4:], *options])
    assert again.exit_code == 2 and "not that output" in again.output
    twice = CliRunner().invoke(main, [*command, "--also", str(long), "--out", str(tmp_path / "other"), *options])
    assert twice.exit_code == 2, twice.output
    assert "is already in" in twice.output and "long.csv" in twice.output
