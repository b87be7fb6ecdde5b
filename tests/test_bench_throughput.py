"""bench/throughput.py: the strong peer trains, and every peer's ratio is reported."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bench import throughput
from kdcore.configure import build_config
from kdcore.losses import soft_target_loss
from kdcore.models import create_model


def distill_loss(student, teacher, x, y, cfg) -> float:
    with torch.no_grad():
        s, t = student(x), teacher(x)
        d = cfg.distill
        return float((1 - d.alpha) * F.cross_entropy(s, y) + d.alpha * soft_target_loss(s, t, d.temperature))


@pytest.mark.parametrize("cached", [False, True], ids=["teacher every batch", "teacher logits cached"])
def test_the_strong_loop_trains_the_student_towards_its_teacher(cached):
    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    cfg = build_config({"dataset": {"name": "digits"}, "train": {"batch_size": 64, "lr": 0.01, "schedule": "none"}})
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8).eval()
    student = create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8)
    before = distill_loss(student, teacher, x, y, cfg)
    seconds = throughput.strong_run(x, y, cfg, teacher, student, torch.device("cpu"), epochs=8, cached=cached,
                                    teacher_batch=256, seed=0)
    student.eval()
    after = distill_loss(student.to(memory_format=torch.contiguous_format), teacher, x, y, cfg)
    assert seconds > 0
    assert after < 0.8 * before


def test_cifar_shaped_runs_say_their_images_are_synthetic_and_report_every_peers_ratio(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    code = throughput.main(["--dataset", "cifar100", "--teacher", "tiny_cnn", "--student", "tiny_cnn",
                            "--data-root", str(tmp_path), "--limit", "128", "--batch-size", "64", "--repeats", "1",
                            "--warmup-batches", "1", "--workers", "0", "--device", "cpu", "--markdown",
                            "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "synthetic CIFAR-shaped images: CIFAR-100 not found" in text
    for peer in throughput.DEFAULT_PEERS:
        assert f"kdcore / {throughput.PEER_LABELS[peer]}: " in text
    record = json.loads(out.read_text())
    assert record["images"] == 128 and record["batch_size"] == 64
    assert set(record["ratios"]) == {"tutorial", "strong", "strong-cached"}
    assert all(len(v) == 1 and min(v) > 0 for v in record["rates"].values())
    assert "| kdcore / strong-cached |" in text.replace(" | date", "")


def test_kdcore_with_its_teachers_pass_always_beside_is_a_peer_held_to_level(tmp_path, capsys, monkeypatch):
    from kdcore.engine import teacher_cache

    shares = []
    real_wait = teacher_cache.TeacherLogitCache.wait_for

    def recorded_wait(cache, batches):
        shares.append(teacher_cache.PROBE_WAITED_SHARE)
        return real_wait(cache, batches)

    monkeypatch.setattr(teacher_cache.TeacherLogitCache, "wait_for", recorded_wait)
    code = throughput.main(["--teacher", "tiny_cnn", "--student", "tiny_cnn", "--limit", "256", "--batch-size", "64",
                            "--repeats", "1", "--warmup-batches", "1", "--device", "cpu", "--threads", "2",
                            "--peers", "kdcore-beside"])
    text = capsys.readouterr().out
    assert code == 0
    assert f"kdcore / {throughput.PEER_LABELS['kdcore-beside']}: " in text and "target 1x on cpu" in text
    assert math.inf in shares and throughput.teacher_cache.PROBE_WAITED_SHARE < 1  # off for its runs alone
    assert set(shares) == {math.inf, teacher_cache.PROBE_WAITED_SHARE}


def test_the_peers_can_be_chosen_and_unknown_ones_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        throughput.parse_args(["--peers", "strong,fastest"])
    args = throughput.parse_args(["--dataset", "cifar100", "--peers", "strong-cached"])
    assert (args.teacher, args.student, args.peers) == ("resnet32x4", "resnet8x4", ("strong-cached",))
    assert throughput.parse_args([]).teacher == "small_cnn"


def test_the_gpu_report_puts_failed_tests_unmet_targets_and_timeouts_into_the_docs_block(tmp_path):
    from bench import gpu_report

    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir(), logs.mkdir()
    (out / "steps.tsv").write_text("tests\t1\t80.2\t150\nhinton\t0\t18.4\t150\nthroughput_cifar_b128\t124\t100.0\t100\n")
    rates = {"kdcore": [30000.0, 31000.0], "strong": [20000.0, 21000.0], "strong-cached": [29000.0, 30000.0]}
    ratios = {"strong": {"ratio": 1.48, "per_run": [1.5, 1.48], "target": 1.2, "met": True},
              "strong-cached": {"ratio": 1.03, "per_run": [1.03, 1.03], "target": 1.2, "met": False}}
    (out / "throughput.jsonl").write_text(json.dumps({
        "teacher": "small_cnn", "student": "tiny_cnn", "data": "MNIST", "note": "", "images": 54000, "batch_size": 128,
        "epochs": 1, "repeats": 2, "fast_path": "precision bf16", "rates": rates, "ratios": ratios}) + "\n")
    (logs / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_gpu_path" name="test_a"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_b"/><testcase classname="tests.test_gpu" name="test_c"/>'
        '</testsuite></testsuites>')
    env = tmp_path / "env.json"
    env.write_text(json.dumps({"torch": "2.11.0+cu130", "cuda": "13.0", "gpu": "NVIDIA H200", "gpu_memory_gib": 140}))
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nbefore\n\n<!-- gpu_check:begin -->\nstale figures\n<!-- gpu_check:end -->\n\nafter\n")
    assert gpu_report.main(["--out", str(out), "--logs", str(logs), "--env", str(env), "--docs", str(docs),
                            "--total", "431.0"]) == 0
    text = docs.read_text()
    assert "before" in text and "after" in text and "stale figures" not in text
    assert "NVIDIA H200, 140 GiB, torch 2.11.0+cu130" in text
    assert "2 passed, 1 failed, 0 skipped of 3; failed: test_gpu_path::test_a." in text
    assert "**1.48x**" in text and "1.03x (target 1.2x: not met)" in text
    assert "| throughput_cifar_b128 | timed out | 100.0 | 100 |" in text
    assert "`kdcore train` (teacher, student and baseline): 18.4 s" in text
    elsewhere = tmp_path / "other.md"
    elsewhere.write_text("# Other\n")
    assert gpu_report.main(["--apply", str(out / "gpu_check.md"), "--docs", str(elsewhere)]) == 0
    assert elsewhere.read_text().count("<!-- gpu_check:begin -->") == 1 and "**1.48x**" in elsewhere.read_text()


def test_a_real_cifar100_folder_is_read_and_every_side_gets_the_same_images(tmp_path):
    from tests.test_data import write_cifar100

    write_cifar100(tmp_path, n=40)
    args = throughput.parse_args(["--dataset", "cifar100", "--data-root", str(tmp_path), "--limit", "30"])
    cfg, data = throughput.setup(args, torch.device("cpu"))
    assert data.name == "CIFAR-100" and data.note == ""
    assert len(data.train) == len(data.tutorial) == 30 and data.splits.class_names[3] == "class3"
    x, y = data.tutorial[7]
    assert y == int(data.train.y[7])
    assert torch.allclose(x, data.train.x[7], atol=1e-5)  # per-image ToTensor + Normalize = kdcore's tensors
