"""The ONNX Runtime GPU paths on a CPU: I/O binding through fakes of the session and its device buffers, the
TensorRT provider's choice and options, its library lookup through stand-in libraries built here."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from appliance.data.io import read_image
from appliance.pipeline import predictor as predictor_module
from appliance.pipeline.predictor import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    CudaBatchRunner,
    OnnxPredictor,
    default_providers,
    session_providers,
    tensorrt_options,
)


class FakeValue:
    """An OrtValue on a (fake) CUDA device."""

    def __init__(self, array, device_type, device_id):
        self.array, self.device = array.copy(), (device_type, device_id)
        self.updates = 0

    def update_inplace(self, array):
        assert array.shape == self.array.shape
        self.array[...] = array
        self.updates += 1


class FakeBinding:
    def __init__(self):
        self.input = self.output = None

    def bind_ortvalue_input(self, name, value):
        self.input = (name, value)

    def bind_output(self, name, device_type, device_id):
        self.output = (name, device_type, device_id)

    def copy_outputs_to_cpu(self):
        return [np.concatenate([-self.input[1].array, self.input[1].array], axis=1)]


class FakeSession:
    def __init__(self):
        self.bindings = []

    def io_binding(self):
        self.bindings.append(FakeBinding())
        return self.bindings[-1]

    def run_with_iobinding(self, binding):
        assert binding.input is not None and binding.output is not None

    def run(self, *args):
        raise AssertionError("the CUDA runner must not use session.run")


def test_the_cuda_runner_binds_a_device_input_buffer_per_shape_and_reuses_it(monkeypatch):
    created = []
    monkeypatch.setattr(
        ort.OrtValue,
        "ortvalue_from_numpy",
        lambda array, device_type, device_id: created.append(FakeValue(array, device_type, device_id)) or created[-1],
    )
    session = FakeSession()
    run = CudaBatchRunner(session, device_id=1)
    batches = [np.full((4, 1, 32, 32), v, np.float64) for v in (1.0, 2.0)] + [np.full((2, 1, 32, 32), 3.0)]
    outputs = [run(batch) for batch in batches]
    assert [value.device for value in created] == [("cuda", 1), ("cuda", 1)]  # a full batch and a shorter one
    assert created[0].updates == 1 and created[0].array.dtype == np.float32
    assert all(binding.output == ("logits", "cuda", 1) for binding in session.bindings)
    assert all(binding.input[0] == "image" for binding in session.bindings)
    for batch, out in zip(batches, outputs, strict=True):
        np.testing.assert_array_equal(out[:, 1:], batch)


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


REAL_SESSION = ort.InferenceSession


class BoundCpuSession:
    """A real CPU session that reports the TensorRT provider and runs I/O bindings on the CPU: the predictor's GPU
    path (provider options, runner, bindings) end to end without a GPU."""

    created: list = []

    def __init__(self, path, sess_options=None, providers=None):
        self.providers = providers
        self.real = REAL_SESSION(path, sess_options=sess_options, providers=[CPU_PROVIDER])
        BoundCpuSession.created.append(self)
        self.runs = 0

    def get_providers(self):
        return [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]

    def get_provider_options(self):
        return {TENSORRT_PROVIDER: {"device_id": "0"}}

    def get_outputs(self):
        return self.real.get_outputs()

    def io_binding(self):
        return FakeBinding()

    def run_with_iobinding(self, binding):
        name, value = binding.input
        binding.result = self.real.run(["logits"], {name: value.array})[0]
        self.runs += 1

    def run(self, *args):
        raise AssertionError("the GPU path must not use session.run")


def test_the_tensorrt_path_binds_its_batches_and_segments_as_the_cpu_does(
    monkeypatch, tmp_path, trained_model, demo_images_dir
):
    monkeypatch.setattr(predictor_module, "tensorrt_version", lambda: 100900)
    monkeypatch.setattr(FakeBinding, "copy_outputs_to_cpu", lambda binding: [binding.result])
    monkeypatch.setattr(
        ort.OrtValue, "ortvalue_from_numpy", lambda array, device_type, device_id: FakeValue(array, device_type, 0)
    )
    image = read_image(next(demo_images_dir.glob("*.tif")))
    expected = OnnxPredictor(trained_model, providers=[CPU_PROVIDER]).logits(image)
    monkeypatch.setattr(ort, "InferenceSession", BoundCpuSession)
    gpu = OnnxPredictor(trained_model, providers=[TENSORRT_PROVIDER, CUDA_PROVIDER], engine_cache=tmp_path / "trt")
    session = BoundCpuSession.created[-1]
    (name, options), cuda = session.providers
    assert (name, cuda) == (TENSORRT_PROVIDER, CUDA_PROVIDER)
    assert options["trt_engine_cache_path"].startswith(str(tmp_path / "trt"))
    tiles = json.loads((trained_model / "model.json").read_text())["tiles"]
    assert (
        options["trt_profile_max_shapes"] == f"image:{tiles['batch_size']}x1x{tiles['tile_size']}x{tiles['tile_size']}"
    )
    assert gpu.provider == TENSORRT_PROVIDER and isinstance(gpu._cuda_runner, CudaBatchRunner)
    np.testing.assert_allclose(gpu.logits(image), expected, atol=1e-5)
    assert session.runs >= 1


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
