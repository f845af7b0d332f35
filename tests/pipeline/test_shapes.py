"""Objects' outlines as files Fiji (ImageJ ROI set) and QuPath (GeoJSON) open."""

import json
import zipfile

import numpy as np
import roifile

from appliance.pipeline.shapes import object_outlines, write_geojson, write_imagej_rois


def shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def two_objects() -> tuple[np.ndarray, np.ndarray]:
    instances = np.zeros((12, 14), dtype=np.uint32)
    instances[2:6, 3:8] = 1  # 4 rows x 5 columns at x 3..7, y 2..5
    instances[7:12, 6:13] = 2
    instances[9, 9] = 0  # a hole
    return instances, np.array([1, 2])


def test_outlines_run_along_the_pixel_edges_in_image_coordinates():
    instances, _ = two_objects()
    outlines = object_outlines(instances)
    assert sorted(outlines) == [1, 2]
    square = outlines[1]
    assert (
        square[:, 0].min() == 3.0 and square[:, 0].max() == 8.0
    )  # x from the left edge of column 3 to column 7's right
    assert square[:, 1].min() == 2.0 and square[:, 1].max() == 6.0
    assert shoelace(square) == 20 - 4 * 0.125  # the pixel area, less the four cut corners
    assert shoelace(outlines[2]) > 30  # the outer outline, not the hole's


def test_imagej_roi_set_reads_back_with_names_and_points(tmp_path):
    instances, object_class = two_objects()
    outlines = object_outlines(instances)
    path = write_imagej_rois(tmp_path / "x_rois.zip", outlines, object_class, class_names=["nucleus", "cell"])
    rois = roifile.roiread(path)
    assert [roi.name for roi in rois] == ["1-nucleus", "2-cell"]
    assert all(roi.roitype == roifile.ROI_TYPE.POLYGON for roi in rois)
    np.testing.assert_allclose(rois[0].coordinates(), outlines[1], atol=1e-3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_geojson_holds_closed_polygons_with_id_and_class(tmp_path):
    instances, object_class = two_objects()
    path = write_geojson(tmp_path / "x.geojson", object_outlines(instances), object_class, class_names=["a", "b"])
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    first = collection["features"][0]
    ring = first["geometry"]["coordinates"][0]
    assert first["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    assert first["properties"]["objectType"] == "detection" and first["properties"]["object_id"] == 1
    assert first["properties"]["classification"]["name"] == "a"
    assert shoelace(np.array(ring[:-1])) == 19.5


def test_an_image_without_objects_gives_empty_files(tmp_path):
    empty = object_outlines(np.zeros((5, 5), dtype=np.uint32))
    rois = write_imagej_rois(tmp_path / "e.zip", empty, np.zeros(0, dtype=int), class_names=["c"])
    assert zipfile.ZipFile(rois).namelist() == []
    geojson = write_geojson(tmp_path / "e.geojson", empty, np.zeros(0, dtype=int), class_names=["c"])
    assert json.loads(geojson.read_text())["features"] == []
