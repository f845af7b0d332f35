"""Segmenting image files and writing their results (named by :mod:`appliance.pipeline.result_names`).

Light on imports (no torch): ``appliance predict`` starts in about a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from appliance.data.io import read_image, write_label_image, write_png
from appliance.errors import ApplianceError
from appliance.pipeline.measurements import measure, write_measurements_csv
from appliance.pipeline.objects import object_rows, write_instance_tiff, write_objects_csv
from appliance.pipeline.overlay import overlay
from appliance.pipeline.result_names import ResultFiles, result_files, result_stem
from appliance.pipeline.shapes import object_outlines, write_geojson, write_imagej_rois

if TYPE_CHECKING:
    from appliance.pipeline.predictor import OnnxPredictor
    from appliance.pipeline.task import Segmentation


def write_results(
    files: ResultFiles,
    image: np.ndarray,
    result: Segmentation,
    *,
    class_names: Sequence[str],
    image_name: str,
    pixel_size_um: float | None,
    min_object_px: int,
) -> list[dict]:
    """Write an image's result files (each atomically) and return its per-class measurement rows: the class map,
    the overlay, the instance labels (ImageJ TIFF with the pixel size), one row per object and the objects'
    outlines (ImageJ ROI set, QuPath GeoJSON). ``result`` comes
    from :meth:`OnnxPredictor.segment` with the same ``min_object_px``."""
    labels, instances, object_class = result
    rows = measure(
        labels,
        class_names=class_names,
        image=image_name,
        pixel_size_um=pixel_size_um,
        min_object_px=min_object_px,
        objects=(instances, object_class),
    )
    objects = object_rows(
        instances, object_class, image, class_names=class_names, image_name=image_name, pixel_size_um=pixel_size_um
    )
    write_label_image(files.mask, labels)
    write_png(files.overlay, overlay(image, labels, instances=instances, pixel_size_um=pixel_size_um))
    write_instance_tiff(files.objects, instances, pixel_size_um=pixel_size_um)
    write_objects_csv(files.objects_csv, objects, channels=image.shape[2] if image.ndim == 3 else 1)
    outlines = object_outlines(instances)
    write_imagej_rois(files.rois, outlines, object_class, class_names=class_names)
    write_geojson(files.geojson, outlines, object_class, class_names=class_names)
    return rows


@dataclass(frozen=True)
class SegmentedImage:
    """Files written for one input image."""

    image: Path
    files: ResultFiles
    measurements: list[dict]


def segment_files(
    predictor: OnnxPredictor,
    image_paths: list[Path],
    *,
    out_dir: str | Path,
    min_object_px: int = 0,
    on_image: Callable[[Path], None] = lambda path: None,
) -> tuple[list[SegmentedImage], list[ApplianceError]]:
    """Segment each image file with ``predictor``: write ``<stem>_mask.tif`` (class map), ``<stem>_overlay.png``,
    ``<stem>_objects.tif`` (one id per object) and ``<stem>_objects.csv`` (one row per object), and one
    ``measurements.csv`` (one row per image and class) for all of them into ``out_dir``
    (objects below ``min_object_px`` pixels are not counted, see :func:`measure`).

    Images are named by their path below the folder all of them share, so ``a/cell.png`` and ``b/cell.png``
    give ``a/cell_mask.tif`` and ``b/cell_mask.tif`` (see :func:`result_stem`); a file given twice is
    segmented once. An image that cannot be read or does not fit the model is skipped and its error returned;
    the others are still processed. ``on_image`` is called after each image (a progress bar).
    """
    out_dir = Path(out_dir)
    paths = list(dict.fromkeys(Path(p).resolve() for p in image_paths))
    common = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    stems: dict[str, str] = {}
    done: list[SegmentedImage] = []
    failures: list[ApplianceError] = []
    for path in paths:
        relpath = path.relative_to(common).as_posix()
        stems[relpath] = result_stem(relpath, taken=lambda stem: stem in stems.values())
        try:
            image = read_image(path)
            result = predictor.segment(image, min_object_px=min_object_px)
        except ApplianceError as exc:
            failures.append(exc)
            on_image(path)
            continue
        files = result_files(out_dir, stems[relpath])
        rows = write_results(
            files,
            image,
            result,
            class_names=predictor.class_names,
            image_name=relpath,
            pixel_size_um=predictor.pixel_size_um,
            min_object_px=min_object_px,
        )
        done.append(SegmentedImage(image=path, files=files, measurements=rows))
        on_image(path)
    if done:
        write_measurements_csv(out_dir / "measurements.csv", [row for item in done for row in item.measurements])
    return done, failures
