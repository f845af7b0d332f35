"""Fixtures of the page's tests: real SQLite stores (empty, typical, 10,000 result rows) and the page's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.store import Store
from tests.page.seed import seed_results, seed_typical

APP = Path(__file__).resolve().parents[2] / "streamlit_app" / "app.py"
PAGES = ("views/overview.py", "views/training.py", "views/models.py", "views/results.py", "views/problems.py")
BIG = 10_000


@pytest.fixture
def page_env(monkeypatch):
    """Point the page at a data folder through the appliance's own variables; no password unless a test sets one."""

    def use(data_dir: Path, password: str | None = None) -> Path:
        monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
        monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
        if password is None:
            monkeypatch.delenv("APPLIANCE_PAGE_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("APPLIANCE_PAGE_PASSWORD", password)
        return data_dir

    return use


@pytest.fixture
def empty_store(tmp_path) -> Path:
    """A data folder whose store exists and has no rows."""
    Store(tmp_path / "appliance.sqlite").close()
    return tmp_path


@pytest.fixture(scope="session")
def typical_store(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("typical")
    seed_typical(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def big_store(tmp_path_factory) -> Path:
    """The typical store plus 10,000 segmented images (20,000 measurement rows) over 30 days."""
    data_dir = tmp_path_factory.mktemp("big")
    seed_typical(data_dir)
    seed_results(data_dir, BIG)
    return data_dir


@pytest.fixture(autouse=True)
def fresh_login_throttle(monkeypatch):
    """The login throttle counts per page process; each test starts with no failed logins."""
    from streamlit_app import common

    monkeypatch.setattr(common, "_throttle", common.LoginThrottle())
