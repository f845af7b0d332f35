"""Where the results of one segmented image go: one naming rule for the service and ``appliance predict``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

MASK_SUFFIX = "_mask.tif"
OVERLAY_SUFFIX = "_overlay.png"


def result_stem(relpath: str, taken: Callable[[str], bool]) -> str:
    """The stem of an image's result files (``<stem>_mask.tif``, ``<stem>_overlay.png``): its relative path
    without the extension, unless another image already has that stem (``x.png`` beside ``x.tif``); then the
    extension is kept (``x_png``), with a counter when even that is taken.

    >>> result_stem("day1/x.png", taken=lambda stem: stem == "day1/x")
    'day1/x_png'
    """
    path = PurePosixPath(relpath)
    plain = path.with_suffix("").as_posix()
    candidates = [plain, f"{plain}_{path.suffix.lstrip('.').lower()}"] if path.suffix else [plain]
    candidates += (f"{candidates[-1]}-{n}" for n in range(2, 10_000))
    return next(stem for stem in candidates if not taken(stem))


def result_files(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """The mask and overlay paths of a result stem."""
    return out_dir / f"{stem}{MASK_SUFFIX}", out_dir / f"{stem}{OVERLAY_SUFFIX}"
