"""A model folder as a BioImage Model Zoo package that the spec library validates."""

import zipfile

import numpy as np
import pytest
import yaml

from appliance.data.io import read_image
from appliance.pipeline.bioimageio import BioimageioExportError, export_bioimageio, validate_package
from appliance.pipeline.predictor import OnnxPredictor


def test_the_package_validates_and_its_test_output_is_the_models(tmp_path, trained_model, demo_images_dir):
    image = read_image(demo_images_dir / "set20.tif")
    package = export_bioimageio(
        trained_model, tmp_path / "model.zip", test_image=image, checkpoint=trained_model / "checkpoint.pt"
    )
    status, details = validate_package(package)
    assert status in ("passed", "valid-format"), details
    archive = zipfile.ZipFile(package)
    assert set(archive.namelist()) == {
        "rdf.yaml",
        "model.onnx",
        "model.pt",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
    }
    rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert set(rdf["weights"]) == {"onnx", "torchscript"}
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "cell"]

    archive.extractall(tmp_path / "x")
    test_input = np.load(tmp_path / "x" / "test_input.npy")
    assert test_input.shape == (1, 1, 256, 256)
    expected = OnnxPredictor(trained_model).logits(np.moveaxis(test_input[0], 0, -1))
    np.testing.assert_allclose(np.load(tmp_path / "x" / "test_output.npy")[0], expected, atol=1e-4)


def test_without_a_checkpoint_the_package_holds_onnx_weights_only(tmp_path, trained_model, demo_images_dir):
    image = read_image(demo_images_dir / "set20.tif")
    package = export_bioimageio(trained_model, tmp_path / "m.zip", test_image=image, checkpoint=tmp_path / "gone.pt")
    assert set(yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))["weights"]) == {"onnx"}
    with pytest.raises(BioimageioExportError, match="expects"):
        export_bioimageio(trained_model, tmp_path / "n.zip", test_image=np.zeros((64, 64, 3), dtype=np.uint8))
