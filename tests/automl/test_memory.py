import pytest
import torch

from appliance.automl.memory import (
    MemoryGroup,
    estimate_training_memory,
    measure_training_memory,
    memory_groups,
)
from appliance.automl.search_space import search_space


def test_the_576_configurations_fall_into_24_memory_groups_of_24():
    groups = memory_groups()
    assert len(groups) == 24
    assert all(len(configs) == 24 for configs in groups.values())
    members = [config for configs in groups.values() for config in configs]
    assert sorted(c.id for c in members) == sorted(c.id for c in search_space())
    for group, configs in groups.items():
        assert {(c.patch_size, c.batch_size, c.encoder) for c in configs} == {
            (group.patch_size, group.batch_size, group.encoder)
        }
    assert next(iter(groups)) == MemoryGroup(64, 4, "resnet18")


def test_the_fake_trace_counts_the_same_bytes_as_real_tensors():
    group = MemoryGroup(64, 4, "resnet18")
    fake = estimate_training_memory(group, in_channels=1, precision="fp32")
    real = estimate_training_memory(group, in_channels=1, precision="fp32", fake=False)
    assert fake == real
    # weights of a U-Net with a resnet18 encoder: about 14.3 M float32 parameters, Adam keeps two moments
    assert fake.parameters_mb == pytest.approx(14.33e6 * 4 / 2**20, rel=0.02)
    assert fake.optimizer_mb >= 2 * fake.parameters_mb


def test_activations_grow_with_the_batch_and_shrink_under_bf16_autocast():
    small = estimate_training_memory(MemoryGroup(128, 8, "resnet18"), precision="fp32")
    large = estimate_training_memory(MemoryGroup(128, 16, "resnet18"), precision="fp32")
    half = estimate_training_memory(MemoryGroup(128, 16, "resnet18"), precision="bf16")
    assert large.activations_mb == pytest.approx(2 * small.activations_mb, rel=0.15)
    assert large.parameters_mb == small.parameters_mb
    assert half.activations_mb < 0.75 * large.activations_mb
    assert half.total_mb < large.total_mb


def test_an_unknown_precision_and_measuring_without_cuda_are_refused():
    with pytest.raises(ValueError, match="precision 'fp16' is not one of bf16, fp32"):
        estimate_training_memory(MemoryGroup(64, 4, "resnet18"), precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            measure_training_memory(MemoryGroup(64, 4, "resnet18"), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA memory")
def test_the_measured_cuda_peak_is_close_to_the_estimate():
    group = MemoryGroup(128, 16, "resnet18")
    measured = measure_training_memory(group, torch.device("cuda"))
    estimate = estimate_training_memory(group, precision="bf16")
    assert 0.6 * estimate.total_mb < measured.allocated_mb < 2.0 * estimate.total_mb
    assert measured.reserved_mb >= measured.allocated_mb
