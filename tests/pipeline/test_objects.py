"""One id and one row per object: instance labels, the per-object table against regionprops, the ImageJ TIFF."""

import csv

import numpy as np
import pytest
import skimage.draw
import skimage.measure
import tifffile

from appliance.pipeline.measurements import measure
from appliance.pipeline.objects import (
    instance_labels,
    object_columns,
    object_rows,
    write_instance_tiff,
    write_objects_csv,
)


def two_classes() -> np.ndarray:
    labels = np.zeros((40, 50), dtype=np.uint8)
    labels[skimage.draw.disk((10, 10), 6)] = 1
    labels[skimage.draw.disk((28, 35), 8)] = 1
    labels[2:6, 40:47] = 2
    labels[35, 2] = 1  # a one-pixel speck
    return labels


def test_instances_are_the_components_measure_counts_with_stable_ids():
    labels = two_classes()
    instances, classes = instance_labels(labels, min_object_px=4)
    assert instances.dtype == np.uint32 and instances.max() == 3 and classes.tolist() == [2, 1, 1]
    assert instances[35, 2] == 0  # the speck is not an object
    assert instances[4, 42] == 1 and instances[10, 10] == 2 and instances[28, 35] == 3  # raster order
    counts = [r["object_count"] for r in measure(labels, class_names=["cell", "debris"], min_object_px=4)]
    assert counts == [int((classes == 1).sum()), int((classes == 2).sum())]
    full, full_classes = instance_labels(np.array([[1, 1, 2, 2]]))  # no background pixel anywhere
    assert full.tolist() == [[1, 1, 2, 2]] and full_classes.tolist() == [1, 2]
    again, _ = instance_labels(labels.copy(), min_object_px=4)
    assert np.array_equal(again, instances)


def test_the_object_table_matches_regionprops_with_lengths_in_micrometres():
    labels = two_classes()
    image = np.random.default_rng(0).integers(0, 4000, size=(40, 50, 2)).astype(np.uint16)
    instances, classes = instance_labels(labels, min_object_px=4)
    rows = object_rows(instances, classes, image, class_names=["cell", "debris"], image_name="a.tif", pixel_size_um=0.5)
    assert [r["object_id"] for r in rows] == [1, 2, 3] and [r["class_name"] for r in rows] == ["debris", "cell", "cell"]
    for row, region in zip(
        rows, skimage.measure.regionprops(instances.astype(int), intensity_image=image), strict=True
    ):
        assert row["area_px"] == region.area and row["area_um2"] == pytest.approx(region.area * 0.25)
        assert (row["centroid_y_px"], row["centroid_x_px"]) == pytest.approx(region.centroid)
        assert row["centroid_x_um"] == pytest.approx(region.centroid[1] * 0.5)
        assert (row["bbox_min_y"], row["bbox_min_x"], row["bbox_max_y"], row["bbox_max_x"]) == region.bbox
        assert row["perimeter_px"] == pytest.approx(region.perimeter)
        assert row["solidity"] == pytest.approx(region.solidity)
        assert row["eccentricity"] == pytest.approx(region.eccentricity)
        assert [row["mean_intensity_c0"], row["mean_intensity_c1"]] == pytest.approx(region.intensity_mean)
        assert [row["max_intensity_c0"], row["max_intensity_c1"]] == pytest.approx(region.intensity_max)
    unknown = object_rows(instances, classes, image[..., 0], class_names=["cell", "debris"])
    assert unknown[0]["area_um2"] is None and "mean_intensity_c1" not in unknown[0]


def test_the_object_csv_has_one_row_per_object(tmp_path):
    labels = two_classes()
    image = np.ones((40, 50, 1), dtype=np.uint8)
    instances, classes = instance_labels(labels)
    rows = object_rows(instances, classes, image, class_names=["cell", "debris"], image_name="a.tif")
    path = write_objects_csv(tmp_path / "a_objects.csv", rows, channels=1)
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == object_columns(1) and [int(r["object_id"]) for r in table] == [1, 2, 3, 4]
    assert table[0]["area_um2"] == ""  # unknown pixel size
    empty = write_objects_csv(tmp_path / "none.csv", [], channels=1)
    assert empty.read_text().strip() == ",".join(object_columns(1))


def test_the_instance_tiff_reads_back_with_its_pixel_size_in_imagej(tmp_path):
    instances, _ = instance_labels(two_classes())
    path = write_instance_tiff(tmp_path / "a_objects.tif", instances, pixel_size_um=0.65)
    with tifffile.TiffFile(path) as tiff:
        assert tiff.is_imagej and tiff.imagej_metadata["unit"] == "um"
        x_resolution = tiff.pages[0].tags["XResolution"].value
        assert x_resolution[1] / x_resolution[0] == pytest.approx(0.65, rel=1e-6)
        data = tiff.asarray()
    assert data.dtype == np.uint16 and np.array_equal(data, instances)
    many = np.arange(70_000, dtype=np.uint32).reshape(100, 700)
    assert np.array_equal(tifffile.imread(write_instance_tiff(tmp_path / "many.tif", many)), many)
