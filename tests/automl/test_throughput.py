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


def test_estimates_interpolate_between_measured_groups_in_log_log():
    # seconds = 1e-5 · pixels^0.9: a power law is a straight line in log-log, so interpolation is exact
    def seconds(group):
        return 1e-5 * (group.patch_size**2 * group.batch_size) ** 0.9

    low, high = MemoryGroup(64, 4, "resnet18"), MemoryGroup(256, 32, "resnet18")
    table = ThroughputTable("cpu x", "v1", {g: (1 / seconds(g), PROBE) for g in (low, high)})
    middle = MemoryGroup(128, 16, "resnet18")
    assert 1 / table.get(middle).steps_per_second == pytest.approx(seconds(middle))
    assert table.get(middle).source == "estimate" and table.get(low).source == PROBE
    assert table.get(middle).mpix_per_second == pytest.approx(128 * 128 * 16 / 1e6 / seconds(middle))


def test_beyond_the_measured_groups_the_nearest_slope_continues_within_bounds():
    gpu_like = {g: (steps_per_second(0.02, 1e-8, g), PROBE) for g in (R18_SMALL, R18_LARGE)}  # nearly flat
    table = ThroughputTable("gpu", "v1", gpu_like)
    big = MemoryGroup(256, 32, "resnet18")  # 16× the larger group's pixels: at least √16 = 4× its step time
    assert 1 / table.get(big).steps_per_second >= 4 / gpu_like[R18_LARGE][0] * 0.999


def test_an_encoder_without_measurements_follows_the_other_one():
    measured = {g: (steps_per_second(0.02, 1e-7, g), PROBE) for g in (R18_SMALL, R18_LARGE)}
    table = ThroughputTable("gpu", "v1", measured)
    assert 1 / table.get(R50_LARGE).steps_per_second == pytest.approx(tp.RESNET50_COST / measured[R18_LARGE][0])
    measured[R50_SMALL] = (0.5 * measured[R18_SMALL][0], PROBE)  # one resnet50 group: twice resnet18's time there
    table = ThroughputTable("gpu", "v1", measured)
    assert table.get(R50_LARGE).steps_per_second == pytest.approx(0.5 * measured[R18_LARGE][0])


def test_prediction_speed_is_measured_or_four_times_training_speed():
    table = ThroughputTable("cpu x", "v1", {R18_SMALL: (4.0, PROBE), R18_LARGE: (1.0, PROBE)}, {"resnet18": 0.5})
    assert table.prediction_mpix_per_second("resnet18") == 0.5
    default = table.get(MemoryGroup(128, 16, "resnet50")).mpix_per_second
    assert table.prediction_mpix_per_second("resnet50") == pytest.approx(4 * default)


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
    store.record_throughput("gpu A", "v1", MemoryGroup(512, 1, "resnet18"), 20.0, source=PROBE, kind="predict")
    rows = store.throughput("gpu A", "v1")
    assert [(r.kind, r.steps_per_second, r.source) for r in rows] == [
        ("predict", 20.0, PROBE),
        ("train", 12.0, TRAINING),
    ]
    table = ThroughputTable.load(store, torch.device("cpu"), version="v1")
    assert table.measured == {}  # another device


def test_reference_groups_are_measured_once_per_device_and_version(tmp_path, monkeypatch):
    calls = []

    def fake_measure(group, device, **kwargs):
        calls.append(group)
        return steps_per_second(0.01, 2e-6, group)  # a CPU-like device: 0.04 s for patch 64 / batch 4

    monkeypatch.setattr(tp, "measure_group", fake_measure)
    monkeypatch.setattr(tp, "measure_prediction", lambda encoder, device: {"resnet18": 0.5, "resnet50": 0.3}[encoder])
    store = Store(tmp_path / "s.sqlite")
    table = ensure_reference_measurements(store, torch.device("cpu"))
    assert [g.encoder for g in calls] == ["resnet18", "resnet18", "resnet18", "resnet50", "resnet50"]
    assert calls[0] == R18_SMALL and calls[2] == MemoryGroup(128, 16, "resnet18")  # the paper default's group
    # the larger reference: ≥ 4× the smallest's pixels and a step of at most about 1 s by its per-pixel cost
    larger = calls[1]
    assert larger.patch_size**2 * larger.batch_size >= 4 * 64 * 64 * 4
    loaded = ThroughputTable.load(store, torch.device("cpu"))
    assert loaded.measured == table.measured
    assert loaded.prediction == pytest.approx({"resnet18": 0.5, "resnet50": 0.3})
    ensure_reference_measurements(store, torch.device("cpu"))
    assert len(calls) == 5
    assert table.device == device_name(torch.device("cpu"))


