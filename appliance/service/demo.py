"""The live demo: a fresh data dir with the bundled labelled set and sample images already dropped in its inbox.

Run the service on it and everything happens as in the lab: the set is taken in, trained within a short budget,
its model activated, and the sample images (which arrive before the model) segmented as soon as it is.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from appliance.errors import ServiceError
from appliance.settings import Settings

DEMO_SET = "usiigaci_phase_cells_demo"
DEMO_PROJECT = "phase-demo"
DEMO_BUDGET_SECONDS = 120.0  # how many configurations race in it follows from the machine (appliance.automl.race)


def copy_demo_data(labelled_dir: Path, images_dir: Path) -> tuple[Path, Path]:
    """Copy the bundled labelled set into ``labelled_dir`` and the sample images into ``images_dir`` (project
    folders below each); returns the set's folder and the project's image folder."""
    demo = files("appliance") / "demo_data"
    set_dir, project_dir = labelled_dir / DEMO_SET, images_dir / DEMO_PROJECT
    shutil.copytree(str(demo / "labelled" / DEMO_SET), set_dir, dirs_exist_ok=True)
    shutil.copytree(str(demo / "images" / DEMO_PROJECT), project_dir, dirs_exist_ok=True)
    return set_dir, project_dir


def prepare_demo(settings: Settings) -> Settings:
    """Drop the bundled set (with a ``READY`` file) and sample images into a fresh data dir; returns the settings
    to run the service with (the short demo budget unless configured otherwise)."""
    data_dir = settings.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ServiceError(f"{data_dir} is not empty; the demo needs a fresh data dir (remove it or give another)")
    labelled, _ = copy_demo_data(settings.labelled_inbox, settings.images_inbox)
    (labelled / "READY").touch()
    if settings.default_budget == Settings.default_budget:
        settings = settings.with_values(default_budget=DEMO_BUDGET_SECONDS)
    return settings
