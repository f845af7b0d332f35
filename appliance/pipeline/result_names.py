"""Where an image's results go: one naming rule for the service, ``appliance predict`` and the status page.

Standard library only, so the page can find an image's files without importing the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

MASK_SUFFIX = "_mask.tif"
OVERLAY_SUFFIX = "_overlay.png"
OBJECTS_SUFFIX = "_objects.tif"
OBJECTS_CSV_SUFFIX = "_objects.csv"
ROIS_SUFFIX = "_rois.zip"
GEOJSON_SUFFIX = "_objects.geojson"


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


class ResultFiles(NamedTuple):
    """An image's result files: the class map, the overlay, the instance labels, the per-object table and the
    objects' outlines for Fiji (ImageJ ROI set) and QuPath (GeoJSON)."""

    mask: Path
    overlay: Path
    objects: Path
    objects_csv: Path
    rois: Path
    geojson: Path

    @classmethod
    def of_mask(cls, mask: str | Path) -> ResultFiles:
        """The files that go with a mask path (a later version of an image keeps its files)."""
        return result_files(Path(mask).parent, Path(mask).name.removesuffix(MASK_SUFFIX))


def result_files(out_dir: Path, stem: str) -> ResultFiles:
    """The result files of a result stem."""
    suffixes = (MASK_SUFFIX, OVERLAY_SUFFIX, OBJECTS_SUFFIX, OBJECTS_CSV_SUFFIX, ROIS_SUFFIX, GEOJSON_SUFFIX)
    return ResultFiles(*(out_dir / f"{stem}{suffix}" for suffix in suffixes))
