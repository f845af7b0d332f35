"""The ONNX Runtime GPU paths on a CPU: I/O binding on tensor memory and the device blend (for real, on CPU
tensors), the TensorRT provider's choice and options (a session that reports it), its library lookup (stand-in
libraries built here)."""

import json
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import onnxruntime as ort
import pytest

from appliance.data.io import read_image
from appliance.pipeline import predictor as predictor_module
from appliance.pipeline.predictor import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    BoundTensorRunner,
    OnnxPredictor,
    default_providers,
    session_providers,
    tensorrt_options,
)

REAL_SESSION = ort.InferenceSession


@pytest.mark.parametrize("shape", [(384, 384), (97, 530), (40, 33)])
def test_onnx_runtime_bound_to_tensor_memory_blends_as_the_host_does(trained_model, demo_images_dir, shape):
    """The GPU path's I/O binding and device blend, for real on the CPU: a real session bound to CPU tensors."""
    image = read_image(next(demo_images_dir.glob("*.tif")))[: shape[0], : shape[1]]
    host = OnnxPredictor(trained_model, providers=[CPU_PROVIDER])
    bound = OnnxPredictor(trained_model, providers=[CPU_PROVIDER], blend_device="cpu")
    assert host.blend_device is None  # on a CPU the NumPy blend is the default
    with pytest.raises(ValueError, match="cuda:0 needs a GPU session; this one runs on CPUExecutionProvider"):
        OnnxPredictor(trained_model, providers=[CPU_PROVIDER], blend_device="cuda:0")
    bound.session.run = lambda *args, **kwargs: pytest.fail("the bound path must not use session.run")
    expected = host.logits(image)
    actual = bound.logits(image)
    assert actual.shape == expected.shape == (2, *image.shape[:2]) and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("gpu", "available", "tensorrt", "expected"),
    [
        (False, [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER], 100900, [CPU_PROVIDER]),
        (True, [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER], None, [CUDA_PROVIDER, CPU_PROVIDER]),
        (
            True,
            [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER],
            100900,
            [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER],
        ),
        (True, [CUDA_PROVIDER, CPU_PROVIDER], 100900, [CUDA_PROVIDER, CPU_PROVIDER]),
        (True, [CPU_PROVIDER], 100900, [CPU_PROVIDER]),
    ],
)
def test_tensorrt_comes_first_only_with_a_gpu_its_provider_and_its_libraries(
    monkeypatch, gpu, available, tensorrt, expected
):
    monkeypatch.setattr(predictor_module, "cuda_device_present", lambda: gpu)
    monkeypatch.setattr(predictor_module, "tensorrt_version", lambda: tensorrt)
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    assert default_providers() == expected


def _model_folder(folder, weights: bytes, tiles=None):
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(weights)
    tiles = tiles or {"tile_size": 256, "overlap": 0.5, "batch_size": 6}
    return folder / "model.onnx", {"input": {"channels": 3}, "tiles": tiles}


def test_each_model_file_gets_its_own_engine_folder_and_one_profile_spans_every_tile_batch(monkeypatch, tmp_path):
    monkeypatch.setattr(predictor_module, "tensorrt_version", lambda: 100900)
    cache = tmp_path / "cache"
    first = tensorrt_options(*_model_folder(tmp_path / "a", b"weights one"), cache)
    same = tensorrt_options(*_model_folder(tmp_path / "b", b"weights one"), cache)
    other = tensorrt_options(*_model_folder(tmp_path / "c", b"weights two"), cache)
    # onnxruntime names engines by graph structure, not weights: a re-trained model must not load the old engine
    assert first["trt_engine_cache_path"] == same["trt_engine_cache_path"] != other["trt_engine_cache_path"]
    folder = cache / first["trt_engine_cache_path"].split("/")[-1]
    assert folder.is_dir() and folder.parent == cache
    assert folder.name.endswith(f"-ort{ort.__version__}-trt100900")
    assert first["trt_timing_cache_path"] == first["trt_engine_cache_path"]
    assert first["trt_engine_cache_enable"] == first["trt_fp16_enable"] == "True"
    assert first["trt_profile_min_shapes"] == "image:1x3x32x32"
    assert first["trt_profile_opt_shapes"] == first["trt_profile_max_shapes"] == "image:6x3x256x256"


