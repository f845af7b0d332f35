"""Objects as outlines: an ImageJ ROI set (Fiji's ROI Manager) and a GeoJSON file (QuPath) per image.

An object's outline is the iso-line at 0.5 of its own pixel mask (``skimage.measure.find_contours``), the longest
one when the object has holes, shifted by half a pixel into the continuous coordinates ImageJ and QuPath use (pixel
``(x, y)`` covers ``[x, x + 1) × [y, y + 1)``), so the polygon runs between the object's edge pixels and its
neighbours. The ROI zip is written with ``roifile`` (ImageJ's binary ROI format is not ours to write by hand).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import roifile
import scipy.ndimage as ndi
import skimage.measure

from appliance.data.io import atomic_write
from appliance.pipeline.overlay import CLASS_COLOURS


def object_outlines(instances: np.ndarray) -> dict[int, np.ndarray]:
    """Each object's outline as an ``(n, 2)`` float array of ``(x, y)`` points (not repeating the first point).

    >>> outline = object_outlines(np.array([[0, 0, 0], [0, 7, 0], [0, 0, 0]]))[7]
    >>> sorted(map(tuple, outline.tolist()))
    [(1.0, 1.5), (1.5, 1.0), (1.5, 2.0), (2.0, 1.5)]
    """
    instances = np.asarray(instances)
    outlines = {}
    for index, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        crop = np.pad(instances[box] == index, 1).astype(np.float32)
        contours = skimage.measure.find_contours(crop, 0.5)
        longest = max(contours, key=len)[:-1]  # find_contours closes the loop by repeating the first point
        rows = longest[:, 0] + box[0].start - 1 + 0.5
        cols = longest[:, 1] + box[1].start - 1 + 0.5
        outlines[index] = np.column_stack([cols, rows])
    return outlines


def _class_name(class_names: Sequence[str], class_index: int) -> str:
    return class_names[class_index - 1] if 0 < class_index <= len(class_names) else str(class_index)


def write_imagej_rois(
    path: str | Path, outlines: dict[int, np.ndarray], object_class: np.ndarray, *, class_names: Sequence[str]
) -> Path:
    """The outlines as an ImageJ ROI set (a zip of polygon ROIs named ``<id>-<class>``; Fiji: File > Open), atomically.
    An image without objects gets an empty zip."""
    rois = []
    for object_id, points in outlines.items():
        name = f"{object_id}-{_class_name(class_names, int(object_class[object_id - 1]))}"
        roi = roifile.ImagejRoi.frompoints(points, name=name)
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)

    return atomic_write(path, lambda tmp: roifile.roiwrite(tmp, rois, mode="w"))  # a list: always a zip


def write_geojson(
    path: str | Path, outlines: dict[int, np.ndarray], object_class: np.ndarray, *, class_names: Sequence[str]
) -> Path:
    """The outlines as a GeoJSON FeatureCollection of QuPath detections (drag the file onto the image in QuPath),
    each with its object id and class (name and colour), in pixel coordinates, atomically."""
    features = []
    for object_id, points in outlines.items():
        class_index = int(object_class[object_id - 1])
        ring = [[round(float(x), 2), round(float(y), 2)] for x, y in points]
        colour = list(CLASS_COLOURS[(class_index - 1) % len(CLASS_COLOURS)])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                "properties": {
                    "objectType": "detection",
                    "name": str(object_id),
                    "object_id": object_id,
                    "classification": {"name": _class_name(class_names, class_index), "color": colour},
                },
            }
        )
    collection = {"type": "FeatureCollection", "features": features}
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(collection)))
