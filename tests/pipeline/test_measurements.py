import math

import numpy as np
import pytest

from appliance.pipeline.measurements import (
    MEASUREMENT_COLUMNS,
    measure,
    read_measurements_csv,
    write_measurements_csv,
)

CLASS_NAMES = ["cell", "debris", "dead"]


def tiny_labels() -> np.ndarray:
    """10 x 10: class 1 squares of 4 px and 9 px, one class 2 pixel, class 3 absent."""
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[0:2, 0:2] = 1  # 4 px
    labels[5:8, 5:8] = 1  # 9 px
    labels[0, 9] = 2  # 1 px
    return labels


def test_one_row_per_class_with_columns_in_order():
    rows = measure(tiny_labels(), class_names=CLASS_NAMES, image="a.tif")
    assert [r["class_index"] for r in rows] == [1, 2, 3]
    assert [r["class_name"] for r in rows] == CLASS_NAMES
    assert all(tuple(r) == MEASUREMENT_COLUMNS for r in rows)
    assert all(r["image"] == "a.tif" for r in rows)


def test_hand_computed_values():
    cell, debris, dead = measure(tiny_labels(), class_names=CLASS_NAMES)
    assert cell["object_count"] == 2
    assert cell["pixel_fraction"] == pytest.approx(13 / 100)
    assert cell["area_mean_px"] == 6.5
    assert cell["area_median_px"] == 6.5
    assert (cell["area_min_px"], cell["area_max_px"]) == (4, 9)
    assert debris["object_count"] == 1
    assert debris["pixel_fraction"] == pytest.approx(0.01)
    assert (debris["area_mean_px"], debris["area_median_px"], debris["area_min_px"], debris["area_max_px"]) == (
        1.0,
        1.0,
        1,
        1,
    )
    assert all(cell[f"area_{s}_um2"] is None for s in ("mean", "median", "min", "max"))


def test_absent_class_has_zero_count_and_none_areas():
    dead = measure(tiny_labels(), class_names=CLASS_NAMES)[2]
    assert dead["object_count"] == 0
    assert dead["pixel_fraction"] == 0.0
    for key in MEASUREMENT_COLUMNS:
        if key.startswith("area_"):
            assert dead[key] is None


def test_um2_areas_use_square_of_pixel_size():
    cell, debris, dead = measure(tiny_labels(), class_names=CLASS_NAMES, pixel_size_um=0.5)
    assert cell["area_mean_um2"] == pytest.approx(1.625)
    assert cell["area_median_um2"] == pytest.approx(1.625)
    assert cell["area_min_um2"] == pytest.approx(1.0)
    assert cell["area_max_um2"] == pytest.approx(2.25)
    assert debris["area_max_um2"] == pytest.approx(0.25)
    assert dead["area_mean_um2"] is None


def test_values_are_plain_python_types():
    rows = measure(tiny_labels(), class_names=CLASS_NAMES, pixel_size_um=0.5)
    for row in rows:
        for key, value in row.items():
            assert value is None or type(value) in (int, float, str), (key, type(value))
    assert type(rows[0]["area_min_px"]) is int
    assert type(rows[0]["area_mean_px"]) is float
    assert type(rows[0]["object_count"]) is int


def test_diagonal_neighbours_are_one_object():
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[0, 0] = labels[1, 1] = labels[2, 2] = 1
    row = measure(labels, class_names=["cell"])[0]
    assert row["object_count"] == 1
    assert row["area_max_px"] == 3


def test_touching_objects_of_different_classes_stay_apart():
    labels = np.array([[1, 1, 2, 2]])
    cell, debris = measure(labels, class_names=["cell", "debris"])
    assert (cell["object_count"], cell["area_max_px"]) == (1, 2)
    assert (debris["object_count"], debris["area_max_px"]) == (1, 2)


def test_median_of_odd_count():
    labels = np.zeros((5, 9), dtype=np.uint16)
    labels[0, 0] = 1  # 1 px
    labels[0, 3:5] = 1  # 2 px
    labels[3:5, 6:9] = 1  # 6 px
    row = measure(labels, class_names=["cell"])[0]
    assert row["area_median_px"] == 2.0
    assert row["area_mean_px"] == pytest.approx(3.0)


