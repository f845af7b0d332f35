"""`appliance metamodel train` writes the model and a report whose table `appliance metamodel evaluate` reproduces."""

from click.testing import CliRunner

from appliance.cli import main
from appliance.metalearning import MetaModel, rank_configurations
from tests.metalearning.test_metamodel import synthetic_rows, synthetic_set_features, write_csv

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
