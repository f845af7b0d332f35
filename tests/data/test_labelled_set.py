"""Tests of appliance.data.labelled_set: a valid set is indexed, every kind of problem is named."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from appliance.data.labelled_set import (
    DATASET_YAML_KEYS,
    MAX_CLASSES,
    MICROSCOPY,
    OBJECTS,
    LabelledSet,
    load_labelled_set,
)
from appliance.errors import InvalidSetError, Problem
from appliance.settings import SHARED_DATASETS

H, W = 20, 24


# --- helpers --------------------------------------------------------------------------------------


def _image(seed: int, *, channels: int = 1, shape: tuple[int, int] = (H, W), dtype=np.uint8) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 4096
    return np.random.default_rng(seed).integers(0, high, (*shape, channels), dtype=dtype)


def _mask(seed: int, *, classes: int = 1, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """A label mask holding every label 0..classes (a stripe each), so K is found from the data."""
    mask = np.zeros(shape, dtype=np.uint8)
    for label in range(1, classes + 1):
        mask[(label + seed) % shape[0], :] = label
    return mask


def _write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, np.moveaxis(image, -1, 0), photometric="minisblack", metadata={"axes": "CYX"})
    else:
        iio.imwrite(path, image[:, :, 0] if image.shape[2] == 1 else image)
    return path


def _write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, mask)
    else:
        iio.imwrite(path, mask)
    return path


def _make_set(root: Path, n: int = 4, *, classes: int = 1, channels: int = 1, yaml_text: str | None = None) -> Path:
    """Write a valid set of ``n`` PNG images and masks named s0..s{n-1}."""
    for i in range(n):
        _write_image(root / "images" / f"s{i}.png", _image(i, channels=channels))
        _write_mask(root / "masks" / f"s{i}.png", _mask(i, classes=classes))
    if yaml_text is not None:
        (root / "dataset.yaml").write_text(yaml_text)
    return root


def _problems(root: Path, **options) -> list[Problem]:
    with pytest.raises(InvalidSetError) as info:
        load_labelled_set(root, **options)
    assert info.value.root == Path(root)
    for problem in info.value.problems:
        assert str(problem) in str(info.value)
    return info.value.problems


def _only(problems: list[Problem], file: str) -> Problem:
    found = [p for p in problems if p.file == file]
    assert len(found) == 1, f"expected one problem for {file}, got {problems}"
    return found[0]


# --- valid sets -----------------------------------------------------------------------------------


def test_valid_set_is_indexed(tmp_path):
    root = _make_set(tmp_path / "hela", n=5, classes=2)
    labelled = load_labelled_set(root)
    assert isinstance(labelled, LabelledSet)
    assert labelled.root == root and labelled.name == "hela"
    assert labelled.stems == ("s0", "s1", "s2", "s3", "s4")
    assert labelled.image_paths == tuple(root / "images" / f"s{i}.png" for i in range(5))
    assert labelled.mask_paths == tuple(root / "masks" / f"s{i}.png" for i in range(5))
    assert labelled.class_names == ("class_1", "class_2")
    assert labelled.num_classes == 2
    assert labelled.channels == 1
    assert labelled.shapes == ((H, W),) * 5
    assert labelled.metadata == {}
    assert labelled.pixel_size_um is None
    assert labelled.binary_255 is False
    assert len(labelled) == 5


def test_read_returns_raw_image_and_int64_mask(tmp_path):
    root = _make_set(tmp_path / "set", classes=2)
    image, mask = load_labelled_set(root).read(1)
    np.testing.assert_array_equal(image, _image(1))
    assert image.dtype == np.uint8 and image.shape == (H, W, 1)
    assert mask.dtype == np.int64 and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, _mask(1, classes=2))


def test_sixteen_bit_tiff_multichannel_images(tmp_path):
    root = tmp_path / "set"
    for i in range(3):
        _write_image(root / "images" / f"s{i}.TIF", _image(i, channels=2, dtype=np.uint16))
        _write_mask(root / "masks" / f"s{i}.tiff", _mask(i))
    labelled = load_labelled_set(root)
    assert labelled.channels == 2
    image, _ = labelled.read(0)
    assert image.dtype == np.uint16 and image.shape == (H, W, 2)


def test_other_files_and_hidden_files_are_ignored(tmp_path):
    root = _make_set(tmp_path / "set")
    (root / "READY").write_text("")
    (root / "REJECTED.txt").write_text("old reason")
    (root / "notes.docx").write_bytes(b"\x00")
    (root / "images" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "masks" / "._s0.png").write_bytes(b"\x00\x01")  # macOS resource fork
    assert load_labelled_set(root).stems == ("s0", "s1", "s2", "s3")


def test_suffixes_are_case_insensitive(tmp_path):
    root = tmp_path / "set"
    for i, suffix in enumerate((".PNG", ".Tif", ".JPG")):
        _write_image(root / "images" / f"s{i}{suffix}", _image(i, channels=3))
        _write_mask(root / "masks" / f"s{i}.PNG", _mask(i))
    labelled = load_labelled_set(root)
    assert labelled.channels == 3
    assert [p.name for p in labelled.image_paths] == ["s0.PNG", "s1.Tif", "s2.JPG"]


def test_dataset_yaml_names_the_classes(tmp_path):
    yaml_text = (
        "project: hela-2024\nclasses: [nucleus, nucleolus, debris]\nmicroscopy: fluorescence\nobject: nuclei\n"
        "magnification: 40\npixel_size_um: 0.16\nbudget_minutes: 30\n"
    )
    root = _make_set(tmp_path / "set", classes=2, yaml_text=yaml_text)
    labelled = load_labelled_set(root)
    assert labelled.class_names == ("nucleus", "nucleolus", "debris")  # K from yaml, even if label 3 is unused
    assert labelled.num_classes == 3
    assert labelled.pixel_size_um == pytest.approx(0.16)
    assert labelled.metadata["project"] == "hela-2024"
    assert labelled.metadata["budget_minutes"] == 30


def test_empty_dataset_yaml_is_no_metadata(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="# nothing yet\n")
    assert load_labelled_set(root).metadata == {}


def test_binary_255_masks_are_read_as_one(tmp_path):
    root = _make_set(tmp_path / "set")
    for i in range(4):
        _write_mask(root / "masks" / f"s{i}.png", _mask(i) * 255)
    labelled = load_labelled_set(root)
    assert labelled.binary_255 is True
    assert labelled.class_names == ("class_1",)
    _, mask = labelled.read(2)
    assert set(np.unique(mask).tolist()) == {0, 1}
    np.testing.assert_array_equal(mask, _mask(2))


def test_binary_255_masks_with_one_declared_class(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="classes: [nucleus]\n")
    for i in range(4):
        _write_mask(root / "masks" / f"s{i}.png", _mask(i) * 255)
    labelled = load_labelled_set(root)
    assert labelled.binary_255 is True
    assert labelled.class_names == ("nucleus",)


def test_validation_is_fast_for_53_images(tmp_path):
    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    image = _write_image(tmp_path / "image.png", rng.integers(0, 256, (500, 520, 3), dtype=np.uint8))
    mask = _write_mask(tmp_path / "mask.png", (rng.random((500, 520)) > 0.7).astype(np.uint8))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(53):  # copies: writing 53 noisy PNGs would take longer than validating them
        shutil.copyfile(image, root / "images" / f"img{i:02d}.png")
        shutil.copyfile(mask, root / "masks" / f"img{i:02d}.png")
    start = time.perf_counter()
    labelled = load_labelled_set(root)
    elapsed = time.perf_counter() - start
    assert len(labelled) == 53 and labelled.channels == 3
    assert elapsed < 10, f"validating 53 images took {elapsed:.1f} s"


def test_real_ctc_hela_set():
    root = SHARED_DATASETS / "ctc_hela_fluo_nuclei"
    if not root.is_dir():
        pytest.skip(f"real data set not available at {root} (the shared/ folder beside the repository)")
    labelled = load_labelled_set(root)
    assert len(labelled) == 4
    assert labelled.num_classes == 1
    assert labelled.channels == 1
    image, mask = labelled.read(0)
    assert image.dtype == np.uint16
    assert mask.shape == image.shape[:2]
    assert labelled.task == "instances"
    instances = labelled.read_instances(0)
    assert np.array_equal(instances > 0, mask > 0) and len(np.unique(instances)) == 60  # 59 nuclei + background


# --- problems: layout -----------------------------------------------------------------------------


def test_root_missing(tmp_path):
    problems = _problems(tmp_path / "nope")
    assert len(problems) == 1
    assert problems[0].file == "."
    assert "nope" in problems[0].message and "does not exist" in problems[0].message


def test_root_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    problems = _problems(tmp_path / "file")
    assert "is not a folder" in _only(problems, ".").message


def test_images_folder_missing(tmp_path):
    root = _make_set(tmp_path / "set")
    for path in (root / "images").iterdir():
        path.unlink()
    (root / "images").rmdir()
    problem = _only(_problems(root), "images/")
    assert "images/ folder is missing" in problem.message and "create" in problem.message


def test_masks_folder_missing_and_images_folder_missing_are_both_reported(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    problems = _problems(root)
    assert {p.file for p in problems} == {"images/", "masks/"}
    assert "masks/ folder is missing" in _only(problems, "masks/").message


def test_masks_is_a_file(tmp_path):
    root = tmp_path / "set"
    _write_image(root / "images" / "a.png", _image(0))
    (root / "masks").write_text("oops")
    assert "is not a folder" in _only(_problems(root), "masks/").message


def test_empty_set(tmp_path):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    problem = _only(_problems(root), "images/")
    assert "empty" in problem.message and "no images" in problem.message


def test_missing_mask(tmp_path):
    root = _make_set(tmp_path / "set")
    (root / "masks" / "s2.png").unlink()
    problem = _only(_problems(root), "images/s2.png")
    assert "no mask" in problem.message and "masks/s2.png" in problem.message


def test_mask_without_image(tmp_path):
    root = _make_set(tmp_path / "set")
    _write_mask(root / "masks" / "extra.png", _mask(0))
    problem = _only(_problems(root), "masks/extra.png")
    assert "no image" in problem.message and "'extra'" in problem.message


def test_two_files_with_the_same_stem(tmp_path):
    root = _make_set(tmp_path / "set")
    _write_image(root / "images" / "s1.tif", _image(1))
    problems = _problems(root)
    problem = _only(problems, "images/s1.png")
    assert "share the stem 's1'" in problem.message
    assert "images/s1.tif" in problem.message and "keep only one" in problem.message
    assert len(problems) == 1  # the mask s1.png still has its (duplicated) image


def test_unsupported_suffixes_are_reported(tmp_path):
    root = _make_set(tmp_path / "set")
    (root / "images" / "readme.txt").write_text("hello")
    iio.imwrite(root / "masks" / "s0.jpg", _mask(0))
    problems = _problems(root)
    images_problem = _only(problems, "images/readme.txt")
    assert ".txt" in images_problem.message and ".tif, .tiff, .png, .jpg, .jpeg" in images_problem.message
    mask_problem = _only(problems, "masks/s0.jpg")
    assert ".png, .tif, .tiff" in mask_problem.message and "lossless" in mask_problem.message


def test_sub_folders_are_reported(tmp_path):
    root = _make_set(tmp_path / "set")
    (root / "images" / "old").mkdir()
    assert "sub-folders" in _only(_problems(root), "images/old/").message


# --- problems: file content -----------------------------------------------------------------------


def test_truncated_image_and_mask(tmp_path):
    root = _make_set(tmp_path / "set")
    for name in ("images/s1.png", "masks/s3.png"):
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    problems = _problems(root)
    assert {p.file for p in problems} == {"images/s1.png", "masks/s3.png"}
    for problem in problems:
        assert "truncated" in problem.message and "copy it again" in problem.message


def test_empty_image_file(tmp_path):
    root = _make_set(tmp_path / "set")
    (root / "images" / "s0.png").write_bytes(b"")
    assert "empty (0 bytes)" in _only(_problems(root), "images/s0.png").message


def test_3d_stack_is_refused(tmp_path):
    root = _make_set(tmp_path / "set")
    (root / "images" / "s0.png").unlink()
    tifffile.imwrite(
        root / "images" / "s0.tif", np.zeros((4, H, W), np.uint16), photometric="minisblack", metadata={"axes": "ZYX"}
    )
    problem = _only(_problems(root), "images/s0.tif")
    assert "stack" in problem.message and "Z=4" in problem.message and "2D" in problem.message


def test_size_mismatch_states_both_sizes(tmp_path):
    root = _make_set(tmp_path / "set")
    _write_mask(root / "masks" / "s1.png", _mask(1, shape=(H + 2, W)))
    problem = _only(_problems(root), "masks/s1.png")
    assert f"{H + 2}×{W}" in problem.message and f"{H}×{W}" in problem.message
    assert "images/s1.png" in problem.message and "same height and width" in problem.message


def test_labels_outside_declared_classes(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="classes: [nucleus, cytoplasm]\n")
    _write_mask(root / "masks" / "s2.png", _mask(2, classes=3))
    problems = _problems(root)
    problem = _only(problems, "masks/s2.png")
    assert "{0, 1, 2, 3}" in problem.message and "0..2" in problem.message and "classes" in problem.message
    assert len(problems) == 1


def test_too_many_labels_without_classes_hints_at_instance_masks(tmp_path):
    root = _make_set(tmp_path / "set")
    instances = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 40
    _write_mask(root / "masks" / "s0.png", instances)
    problem = _only(_problems(root), "masks/s0.png")
    assert "0, 1, 2" in problem.message and "40 distinct values" in problem.message
    assert f"0..{MAX_CLASSES}" in problem.message and "instance mask" in problem.message
    assert "semantic" in problem.message


def test_up_to_max_classes_labels_are_accepted(tmp_path):
    root = _make_set(tmp_path / "set", classes=MAX_CLASSES)
    assert load_labelled_set(root).num_classes == MAX_CLASSES


def test_mixed_0_1_and_0_255_masks(tmp_path):
    root = _make_set(tmp_path / "set")
    _write_mask(root / "masks" / "s3.png", _mask(3) * 255)
    problem = _only(_problems(root), "masks/s3.png")
    assert "{0, 255}" in problem.message and "0/1" in problem.message


def test_negative_labels(tmp_path):
    root = _make_set(tmp_path / "set")
    negative = _mask(1).astype(np.int16)
    negative[0, 0] = -1
    tifffile.imwrite(root / "masks" / "s1.tif", negative)
    (root / "masks" / "s1.png").unlink()
    problem = _only(_problems(root), "masks/s1.tif")
    assert "negative" in problem.message and "{-1}" in problem.message and "1..K" in problem.message


def test_channel_count_differs(tmp_path):
    root = _make_set(tmp_path / "set", channels=3)
    _write_image(root / "images" / "s2.png", _image(2, channels=1))
    problem = _only(_problems(root), "images/s2.png")
    assert "1 channel(s)" in problem.message and "have 3" in problem.message


def test_too_few_images(tmp_path):
    root = _make_set(tmp_path / "set", n=2)
    problem = _only(_problems(root), "images/")
    assert "only 2 image(s)" in problem.message and "at least 3" in problem.message
    assert "at least 5" in _only(_problems(_make_set(tmp_path / "other", n=4), min_images=5), "images/").message


def test_no_foreground_anywhere(tmp_path):
    root = _make_set(tmp_path / "set")
    for i in range(4):
        _write_mask(root / "masks" / f"s{i}.png", np.zeros((H, W), np.uint8))
    problem = _only(_problems(root), "masks/")
    assert "no mask contains any foreground" in problem.message and "nothing to learn" in problem.message


def test_every_problem_is_reported_at_once(tmp_path):
    root = _make_set(tmp_path / "set", n=6, yaml_text="colour: red\n")
    (root / "masks" / "s0.png").unlink()
    _write_mask(root / "masks" / "orphan.png", _mask(0))
    _write_mask(root / "masks" / "s2.png", _mask(2, shape=(H, W + 1)))
    (root / "images" / "s3.png").write_bytes((root / "images" / "s3.png").read_bytes()[:60])
    _write_image(root / "images" / "s4.png", _image(4, channels=3))
    problems = _problems(root)
    assert {p.file for p in problems} == {
        "dataset.yaml",
        "images/s0.png",
        "masks/orphan.png",
        "masks/s2.png",
        "images/s3.png",
        "images/s4.png",
    }


# --- problems: dataset.yaml -----------------------------------------------------------------------


def test_yaml_not_valid(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="classes: [nucleus\nproject: x\n")
    problem = _only(_problems(root), "dataset.yaml")
    assert "not valid YAML" in problem.message and "fix the syntax" in problem.message


def test_yaml_not_a_mapping(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="- nucleus\n- cytoplasm\n")
    problem = _only(_problems(root), "dataset.yaml")
    assert "must be a mapping" in problem.message and "list" in problem.message


def test_yaml_unknown_key_lists_the_valid_ones(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="clases: [nucleus]\n")
    problem = _only(_problems(root), "dataset.yaml")
    assert "unknown key 'clases'" in problem.message
    assert all(key in problem.message for key in DATASET_YAML_KEYS)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("project: 2024\n", "must be text"),
        ("project: .hidden\n", "not a valid project name"),
        ("project: 'a b'\n", "not a valid project name"),
        (f"project: {'x' * 65}\n", "1-64"),
        ("classes: nucleus\n", "non-empty list"),
        ("classes: []\n", "non-empty list"),
        ("classes: [nucleus, '']\n", "non-empty text"),
        ("classes: [nucleus, nucleus]\n", "unique"),
        ("microscopy: confocal\n", ", ".join(MICROSCOPY)),
        ("object: mitochondria\n", ", ".join(OBJECTS)),
        ("magnification: -40\n", "positive number"),
        ("magnification: forty\n", "positive number"),
        ("pixel_size_um: 0\n", "positive number"),
        ("pixel_size_um: true\n", "positive number"),
        ("budget_minutes: .nan\n", "positive number"),
    ],
)
def test_yaml_wrong_values(tmp_path, yaml_text, expected):
    root = _make_set(tmp_path / "set", yaml_text=yaml_text)
    problem = _only(_problems(root), "dataset.yaml")
    key = yaml_text.split(":")[0]
    assert problem.message.startswith(f"{key}: ")
    assert expected in problem.message


def test_valid_project_names(tmp_path):
    for i, name in enumerate(("a", "HeLa_2024-v1.2", "x" * 64)):
        root = _make_set(tmp_path / f"set{i}", yaml_text=f"project: {name}\n")
        assert load_labelled_set(root).metadata["project"] == name


# --- instance masks ---------------------------------------------------------------------------------


def _instances_of(mask: np.ndarray) -> np.ndarray:
    """One id per connected stripe of ``mask`` (ids 7, 8, ... so that they are not consecutive from 1)."""
    import skimage.measure

    labels = skimage.measure.label(mask > 0, connectivity=1).astype(np.uint16)
    return np.where(labels > 0, labels + 6, 0).astype(np.uint16)


def _make_instance_set(root: Path, n: int = 4) -> Path:
    _make_set(root, n)
    for i in range(n):
        _write_mask(root / "instances" / f"s{i}.png", _instances_of(_mask(i)))
    return root


def test_a_set_with_instance_masks_trains_instances(tmp_path):
    root = _make_instance_set(tmp_path / "set")
    labelled = load_labelled_set(root)
    assert labelled.task == "instances"
    assert [p.name for p in labelled.instance_paths] == [f"s{i}.png" for i in range(4)]
    assert np.array_equal(labelled.read_instances(2), _instances_of(_mask(2)))
    assert load_labelled_set(_make_set(tmp_path / "plain")).task == "semantic"


def test_dataset_yaml_task_chooses_semantic_even_with_instance_masks(tmp_path):
    root = _make_instance_set(tmp_path / "set")
    (root / "dataset.yaml").write_text("task: semantic\n")
    labelled = load_labelled_set(root)
    assert labelled.task == "semantic" and len(labelled.instance_paths) == 4  # kept for object scores


def test_task_instances_without_the_folder_says_what_to_add(tmp_path):
    root = _make_set(tmp_path / "set", yaml_text="task: instances\n")
    problem = _only(_problems(root), "dataset.yaml")
    assert "instances/" in problem.message and "task: semantic" in problem.message


def test_every_instance_problem_is_named(tmp_path):
    root = _make_instance_set(tmp_path / "set", n=5)
    (root / "instances" / "s0.png").unlink()  # missing
    _write_mask(root / "instances" / "extra.png", _instances_of(_mask(0)))  # no image
    _write_mask(root / "instances" / "s1.png", np.zeros((H + 2, W), dtype=np.uint16))  # wrong size
    shifted = np.roll(_instances_of(_mask(2)), 1, axis=0)
    _write_mask(root / "instances" / "s2.png", shifted)  # objects where the mask has background
    (root / "instances" / "s3.png").write_bytes(b"not a png")  # unreadable
    problems = _problems(root)
    assert "no instances/s0.png" in _only(problems, "images/s0.png").message
    assert "no image with the stem 'extra'" in _only(problems, "instances/extra.png").message
    assert f"{H + 2}×{W}" in _only(problems, "instances/s1.png").message
    assert "pixel(s) are objects here but background in masks/s2.png" in _only(problems, "instances/s2.png").message
    _only(problems, "instances/s3.png")
    assert not [p for p in problems if p.file.startswith("masks/")]  # the masks themselves are fine


def test_instance_masks_beside_several_classes_are_refused(tmp_path):
    root = _make_set(tmp_path / "set", classes=2)
    for i in range(4):
        _write_mask(root / "instances" / f"s{i}.png", _instances_of(_mask(i, classes=2)))
    problem = _only(_problems(root), "instances/")
    assert "one class" in problem.message and "has 2" in problem.message
