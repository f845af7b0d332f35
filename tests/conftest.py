"""Shared fixtures: the bundled real demo sample and the shared real datasets beside the repo."""

from importlib.resources import files
from pathlib import Path

import pytest

from appliance.data.labelled_set import LabelledSet, load_labelled_set
from appliance.settings import SHARED_DATASETS


@pytest.fixture(scope="session")
def demo_set_dir() -> Path:
    """The bundled labelled sample: 8 real 256x256 phase-contrast crops (Usiigaci, MIT)."""
    return Path(str(files("appliance") / "demo_data" / "labelled" / "usiigaci_phase_cells_demo"))


@pytest.fixture(scope="session")
def demo_set(demo_set_dir) -> LabelledSet:
    return load_labelled_set(demo_set_dir)


@pytest.fixture(scope="session")
def demo_images_dir() -> Path:
    """Three unlabelled real 384x384 16-bit TIFF crops for inference."""
    return Path(str(files("appliance") / "demo_data" / "images" / "phase-demo"))


def shared_set(name: str) -> Path:
    """A real set from ../shared/datasets, or skip when the shared folder is not beside the repo."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (the shared datasets live beside the repository)")
    return path


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, demo_set) -> Path:
    """A real model folder (model.onnx + model.json) trained for a few seconds on the demo set."""
    from appliance.pipeline.config import PipelineConfig
    from appliance.pipeline.workflow import train_configuration

    out = tmp_path_factory.mktemp("model")
    config = PipelineConfig(patch_size=64, batch_size=4, learning_rate=0.001, encoder="resnet18", flip=0.5)
    train_configuration(demo_set, config, seconds=4, out_dir=out, progress=False)
    return out


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A real model folder of an untrained network (seeded): it cannot beat Otsu thresholding on the demo set (test
    mean IoU with background 0.15 against Otsu's 0.41), on any machine; ``trained_model``'s few seconds of training
    can, where the machine is fast."""
    from appliance.pipeline.config import PipelineConfig
    from appliance.pipeline.export import write_model_folder
    from appliance.pipeline.trainer import Trainer

    out = tmp_path_factory.mktemp("untrained")
    config = PipelineConfig(patch_size=64, batch_size=4, encoder="resnet18")
    trainer = Trainer(config, in_channels=1, num_classes=1, seed=0, device="cpu")
    write_model_folder(out, trainer.model, config=config, in_channels=1, class_names=["cell"])
    return out


@pytest.fixture(scope="session")
def instance_set_dir(tmp_path_factory) -> Path:
    """A synthetic labelled set with ``instances/``: 6 noisy 96x96 images of bright discs, pairs of them touching."""
    import imageio.v3 as iio
    import numpy as np
    import skimage.draw

    root = tmp_path_factory.mktemp("sets") / "touching_cells"
    for folder in ("images", "masks", "instances"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(6):
        instances = np.zeros((96, 96), dtype=np.uint16)
        for pair in range(3):
            y, x, r = 16 + 30 * pair, int(rng.integers(14, 60)), int(rng.integers(7, 10))
            instances[skimage.draw.disk((y, x), r, shape=instances.shape)] = 2 * pair + 1
            instances[skimage.draw.disk((y, x + 2 * r - 1), r, shape=instances.shape)] = 2 * pair + 2
        image = rng.normal(40, 8, instances.shape) + 140 * (instances > 0)
        iio.imwrite(root / "images" / f"c{index}.png", np.clip(image, 0, 255).astype(np.uint8))
        iio.imwrite(root / "masks" / f"c{index}.png", (instances > 0).astype(np.uint8))
        iio.imwrite(root / "instances" / f"c{index}.png", instances)
    (root / "dataset.yaml").write_text("classes: [cell]\npixel_size_um: 0.5\n")
    return root


@pytest.fixture(scope="session")
def measured_cpu_throughput(tmp_path_factory):
    """``seed(store_path)``: give a fresh store this machine's real CPU throughput table, probed once per session.

    The first job on a new device probes its reference groups (about a minute on a 2-core CPU), which a lab pays once;
    the tests that run whole jobs with real measurements share one probe instead of paying it each."""
    import torch

    from appliance.automl.memory import MemoryGroup
    from appliance.automl.throughput import ThroughputTable, ensure_reference_measurements
    from appliance.store import Store

    template = Store(tmp_path_factory.mktemp("throughput") / "appliance.sqlite")
    table = ensure_reference_measurements(template, torch.device("cpu"))
    rows = template.throughput(table.device, table.version)
    template.close()

    def seed(store_path: Path) -> None:
        store = Store(store_path)
        for row in rows:
            group = MemoryGroup(row.patch_size, row.batch_size, row.encoder)
            store.record_throughput(row.device, row.code_version, group, row.steps_per_second, source=row.source,
                                    kind=row.kind)  # fmt: skip
        assert ThroughputTable.load(store, torch.device("cpu")).measured  # the job will find them
        store.close()

    return seed