def test_a_cache_that_cannot_hold_engines_leaves_tensorrt_out_and_cuda_serves(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(predictor_module, "tensorrt_version", lambda: 100900)
    onnx_path, metadata = _model_folder(tmp_path / "m", b"weights")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    names = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
    assert session_providers(names, onnx_path, metadata, blocked / "tensorrt") == [CUDA_PROVIDER, CPU_PROVIDER]
    assert "TensorRT left out" in caplog.text and "a-file" in caplog.text
    provided = session_providers(names, onnx_path, metadata, tmp_path / "cache")
    assert provided[0][0] == TENSORRT_PROVIDER and provided[1:] == [CUDA_PROVIDER, CPU_PROVIDER]


class FakeCudaTensor:
    """A float32 tensor on GPU 1, as far as the runner can tell."""

    def __init__(self, shape, pointer):
        self.shape, self.pointer = tuple(shape), pointer
        self.device = types.SimpleNamespace(type="cuda", index=1)

    def to(self, dtype):
        return self

    def contiguous(self):
        return self

    def data_ptr(self):
        return self.pointer

    def new_empty(self, shape):
        return FakeCudaTensor(shape, self.pointer + 1000)


def test_the_bound_runner_binds_gpu_memory_after_the_tiles_are_ready_and_waits_for_the_logits(monkeypatch):
    import torch

    calls = []

    class Binding:
        def bind_input(self, *args):
            calls.append(("input", *args))

        def bind_output(self, *args):
            calls.append(("output", *args))

        def synchronize_outputs(self):
            calls.append(("outputs synchronised",))

    class Session:
        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            calls.append(("run",))

    stream = types.SimpleNamespace(synchronize=lambda: calls.append(("torch stream synchronised",)))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: calls.append(("stream of", device)) or stream)
    out = BoundTensorRunner(Session(), out_channels=3)(FakeCudaTensor((4, 1, 64, 96), pointer=5000))
    assert out.shape == (4, 3, 64, 96) and out.device.type == "cuda"
    assert [call[0] for call in calls] == [
        "input",
        "output",
        "stream of",
        "torch stream synchronised",
        "run",
        "outputs synchronised",
    ]
    assert calls[0][1:] == ("image", "cuda", 1, np.float32, [4, 1, 64, 96], 5000)
    assert calls[1][1:] == ("logits", "cuda", 1, np.float32, [4, 3, 64, 96], 6000)


class TensorrtReportingSession:
    """A real CPU session that says it runs on TensorRT, GPU 1: the predictor's GPU choices without a GPU."""

    created: list = []

    def __init__(self, path, sess_options=None, providers=None):
        self.providers = providers
        self.real = REAL_SESSION(path, sess_options=sess_options, providers=[CPU_PROVIDER])
        TensorrtReportingSession.created.append(self)

    def get_providers(self):
        return [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]

    def get_provider_options(self):
        return {TENSORRT_PROVIDER: {"device_id": "1"}}

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_tensorrt_session_gets_its_options_and_cuts_and_blends_on_its_gpu(monkeypatch, tmp_path, trained_model):
    monkeypatch.setattr(predictor_module, "tensorrt_version", lambda: 100900)
    monkeypatch.setattr(ort, "InferenceSession", TensorrtReportingSession)
    gpu = OnnxPredictor(trained_model, providers=[TENSORRT_PROVIDER, CUDA_PROVIDER], engine_cache=tmp_path / "trt")
    (name, options), cuda = TensorrtReportingSession.created[-1].providers
    assert (name, cuda) == (TENSORRT_PROVIDER, CUDA_PROVIDER)
    assert options["trt_engine_cache_path"].startswith(str(tmp_path / "trt"))
    tiles = json.loads((trained_model / "model.json").read_text())["tiles"]
    largest = f"image:{tiles['batch_size']}x1x{tiles['tile_size']}x{tiles['tile_size']}"
    assert options["trt_profile_max_shapes"] == largest
    assert gpu.provider == TENSORRT_PROVIDER and gpu.blend_device == "cuda:1"


def test_tensorrt_libraries_are_found_where_the_tensorrt_wheels_put_them(tmp_path):
    """Stand-ins for TensorRT's two libraries, built here, in a ``tensorrt_libs`` package as the wheels lay it out;
    a fresh interpreter, so nothing stays loaded in this one."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build stand-in libraries")
    package = tmp_path / "tensorrt_libs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = tmp_path / "nvinfer.c"
    source.write_text("int getInferLibVersion(void) { return 100900; }\n")
    for name in ("libnvinfer.so.10", "libnvonnxparser.so.10"):
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(package / name), str(source)], check=True)
    probe = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from appliance.pipeline.predictor import tensorrt_version
        print(tensorrt_version())
        """
    )
    found = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "100900"
    (package / "libnvonnxparser.so.10").unlink()  # half an installation is none
    missing = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == "None"
