"""Settings from defaults, a TOML file, APPLIANCE_* variables and options; `appliance config` hides the password."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ConfigError
from appliance.settings import HIDDEN, Settings, read_config_file


def test_precedence_is_defaults_then_file_then_environment_then_options(tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text('data_dir = "/srv/a"\ndefault_budget = "20m"\nquiet_period = 30\npolling = true\ntop_n = 8\n')
    settings = Settings.from_env(
        {"APPLIANCE_CONFIG": str(config), "APPLIANCE_TOP_N": "4", "APPLIANCE_POLLING": "no"}, seed=7
    )
    assert settings.data_dir == Path("/srv/a") and settings.default_budget == 1200.0
    assert settings.quiet_period == 30.0 and settings.top_n == 4 and settings.polling is False and settings.seed == 7
    assert settings.gpu_memory_gb == 8.0  # untouched default


def test_folders_follow_the_data_dir_unless_set():
    settings = Settings(data_dir=Path("/d"))
    assert settings.labelled_inbox == Path("/d/inbox/labelled") and settings.images_inbox == Path("/d/inbox/images")
    assert settings.results == Path("/d/results") and settings.store_path == Path("/d/appliance.sqlite")
    assert settings.trained_models_dir == Path("/d/models") and settings.metamodel_dir.name == "models"
    moved = Settings.from_env({"APPLIANCE_INBOX_DIR": "/share/in", "APPLIANCE_DATA_DIR": "/d"})
    assert moved.labelled_inbox == Path("/share/in/labelled") and moved.results == Path("/d/results")


def test_an_unknown_key_in_the_file_lists_the_valid_ones(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("quiet_periode = 5\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) quiet_periode; valid keys: data_dir, metamodel_dir"):
        read_config_file(config)


def test_a_renamed_setting_is_refused_with_its_new_name(tmp_path):
    config = tmp_path / "old.toml"
    config.write_text('models_dir = "/opt/meta"\n')
    with pytest.raises(ConfigError, match="models_dir is now called metamodel_dir; rename the key"):
        read_config_file(config)
    with pytest.raises(ConfigError, match="APPLIANCE_MODELS_DIR is now called APPLIANCE_METAMODEL_DIR"):
        Settings.from_env({"APPLIANCE_MODELS_DIR": "/opt/meta"})
    assert Settings.from_env({"APPLIANCE_METAMODEL_DIR": "/opt/meta"}).metamodel_dir == Path("/opt/meta")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APPLIANCE_PAGE_PORT", "http", "APPLIANCE_PAGE_PORT='http'"),
        ("APPLIANCE_POLLING", "maybe", "not a yes/no value"),
        ("APPLIANCE_QUIET_PERIOD", "soon", "write a number with s, m or h"),
        ("APPLIANCE_PAGE_PORT", "70000", "page_port must be a TCP port 1-65535, got 70000"),
        ("APPLIANCE_QUALITY_GATE", "perhaps", "not a yes/no value"),
        ("APPLIANCE_KEEP_CHECKPOINTS", "some", "keep_checkpoints must be one of winner, all, none, got 'some'"),
    ],
)
def test_a_bad_variable_is_named_with_its_value_and_the_rule(variable, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        Settings.from_env({variable: value})


def test_the_password_never_shows_but_survives_the_round_trip_to_children():
    settings = Settings(page_password="s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.to_toml()
    assert settings.to_dict()["page_password"] == HIDDEN
    assert Settings.from_dict(settings.to_dict(hide_password=False)) == settings


def test_config_command_prints_effective_settings_as_toml_that_reads_back(tmp_path):
    environment = {"APPLIANCE_PAGE_PASSWORD": "s3cret", "APPLIANCE_DEFAULT_BUDGET": "90s", "APPLIANCE_CONFIG": ""}
    result = CliRunner().invoke(main, ["config", "--data-dir", str(tmp_path)], env=environment)
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and f'page_password = "{HIDDEN}"' in result.output
    assert "default_budget = 90.0" in result.output and f"# labelled_inbox: {tmp_path}/inbox/labelled" in result.output
    (tmp_path / "echo.toml").write_text(result.output)
    assert read_config_file(tmp_path / "echo.toml")["default_budget"] == 90.0


def test_config_command_reports_a_missing_file(tmp_path):
    result = CliRunner().invoke(main, ["config"], env={"APPLIANCE_CONFIG": str(tmp_path / "nope.toml")})
    assert result.exit_code == 2 and "nope.toml not found; fix APPLIANCE_CONFIG or --config" in result.output


def test_the_demo_drops_the_bundled_set_and_images_into_a_fresh_data_dir(tmp_path):
    from appliance.errors import ServiceError
    from appliance.service.demo import DEMO_BUDGET_SECONDS, prepare_demo

    settings = prepare_demo(Settings(data_dir=tmp_path / "demo"))
    assert settings.default_budget == DEMO_BUDGET_SECONDS
    assert (settings.labelled_inbox / "usiigaci_phase_cells_demo" / "READY").is_file()
    assert len(list((settings.images_inbox / "phase-demo").glob("*.tif"))) == 3
    with pytest.raises(ServiceError, match="is not empty; the demo needs a fresh data dir"):
        prepare_demo(settings)


def test_the_quality_gate_and_checkpoint_retention_read_from_the_environment():
    settings = Settings.from_env({"APPLIANCE_QUALITY_GATE": "off", "APPLIANCE_KEEP_CHECKPOINTS": "none"})
    assert settings.quality_gate is False and settings.keep_checkpoints == "none"
    assert Settings().quality_gate is True and Settings().keep_checkpoints == "winner"