def test_input_not_modified():
    labels = tiny_labels()
    before = labels.copy()
    measure(labels, class_names=CLASS_NAMES)
    np.testing.assert_array_equal(labels, before)


def test_all_background_image():
    rows = measure(np.zeros((3, 3), dtype=np.uint8), class_names=CLASS_NAMES)
    assert [r["object_count"] for r in rows] == [0, 0, 0]
    assert [r["pixel_fraction"] for r in rows] == [0.0, 0.0, 0.0]


def test_label_above_class_count_is_refused():
    with pytest.raises(ValueError, match=r"0\.\.3"):
        measure(np.full((2, 2), 4), class_names=CLASS_NAMES)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 1), dtype=np.uint8), np.zeros((2, 2), dtype=np.float32)])
def test_bad_labels_are_refused(bad):
    with pytest.raises(ValueError, match="labels"):
        measure(bad, class_names=CLASS_NAMES)


@pytest.mark.parametrize("size", [0.0, -1.0, math.nan])
def test_bad_pixel_size_is_refused(size):
    with pytest.raises(ValueError, match="pixel_size_um"):
        measure(tiny_labels(), class_names=CLASS_NAMES, pixel_size_um=size)


def test_large_image_runs():
    rng = np.random.default_rng(0)
    labels = np.zeros((2048, 2048), dtype=np.uint8)
    centres = rng.integers(5, 2043, size=(2000, 2))
    classes = rng.integers(1, 3, size=2000)
    for (y, x), c in zip(centres, classes, strict=True):
        labels[y - 3 : y + 3, x - 3 : x + 3] = c
    rows = measure(labels, class_names=["a", "b"], pixel_size_um=0.65)
    assert sum(r["object_count"] for r in rows) > 500
    assert sum(r["pixel_fraction"] for r in rows) == pytest.approx(np.count_nonzero(labels) / labels.size)


def test_csv_round_trip_including_none(tmp_path):
    rows = measure(tiny_labels(), class_names=CLASS_NAMES, image="a.tif", pixel_size_um=0.5)
    rows += measure(tiny_labels(), class_names=CLASS_NAMES, image="b.tif")
    path = write_measurements_csv(tmp_path / "out" / "measurements.csv", rows)
    assert path == tmp_path / "out" / "measurements.csv"
    back = read_measurements_csv(path)
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-5)
            else:
                assert got[key] == value, key
                assert type(got[key]) is type(value), key
    assert [p.name for p in path.parent.iterdir()] == ["measurements.csv"]  # no temp file left


def test_csv_format(tmp_path):
    rows = [
        {
            "image": "x.png",
            "class_index": 1,
            "class_name": "cell",
            "pixel_fraction": 1 / 3,
            "object_count": 0,
            "area_mean_px": None,
        }
    ]
    path = write_measurements_csv(tmp_path / "m.csv", rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(MEASUREMENT_COLUMNS)
    assert lines[1] == "x.png,1,cell,0.333333,0" + "," * 8


def test_csv_unknown_column_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(ValueError, match="unknown column"):
        write_measurements_csv(tmp_path / "m.csv", [{"class_index": 1, "colour": "red"}])
    assert list(tmp_path.iterdir()) == []


def test_csv_read_refuses_other_header(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        read_measurements_csv(path)


def test_components_below_the_minimum_size_are_not_objects_but_keep_their_pixels():
    cell, debris, dead = measure(tiny_labels(), class_names=CLASS_NAMES, min_object_px=5)
    assert cell["object_count"] == 1
    assert (cell["area_min_px"], cell["area_max_px"], cell["area_mean_px"]) == (9, 9, 9.0)
    assert cell["pixel_fraction"] == pytest.approx(13 / 100)  # the 4 px square still counts as cell pixels
    assert debris["object_count"] == 0 and debris["area_mean_px"] is None
    assert debris["pixel_fraction"] == pytest.approx(1 / 100)
    assert measure(tiny_labels(), class_names=CLASS_NAMES, min_object_px=4)[0]["object_count"] == 2  # ≥, not >


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_a_minimum_size_that_is_not_a_whole_number_of_pixels_is_refused(bad):
    with pytest.raises(ValueError, match="min_object_px must be a whole number of pixels"):
        measure(tiny_labels(), class_names=CLASS_NAMES, min_object_px=bad)
