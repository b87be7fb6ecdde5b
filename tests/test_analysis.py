import io
import math

import pytest
import torch

from kdcore.analysis import (
    class_similarity,
    confusion_matrix,
    entropy_vs_temperature,
    expected_calibration_error,
    fixed_and_broken,
    frontier_points,
    kl_vs_temperature,
    pareto_front,
    per_class_accuracy,
    per_class_gain,
    reliability_table,
)
from kdcore.engine.checkpoint import CheckpointError, save_checkpoint
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


# ---- calibration ---------------------------------------------------------------------------------
# logits = log(probabilities), so softmax gives these rows back exactly; 3 bins: (0, 1/3], (1/3, 2/3], (2/3, 1]
CALIB_PROBS = [[0.90, 0.05, 0.03, 0.02],  # label 0: right, confidence 0.9 -> bin 3
               [0.10, 0.80, 0.05, 0.05],  # label 0: wrong, confidence 0.8 -> bin 3
               [0.60, 0.20, 0.10, 0.10],  # label 0: right, confidence 0.6 -> bin 2
               [0.20, 0.50, 0.20, 0.10],  # label 1: right, confidence 0.5 -> bin 2
               [0.30, 0.25, 0.25, 0.20],  # label 1: wrong, confidence 0.3 -> bin 1
               [0.25, 0.25, 0.30, 0.20]]  # label 2: right, confidence 0.3 -> bin 1
CALIB_LABELS = torch.tensor([0, 0, 0, 1, 1, 2])


def test_ece_matches_a_hand_computation_over_three_bins():
    logits = torch.tensor(CALIB_PROBS).log()
    # bin 1: n 2, accuracy 1/2, confidence 0.30 -> gap 0.20
    # bin 2: n 2, accuracy 2/2, confidence 0.55 -> gap 0.45
    # bin 3: n 2, accuracy 1/2, confidence 0.85 -> gap 0.35
    expected = 2 / 6 * 0.20 + 2 / 6 * 0.45 + 2 / 6 * 0.35
    assert expected_calibration_error(logits, CALIB_LABELS, bins=3) == pytest.approx(expected, abs=1e-6)
    table = reliability_table(logits, CALIB_LABELS, bins=3)
    assert [r["count"] for r in table] == [2, 2, 2]
    assert [r["accuracy"] for r in table] == pytest.approx([0.5, 1.0, 0.5])
    assert [r["confidence"] for r in table] == pytest.approx([0.30, 0.55, 0.85])
    assert [r["lower"] for r in table] == pytest.approx([0, 1 / 3, 2 / 3])
    assert [r["upper"] for r in table] == pytest.approx([1 / 3, 2 / 3, 1])


def test_ece_is_zero_for_a_perfectly_calibrated_model():
    # four images at 75% confidence, three right; five at 60%, three right
    logits = torch.tensor([[0.75, 0.25]] * 4 + [[0.6, 0.4]] * 5).log()
    labels = torch.tensor([0, 0, 0, 1] + [0, 0, 0, 1, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-6)
    assert expected_calibration_error(logits, 1 - labels) > 0.2  # the same confidences, mostly wrong


def test_reliability_table_counts_every_prediction_once():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 10, generator=gen) * 3, torch.randint(0, 10, (500,), generator=gen)
    table = reliability_table(logits, labels, bins=15)
    assert len(table) == 15 and sum(r["count"] for r in table) == 500
    assert all(r["lower"] <= r["confidence"] <= r["upper"] for r in table if r["count"])
    assert all(math.isnan(r["accuracy"]) for r in table if not r["count"])


# ---- per class -----------------------------------------------------------------------------------
PC_LABELS = torch.tensor([0, 0, 1, 1, 1, 2])
PC_STUDENT = torch.tensor([0, 1, 1, 1, 0, 2])  # class 0: 1/2, class 1: 2/3, class 2: 1/1
PC_BASELINE = torch.tensor([0, 0, 1, 0, 0, 1])  # class 0: 2/2, class 1: 1/3, class 2: 0/1


def test_per_class_accuracy_and_gain_on_a_fixed_example():
    assert per_class_accuracy(PC_STUDENT, PC_LABELS, 4)[:3].tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    rows = per_class_gain(PC_STUDENT, PC_BASELINE, PC_LABELS, 4)
    assert [r["class"] for r in rows] == [0, 1, 2, 3]
    assert [r["count"] for r in rows] == [2, 3, 1, 0]
    assert [r["gain"] for r in rows[:3]] == pytest.approx([-0.5, 1 / 3, 1.0])
    assert math.isnan(rows[3]["gain"])  # class 3 has no test images
    # logits give the same as their predictions
    logits = torch.nn.functional.one_hot(PC_STUDENT, 4).float()
    assert per_class_gain(logits, PC_BASELINE, PC_LABELS, 4)[1]["gain"] == pytest.approx(1 / 3)


def test_fixed_and_broken_lists_the_images_distillation_changed():
    fixed, broken = fixed_and_broken(PC_STUDENT, PC_BASELINE, PC_LABELS)
    assert fixed == [3, 5]  # student right, baseline wrong
    assert broken == [1]  # baseline right, student wrong


# ---- cost against accuracy -----------------------------------------------------------------------
def test_pareto_front_keeps_ties_and_drops_dominated_points():
    points = [(10, 0.80),  # 0: on the front
              (20, 0.90),  # 1: on the front
              (20, 0.90),  # 2: the same point again: both copies stay
              (20, 0.85),  # 3: same cost, lower accuracy: dominated by 1
              (30, 0.90),  # 4: same accuracy at a higher cost: dominated by 1
              (40, 0.95),  # 5: on the front
              (5, float("nan")),  # 6: no accuracy: never on the front
              (50, 0.70)]  # 7: dominated by everything cheaper
    assert pareto_front(points) == [0, 1, 2, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]


def test_frontier_points_give_teacher_baseline_and_student_with_macs():
    summary = dict(student_test_acc=0.9, teacher_test_acc=0.95, baseline_test_acc=0.85, student_params=10,
                   teacher_params=100, student_flops=20, teacher_flops=400, teacher_macs=190)
    runs = [dict(id=3, name="a", method="kd", dataset="digits", teacher_arch="cnn", student_arch="mlp",
                 summary=summary),
            dict(id=4, name="queued", method="kd", dataset="digits", teacher_arch="cnn", student_arch="mlp",
                 summary={})]
    frame = frontier_points(runs).set_index("role")
    assert list(frame.index) == ["teacher", "baseline", "student"] and set(frame["run_id"]) == {3}
    assert frame.loc["teacher", "macs"] == 190  # the summary's own MACs
    assert frame.loc["student", "macs"] == 10  # else FLOPs / 2
    assert frame.loc["baseline", "params"] == 10  # the student's architecture
    assert frame["latency_ms_b1"].isna().all()
