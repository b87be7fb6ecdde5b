import io
import math

import pytest
import torch

from kdcore.analysis import (
    class_similarity,
    confusion_matrix,
    entropy_vs_temperature,
    kl_vs_temperature,
    per_class_accuracy,
)
from kdcore.engine.checkpoint import CheckpointError, save_checkpoint
from kdcore.export import to_torchscript
from kdcore.models import create_model

TEACHER = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 4.0], [0.5, 2.0, 0.0]])
STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
LABELS = torch.tensor([0, 1, 2, 1])


def _softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_kl_vs_temperature_matches_a_hand_computation_at_each_temperature():
    temps = [1.0, 2.0, 5.0]
    expected = []
    for t in temps:
        total = 0.0
        for trow, srow in zip(TEACHER.tolist(), STUDENT.tolist()):
            p, q = _softmax(trow, t), _softmax(srow, t)
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        expected.append(total / len(TEACHER))
    assert kl_vs_temperature(TEACHER, STUDENT, temps).tolist() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_for_identical_logits_and_shrinks_as_temperature_grows():
    assert kl_vs_temperature(TEACHER, TEACHER, [1.0, 4.0]).abs().max().item() < 1e-6
    kl = kl_vs_temperature(TEACHER, STUDENT, [1.0, 4.0, 20.0])
    assert kl[0] > kl[1] > kl[2] > 0


def test_entropy_vs_temperature_matches_a_hand_computation_and_approaches_log_k():
    temps = [0.5, 1.0, 3.0]
    expected = []
    for t in temps:
        rows = [_softmax(r, t) for r in TEACHER.tolist()]
        expected.append(sum(-sum(p * math.log(p) for p in row) for row in rows) / len(rows))
    assert entropy_vs_temperature(TEACHER, temps).tolist() == pytest.approx(expected, rel=1e-5)
    assert entropy_vs_temperature(TEACHER, [1000.0]).item() == pytest.approx(math.log(3), rel=1e-4)


def test_a_non_positive_temperature_is_refused():
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        entropy_vs_temperature(TEACHER, [0.0])


def test_class_similarity_is_the_mean_softened_distribution_per_true_class():
    t = 2.0
    sim = class_similarity(TEACHER, LABELS, 3, temperature=t)
    rows = [_softmax(r, t) for r in TEACHER.tolist()]
    expected_class1 = [(a + b) / 2 for a, b in zip(rows[1], rows[3])]  # images 1 and 3 are class 1
    assert sim[0].tolist() == pytest.approx(rows[0], rel=1e-5)
    assert sim[1].tolist() == pytest.approx(expected_class1, rel=1e-5)
    assert sim[2].tolist() == pytest.approx(rows[2], rel=1e-5)
    assert sim.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-5)


def test_class_similarity_marks_a_class_without_images_as_nan():
    sim = class_similarity(TEACHER[:1], LABELS[:1], 3)
    assert not torch.isnan(sim[0]).any()
    assert torch.isnan(sim[1]).all() and torch.isnan(sim[2]).all()


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    # student predictions: argmax rows -> 1, 1 (tie 1,2: first wins), 2, 0
    cm = confusion_matrix(STUDENT, LABELS, 3)
    assert cm.tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert cm.dtype == torch.int64
    assert confusion_matrix(torch.tensor([1, 1, 2, 0]), LABELS, 3).tolist() == cm.tolist()


def test_per_class_accuracy_is_recall_per_true_class_with_nan_for_absent_classes():
    acc = per_class_accuracy(STUDENT, LABELS, 3)
    assert acc.tolist() == pytest.approx([0.0, 0.5, 1.0])
    acc4 = per_class_accuracy(STUDENT, LABELS, 4)
    assert math.isnan(acc4[3].item())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_reproduces_the_checkpoint_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8).eval()
    path = tmp_path / "student.pt"
    save_checkpoint(path, model, arch="tiny_cnn", num_classes=10, in_channels=1, image_size=8)
    scripted = torch.jit.load(io.BytesIO(to_torchscript(path)))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_torchscript_export_refuses_a_bare_state_dict(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8).state_dict(), path)
    with pytest.raises(CheckpointError, match="only kdcore checkpoints"):
        to_torchscript(path)
