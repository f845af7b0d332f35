"""Fixtures of the service tests: settings on a temp data dir and a store."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from appliance.settings import Settings
from appliance.store import Store


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        quiet_period=5.0,
        stable_seconds=1.0,
        disk_reserve_gb=0.0,
        default_budget=40.0,
        top_n=2,
    )


@pytest.fixture
def store(settings) -> Store:
    store = Store(settings.store_path)
    yield store
    store.close()


@pytest.fixture
def dropped_set(settings, demo_set_dir) -> Path:
    """The bundled demo set copied into the labelled inbox (a fresh copy per test)."""
    target = settings.labelled_inbox / "phase_cells"
    shutil.copytree(demo_set_dir, target)
    return target


def tree_digest(root: Path, *, ignore_name: str | None = None) -> str:
    """One hash of every path, kind, content and mtime below ``root`` (files named ``ignore_name`` left out)."""
    digest = hashlib.sha256()
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names + dirs):
            path = Path(folder) / name
            if name == ignore_name:
                continue
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                line = f"L {relative} -> {os.readlink(path)}\n"
            elif path.is_dir():
                line = f"D {relative}\n"
            elif not path.is_file():  # a pipe or socket: never read it
                line = f"S {relative} {path.lstat().st_mode}\n"
            else:
                info = path.stat()
                line = f"F {relative} {info.st_mtime_ns} {info.st_mode}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
            if line.startswith("F "):
                digest.update(path.read_bytes())
    return digest.hexdigest()
