"""One image, one set of result files: names never collide, whatever the inputs are called."""

import csv
import shutil

import imageio.v3 as iio
import tifffile

from appliance.pipeline.outputs import segment_files
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.result_names import result_stem


def test_a_stem_taken_by_another_file_keeps_the_extension_then_counts():
    taken = {"x", "x_png"}
    assert result_stem("x.tif", taken=lambda stem: False) == "x"
    assert result_stem("x.png", taken=taken.__contains__) == "x_png-2"
    assert result_stem("d/y.TIF", taken={"d/y"}.__contains__) == "d/y_tif"


def test_same_names_in_two_folders_and_two_extensions_give_separate_results(tmp_path, demo_images_dir, trained_model):
    source = demo_images_dir / "set20.tif"
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        shutil.copy(source, tmp_path / "in" / folder / "cell.tif")
    iio.imwrite(tmp_path / "in" / "a" / "cell.png", tifffile.imread(demo_images_dir / "set21.tif"))
    inputs = [
        tmp_path / "in" / "a" / "cell.tif",
        tmp_path / "in" / "b" / "cell.tif",
        tmp_path / "in" / "a" / "cell.png",
    ]
    done, failures = segment_files(OnnxPredictor(trained_model), [*inputs, inputs[0]], out_dir=tmp_path / "out")
    assert failures == [] and len(done) == 3  # the file given twice is segmented once
    masks = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*_mask.tif"))
    assert masks == ["a/cell_mask.tif", "a/cell_png_mask.tif", "b/cell_mask.tif"]
    with open(tmp_path / "out" / "measurements.csv") as handle:
        images = [row["image"] for row in csv.DictReader(handle)]
    assert images == ["a/cell.tif", "b/cell.tif", "a/cell.png"]


def test_every_object_file_of_an_image_holds_the_same_objects(tmp_path, demo_images_dir, trained_model):
    import json

    import numpy as np
    import roifile

    done, failures = segment_files(
        OnnxPredictor(trained_model), [demo_images_dir / "set20.tif"], out_dir=tmp_path, min_object_px=10
    )
    assert failures == []
    files = done[0].files
    ids = np.unique(tifffile.imread(files.objects))
    ids = ids[ids > 0].tolist()
    with open(files.objects_csv) as handle:
        assert [int(row["object_id"]) for row in csv.DictReader(handle)] == ids
    assert [int(roi.name.split("-")[0]) for roi in roifile.roiread(files.rois)] == ids
    features = json.loads(files.geojson.read_text())["features"]
    assert [f["properties"]["object_id"] for f in features] == ids
    assert sum(row["object_count"] for row in done[0].measurements) == len(ids)
