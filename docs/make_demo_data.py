"""Re-create the bundled demo sample (appliance/demo_data/) from the shared Usiigaci set (MIT licence).

Run from the repository root with ../shared beside it: python docs/make_demo_data.py
Crops are 256x256 (labelled) and 384x384 (new images), taken where the window's cell fraction is
closest to 0.3 on a 64-px grid, so every crop shows several cells; pixel values are unchanged (16-bit).
"""

from pathlib import Path

import numpy as np
import tifffile

from appliance.data.io import read_image, read_mask, write_png

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "usiigaci_phase_cells"
OUT = Path(__file__).resolve().parents[1] / "appliance" / "demo_data"


def best_window(mask: np.ndarray, size: int) -> tuple[int, int]:
    candidates = [
        (y, x) for y in range(0, mask.shape[0] - size + 1, 64) for x in range(0, mask.shape[1] - size + 1, 64)
    ]
    return min(candidates, key=lambda yx: abs(mask[yx[0] : yx[0] + size, yx[1] : yx[1] + size].mean() - 0.3))


def main() -> None:
    labelled = OUT / "labelled" / "usiigaci_phase_cells_demo"
    for number in range(1, 9):
        image = read_image(SOURCE / "images" / f"set{number}.png")[:, :, 0]
        mask = read_mask(SOURCE / "masks" / f"set{number}.png")
        y, x = best_window(mask, 256)
        write_png(labelled / "images" / f"set{number}.png", image[y : y + 256, x : x + 256])
        write_png(labelled / "masks" / f"set{number}.png", mask[y : y + 256, x : x + 256].astype(np.uint8))
    (labelled / "dataset.yaml").write_text(
        "project: phase-demo\nclasses: [cell]\nmicroscopy: phase_contrast\nobject: cells\nmagnification: 15\n"
    )
    new_images = OUT / "images" / "phase-demo"
    new_images.mkdir(parents=True, exist_ok=True)
    for number in (20, 21, 22):
        image = read_image(SOURCE / "images" / f"set{number}.png")[:, :, 0]
        mask = read_mask(SOURCE / "masks" / f"set{number}.png")
        y, x = best_window(mask, 384)
        tifffile.imwrite(new_images / f"set{number}.tif", image[y : y + 384, x : x + 384])
    (OUT / "SOURCE.txt").write_text(
        (SOURCE / "SOURCE.txt").read_text()
        + "\n\nDemo crops bundled with the appliance (made by docs/make_demo_data.py):\n"
        "labelled/usiigaci_phase_cells_demo: 256x256 crops of set1..set8 (16-bit PNG image, uint8 mask 0/1).\n"
        "images/phase-demo: 384x384 crops of set20..set22 as 16-bit TIFF, unlabelled, for inference.\n"
        "Redistributed under the MIT License of the source repository (Copyright (c) 2018 OIST).\n"
    )


if __name__ == "__main__":
    main()
