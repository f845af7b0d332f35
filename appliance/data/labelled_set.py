"""Validation and indexing of a labelled image set.

A labelled set is a folder laid out as::

    ROOT/images/<stem>.<ext>     one image per stem (TIFF, PNG or JPEG)
    ROOT/masks/<stem>.<ext>      its label mask, same stem (PNG or TIFF; 0 = background, 1..K = classes)
    ROOT/instances/<stem>.<ext>  optional: one id per object (PNG or TIFF; 0 = background, 1..N = objects), for a
                                 set with one class; then the set trains an instances model (touching objects apart)
    ROOT/dataset.yaml            optional metadata (see DATASET_YAML_KEYS)

Other files in ROOT (``READY``, ``REJECTED.txt``, notes) and hidden files (starting with ``.``) are
ignored. :func:`load_labelled_set` checks everything it can and raises one
:class:`~appliance.errors.InvalidSetError` that lists every problem found, each naming the file
(relative to ROOT), what is wrong and what to do.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import yaml

from appliance.data.io import IMAGE_SUFFIXES, TIFF_SUFFIXES, read_image, read_mask
from appliance.errors import ImageReadError, InvalidSetError, Problem

MICROSCOPY = ("brightfield", "fluorescence", "phase_contrast", "dic", "electron", "other")
OBJECTS = ("nuclei", "cells", "tissue", "organelles", "other")
DATASET_YAML_KEYS = (
    "project",
    "classes",
    "microscopy",
    "object",
    "magnification",
    "pixel_size_um",
    "budget_minutes",
    "task",
)
SEMANTIC, INSTANCES = TASKS = ("semantic", "instances")
"""What a model of a set learns (:mod:`appliance.pipeline.task` says what each means)."""
MAX_CLASSES = 20
MAX_YAML_BYTES = 64 * 1024  # a dataset.yaml is a few lines
MAX_BUDGET_MINUTES = 7 * 24 * 60
MASK_SUFFIXES = (".png", *TIFF_SUFFIXES)
DATASET_YAML = "dataset.yaml"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
INSTANCES_DIR = "instances"

# a project or set name becomes a folder name and a command-line argument: no leading '-' or '.'
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
NAME_RULE = "use 1-64 letters, digits, '-', '_' or '.', starting with a letter, digit or '_'"
_BINARY_VALUE = 255
_MAX_LISTED = 12
_T = TypeVar("_T")


@dataclass(frozen=True)
class LabelledSet:
    """A validated labelled set: matching images and masks, with their shared properties.

    Attributes
    ----------
    root : Path
        The set's folder.
    name : str
        The folder name.
    stems : tuple of str
        File stems, sorted; ``image_paths`` and ``mask_paths`` follow the same order.
    image_paths, mask_paths : tuple of Path
        One image and one mask per stem.
    class_names : tuple of str
        Names for labels ``1..K``: ``classes`` from ``dataset.yaml``, else ``("class_1", ...)``.
    channels : int
        Input channels, identical for every image.
    shapes : tuple of (int, int)
        ``(H, W)`` per image.
    metadata : dict
        The validated ``dataset.yaml`` content (``{}`` when absent).
    binary_255 : bool
        True when the masks hold 0/255 and are read as 0/1.
    instance_paths : tuple of Path
        One instance mask per stem (from ``instances/``), or empty.
    """

    root: Path
    name: str
    stems: tuple[str, ...]
    image_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...]
    class_names: tuple[str, ...]
    channels: int
    shapes: tuple[tuple[int, int], ...]
    metadata: dict = field(default_factory=dict)
    binary_255: bool = False
    instance_paths: tuple[Path, ...] = ()

    @property
    def task(self) -> str:
        """What a model of this set learns: ``task`` from ``dataset.yaml``, else ``"instances"`` when the set brings
        one id per object (``instances/``), else ``"semantic"`` (see :mod:`appliance.pipeline.task`)."""
        return self.metadata.get("task") or (INSTANCES if self.instance_paths else SEMANTIC)

    @property
    def project(self) -> str:
        """The project this set trains a model for (:func:`project_of`)."""
        return project_of(self.metadata, self.name)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K (labels ``1..K``; 0 is background)."""
        return len(self.class_names)

    @property
    def pixel_size_um(self) -> float | None:
        """Pixel size in micrometres from ``dataset.yaml``, or None when not given."""
        value = self.metadata.get("pixel_size_um")
        return None if value is None else float(value)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one image and its mask.

        Parameters
        ----------
        index : int
            Position in ``stems``.

        Returns
        -------
        image : (H, W, C) ndarray
            The raw image in its original dtype.
        mask : (H, W) ndarray of int64
            Labels ``0..K``; 255 is read as 1 when ``binary_255`` is set.
        """
        image = read_image(self.image_paths[index])
        mask = read_mask(self.mask_paths[index]).astype(np.int64)
        if self.binary_255:
            mask[mask == _BINARY_VALUE] = 1
        return image, mask

    def read_instances(self, index: int) -> np.ndarray:
        """The ``(H, W)`` instance mask of one image (0 = background, one id per object); needs ``instance_paths``."""
        if not self.instance_paths:
            raise ValueError(f"the set {self.name} has no {INSTANCES_DIR}/ folder")
        return read_mask(self.instance_paths[index]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.stems)


def load_labelled_set(root: str | Path, *, min_images: int = 3) -> LabelledSet:
    """Validate and index a labelled set; raise InvalidSetError listing EVERY problem found.

    Every image and mask is read once to check that it decodes, that image and mask sizes
    agree, that all images have the same number of channels and that mask labels fit the classes.

    Parameters
    ----------
    root : str or Path
        The set's folder (holding ``images/``, ``masks/`` and optionally ``dataset.yaml``).
    min_images : int, optional
        Fewest images accepted; 3 are needed for one train, one validation and one test image.

    Returns
    -------
    LabelledSet

    Raises
    ------
    InvalidSetError
        With one :class:`~appliance.errors.Problem` per problem found.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise InvalidSetError(
            root,
            [
                Problem(
                    ".",
                    f"the set folder {root} {what}; give the path of a folder holding {IMAGES_DIR}/ and {MASKS_DIR}/",
                )
            ],
        )
    problems: list[Problem] = []
    metadata = _validate_metadata(root, problems)
    images_dir, masks_dir = _check_folder(root, IMAGES_DIR, problems), _check_folder(root, MASKS_DIR, problems)
    if images_dir is None or masks_dir is None:
        raise InvalidSetError(root, problems)

    image_files = _list_files(root, images_dir, IMAGE_SUFFIXES, problems)
    mask_files = _list_files(root, masks_dir, MASK_SUFFIXES, problems)
    _check_pairs(image_files, mask_files, problems)
    _check_count(len(image_files), min_images, problems)

    images = _read_all(root, image_files, read_image, _shape, problems)
    masks = _read_all(root, mask_files, read_mask, _shape_and_labels, problems)
    _check_sizes(root, image_files, mask_files, images, {s: shape for s, (shape, _) in masks.items()}, problems)
    channels = _check_channels(root, image_files, images, problems)
    labels = {stem: values for stem, (_, values) in masks.items()}
    class_names, binary_255 = _check_labels(root, mask_files, labels, metadata.get("classes"), problems)
    instance_files = _check_instances(root, image_files, mask_files, len(class_names), problems)
    if metadata.get("task") == INSTANCES and not (root / INSTANCES_DIR).exists():
        problems.append(
            Problem(
                DATASET_YAML,
                f"task: instances needs an {INSTANCES_DIR}/ folder with one instance mask per image (0 = background, "
                f"one id per object); add it, or write task: semantic",
            )
        )

    if problems:
        raise InvalidSetError(root, problems)
    stems = tuple(sorted(image_files))
    return LabelledSet(
        root=root,
        name=root.name,
        stems=stems,
        image_paths=tuple(image_files[stem][0] for stem in stems),
        mask_paths=tuple(mask_files[stem][0] for stem in stems),
        class_names=class_names,
        channels=channels,
        shapes=tuple(images[stem][:2] for stem in stems),
        metadata=metadata,
        binary_255=binary_255,
        instance_paths=tuple(instance_files[stem][0] for stem in stems) if instance_files else (),
    )


