"""The CUDA path on a CPU: every CUDA call the appliance makes goes to strict fakes that, like
``torch.cuda.set_per_process_memory_fraction``, reject a device without an index (the bug that stopped every
training job on the first GPU it met)."""

from types import SimpleNamespace

import pytest
import torch
from torch.cuda._utils import _get_device_index

from appliance.automl.backend import TorchBackend
from appliance.automl.halving import DoesNotFit, TrialFailed
from appliance.data.splits import split_stems
from appliance.pipeline import device as dev
from appliance.pipeline.config import PipelineConfig

GIB = 2**30


class FakeCuda:
    """One 80 GB GPU. Each call checks its device argument with torch's own ``_get_device_index(optional=False)``."""

    def __init__(self):
        self.calls: list[tuple[str, int | None]] = []
        self.fraction: float | None = None

    def install(self, monkeypatch) -> None:
        strict = {
            "get_device_properties": lambda device: SimpleNamespace(total_memory=80 * GIB, name="Fake H100"),
            "get_device_name": lambda device: "Fake H100",
            "set_per_process_memory_fraction": None,  # takes (fraction, device)
            "reset_peak_memory_stats": lambda device: None,
            "max_memory_allocated": lambda device: 512 * 2**20,
            "max_memory_reserved": lambda device: 600 * 2**20,
            "synchronize": lambda device: None,
        }
        for name, result in strict.items():
            monkeypatch.setattr(torch.cuda, name, self._checked(name, result))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: self.calls.append(("empty_cache", None)))
        dev.device_name.cache_clear()

    def _checked(self, name: str, result):
        def call(*args):
            device = args[-1]
            self.calls.append((name, _get_device_index(device, optional=False)))
            if result is None:
                self.fraction = args[0]
                return None
            return result(device)

        return call


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    yield fake
    dev.device_name.cache_clear()


def test_the_fake_rejects_what_torch_rejects():
    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"), optional=False)


def test_every_device_the_appliance_is_given_gets_an_index(fake_cuda):
    assert dev.resolve_device(None) == torch.device("cuda", 0)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device(torch.device("cuda")) == torch.device("cuda", 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert dev.resolve_device("cpu") == torch.device("cpu")


def test_cuda_calls_accept_an_index_less_device(fake_cuda):
    bare = torch.device("cuda")
    assert dev.cap_gpu_memory(bare, 8.0) == pytest.approx(0.1)
    assert fake_cuda.fraction == pytest.approx(0.1)
    dev.reset_peak_memory(bare)
    assert dev.peak_memory_mb(bare) == 512
    assert dev.peak_reserved_mb(bare) == 600
    assert dev.process_peak_memory_mb(bare) == 512
    dev.synchronize(bare)
    dev.release_cached_memory(bare)
    assert dev.device_name(bare) == "Fake H100"
    assert dev.amp_dtype(bare) == torch.bfloat16
    called = {name for name, _ in fake_cuda.calls}
    assert called >= {"set_per_process_memory_fraction", "reset_peak_memory_stats", "synchronize", "get_device_name"}


def test_a_cap_above_the_card_is_the_whole_card(fake_cuda):
    assert dev.cap_gpu_memory(torch.device("cuda"), 200.0) == 1.0


def test_cpu_makes_no_cuda_call(fake_cuda):
    cpu = torch.device("cpu")
    assert dev.cap_gpu_memory(cpu, 8.0) is None
    dev.reset_peak_memory(cpu)
    dev.synchronize(cpu)
    assert dev.peak_memory_mb(cpu) is None
    assert dev.amp_dtype(cpu) is None
    assert fake_cuda.calls == []


class OutOfMemoryTrainer:
    """Stands in for a Trainer whose step runs out of CUDA memory."""

    config = PipelineConfig()

    def __init__(self):
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def train(self, patches, **limits):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_the_training_backend_on_cuda_caps_probes_and_reports(fake_cuda, demo_set):
    """What `appliance train` and `appliance run` do first on a GPU: the backend as `train_set` builds it."""
    split = split_stems(demo_set.stems, seed=0)
    backend = TorchBackend(demo_set, split, seed=0, device="cuda", gpu_memory_gb=8.0)
    assert backend.device == torch.device("cuda", 0)
    assert backend.memory_fraction == pytest.approx(0.1)
    assert backend.peak_memory_mb() == 512
    with pytest.raises(DoesNotFit, match="8 GB cap"):
        backend.probe(OutOfMemoryTrainer())
    with pytest.raises(TrialFailed, match="CUDA out of memory under the 8 GB cap"):
        backend.train(OutOfMemoryTrainer(), 1.0)
    assert ("empty_cache", None) in fake_cuda.calls
