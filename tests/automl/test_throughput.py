"""The throughput table: stored per device and code version, estimated from two groups per encoder, refreshed by
real training slices, measured once."""

import pytest
import torch

from appliance.automl import throughput as tp
from appliance.automl.memory import MemoryGroup, memory_groups
from appliance.automl.throughput import (
    PROBE,
    TRAINING,
    ThroughputTable,
    ThroughputUnknown,
    ensure_reference_measurements,
    measure_group,
    record_training_throughput,
)
from appliance.pipeline.config import PipelineConfig
from appliance.pipeline.device import device_name
from appliance.store import Store

R18_SMALL, R18_LARGE = MemoryGroup(64, 4, "resnet18"), MemoryGroup(128, 8, "resnet18")
R50_SMALL, R50_LARGE = MemoryGroup(64, 4, "resnet50"), MemoryGroup(128, 8, "resnet50")


def steps_per_second(fixed: float, per_pixel: float, group: MemoryGroup) -> float:
    return 1.0 / (fixed + per_pixel * group.patch_size**2 * group.batch_size)


def test_two_measured_groups_estimate_the_rest_of_their_encoder_exactly():
    true = {g: steps_per_second(0.02, 1e-7, g) for g in (R18_SMALL, R18_LARGE)}
    table = ThroughputTable("gpu", "v1", {g: (s, PROBE) for g, s in true.items()})
    big = MemoryGroup(256, 32, "resnet18")
    assert table.get(big).steps_per_second == pytest.approx(steps_per_second(0.02, 1e-7, big))
    assert table.get(big).source == "estimate"
    assert table.get(R18_SMALL).source == PROBE
    assert table.get(big).mpix_per_second == pytest.approx(table.get(big).steps_per_second * 256 * 256 * 32 / 1e6)
    # the other encoder, unmeasured, costs RESNET50_COST times as much per pixel with the same fixed cost
    r50 = table.get(big.__class__(256, 32, "resnet50"))
    assert 1 / r50.steps_per_second == pytest.approx(0.02 + 1e-7 * tp.RESNET50_COST * 256 * 256 * 32)


def test_one_group_of_an_encoder_keeps_the_other_encoders_fixed_cost():
    measured = {g: (steps_per_second(0.02, 1e-7, g), PROBE) for g in (R18_SMALL, R18_LARGE)}
    measured[R50_SMALL] = (steps_per_second(0.02, 3e-7, R50_SMALL), PROBE)
    table = ThroughputTable("gpu", "v1", measured)
    assert table.get(R50_LARGE).steps_per_second == pytest.approx(steps_per_second(0.02, 3e-7, R50_LARGE))


def test_all_24_groups_have_a_value_and_nothing_measured_says_what_to_do():
    table = ThroughputTable("cpu x", "v1", {R18_SMALL: (4.0, PROBE), R18_LARGE: (1.0, PROBE)})
    assert len(table.rows()) == len(memory_groups()) == 24
    assert all(row.steps_per_second > 0 for row in table.rows())
    with pytest.raises(ThroughputUnknown, match="measure the reference groups first"):
        ThroughputTable("cpu x", "v1", {}).get(R18_SMALL)


def test_the_store_keeps_one_value_per_group_device_and_code_version(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.record_throughput("gpu A", "v1", R18_SMALL, 10.0, source=PROBE)
    store.record_throughput("gpu A", "v1", R18_SMALL, 12.0, source=TRAINING)
    store.record_throughput("gpu A", "v2", R18_SMALL, 99.0, source=PROBE)
    store.record_throughput("gpu B", "v1", R18_SMALL, 5.0, source=PROBE)
    rows = store.throughput("gpu A", "v1")
    assert [(r["steps_per_second"], r["source"]) for r in rows] == [(12.0, TRAINING)]


def test_reference_groups_are_measured_once_per_device_and_version(tmp_path, monkeypatch):
    calls = []

    def fake_measure(group, device, **kwargs):
        calls.append(group)
        return steps_per_second(0.01, 2e-6, group)  # a CPU-like device: 0.04 s for patch 64 / batch 4

    monkeypatch.setattr(tp, "measure_group", fake_measure)
    store = Store(tmp_path / "s.sqlite")
    table = ensure_reference_measurements(store, torch.device("cpu"))
    assert [g.encoder for g in calls] == ["resnet18", "resnet18", "resnet50", "resnet50"]
    assert calls[0] == R18_SMALL
    # the larger reference: ≥ 4× the smallest's pixels and a step of at most about 1 s by its per-pixel cost
    larger = calls[1]
    assert larger.patch_size**2 * larger.batch_size >= 4 * 64 * 64 * 4
    assert ThroughputTable.load(store, torch.device("cpu")).measured == table.measured
    ensure_reference_measurements(store, torch.device("cpu"))
    assert len(calls) == 4
    assert table.device == device_name(torch.device("cpu"))


def test_a_training_slice_replaces_the_probe_but_a_tiny_one_does_not(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    table = ThroughputTable("cpu x", "v1", {R18_SMALL: (4.0, PROBE), R18_LARGE: (1.0, PROBE)})
    config = PipelineConfig(patch_size=64, batch_size=4)
    record_training_throughput(store, table, config, steps=2, seconds=1.0)
    assert table.get(config).steps_per_second == 4.0
    record_training_throughput(store, table, config, steps=30, seconds=10.0)
    assert table.get(config).steps_per_second == 3.0 and table.get(config).source == TRAINING
    assert store.throughput("cpu x", "v1")[0]["steps_per_second"] == 3.0


def test_measuring_a_real_group_on_the_cpu():
    assert measure_group(R18_SMALL, torch.device("cpu"), min_seconds=0.0) > 0


def test_the_throughput_command_measures_once_and_prints_all_24_groups(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from appliance.cli import main

    monkeypatch.setattr(tp, "measure_group", lambda group, device, **kwargs: steps_per_second(0.01, 2e-6, group))
    runner = CliRunner()
    first = runner.invoke(main, ["throughput", "--device", "cpu", "--data-dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert first.output.count("throughput of patch") == 4  # the reference groups, probed
    rows = [line for line in first.output.splitlines() if line.rstrip().endswith(("probe", "estimate"))]
    assert len(rows) == 24 and sum(line.endswith("probe") for line in rows) == 4
    again = runner.invoke(main, ["throughput", "--device", "cpu", "--data-dir", str(tmp_path), "--measure"])
    assert again.output.count("throughput of patch") == 20  # the rest, once
    assert sum(line.rstrip().endswith("probe") for line in again.output.splitlines()) == 24