# --- layout -------------------------------------------------------------------------------------


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _check_folder(root: Path, name: str, problems: list[Problem]) -> Path | None:
    folder = root / name
    if folder.is_dir():
        return folder
    what = "is missing" if not folder.exists() else "is not a folder"
    problems.append(
        Problem(
            f"{name}/",
            f"the {name}/ folder {what}; create {root.name}/{name}/ and put the "
            f"{'images' if name == IMAGES_DIR else 'label masks'} there",
        )
    )
    return None


def _list_files(root: Path, folder: Path, suffixes: tuple[str, ...], problems: list[Problem]) -> dict[str, list[Path]]:
    """Map each stem to its files in ``folder`` (sorted); report unsupported entries and duplicate stems."""
    files: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            problems.append(
                Problem(
                    _relative(root, path) + "/",
                    f"sub-folders are not read; move its files directly into {folder.name}/ or remove it",
                )
            )
        elif path.suffix.lower() not in suffixes:
            problems.append(Problem(_relative(root, path), _suffix_message(path, folder.name, suffixes)))
        else:
            files.setdefault(path.stem, []).append(path)
    for stem, paths in files.items():
        if len(paths) > 1:
            names = ", ".join(_relative(root, p) for p in paths)
            problems.append(
                Problem(
                    _relative(root, paths[0]),
                    f"{len(paths)} files share the stem {stem!r} ({names}); keep only one of them",
                )
            )
    return files


