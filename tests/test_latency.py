"""Latency on this machine (PyTorch and onnxruntime), and the MACs and latencies a run records."""
import pytest
import torch
from torch import nn

from kdcore.configure import load_config
from kdcore.engine.run import execute_run
from kdcore.latency import cpu_model, measure_latency
from kdcore.models import create_model, profile_model

ROOT_CONFIG = "examples/digits.yaml"


def test_latency_has_both_backends_both_batches_and_ordered_percentiles():
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[128, 64])
    model.train()
    threads = torch.get_num_threads()
    rows = measure_latency(model, (1, 8, 8), batch_sizes=(1, 64), budget_s=0.05)
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("torch", "onnxruntime") for n in (1, 64)}
    for row in rows:
        assert set(row) == {"backend", "batch", "median_ms", "p10_ms", "p90_ms", "repeats", "threads", "device"}
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["repeats"] >= 5 and row["threads"] == threads and row["device"]
    assert model.training and torch.get_num_threads() == threads  # the caller's model and threads as they were


def test_latency_threads_are_set_for_both_backends_and_restored():
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    before = torch.get_num_threads()
    rows = measure_latency(model, (1, 8, 8), batch_sizes=(2,), threads=1, repeats=5, warmup=1)
    assert [r["threads"] for r in rows] == [1, 1] and all(r["repeats"] == 5 for r in rows)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="tensorrt"):
        measure_latency(model, (1, 8, 8), backends=("tensorrt",))


def test_flops_are_twice_the_macs_and_an_mlp_has_the_macs_of_its_linears():
    mlp = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[128, 64])
    by_hand = sum(m.in_features * m.out_features for m in mlp.modules() if isinstance(m, nn.Linear))
    assert by_hand == 64 * 128 + 128 * 64 + 64 * 10
    profile = profile_model(mlp, 1, 8)
    assert profile.macs == by_hand and profile.flops == 2 * profile.macs
    cnn = profile_model(create_model("small_cnn", num_classes=10, in_channels=3, image_size=32), 3, 32)
    assert cnn.macs > 0 and cnn.flops == 2 * cnn.macs


def test_a_run_records_macs_and_latency_per_phase(tmp_path):
    config = load_config(ROOT_CONFIG, ["teacher.epochs=1", "train.epochs=1"])
    summary = execute_run(config, tmp_path / "run", device=torch.device("cpu"))
    for phase in ("teacher", "student", "baseline"):
        assert summary[f"{phase}_flops"] == 2 * summary[f"{phase}_macs"] > 0
        assert summary[f"{phase}_latency_ms_b1"] > 0 and summary[f"{phase}_latency_ms_b64"] > 0
    assert summary["student_macs"] == 64 * 128 + 128 * 64 + 64 * 10
    assert summary["latency_threads"] == torch.get_num_threads() and summary["latency_cpu"] == cpu_model()


def test_a_cancelled_run_records_no_latency(tmp_path):
    config = load_config(ROOT_CONFIG, ["teacher.epochs=1", "train.epochs=1"])
    summary = execute_run(config, tmp_path / "run", should_stop=lambda: True, device=torch.device("cpu"))
    assert summary["cancelled"] is True
    assert not any("latency" in key for key in summary)
