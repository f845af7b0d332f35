"""The service's children get its settings one way: as APPLIANCE_* variables, read back whole."""

import json
import subprocess
import sys

from appliance.service.children import child_environment
from appliance.settings import CONFIG_VARIABLE, Settings


def test_a_child_reads_back_the_services_effective_settings_and_not_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_VARIABLE, str(tmp_path / "gone.toml"))  # already applied; the child must not reread it
    monkeypatch.setenv("APPLIANCE_INBOX_DIR", "/somewhere/else")  # overridden by the service's value (None here)
    monkeypatch.setenv("APPLIANCE_FAULTS", "ranked")  # not a setting: passes through
    settings = Settings(
        data_dir=tmp_path, page_password="a b", quiet_period=0.0, quality_gate=False, keep_checkpoints="all"
    )
    environment = child_environment(settings)
    assert CONFIG_VARIABLE not in environment and "APPLIANCE_INBOX_DIR" not in environment
    assert environment["APPLIANCE_FAULTS"] == "ranked" and environment["APPLIANCE_PAGE_PASSWORD"] == "a b"
    code = "import json; from appliance.settings import Settings as S; print(json.dumps(S.from_env().to_dict()))"
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    read_back = json.loads(result.stdout)
    assert read_back["page_password"] == "********"  # printed hidden; compared whole below
    assert Settings.from_dict({**read_back, "page_password": "a b"}) == settings