def _suffix_message(path: Path, folder: str, suffixes: tuple[str, ...]) -> str:
    suffix = path.suffix or "(none)"
    message = f"unsupported file type {suffix} in {folder}/; supported: {', '.join(suffixes)}"
    if folder == MASKS_DIR and path.suffix.lower() in IMAGE_SUFFIXES:
        message += " (JPEG compression changes label values, so masks must be lossless)"
    return message + "; convert the file or remove it"


def _check_pairs(
    image_files: dict[str, list[Path]], mask_files: dict[str, list[Path]], problems: list[Problem]
) -> None:
    for stem in sorted(set(image_files) - set(mask_files)):
        problems.append(
            Problem(
                f"{IMAGES_DIR}/{image_files[stem][0].name}",
                f"no mask with the stem {stem!r}; add {MASKS_DIR}/{stem}.png (or .tif) or remove the image",
            )
        )
    for stem in sorted(set(mask_files) - set(image_files)):
        problems.append(
            Problem(
                f"{MASKS_DIR}/{mask_files[stem][0].name}",
                f"no image with the stem {stem!r}; add {IMAGES_DIR}/{stem}.<ext> "
                f"({', '.join(IMAGE_SUFFIXES)}) or remove the mask",
            )
        )


def _check_count(count: int, min_images: int, problems: list[Problem]) -> None:
    if count == 0:
        problems.append(
            Problem(
                f"{IMAGES_DIR}/",
                f"the set is empty: no images found (supported: "
                f"{', '.join(IMAGE_SUFFIXES)}); copy the images into "
                f"{IMAGES_DIR}/ and their masks into {MASKS_DIR}/",
            )
        )
    elif count < min_images:
        problems.append(
            Problem(
                f"{IMAGES_DIR}/",
                f"only {count} image(s); at least {min_images} are needed for "
                "a train/validation/test split; add more labelled images",
            )
        )


