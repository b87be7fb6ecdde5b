"""bench/throughput.py: the strong peer trains, and every peer's ratio is reported."""
import json

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
                            "--data-root", str(tmp_path), "--limit", "192", "--batch-size", "64", "--repeats", "1",
                            "--warmup-batches", "1", "--workers", "0", "--device", "cpu", "--markdown",
                            "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "synthetic CIFAR-shaped images: CIFAR-100 not found" in text
    for label in throughput.PEER_LABELS.values():
        assert f"kdcore / {label}: " in text
    record = json.loads(out.read_text())
    assert record["images"] == 192 and record["batch_size"] == 64
    assert set(record["ratios"]) == {"tutorial", "strong", "strong-cached"}
    assert all(len(v) == 1 and min(v) > 0 for v in record["rates"].values())
    assert "| kdcore / strong-cached |" in text.replace(" | date", "")


def test_the_peers_can_be_chosen_and_unknown_ones_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        throughput.parse_args(["--peers", "strong,fastest"])
    args = throughput.parse_args(["--dataset", "cifar100", "--peers", "strong-cached"])
    assert (args.teacher, args.student, args.peers) == ("resnet32x4", "resnet8x4", ("strong-cached",))
    assert throughput.parse_args([]).teacher == "small_cnn"
