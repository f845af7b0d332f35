import pytest

from appliance.automl import search_space
from appliance.errors import ConfigError
from appliance.pipeline.config import PAPER_DEFAULT, PipelineConfig


def test_search_space_has_576_distinct_configurations():
    configs = list(search_space())
    assert len(configs) == 576
    assert len({c.id for c in configs}) == 576


def test_id_is_stable_and_depends_only_on_values():
    assert PipelineConfig(learning_rate=0.001) == PipelineConfig(learning_rate=1e-3)
    assert PipelineConfig(flip=0.5).id == PipelineConfig(flip=0.5).id
    assert PipelineConfig(flip=0.5).id != PipelineConfig(flip=0.0).id
    # the canonical form is part of the contract: stored ids must survive code changes
    assert PAPER_DEFAULT.id == "c-f10d9fea8e"


def test_yaml_round_trip_uses_the_documented_keys():
    config = PipelineConfig(patch_size=256, batch_size=4, learning_rate=0.01, encoder="resnet50", grid_distortion=0.5)
    text = config.to_yaml()
    for key in ("patch_size", "batch_size", "learning_rate", "encoder", "flip", "brightness_blur", "grid_distortion"):
        assert f"{key}:" in text
    assert PipelineConfig.from_yaml(text) == config


def test_yaml_may_leave_out_values_that_keep_their_defaults():
    assert PipelineConfig.from_yaml("patch_size: 64\n") == PipelineConfig(patch_size=64)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"patch_size": 100}, "patch_size = 100 is not allowed; choose one of 64, 128, 256"),
        ({"encoder": "vgg16"}, "encoder = 'vgg16' is not allowed; choose one of 'resnet18', 'resnet50'"),
        ({"flip": 0.3}, "flip = 0.3 is not allowed"),
        ({"batch_size": True}, "batch_size = True is not allowed"),
        ({"learning_rate": 0.1}, "learning_rate = 0.1 is not allowed"),
    ],
)
def test_invalid_values_name_the_key_the_value_and_the_choices(values, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        PipelineConfig(**values)


def test_unknown_keys_list_the_valid_ones(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("patch_size: 64\npatchsize: 64\n")
    with pytest.raises(ConfigError) as info:
        PipelineConfig.load(path)
    message = str(info.value)
    assert str(path) in message and "patchsize" in message and "valid keys are patch_size" in message


def test_fixed_defaults_follow_the_design():
    defaults = PipelineConfig(patch_size=64).fixed_defaults()
    assert defaults == {
        "architecture": "unet",
        "optimizer": "adam",
        "loss": "focal",
        "focal_gamma": 2.0,
        "encoder_weights": None,
        "patch_stride": 32,
    }
