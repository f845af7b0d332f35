"""Per-class measurements of a label image: confluence, object counts and object areas.

A label image is ``(H, W)`` integers, 0 = background and 1..K = classes. For every class 1..K
:func:`measure` gives one row (a plain ``dict`` keyed by :data:`MEASUREMENT_COLUMNS`), even when the
class is absent. Objects are the connected components of one class under 8-connectivity (pixels
touching by an edge or a corner belong to the same object). Rows hold plain Python ``int``/``float``/
``str``/``None`` values, so they go straight into JSON or, with :func:`write_measurements_csv`, a CSV.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from appliance.data.io import atomic_write
from appliance.pipeline.objects import instance_labels

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "image",
    "class_index",
    "class_name",
    "pixel_fraction",
    "object_count",
    "area_mean_px",
    "area_median_px",
    "area_min_px",
    "area_max_px",
    "area_mean_um2",
    "area_median_um2",
    "area_min_um2",
    "area_max_um2",
)

_STRING_COLUMNS = frozenset({"image", "class_name"})
_INT_COLUMNS = frozenset({"class_index", "object_count", "area_min_px", "area_max_px"})
_FLOAT_DIGITS = 6


def measure(
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    image: str = "",
    pixel_size_um: float | None = None,
    min_object_px: int = 0,
    objects: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict]:
    """Measure every class of a label image: pixel fraction, object count and object areas.

    Parameters
    ----------
    labels : (H, W) ndarray of int or bool
        Label image, 0 = background, 1..K = classes. Not modified.
    class_names : sequence of str, length K
        Name of class 1, 2, ..., K. Decides how many rows are returned.
    image : str, optional
        Name of the image, copied into the ``image`` column of every row.
    pixel_size_um : float, optional
        Side of one pixel in micrometres. When given, areas are also reported in µm²
        (``px * pixel_size_um ** 2``); when ``None`` the ``*_um2`` columns are ``None``.
    min_object_px : int, optional
        Components smaller than this many pixels are not objects: they are left out of
        ``object_count`` and the area statistics (specks of a few misclassified pixels would
        otherwise inflate the count), but still count in ``pixel_fraction``. 0 keeps every component.
    objects : (instances, object_class), optional
        :func:`appliance.pipeline.objects.instance_labels` of ``labels`` with the same ``min_object_px``, when the
        caller has it already (the objects are counted by that one rule either way).

    Returns
    -------
    rows : list of dict, length K
        One row per class 1..K, keys :data:`MEASUREMENT_COLUMNS`. ``pixel_fraction`` is the class's
        pixels over all pixels (confluence). Objects are connected components of the class with
        8-connectivity (``skimage.measure.label(..., connectivity=2)``), so diagonal neighbours are one
        object; objects of different classes never merge. ``area_*_px`` are object areas in pixels
        (mean and median as ``float``, min and max as ``int``). An absent class has
        ``object_count == 0``, ``pixel_fraction == 0.0`` and ``None`` (not NaN) for every area.

    Raises
    ------
    ValueError
        When ``labels`` is not a 2D integer array, holds a value outside 0..K, ``pixel_size_um``
        is not a positive finite number, or ``min_object_px`` is negative or not a whole number.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0], [0, 0, 0], [0, 2, 0]])
    >>> rows = measure(labels, class_names=["cell", "debris"], pixel_size_um=0.5)
    >>> [(r["class_name"], r["object_count"], r["area_max_px"], r["area_max_um2"]) for r in rows]
    [('cell', 1, 2, 0.5), ('debris', 1, 1, 0.25)]
    >>> [r["object_count"] for r in measure(labels, class_names=["cell", "debris"], min_object_px=2)]
    [1, 0]
    """
    labels = _check_labels(labels, n_classes=len(class_names))
    if pixel_size_um is not None:
        pixel_size_um = float(pixel_size_um)
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(
                f"pixel_size_um must be a positive number of micrometres, got {pixel_size_um}; "
                "pass None when the pixel size is unknown"
            )
    if isinstance(min_object_px, bool) or not isinstance(min_object_px, int | np.integer) or min_object_px < 0:
        raise ValueError(f"min_object_px must be a whole number of pixels ≥ 0, got {min_object_px!r}")
    n_classes = len(class_names)
    n_pixels = labels.size
    class_pixels = np.bincount(labels.ravel(), minlength=n_classes + 1)

    if objects is None:
        objects = instance_labels(labels, min_object_px=min_object_px)
    instances, object_class = objects
    areas = np.bincount(instances.ravel(), minlength=object_class.size + 1)[1:]

    um2_per_px = None if pixel_size_um is None else pixel_size_um**2
    rows = []
    for index, name in enumerate(class_names, start=1):
        class_areas = areas[object_class == index]
        row = {
            "image": str(image),
            "class_index": index,
            "class_name": str(name),
            "pixel_fraction": float(class_pixels[index] / n_pixels) if n_pixels else 0.0,
            "object_count": int(class_areas.size),
        }
        if class_areas.size:
            px = {
                "mean": float(class_areas.mean()),
                "median": float(np.median(class_areas)),
                "min": int(class_areas.min()),
                "max": int(class_areas.max()),
            }
        else:
            px = dict.fromkeys(("mean", "median", "min", "max"))
        for stat, value in px.items():
            row[f"area_{stat}_px"] = value
        for stat, value in px.items():
            row[f"area_{stat}_um2"] = None if value is None or um2_per_px is None else float(value * um2_per_px)
        rows.append(row)
    return rows


def write_measurements_csv(path: str | Path, rows: Iterable[dict], *, extra_columns: Sequence[str] = ()) -> Path:
    """Write measurement rows as a CSV with header :data:`MEASUREMENT_COLUMNS` (then ``extra_columns``, such as the
    service's ``model_id``), atomically.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees a half-written file. ``None`` becomes an empty cell;
    floats are written with up to 6 significant digits. A key missing from a row gives an empty cell.

    Parameters
    ----------
    path : str or Path
        CSV file to write; its folder is created when missing.
    rows : iterable of dict
        Rows as returned by :func:`measure` (any number of images, concatenated).

    Returns
    -------
    path : Path
        The file written.

    Raises
    ------
    ValueError
        When a row has a key that is not one of :data:`MEASUREMENT_COLUMNS`.
    """
    rows = list(rows)
    columns = (*MEASUREMENT_COLUMNS, *extra_columns)
    for number, row in enumerate(rows):
        unknown = sorted(set(row) - set(columns))
        if unknown:
            raise ValueError(
                f"measurement row {number} has unknown column(s) {unknown}; the columns are {list(columns)}"
            )

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_format_cell(row.get(column)) for column in columns])

    return atomic_write(path, write)


def read_measurements_csv(path: str | Path) -> list[dict]:
    """Read a CSV written by :func:`write_measurements_csv` back into typed rows.

    ``image`` and ``class_name`` stay strings; ``class_index``, ``object_count``, ``area_min_px``
    and ``area_max_px`` become ``int``; the other columns ``float``; an empty numeric cell ``None``.

    Raises
    ------
    ValueError
        When the header is not :data:`MEASUREMENT_COLUMNS`.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != MEASUREMENT_COLUMNS:
            raise ValueError(
                f"{path}: header {list(header)} is not the measurement header {list(MEASUREMENT_COLUMNS)}; "
                "write the file with write_measurements_csv"
            )
        return [
            {column: _parse_cell(column, cell) for column, cell in zip(MEASUREMENT_COLUMNS, record, strict=True)}
            for record in reader
        ]


def _check_labels(labels: np.ndarray, *, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an (H, W) label image, got shape {labels.shape}; pass one 2D mask")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must hold integer class indices, got dtype {labels.dtype}; convert the mask to integers"
        )
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > n_classes:
            raise ValueError(
                f"labels hold values {low}..{high}, but class_names lists {n_classes} class(es), so values "
                f"must lie in 0..{n_classes}; pass every class name or fix the mask"
            )
    return labels.astype(np.intp, copy=False)


def _format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return format(float(value), f".{_FLOAT_DIGITS}g")
    return str(value)


def _parse_cell(column: str, cell: str):
    if column in _STRING_COLUMNS:
        return cell
    if cell == "":
        return None
    if column in _INT_COLUMNS:
        return int(cell)
    return float(cell)
