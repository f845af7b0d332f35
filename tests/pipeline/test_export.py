import json
import re
import shutil

import numpy as np
import pytest

from appliance.errors import ModelFileError
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.export import onnx_parity, write_model_folder
from appliance.pipeline.inference import TileSettings
from appliance.pipeline.patches import make_training_patches
from appliance.pipeline.predictor import OnnxPredictor, default_providers
from appliance.pipeline.trainer import Trainer


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def trained(request, demo_set, tmp_path_factory):
    """A briefly trained model (weights away from their initial values) exported with its JSON."""
    pairs = [demo_set.read(i) for i in range(len(demo_set))]
    config = PipelineConfig(patch_size=64, batch_size=4, encoder=request.param)
    patches = make_training_patches([p[0] for p in pairs[:4]], [p[1] for p in pairs[:4]], patch_size=64, num_classes=1)
    trainer = Trainer(config, in_channels=1, num_classes=1, seed=0, device="cpu")
    trainer.train(patches, max_steps=4)
    out = tmp_path_factory.mktemp(request.param)
    write_model_folder(
        out,
        trainer.model,
        config=config,
        in_channels=1,
        class_names=["cell"],
        tiles=TileSettings(tile_size=128, overlap=0.5),
    )
    return trainer, out, [p[0] for p in pairs]


def test_onnx_matches_pytorch_on_real_images(trained):
    trainer, out, images = trained
    crops = [images[0], images[1][:200, :170], images[2][:97, :256]]  # sizes that are not multiples of 32
    parity = onnx_parity(trainer.model, OnnxPredictor(out), crops, tiles=TileSettings(tile_size=128, overlap=0.5))
    assert parity["max_abs_logit_diff"] < 1e-3
    assert parity["argmax_agreement"] >= 0.999


def test_the_two_files_alone_segment_a_new_image(trained, tmp_path, demo_images_dir):
    from appliance.data.io import read_image

    _, out, _ = trained
    for name in ("model.onnx", "model.json"):
        shutil.copy(out / name, tmp_path / name)
    predictor = OnnxPredictor(tmp_path)
    labels = predictor.predict(read_image(next(demo_images_dir.glob("*.tif"))))
    assert labels.shape == (384, 384) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    assert predictor.provider == default_providers()[0] == "CPUExecutionProvider"


def test_model_json_records_what_inference_needs(trained):
    _, out, _ = trained
    metadata = json.loads((out / "model.json").read_text())
    assert metadata["normalisation"]["method"] == "zscore_per_image_channel"
    assert metadata["class_names"] == ["cell"]
    assert metadata["input"]["channels"] == 1
    assert metadata["tiles"] == {"tile_size": 128, "overlap": 0.5, "batch_size": 4}
    assert PipelineConfig.from_dict(metadata["config"]).id == metadata["config_id"]


def test_wrong_channel_count_is_explained(trained):
    _, out, _ = trained
    with pytest.raises(ModelFileError, match="expects images with 1 channel"):
        OnnxPredictor(out).predict(np.zeros((64, 64, 3), np.uint8))


def test_a_folder_without_json_is_explained(tmp_path):
    with pytest.raises(ModelFileError, match="model.json not found"):
        OnnxPredictor(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"tiles": None}, "tiles must be a mapping of valid tile settings, got None"),
        ({"input": {"channels": "abc"}}, "input.channels must be a positive whole number, got 'abc'"),
        ({"class_names": []}, "class_names must be a non-empty list of names, got []"),
        ({"pixel_size_um": "abc"}, "pixel_size_um must be a positive number or null, got 'abc'"),
        ({"class_names": ["cell", "debris"]}, "has 2 network class(es) (cell, debris) but the network gives 1"),
        ({"task": "instances"}, "has 2 network class(es) (interior, boundary) but the network gives 1"),
        ({"task": "panoptic"}, "task must be one of semantic, instances, got 'panoptic'"),
        ({"seed_depth_px": -1}, "seed_depth_px must be a positive number, got -1"),
    ],
)
def test_a_hand_edited_model_json_names_the_bad_key(trained, tmp_path, edit, message):
    _, out, _ = trained
    shutil.copy(out / "model.onnx", tmp_path / "model.onnx")
    metadata = json.loads((out / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**metadata, **edit}))
    with pytest.raises(ModelFileError, match=re.escape(message)):
        OnnxPredictor(tmp_path)
