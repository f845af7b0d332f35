"""Disk guard: intake and new training need the reserve free, running training stops resumably below half of it,
inference goes on while a small floor is free. Nothing waits for the disk to be full."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.settings import Settings

GB = 1024**3
INFERENCE_FLOOR_BYTES = 200 * 1024**2
STOP_FRACTION = 0.5  # running training stops below this share of the reserve (checkpoints still fit)


def disk_space(path: str | Path) -> tuple[int, int]:
    """``(free, total)`` bytes of the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    return disk_space(path)[0]


def training_space(settings: Settings) -> tuple[bool, str]:
    """Whether new training may start, and why not."""
    free = free_bytes(settings.data_dir)
    reserve = settings.disk_reserve_gb * GB
    if free < reserve:
        return False, (
            f"only {free / GB:.1f} GB free on {settings.data_dir.resolve()}, below the reserve of "
            f"{settings.disk_reserve_gb:g} GB (disk_reserve_gb); free space or lower the reserve"
        )
    return True, f"{free / GB:.1f} GB free"


def training_must_stop(settings: Settings) -> tuple[bool, str]:
    """Whether running training must stop (resumably) to keep the disk from filling, and why."""
    free = free_bytes(settings.data_dir)
    floor = settings.disk_reserve_gb * GB * STOP_FRACTION
    if free < floor:
        return True, (
            f"only {free / GB:.1f} GB free on {settings.data_dir.resolve()}, below half the reserve of "
            f"{settings.disk_reserve_gb:g} GB (disk_reserve_gb); training stopped and resumes when space is freed"
        )
    return False, f"{free / GB:.1f} GB free"


def inference_space(settings: Settings) -> tuple[bool, str]:
    """Whether inference may write more results, and why not."""
    free = free_bytes(settings.results)
    if free < INFERENCE_FLOOR_BYTES:
        return False, f"only {free / 1024**2:.0f} MB free on {settings.results.resolve()}; free space"
    return True, f"{free / GB:.1f} GB free"
