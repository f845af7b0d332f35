"""Sliding-window inference on whole images, shared by PyTorch and ONNX Runtime.

The image is normalised (:func:`appliance.data.io.normalise`) as a whole, padded with 0 at the
bottom/right to a multiple of 32 (and to at least one tile), cut into overlapping tiles, and the tile
logits are blended with a Gaussian weight (σ = tile / 8, as nnU-Net) that trusts tile centres more
than tile borders. The tile size is an inference setting, independent of the training patch size.

Two implementations of the same blend: :func:`sliding_window_logits` over any :data:`BatchRunner` (NumPy on the
host; ONNX Runtime on the CPU uses it) and :func:`device_sliding_window_logits`, which cuts, batches and blends the
tiles on a torch device and copies only the finished logits back (a PyTorch model through
:func:`torch_sliding_window_logits`; ONNX Runtime on the GPU, bound to the tiles' device memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from appliance.pipeline.patches import grid_positions

SIZE_MULTIPLE = 32
"""Input height and width must be multiples of this (five stride-2 stages in the U-Net encoder)."""

BatchRunner = Callable[[np.ndarray], np.ndarray]
"""Maps a float32 ``(B, C, h, w)`` batch of tiles to float32 ``(B, K + 1, h, w)`` logits."""


@dataclass(frozen=True)
class TileSettings:
    """How whole images are tiled at inference (saved in the model JSON)."""

    tile_size: int = 512
    overlap: float = 0.5
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.tile_size < SIZE_MULTIPLE or self.tile_size % SIZE_MULTIPLE:
            raise ValueError(f"tile_size must be a positive multiple of {SIZE_MULTIPLE}, got {self.tile_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


DEFAULT_TILES = TileSettings()


@lru_cache(maxsize=16)
def gaussian_weight(height: int, width: int) -> np.ndarray:
    """``(height, width)`` float32 Gaussian importance map, peak 1, σ = side / 8, floored at 1e-3."""
    ys = np.arange(height) - (height - 1) / 2
    xs = np.arange(width) - (width - 1) / 2
    weight = np.exp(-(ys[:, None] ** 2) / (2 * (height / 8) ** 2) - (xs[None, :] ** 2) / (2 * (width / 8) ** 2))
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_layout(
    height: int, width: int, *, tiles: TileSettings = DEFAULT_TILES
) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
    """How an ``height × width`` image is tiled: padded size, tile size and the tiles' top-left corners.

    >>> tile_layout(100, 700, tiles=TileSettings(tile_size=512, overlap=0.5))
    ((128, 704), (128, 512), [(0, 0), (0, 192)])
    """
    padded_h = max(_round_up(height, SIZE_MULTIPLE), SIZE_MULTIPLE)
    padded_w = max(_round_up(width, SIZE_MULTIPLE), SIZE_MULTIPLE)
    tile_h, tile_w = min(tiles.tile_size, padded_h), min(tiles.tile_size, padded_w)
    step_h = max(SIZE_MULTIPLE, int(tile_h * (1 - tiles.overlap)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    step_w = max(SIZE_MULTIPLE, int(tile_w * (1 - tiles.overlap)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    corners = [
        (int(y), int(x))
        for y in grid_positions(padded_h, tile_h, step_h)
        for x in grid_positions(padded_w, tile_w, step_w)
    ]
    return (padded_h, padded_w), (tile_h, tile_w), corners


def tile_pixels(height: int, width: int, *, tiles: TileSettings = DEFAULT_TILES) -> int:
    """Pixels the network runs on to segment an ``height × width`` image (every tile counted in full).

    >>> tile_pixels(100, 700, tiles=TileSettings(tile_size=512, overlap=0.5))
    131072
    """
    _, (tile_h, tile_w), corners = tile_layout(height, width, tiles=tiles)
    return len(corners) * tile_h * tile_w


def sliding_window_logits(
    normalised: np.ndarray, run_batch: BatchRunner, *, tiles: TileSettings = DEFAULT_TILES
) -> np.ndarray:
    """Logits ``(K + 1, H, W)`` for a normalised ``(H, W, C)`` float32 image."""
    height, width = normalised.shape[:2]
    (padded_h, padded_w), (tile_h, tile_w), corners = tile_layout(height, width, tiles=tiles)
    image = np.pad(normalised, ((0, padded_h - height), (0, padded_w - width), (0, 0)))
    image = np.ascontiguousarray(image.transpose(2, 0, 1))  # (C, H, W)
    weight = gaussian_weight(tile_h, tile_w)

    logits_sum: np.ndarray | None = None
    weight_sum = np.zeros((padded_h, padded_w), dtype=np.float32)
    for start in range(0, len(corners), tiles.batch_size):
        chunk = corners[start : start + tiles.batch_size]
        batch = np.stack([image[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])
        out = np.asarray(run_batch(batch), dtype=np.float32)
        if logits_sum is None:
            logits_sum = np.zeros((out.shape[1], padded_h, padded_w), dtype=np.float32)
        for (y, x), tile_logits in zip(chunk, out, strict=True):
            logits_sum[:, y : y + tile_h, x : x + tile_w] += tile_logits * weight
            weight_sum[y : y + tile_h, x : x + tile_w] += weight
    assert logits_sum is not None
    return (logits_sum / weight_sum)[:, :height, :width]


def device_sliding_window_logits(normalised: np.ndarray, run_batch, *, device, tiles: TileSettings = DEFAULT_TILES):
    """Logits ``(K + 1, H, W)`` for a normalised ``(H, W, C)`` float32 image, as :func:`sliding_window_logits`, but
    with the tiles cut, batched and blended on the torch ``device``: ``run_batch`` maps a ``(B, C, h, w)`` float32
    tensor on ``device`` to ``(B, K + 1, h, w)`` logits there (a PyTorch model, or ONNX Runtime bound to the tensors'
    memory); only the finished logits come back to the host.
    """
    import torch

    device = torch.device(device)
    height, width = normalised.shape[:2]
    (padded_h, padded_w), (tile_h, tile_w), corners = tile_layout(height, width, tiles=tiles)
    with torch.inference_mode():
        image = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32)).to(device)
        image = torch.nn.functional.pad(image.permute(2, 0, 1), (0, padded_w - width, 0, padded_h - height))
        weight = torch.from_numpy(gaussian_weight(tile_h, tile_w)).to(device)
        weight_sum = torch.zeros((padded_h, padded_w), dtype=torch.float32, device=device)
        logits_sum = None
        for start in range(0, len(corners), tiles.batch_size):
            chunk = corners[start : start + tiles.batch_size]
            out = run_batch(torch.stack([image[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])).float()
            if logits_sum is None:
                logits_sum = torch.zeros((out.shape[1], padded_h, padded_w), dtype=torch.float32, device=device)
            for (y, x), tile_logits in zip(chunk, out, strict=True):
                logits_sum[:, y : y + tile_h, x : x + tile_w].addcmul_(tile_logits, weight)
                weight_sum[y : y + tile_h, x : x + tile_w] += weight
        assert logits_sum is not None
        return (logits_sum[:, :height, :width] / weight_sum[:height, :width]).cpu().numpy()


def torch_sliding_window_logits(
    normalised: np.ndarray,
    model,
    *,
    device=None,
    tiles: TileSettings = DEFAULT_TILES,
    amp_dtype=None,
    channels_last: bool = False,
) -> np.ndarray:
    """:func:`device_sliding_window_logits` of a PyTorch model on ``device`` (default: the model's).

    ``amp_dtype`` runs the model under autocast (CUDA: bf16 or fp16; blending stays float32); ``channels_last``
    hands it channels-last batches. The model is put in eval mode for the call and back afterwards.
    """
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def run(batch):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(batch.contiguous(memory_format=memory_format))

    was_training = model.training
    model.eval()
    try:
        return device_sliding_window_logits(normalised, run, device=device, tiles=tiles)
    finally:
        model.train(was_training)


def torch_runner(model, *, device=None) -> BatchRunner:
    """A :data:`BatchRunner` over a PyTorch model in eval mode (mixed precision on CUDA)."""
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device

    def run(batch: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
                out = model(torch.from_numpy(batch).to(device))
            return out.float().cpu().numpy()
        finally:
            model.train(was_training)

    return run
