"""One id and one row per object: instance labels from a class map, the per-object table, and a label TIFF that
Fiji and napari open with its pixel size.

An object is a connected component of one class under 8-connectivity (pixels touching by an edge or a corner), the
rule :func:`appliance.pipeline.measurements.measure` counts by; components smaller than ``min_object_px`` are not
objects (their pixels are 0 in the instance image). Ids run 1..n in raster order of each object's first pixel, so
the same class map always gives the same ids. The table comes from ``skimage.measure.regionprops_table``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import skimage.measure
import skimage.segmentation
import tifffile

from appliance.data.io import atomic_write

OBJECT_COLUMNS: tuple[str, ...] = (
    "image",
    "object_id",
    "class_index",
    "class_name",
    "area_px",
    "area_um2",
    "centroid_y_px",
    "centroid_x_px",
    "centroid_y_um",
    "centroid_x_um",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_y",
    "bbox_max_x",
    "perimeter_px",
    "perimeter_um",
    "eccentricity",
    "solidity",
)
"""The fixed columns of the per-object table; ``mean_intensity_c<k>`` and ``max_intensity_c<k>`` follow per channel."""

_PROPERTIES = ("label", "area", "centroid", "bbox", "perimeter", "eccentricity", "solidity")


def instance_labels(labels: np.ndarray, *, min_object_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Instance image and each object's class from a class map (0 = background, 1..K = classes).

    Returns ``(instances, object_class)``: ``(H, W)`` uint32 with 0 for background and for components below
    ``min_object_px`` pixels and 1..n for objects, and ``object_class[i - 1]``, the class of object ``i``.

    >>> instances, classes = instance_labels(np.array([[1, 1, 0, 2], [0, 0, 0, 2], [1, 0, 0, 0]]), min_object_px=2)
    >>> instances.tolist(), classes.tolist()
    ([[1, 1, 0, 2], [0, 0, 0, 2], [0, 0, 0, 0]], [1, 2])
    """
    labels = np.asarray(labels)
    components = skimage.measure.label(labels, background=0, connectivity=2)
    areas = np.bincount(components.ravel())
    if min_object_px > 0:
        components[areas[components] < min_object_px] = 0
    instances, _, _ = skimage.segmentation.relabel_sequential(components)
    flat = instances.ravel()
    ids, first = np.unique(flat, return_index=True)  # first pixel of each id, in id order
    first = first[ids > 0]  # an image may have no background pixel at all
    object_class = labels.ravel()[first].astype(np.int64)
    return instances.astype(np.uint32), object_class


def object_rows(
    instances: np.ndarray,
    object_class: np.ndarray,
    image: np.ndarray,
    *,
    class_names: Sequence[str],
    image_name: str = "",
    pixel_size_um: float | None = None,
) -> list[dict]:
    """One row per object of ``instances`` (from :func:`instance_labels`): its class, area, centroid, bounding
    box (min inclusive, max exclusive, in pixels), perimeter, eccentricity, solidity, and the mean and maximum of
    each channel of the raw ``(H, W, C)`` ``image`` over it. Lengths in µm when ``pixel_size_um`` is known, else
    ``None``."""
    if not object_class.size:
        return []
    intensity = image if image.ndim == 3 else image[..., np.newaxis]
    table = skimage.measure.regionprops_table(
        instances.astype(np.int64),
        intensity_image=intensity.astype(np.float64),
        properties=(*_PROPERTIES, "intensity_mean", "intensity_max"),
    )
    channels = intensity.shape[2]
    rows = []
    size = pixel_size_um
    for index, object_id in enumerate(table["label"]):
        class_index = int(object_class[object_id - 1])
        area = int(table["area"][index])
        row = {
            "image": image_name,
            "object_id": int(object_id),
            "class_index": class_index,
            "class_name": class_names[class_index - 1] if 0 < class_index <= len(class_names) else str(class_index),
            "area_px": area,
            "area_um2": None if size is None else area * size**2,
            "centroid_y_px": float(table["centroid-0"][index]),
            "centroid_x_px": float(table["centroid-1"][index]),
            "centroid_y_um": None if size is None else float(table["centroid-0"][index]) * size,
            "centroid_x_um": None if size is None else float(table["centroid-1"][index]) * size,
            "bbox_min_y": int(table["bbox-0"][index]),
            "bbox_min_x": int(table["bbox-1"][index]),
            "bbox_max_y": int(table["bbox-2"][index]),
            "bbox_max_x": int(table["bbox-3"][index]),
            "perimeter_px": float(table["perimeter"][index]),
            "perimeter_um": None if size is None else float(table["perimeter"][index]) * size,
            "eccentricity": float(table["eccentricity"][index]),
            "solidity": float(table["solidity"][index]),
        }
        for channel in range(channels):
            row[f"mean_intensity_c{channel}"] = float(table[f"intensity_mean-{channel}"][index])
            row[f"max_intensity_c{channel}"] = float(table[f"intensity_max-{channel}"][index])
        rows.append(row)
    return rows


def object_columns(channels: int) -> tuple[str, ...]:
    """The per-object table's columns for an image of ``channels`` channels."""
    per_channel = [f"{stat}_intensity_c{c}" for c in range(channels) for stat in ("mean", "max")]
    return (*OBJECT_COLUMNS, *per_channel)


def write_objects_csv(path: str | Path, rows: Sequence[dict], *, channels: int) -> Path:
    """The per-object table as a CSV (atomically; ``None`` as an empty cell, floats to 6 significant digits)."""
    columns = object_columns(channels)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in columns])

    return atomic_write(path, write)


def _cell(value) -> str:
    return format(value, ".6g") if isinstance(value, float) else str(value)


def write_instance_tiff(path: str | Path, instances: np.ndarray, *, pixel_size_um: float | None = None) -> Path:
    """The instance image as an ImageJ TIFF (Fiji and napari open it as labels): 16-bit while the ids fit,
    32-bit float beyond (ImageJ has no 32-bit integer images; floats hold ids exactly up to 2**24), with the
    pixel size in µm as the TIFF resolution and ImageJ's ``unit`` when it is known."""
    data = instances.astype(np.uint16) if instances.max(initial=0) < 2**16 else instances.astype(np.float32)
    options: dict = {"imagej": True, "metadata": {"axes": "YX"}}
    if pixel_size_um is not None:
        options["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
        options["metadata"]["unit"] = "um"
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, **options))