def _check_instances(
    root: Path,
    image_files: dict[str, list[Path]],
    mask_files: dict[str, list[Path]],
    num_classes: int,
    problems: list[Problem],
) -> dict[str, list[Path]]:
    """The files of ``instances/`` by stem ({} when there is no such folder); report every problem with them:
    a missing or extra file, one that does not decode, differs in size from its mask or marks other pixels as
    objects than the mask does, and instances beside more than one class."""
    folder = root / INSTANCES_DIR
    if not folder.exists():
        return {}
    remove = f"or remove {INSTANCES_DIR}/ to train a class map without separate objects"
    if not folder.is_dir():
        problems.append(Problem(f"{INSTANCES_DIR}", f"is not a folder; make it a folder of instance masks {remove}"))
        return {}
    files = _list_files(root, folder, MASK_SUFFIXES, problems)
    if num_classes > 1:
        problems.append(
            Problem(
                f"{INSTANCES_DIR}/",
                f"instance masks are supported for sets with one class, this set has {num_classes}; "
                f"label all objects as class 1 in {MASKS_DIR}/ {remove}",
            )
        )
    for stem in sorted(set(image_files) - set(files)):
        problems.append(
            Problem(
                f"{IMAGES_DIR}/{image_files[stem][0].name}", f"no {INSTANCES_DIR}/{stem}.png (or .tif); add it {remove}"
            )
        )
    for stem in sorted(set(files) - set(image_files)):
        problems.append(
            Problem(_relative(root, files[stem][0]), f"no image with the stem {stem!r}; remove this instance mask")
        )
    for stem in sorted(set(files) & set(mask_files)):
        if len(files[stem]) != 1 or len(mask_files[stem]) != 1:
            continue
        path = files[stem][0]
        try:
            instances, mask = read_mask(path), read_mask(mask_files[stem][0])
        except ImageReadError as exc:
            if exc.path == path:
                problems.append(Problem(_relative(root, path), exc.problem))
            continue  # an unreadable mask is reported by the mask checks
        if instances.shape != mask.shape:
            problems.append(
                Problem(
                    _relative(root, path),
                    f"size {_hw(instances.shape)} differs from {MASKS_DIR}/{mask_files[stem][0].name} "
                    f"({_hw(mask.shape)}); save the instance mask at the mask's size",
                )
            )
            continue
        differ = int(np.count_nonzero((instances != 0) != (mask != 0)))
        if differ:
            problems.append(
                Problem(
                    _relative(root, path),
                    f"{differ} pixel(s) are objects here but background in {MASKS_DIR}/{mask_files[stem][0].name} "
                    "or the other way round; every object pixel must be foreground in the mask and nothing else",
                )
            )
    return files


# --- reading ------------------------------------------------------------------------------------


def _read_all(
    root: Path,
    files: dict[str, list[Path]],
    reader: Callable[[Path], np.ndarray],
    summarise: Callable[[np.ndarray], _T],
    problems: list[Problem],
) -> dict[str, _T]:
    """Read every file whose stem is unique in its folder once and keep only its summary.

    Files that cannot be read are reported; arrays are not kept, so large sets fit in memory.
    """
    summaries: dict[str, _T] = {}
    for stem, paths in files.items():
        if len(paths) != 1:
            continue
        try:
            summaries[stem] = summarise(reader(paths[0]))
        except ImageReadError as exc:
            problems.append(Problem(_relative(root, paths[0]), exc.problem))
    return summaries


def _shape(array: np.ndarray) -> tuple[int, ...]:
    return tuple(int(n) for n in array.shape)


def _shape_and_labels(mask: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    return _shape(mask), _label_values(mask)


def _check_sizes(
    root: Path,
    image_files: dict[str, list[Path]],
    mask_files: dict[str, list[Path]],
    images: dict[str, tuple[int, ...]],
    masks: dict[str, tuple[int, ...]],
    problems: list[Problem],
) -> None:
    for stem in sorted(set(images) & set(masks)):
        image_hw, mask_hw = images[stem][:2], masks[stem][:2]
        if image_hw != mask_hw:
            image_name = _relative(root, image_files[stem][0])
            problems.append(
                Problem(
                    _relative(root, mask_files[stem][0]),
                    f"mask size {_hw(mask_hw)} differs from image {image_name} size "
                    f"{_hw(image_hw)} (H×W); the mask must have the same height and width "
                    "as its image",
                )
            )


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}×{shape[1]}"


def _check_channels(
    root: Path, image_files: dict[str, list[Path]], images: dict[str, tuple[int, ...]], problems: list[Problem]
) -> int:
    """Return the majority channel count; report every image that differs from it."""
    counts = {stem: images[stem][2] for stem in sorted(images)}
    if not counts:
        return 0
    majority, _ = Counter(counts.values()).most_common(1)[0]
    for stem, count in counts.items():
        if count != majority:
            problems.append(
                Problem(
                    _relative(root, image_files[stem][0]),
                    f"image has {count} channel(s) but most images in the set have {majority}; "
                    f"save every image with {majority} channel(s)",
                )
            )
    return majority