def test_a_training_slice_replaces_the_probe_but_a_tiny_one_does_not(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    table = ThroughputTable("cpu x", "v1", {R18_SMALL: (4.0, PROBE), R18_LARGE: (1.0, PROBE)})
    config = PipelineConfig(patch_size=64, batch_size=4)
    record_training_throughput(store, table, config, steps=2, seconds=1.0)
    assert table.get(config).steps_per_second == 4.0
    record_training_throughput(store, table, config, steps=30, seconds=10.0)
    assert table.get(config).steps_per_second == 3.0 and table.get(config).source == TRAINING
    assert store.throughput("cpu x", "v1")[0].steps_per_second == 3.0


def test_a_slice_slowed_by_load_lowers_its_group_only_halfway_and_a_faster_one_raises_it_fully(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    table = ThroughputTable("cpu x", "v1", {R18_SMALL: (4.0, PROBE)})
    config = PipelineConfig(patch_size=64, batch_size=4)
    record_training_throughput(store, table, config, steps=40, seconds=10.0)  # replaces the probe fully
    assert table.get(config).steps_per_second == 4.0
    record_training_throughput(store, table, config, steps=10, seconds=10.0)  # 1 step/s under load
    assert table.get(config).steps_per_second == pytest.approx(2.0)
    assert store.throughput("cpu x", "v1")[0].steps_per_second == pytest.approx(2.0)
    record_training_throughput(store, table, config, steps=10, seconds=10.0)  # still slow: it keeps coming down
    assert table.get(config).steps_per_second == pytest.approx(2.0**0.5)
    record_training_throughput(store, table, config, steps=50, seconds=10.0)  # the load went: back up at once
    assert table.get(config).steps_per_second == 5.0


def test_measuring_a_real_group_and_prediction_on_the_cpu():
    assert measure_group(R18_SMALL, torch.device("cpu"), min_seconds=0.0) > 0
    assert tp.measure_prediction("resnet18", torch.device("cpu"), repeats=1) > 0


def test_the_throughput_command_measures_once_and_prints_all_24_groups(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from appliance.cli import main

    monkeypatch.setattr(tp, "measure_group", lambda group, device, **kwargs: steps_per_second(0.01, 2e-6, group))
    monkeypatch.setattr(tp, "measure_prediction", lambda encoder, device: 0.4)
    runner = CliRunner()
    first = runner.invoke(main, ["throughput", "--device", "cpu", "--data-dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert first.output.count("throughput of patch") == 5  # the reference groups, probed
    assert first.output.count("prediction speed of") == 2
    rows = [line for line in first.output.splitlines() if line.rstrip().endswith(("probe", "estimate"))]
    assert len(rows) == 24 and sum(line.endswith("probe") for line in rows) == 5
    again = runner.invoke(main, ["throughput", "--device", "cpu", "--data-dir", str(tmp_path), "--measure"])
    assert again.output.count("throughput of patch") == 19  # the rest, once
    assert sum(line.rstrip().endswith("probe") for line in again.output.splitlines()) == 24


def test_an_encoder_measured_on_small_groups_takes_the_large_end_of_its_curve_from_the_other():
    # resnet18 measured up to the paper default's group, resnet50 only on small ones: above its largest group resnet50
    # follows resnet18's shape (the device's), anchored at its own largest measurement
    r18 = {
        MemoryGroup(64, 4, "resnet18"): 0.2,
        MemoryGroup(128, 4, "resnet18"): 0.45,
        MemoryGroup(128, 16, "resnet18"): 2.0,
    }
    r50 = {MemoryGroup(64, 4, "resnet50"): 0.43, MemoryGroup(64, 16, "resnet50"): 1.17}
    table = ThroughputTable("cpu x", "v1", {g: (1 / s, PROBE) for g, s in {**r18, **r50}.items()})
    default_r50 = MemoryGroup(128, 16, "resnet50")
    assert 1 / table.get(default_r50).steps_per_second == pytest.approx(1.17 * 2.0 / 0.45)


def test_real_and_resident_training_speed_of_a_group_on_the_cpu():
    measured = tp.measure_real_and_resident(R18_SMALL, torch.device("cpu"), min_seconds=0.0, chunk_seconds=0.0)
    assert measured.group == R18_SMALL and measured.real > 0 and measured.resident > 0
    assert measured.ratio == pytest.approx(measured.real / measured.resident)
    assert measured.mpix_per_second(measured.real) == pytest.approx(measured.real * 64 * 64 * 4 / 1e6)
