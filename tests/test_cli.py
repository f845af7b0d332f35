import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from appliance.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_train_config_then_predict_writes_every_output(demo_set_dir, demo_images_dir, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("patch_size: 64\nbatch_size: 4\nlearning_rate: 0.001\nencoder: resnet18\nflip: 0.5\n")
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "train-config",
            "--set",
            str(demo_set_dir),
            "--config",
            str(config),
            "--seconds",
            "4",
            "--out",
            str(tmp_path / "model"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "validation, U-Net" in result.output and "Otsu baseline" in result.output
    assert "identical argmax" in result.output
    for name in ("model.onnx", "model.json", "checkpoint.pt", "metrics.json", "split.json", "config.yaml"):
        assert (tmp_path / "model" / name).is_file(), name
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["training"]["steps"] >= 1 and metrics["onnx_parity"]["argmax_agreement"] >= 0.999

    images = sorted(demo_images_dir.glob("*.tif"))
    result = runner.invoke(
        main, ["predict", "--model", str(tmp_path / "model"), *map(str, images), "--out", str(tmp_path / "results")]
    )
    assert result.exit_code == 0, result.output
    assert "segmenting: 100%" in result.output and f"{len(images)}/{len(images)}" in result.output  # the bar
    for image in images:
        mask = tifffile.imread(tmp_path / "results" / f"{image.stem}_mask.tif")
        assert mask.shape == (384, 384) and mask.dtype == np.uint8
        assert (tmp_path / "results" / f"{image.stem}_overlay.png").is_file()
    with open(tmp_path / "results" / "measurements.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == [image.name for image in images]
    assert {row["class_name"] for row in rows} == {"cell"}


def _train_config(set_dir, tmp_path):
    """Run train-config with the config at tmp_path/cfg.yaml and a 1 s budget."""
    args = [
        "--set",
        str(set_dir),
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--seconds",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    return CliRunner().invoke(main, ["train-config", *args])


def test_a_bad_set_is_reported_with_its_problems(tmp_path):
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    (tmp_path / "cfg.yaml").write_text("patch_size: 64\n")
    result = _train_config(tmp_path / "set", tmp_path)
    assert result.exit_code == 2
    assert "images/" in result.output and "no images" in result.output.lower()


def test_a_bad_config_names_key_and_choices(demo_set_dir, tmp_path):
    (tmp_path / "cfg.yaml").write_text("patch_size: 100\n")
    result = _train_config(demo_set_dir, tmp_path)
    assert result.exit_code == 2
    assert "patch_size = 100 is not allowed; choose one of 64, 128, 256" in result.output


def test_predict_without_a_model_folder_says_what_is_missing(tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 truncated")
    result = CliRunner().invoke(
        main, ["predict", "--model", str(tmp_path / "missing"), str(broken), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "model.json not found" in result.output


@pytest.mark.slow
def test_demo_runs_from_the_console_script(tmp_path):
    """The README's run command, with a short budget: trains, segments the samples, says where."""
    script = Path(sys.executable).with_name("appliance")
    result = subprocess.run(
        [str(script), "demo", "--once", "--out", str(tmp_path), "--seconds", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"results: {(tmp_path / 'results' / 'phase-demo').resolve()}" in result.stdout
    assert len(list((tmp_path / "results" / "phase-demo").glob("*_mask.tif"))) == 3
    assert (tmp_path / "models" / "phase-demo" / "model.onnx").is_file()


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.split("```")[1].splitlines() if line.strip()]
    assert commands[-2:] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_retry_queues_a_failed_job_and_refuses_others(tmp_path):
    from appliance.store import Store

    store = Store(tmp_path / "appliance.sqlite")
    failed, _ = store.enqueue("train", "k", project="p")
    store.claim("train", "w", lease_seconds=60)
    store.give_up(failed, "w", "boom")
    queued, _ = store.enqueue("train", "other", project="p")
    runner = CliRunner()
    result = runner.invoke(main, ["retry", str(failed), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "queued again; last error was: boom" in result.output and store.job(failed).status == "queued"
    result = runner.invoke(main, ["retry", str(queued), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "is queued; only failed jobs can be retried" in result.output
    result = runner.invoke(main, ["retry", "99", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "job 99 does not exist" in result.output


def test_activate_makes_a_model_active_by_hand_and_names_what_is_wrong(tmp_path):
    from appliance.store import Store

    store = Store(tmp_path / "appliance.sqlite")
    run = store.create_run(set_name="s", set_dir=str(tmp_path / "s"), split={})
    model = store.register_model(run_id=run, set_name="s", path="")
    runner = CliRunner()
    result = runner.invoke(main, ["activate", "p", model, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "its export did not finish" in result.output
    store.finish_export(run, model, str(tmp_path / "m"))
    result = runner.invoke(main, ["activate", "p", model, "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and f"{model} is now the active model of p" in result.output
    assert store.active_model("p").id == model and store.activations("p")[-1].reason.startswith("activated by hand")
    result = runner.invoke(main, ["activate", "p", "model-typo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and f"registered models: {model}" in result.output


def test_predict_starts_without_importing_torch():
    """Segmenting with an exported model needs ONNX Runtime only; importing torch alone costs seconds."""
    code = "import sys, appliance.cli, appliance.pipeline.outputs; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_export_bioimageio_packages_a_registered_model_from_its_run(tmp_path, trained_model, demo_set_dir):
    import zipfile

    from appliance.pipeline.config import PipelineConfig
    from appliance.store import Store

    store = Store(tmp_path / "appliance.sqlite")
    config = PipelineConfig.from_dict(json.loads((trained_model / "model.json").read_text())["config"])
    split = json.loads((trained_model / "split.json").read_text())
    run = store.create_run(set_name=demo_set_dir.name, set_dir=str(demo_set_dir), split=split)
    store.add_trial(run, 0, config.id, config.to_dict(), None)
    store.update_trial(run, 0, checkpoint=str(trained_model / "checkpoint.pt"))
    model = store.register_model(run_id=run, set_name=demo_set_dir.name, config_id=config.id, path="")
    store.finish_export(run, model, str(trained_model))

    runner = CliRunner()
    result = runner.invoke(main, ["export-bioimageio", model, str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "out" / f"{model}.bioimageio.zip"
    assert f"{package} (" in result.output and "failed" not in result.output
    assert "model.pt" in zipfile.ZipFile(package).namelist()  # the run's checkpoint gave TorchScript weights

    store.update_run(run, set_dir=str(tmp_path / "moved"))
    result = runner.invoke(main, ["export-bioimageio", model, str(tmp_path / "o2"), "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "--test-image" in result.output