# --- labels -------------------------------------------------------------------------------------


def _label_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer mask (bincount when cheap, else unique)."""
    flat = mask.ravel()
    if flat.size and np.issubdtype(mask.dtype, np.integer) and flat.min() >= 0 and flat.max() < 65536:
        return np.flatnonzero(np.bincount(flat))
    return np.unique(flat)


def _format_values(values: Iterable[int]) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = f", … ({len(values)} distinct values)" if len(values) > _MAX_LISTED else ""
    return f"{{{shown}{more}}}"


def _check_labels(
    root: Path,
    mask_files: dict[str, list[Path]],
    labels: dict[str, np.ndarray],
    classes: list[str] | None,
    problems: list[Problem],
) -> tuple[tuple[str, ...], bool]:
    """Decide K and the 0/255 convention, report masks whose labels do not fit; return (class names, binary_255)."""
    names = {stem: _relative(root, mask_files[stem][0]) for stem in labels}
    for stem in sorted(labels):
        negative = labels[stem][labels[stem] < 0]
        if negative.size:
            problems.append(
                Problem(
                    names[stem],
                    f"mask has negative label values {_format_values(negative)}; "
                    "labels must be 0 (background) or 1..K (classes)",
                )
            )
    union = set().union(*(set(v.tolist()) for v in labels.values())) if labels else set()
    binary_255 = _BINARY_VALUE in union and union <= {0, _BINARY_VALUE} and (classes is None or len(classes) == 1)
    if binary_255:
        class_names = tuple(classes) if classes else ("class_1",)
    elif classes is not None:
        class_names = tuple(classes)
        _check_declared(labels, names, len(classes), problems)
    else:
        top = max((v for v in union if v > 0), default=0)
        if top > MAX_CLASSES:
            _report_too_many(labels, names, union, problems)
            top = 0
        class_names = tuple(f"class_{i}" for i in range(1, top + 1))
    if labels and not any(v > 0 for v in union):
        problems.append(
            Problem(
                f"{MASKS_DIR}/",
                "no mask contains any foreground label (every mask is all 0), so "
                "there is nothing to learn; label the objects with 1..K",
            )
        )
    return class_names, binary_255


def _check_declared(labels: dict[str, np.ndarray], names: dict[str, str], k: int, problems: list[Problem]) -> None:
    for stem in sorted(labels):
        if labels[stem].size and labels[stem].max() > k:
            problems.append(
                Problem(
                    names[stem],
                    f"label values {_format_values(labels[stem])} found, but "
                    f"dataset.yaml declares {k} class(es), so labels must be in "
                    f"0..{k}; fix the mask or list one name per label in `classes`",
                )
            )


def _report_too_many(
    labels: dict[str, np.ndarray], names: dict[str, str], union: set[int], problems: list[Problem]
) -> None:
    mixed_binary = union <= {0, 1, _BINARY_VALUE}
    for stem in sorted(labels):
        values = labels[stem]
        if not values.size or values.max() <= MAX_CLASSES:
            continue
        if mixed_binary:
            hint = (
                "other masks use 1 for foreground while this one uses 255; save every mask as 0/1 "
                "(or every mask as 0/255)"
            )
        else:
            hint = (
                f"without `classes` in dataset.yaml at most {MAX_CLASSES} classes (labels 0..{MAX_CLASSES}) are "
                "accepted; this looks like an instance mask (one value per object): convert it to semantic "
                f"labels (e.g. every object -> 1) and put the instance mask in {INSTANCES_DIR}/ to train separate "
                "objects, or declare the classes in dataset.yaml"
            )
        problems.append(Problem(names[stem], f"label values {_format_values(values)} found; {hint}"))


# --- dataset.yaml -------------------------------------------------------------------------------


def _validate_metadata(root: Path, problems: list[Problem]) -> dict:
    """Return the validated dataset.yaml content ({} when absent); report every problem in it."""
    path = root / DATASET_YAML
    if not path.exists():
        return {}
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        problems.append(
            Problem(DATASET_YAML, f"is {size} bytes; at most {MAX_YAML_BYTES} are allowed for a few lines of keys")
        )
        return {}
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=_PlainLoader)  # noqa: S506 (a safe loader)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        detail = " ".join(str(exc).split())
        problems.append(
            Problem(
                DATASET_YAML,
                f"is not valid YAML ({detail}); fix the syntax, e.g. `classes: [nucleus]`, or remove the file",
            )
        )
        return {}
    if content is None:
        return {}
    if not isinstance(content, dict):
        problems.append(
            Problem(
                DATASET_YAML,
                f"must be a mapping of keys to values, got a "
                f"{type(content).__name__}; write one `key: value` per line "
                f"with keys from {', '.join(DATASET_YAML_KEYS)}",
            )
        )
        return {}
    count = len(problems)
    for key, value in content.items():
        if key not in DATASET_YAML_KEYS:
            problems.append(Problem(DATASET_YAML, f"unknown key {key!r}; valid keys: {', '.join(DATASET_YAML_KEYS)}"))
            continue
        message = _VALUE_CHECKS[key](value)
        if message:
            problems.append(Problem(DATASET_YAML, f"{key}: {message}"))
    return dict(content) if len(problems) == count else {}


class _PlainLoader(yaml.SafeLoader):
    """YAML without aliases: a few keys need none, and aliases are how a file of a few hundred bytes expands into
    gigabytes of text (a "billion laughs" document)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed; write each value out", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)


