"""Segment images with an exported model folder (``model.onnx`` + ``model.json``) on ONNX Runtime."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.data.io import NORMALISATION, normalise, read_format_json
from appliance.errors import ModelFileError
from appliance.pipeline.inference import (
    SIZE_MULTIPLE,
    TileSettings,
    device_sliding_window_logits,
    sliding_window_logits,
)
from appliance.pipeline.instances import DEFAULT_SEED_DEPTH_PX
from appliance.pipeline.task import SEMANTIC, TASKS, Segmentation, class_map, network_class_names, segmentation

logger = logging.getLogger(__name__)

METADATA_FILE = "model.json"
METADATA_FORMAT = 1
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT_PROVIDER, CUDA_PROVIDER)
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")
"""What onnxruntime's TensorRT provider links against (TensorRT 10); without them it cannot load."""


@lru_cache(maxsize=1)
def cuda_device_present() -> bool:
    """True when the CUDA driver loads and reports at least one GPU.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU and then logs errors while
    falling back; asking the driver first keeps the CPU path quiet.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


class BoundTensorRunner:
    """Runs tile batches held in torch tensors through ONNX Runtime's I/O binding on the tensors' own memory: the
    session reads the batch where it lies and writes the logits into a tensor allocated beside it, so on a GPU
    nothing crosses to the host until the blended image is finished (:func:`device_sliding_window_logits`).
    """

    def __init__(self, session: ort.InferenceSession, out_channels: int):
        self.session = session
        self.out_channels = out_channels

    def __call__(self, batch):
        import torch

        batch = batch.to(torch.float32).contiguous()
        out = batch.new_empty((batch.shape[0], self.out_channels, *batch.shape[2:]))  # float32, same device
        device_type, device_id = batch.device.type, batch.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input("image", device_type, device_id, np.float32, list(batch.shape), batch.data_ptr())
        binding.bind_output("logits", device_type, device_id, np.float32, list(out.shape), out.data_ptr())
        if device_type == "cuda":  # ONNX Runtime reads on its own stream: the tiles' kernels must be done
            torch.cuda.current_stream(batch.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


@lru_cache(maxsize=1)
def tensorrt_version() -> int | None:
    """TensorRT's version as its library reports it (10.9.0 → 100900) when TensorRT 10 is installed, else None.

    The libraries are looked up on the loader's path, then in the ``tensorrt_libs`` folder the ``tensorrt`` wheels
    install; they are loaded globally so that onnxruntime's TensorRT provider finds them when it loads.
    """
    spec = importlib.util.find_spec("tensorrt_libs")
    wheel_dirs = [Path(folder) for folder in (spec.submodule_search_locations or [])] if spec else []
    loaded = None
    for name in TENSORRT_LIBRARIES:
        for candidate in [name, *(str(folder / name) for folder in wheel_dirs)]:
            try:
                library = ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            loaded = loaded or library
            break
        else:
            return None
    loaded.getInferLibVersion.restype = ctypes.c_int32
    return int(loaded.getInferLibVersion())


def default_providers() -> list[str]:
    """The GPU providers first when a GPU is present and onnxruntime has them (TensorRT only when TensorRT is
    installed, then CUDA), then CPU."""
    if not cuda_device_present():
        return [CPU_PROVIDER]
    available = ort.get_available_providers()
    gpu = [name for name in GPU_PROVIDERS if name in available]
    if TENSORRT_PROVIDER in gpu and tensorrt_version() is None:
        gpu.remove(TENSORRT_PROVIDER)
    return [*gpu, CPU_PROVIDER]


def default_engine_cache() -> Path:
    """Where TensorRT engines go when the caller names no folder (the service names ``Settings.engine_cache_dir``)."""
    return Path.home() / ".cache" / "appliance" / "tensorrt"


def tensorrt_options(onnx_path: Path, metadata: dict, engine_cache: Path) -> dict[str, str]:
    """The TensorRT provider's options for one model: an engine built once and kept on disk, for every tile batch.

    onnxruntime names cached engines after the graph's structure, not its weights, and does not rebuild them for
    another onnxruntime or TensorRT version; so each model file's engines get their own folder, named after its
    content and both versions. One optimisation profile spans every batch the sliding window sends (1 to
    ``batch_size`` tiles of 32 px up to ``tile_size``), so no shape builds a second engine. FP16 kernels as the
    PyTorch path's autocast on CUDA.
    """
    with open(onnx_path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    folder = engine_cache / f"{digest[:16]}-ort{ort.__version__}-trt{tensorrt_version()}"
    folder.mkdir(parents=True, exist_ok=True)
    tiles = TileSettings(**metadata["tiles"])
    channels = int(metadata["input"]["channels"])
    largest = f"image:{tiles.batch_size}x{channels}x{tiles.tile_size}x{tiles.tile_size}"
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(folder),
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": f"image:1x{channels}x{SIZE_MULTIPLE}x{SIZE_MULTIPLE}",
        "trt_profile_opt_shapes": largest,
        "trt_profile_max_shapes": largest,
    }


def session_providers(
    names: list[str], onnx_path: Path, metadata: dict, engine_cache: Path
) -> list[str | tuple[str, dict[str, str]]]:
    """``names`` as ONNX Runtime takes them, the TensorRT provider with its options; TensorRT is left out (CUDA
    serves) when its engine folder cannot be made, e.g. a read-only cache."""
    providers: list[str | tuple[str, dict[str, str]]] = []
    for name in names:
        if name != TENSORRT_PROVIDER:
            providers.append(name)
            continue
        try:
            providers.append((name, tensorrt_options(onnx_path, metadata, engine_cache)))
        except OSError as error:
            logger.warning("TensorRT left out for %s: no engine folder in %s (%s)", onnx_path, engine_cache, error)
    return providers


class OnnxPredictor:
    """ONNX Runtime session + the model's JSON: raw image in, logits or labels out.

    Parameters
    ----------
    model_dir : path
        Folder with ``model.json`` and the ``.onnx`` file it names.
    providers : list of str, optional
        ONNX Runtime execution providers; default :func:`default_providers`.
    threads : int, optional
        Intra-op threads for the CPU provider (default: ONNX Runtime's choice, all cores).
    engine_cache : path, optional
        Folder of TensorRT engines when the TensorRT provider runs (default :func:`default_engine_cache`): the first
        session of a model builds its engine there, later ones load it.
    blend_device : str, optional
        The torch device whose memory the tiles are cut, run (I/O binding) and blended in. Default: the session's GPU
        when a GPU provider serves, else none (the NumPy blend on the host, the faster one on a CPU).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        engine_cache: str | Path | None = None,
        blend_device: str | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.metadata = read_model_metadata(self.model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        onnx_path = self.model_dir / self.metadata["model_file"]
        engine_cache = Path(engine_cache) if engine_cache is not None else default_engine_cache()
        try:
            self.session = ort.InferenceSession(
                str(onnx_path),
                sess_options=options,
                providers=session_providers(providers or default_providers(), onnx_path, self.metadata, engine_cache),
            )
        except Exception as exc:
            raise ModelFileError(f"{onnx_path}: ONNX Runtime cannot load it ({exc}); export the model again") from exc
        if blend_device is None and self.provider in GPU_PROVIDERS:
            gpu = self.session.get_provider_options().get(self.provider, {}).get("device_id", 0)
            blend_device = f"cuda:{int(gpu)}"
        if blend_device is not None and str(blend_device).startswith("cuda") and self.provider not in GPU_PROVIDERS:
            raise ValueError(f"blend_device {blend_device} needs a GPU session; this one runs on {self.provider}")
        self.blend_device = blend_device
        self.tiles = TileSettings(**self.metadata["tiles"])
        self.in_channels = int(self.metadata["input"]["channels"])
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.pixel_size_um: float | None = self.metadata.get("pixel_size_um")
        self.task: str = self.metadata.get("task", SEMANTIC)
        self.seed_depth_px: float = float(self.metadata.get("seed_depth_px", DEFAULT_SEED_DEPTH_PX))
        network = network_class_names(self.task, self.class_names)
        self._bound_runner = BoundTensorRunner(self.session, len(network) + 1)
        outputs = self.session.get_outputs()[0].shape
        if len(outputs) == 4 and isinstance(outputs[1], int) and outputs[1] != len(network) + 1:
            raise ModelFileError(
                f"{self.model_dir / METADATA_FILE}: a {self.task} model with class_names {self.class_names} has "
                f"{len(network)} network class(es) ({', '.join(network)}) but the network gives {outputs[1] - 1} "
                "(plus background); fix class_names and task or export the model again"
            )

    @property
    def provider(self) -> str:
        """The execution provider the session really runs on (the first one ONNX Runtime accepted)."""
        return self.session.get_providers()[0]

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(B, K + 1, h, w)`` of a float32 ``(B, C, h, w)`` batch of tiles on the host."""
        return self.session.run(["logits"], {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def logits(self, image: np.ndarray) -> np.ndarray:
        """``(K + 1, H, W)`` logits of a raw ``(H, W, C)`` image (tiles blended on :attr:`blend_device`)."""
        self._check_channels(image)
        if self.blend_device is not None:
            return device_sliding_window_logits(
                normalise(image), self._bound_runner, device=self.blend_device, tiles=self.tiles
            )
        return sliding_window_logits(normalise(image), self.run_batch, tiles=self.tiles)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 label image (0 = background, 1..K = classes) of a raw ``(H, W, C)`` image."""
        return class_map(self.task, self.logits(image))

    def segment(self, image: np.ndarray, *, min_object_px: int = 0) -> Segmentation:
        """Class map and one id per object of a raw ``(H, W, C)`` image (see :mod:`appliance.pipeline.task`)."""
        return segmentation(
            self.task, self.logits(image), seed_depth_px=self.seed_depth_px, min_object_px=min_object_px
        )

    def _check_channels(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != self.in_channels:
            got = image.shape[2] if image.ndim == 3 else 1
            raise ModelFileError(
                f"the model in {self.model_dir} expects images with {self.in_channels} channel(s), "
                f"this image has {got}; segment images of the kind the model was trained on"
            )


def read_model_metadata(model_dir: str | Path) -> dict:
    """Load and check ``model.json`` of a model folder."""
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    metadata = read_format_json(
        path,
        key="format",
        expected=METADATA_FORMAT,
        remedy="a model folder needs model.onnx and model.json; export the model again",
    )
    if metadata.get("normalisation") != NORMALISATION:
        raise ModelFileError(
            f"{path} uses normalisation {metadata.get('normalisation')}, this version applies {NORMALISATION}"
        )
    missing = [key for key in ("model_file", "input", "class_names", "tiles") if key not in metadata]
    if missing:
        raise ModelFileError(f"{path} lacks {', '.join(missing)}; export the model again")
    problems = _metadata_type_problems(metadata)
    if problems:
        raise ModelFileError(f"{path}: {'; '.join(problems)}; fix these keys or export the model again")
    if not (model_dir / metadata["model_file"]).is_file():
        raise ModelFileError(f"{model_dir / metadata['model_file']} not found beside {path}")
    return metadata


def _metadata_type_problems(metadata: dict) -> list[str]:
    """What is wrong with the types of ``model.json``'s keys (a hand-edited file must fail with the key's name)."""
    problems = []

    def positive(value: object, *, integer: bool = False) -> bool:
        kinds = int if integer else int | float
        return isinstance(value, kinds) and not isinstance(value, bool) and 0 < value < float("inf")

    if not isinstance(metadata["model_file"], str) or not metadata["model_file"]:
        problems.append(f"model_file must be a file name, got {metadata['model_file']!r}")
    channels = metadata["input"].get("channels") if isinstance(metadata["input"], dict) else None
    if not positive(channels, integer=True):
        problems.append(f"input.channels must be a positive whole number, got {channels!r}")
    names = metadata["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.append(f"class_names must be a non-empty list of names, got {names!r}")
    tiles = metadata["tiles"]
    try:
        if not isinstance(tiles, dict):
            raise TypeError("not a mapping")
        TileSettings(**tiles)
    except (TypeError, ValueError) as error:
        problems.append(f"tiles must be a mapping of valid tile settings, got {tiles!r} ({error})")
    if metadata.get("task", SEMANTIC) not in TASKS:
        problems.append(f"task must be one of {', '.join(TASKS)}, got {metadata['task']!r}")
    if "seed_depth_px" in metadata and not positive(metadata["seed_depth_px"]):
        problems.append(f"seed_depth_px must be a positive number, got {metadata['seed_depth_px']!r}")
    pixel_size = metadata.get("pixel_size_um")
    if pixel_size is not None and not positive(pixel_size):
        problems.append(f"pixel_size_um must be a positive number or null, got {pixel_size!r}")
    return problems
