"""Ways a technician can drop a bad labelled set, each with the words its reason must contain.

Each maker turns a fresh copy of the bundled demo set (at ``root``) into one kind of bad set and returns the
folder to drop (usually ``root`` itself). Shared by the intake unit tests and the end-to-end test.
"""

import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def _missing_masks(root: Path) -> Path:
    shutil.rmtree(root / "masks")
    return root


def _image_without_mask(root: Path) -> Path:
    (root / "masks" / "set8.png").unlink()
    return root


def _mask_without_image(root: Path) -> Path:
    (root / "images" / "set8.png").unlink()
    return root


def _mask_size_differs(root: Path) -> Path:
    mask = iio.imread(root / "masks" / "set1.png")
    iio.imwrite(root / "masks" / "set1.png", mask[:200, :200])
    return root


def _truncated_image(root: Path) -> Path:
    data = (root / "images" / "set2.png").read_bytes()
    (root / "images" / "set2.png").write_bytes(data[: len(data) // 3])
    return root


def _unsupported_file(root: Path) -> Path:
    (root / "images" / "notes.docx").write_bytes(b"PK\x03\x04 not an image")
    return root


def _too_few_images(root: Path) -> Path:
    for stem in ("set3", "set4", "set5", "set6", "set7", "set8"):
        (root / "images" / f"{stem}.png").unlink()
        (root / "masks" / f"{stem}.png").unlink()
    return root


def _unknown_yaml_key(root: Path) -> Path:
    with open(root / "dataset.yaml", "a") as handle:
        handle.write("colour: red\n")
    return root


def _bad_microscopy(root: Path) -> Path:
    text = (root / "dataset.yaml").read_text().replace("phase_contrast", "xray")
    (root / "dataset.yaml").write_text(text)
    return root


def _colour_mask(root: Path) -> Path:
    mask = iio.imread(root / "masks" / "set3.png")
    colour = np.stack([mask, np.zeros_like(mask), 255 - mask], axis=-1).astype(np.uint8)
    iio.imwrite(root / "masks" / "set3.png", colour)
    return root


def _label_beyond_classes(root: Path) -> Path:
    mask = iio.imread(root / "masks" / "set4.png").copy()
    mask[:10, :10] = 7
    iio.imwrite(root / "masks" / "set4.png", mask)
    return root


def _unsafe_set_name(root: Path) -> Path:
    renamed = root.with_name("my cells!")
    root.rename(renamed)
    return renamed


def _unsafe_file_name(root: Path) -> Path:
    for folder in ("images", "masks"):
        (root / folder / "set5.png").rename(root / folder / "set5?.png")
    return root


def _symbolic_link(root: Path) -> Path:
    os.symlink(root / "images" / "set1.png", root / "images" / "set9.png")
    shutil.copy(root / "masks" / "set1.png", root / "masks" / "set9.png")
    return root


def _jpeg_mask(root: Path) -> Path:
    mask = iio.imread(root / "masks" / "set6.png")
    (root / "masks" / "set6.png").unlink()
    iio.imwrite(root / "masks" / "set6.jpg", mask.astype(np.uint8), extension=".jpg")
    return root


def _empty_set(root: Path) -> Path:
    for folder in ("images", "masks"):
        for path in (root / folder).iterdir():
            path.unlink()
    return root


def _name_not_utf8(root: Path) -> Path:
    for folder in ("images", "masks"):
        os.rename(root / folder / "set5.png", os.path.join(os.fsencode(root / folder), b"caf\xe9.png"))
    return root


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcde", "bcdef", strict=True)),
        "",
    ]
)


def _yaml_bomb(root: Path) -> Path:
    (root / "dataset.yaml").write_text(BILLION_LAUGHS)
    return root


def _huge_yaml(root: Path) -> Path:
    with open(root / "dataset.yaml", "a") as handle:
        handle.write("# padding\n" * 20000)
    return root


def _huge_budget(root: Path) -> Path:
    with open(root / "dataset.yaml", "a") as handle:
        handle.write("budget_minutes: 1.0e+9\n")
    return root


def _pipe_in_set(root: Path) -> Path:
    os.mkfifo(root / "images" / "stream.png")
    return root


def _set_name_with_leading_dash(root: Path) -> Path:
    return root.rename(root.with_name("-rf"))


BAD_SETS = {
    "missing masks folder": (_missing_masks, "masks/: the masks/ folder is missing"),
    "image without mask": (_image_without_mask, "images/set8.png: no mask with the stem 'set8'"),
    "mask without image": (_mask_without_image, "masks/set8.png: no image with the stem 'set8'"),
    "mask size differs": (_mask_size_differs, "masks/set1.png: mask size 200×200 differs from image"),
    "truncated image": (_truncated_image, "images/set2.png: cannot be decoded"),
    "unsupported file": (_unsupported_file, "images/notes.docx: unsupported file type .docx"),
    "too few images": (_too_few_images, "only 2 image(s); at least 3 are needed"),
    "unknown dataset.yaml key": (_unknown_yaml_key, "dataset.yaml: unknown key 'colour'"),
    "bad microscopy value": (_bad_microscopy, "dataset.yaml: microscopy: 'xray' is not allowed"),
    "colour mask": (_colour_mask, "masks/set3.png: mask is a colour image"),
    "label beyond classes": (_label_beyond_classes, "masks/set4.png: label values {0, 1, 7} found"),
    "unsafe set name": (_unsafe_set_name, "the set folder name 'my cells!' is not safe"),
    "unsafe file name": (_unsafe_file_name, "images/set5?.png: the name 'set5?.png' holds ?"),
    "symbolic link": (_symbolic_link, "images/set9.png: is a symbolic link"),
    "JPEG mask": (_jpeg_mask, "masks/set6.jpg: unsupported file type .jpg in masks/"),
    "empty set": (_empty_set, "the set is empty: no images found"),
    "name not UTF-8": (_name_not_utf8, "images/caf\\xe9.png: the name 'caf\\xe9.png' is not valid UTF-8 text"),
    "YAML bomb": (_yaml_bomb, "dataset.yaml: is not valid YAML (aliases (*name) are not allowed"),
    "huge dataset.yaml": (_huge_yaml, "dataset.yaml: is 200"),
    "huge budget": (_huge_budget, "budget_minutes: 1000000000.0 minutes is more than the allowed 10080"),
    "pipe in set": (_pipe_in_set, "images/stream.png: is not a regular file"),
    "set name with leading dash": (_set_name_with_leading_dash, "the set folder name '-rf' is not safe"),
}


def make_bad_set(kind: str, source: Path, inbox: Path) -> tuple[Path, str]:
    """Copy ``source`` into ``inbox`` under a name for ``kind``, break it; return the folder and expected text."""
    make, expected = BAD_SETS[kind]
    root = inbox / kind.replace(" ", "_").replace(".", "_")
    shutil.copytree(source, root)
    return make(root), expected