def _check_budget(value: object) -> str | None:
    message = _positive_number(value)
    if message is None and value > MAX_BUDGET_MINUTES:
        message = f"{value!r} minutes is more than the allowed {MAX_BUDGET_MINUTES} (7 days)"
    return message


def project_of(metadata: Mapping, set_name: str) -> str:
    """A set's project: ``project`` from its ``dataset.yaml``, else the set's (folder's) name."""
    return metadata.get("project") or set_name


def _check_project(value: object) -> str | None:
    if not isinstance(value, str):
        return f'must be text, got {value!r} ({type(value).__name__}); put it in quotes, e.g. project: "hela-2024"'
    if not NAME_PATTERN.match(value):
        return f"{value!r} is not a valid project name: {NAME_RULE}"
    return None


def _check_classes(value: object) -> str | None:
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of class names for labels 1..K, e.g. [nucleus, cytoplasm]; got {value!r}"
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        return f"every class name must be non-empty text; got {bad!r} in {value!r}"
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        return f"class names must be unique; {duplicates!r} appear more than once"
    return None


def _choice_check(choices: tuple[str, ...]):
    def check(value: object) -> str | None:
        if value not in choices:
            return f"{value!r} is not allowed; use one of {', '.join(choices)}"
        return None

    return check


def _positive_number(value: object) -> str | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value <= 0:
        return f"must be a positive number, got {value!r}"
    return None


_VALUE_CHECKS = {
    "project": _check_project,
    "classes": _check_classes,
    "microscopy": _choice_check(MICROSCOPY),
    "object": _choice_check(OBJECTS),
    "magnification": _positive_number,
    "pixel_size_um": _positive_number,
    "budget_minutes": _check_budget,
    "task": _choice_check(TASKS),
}


def read_split_images(labelled_set: LabelledSet, stems: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw images and masks of ``stems`` (in that order)."""
    index = {stem: i for i, stem in enumerate(labelled_set.stems)}
    pairs = [labelled_set.read(index[stem]) for stem in stems]
    return [image for image, _ in pairs], [mask for _, mask in pairs]


def read_split_instances(labelled_set: LabelledSet, stems: tuple[str, ...]) -> list[np.ndarray] | None:
    """Instance masks of ``stems`` (in that order), or None for a set without ``instances/``."""
    if not labelled_set.instance_paths:
        return None
    index = {stem: i for i, stem in enumerate(labelled_set.stems)}
    return [labelled_set.read_instances(index[stem]) for stem in stems]
