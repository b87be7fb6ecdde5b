"""What a trained teacher and student say about the test set, computed from stored logits.

Pure functions of tensors: no models are run, so a UI can recompute them at
any temperature at once. Logits are (N, K) float tensors, labels (N,) int64.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import torch
from torch import Tensor

from kdcore.losses import entropy, softened
from kdcore.record.summary import RunSummary

if TYPE_CHECKING:
    import pandas as pd


def _temperatures(temperatures: Sequence[float] | Tensor) -> list[float]:
    temps = [float(t) for t in temperatures]
    if any(t <= 0 for t in temps):
        raise ValueError(f"temperatures must be > 0, got {temps}")
    return temps


def _predictions(logits_or_preds: Tensor) -> Tensor:
    # (N, K) logits -> (N,) classes; (N,) predictions pass through
    return logits_or_preds.argmax(1) if logits_or_preds.dim() == 2 else logits_or_preds.long()


def kl_vs_temperature(teacher_logits: Tensor, student_logits: Tensor,
                      temperatures: Sequence[float] | Tensor) -> Tensor:
    """Mean KL(teacher || student) over the test set, in nats, of the distributions softened at each T.

    Without the T² factor of the training loss: this is the divergence itself.

    Returns:
        A (len(temperatures),) float tensor.
    """
    out = []
    for t in _temperatures(temperatures):
        log_p = torch.log_softmax(teacher_logits.float() / t, dim=1)
        log_q = torch.log_softmax(student_logits.float() / t, dim=1)
        out.append((log_p.exp() * (log_p - log_q)).sum(1).mean())
    return torch.stack(out) if out else torch.empty(0)


def entropy_vs_temperature(logits: Tensor, temperatures: Sequence[float] | Tensor) -> Tensor:
    """Mean entropy (nats) of softmax(logits / T) over the rows, at each T; log K is the ceiling.

    Returns:
        A (len(temperatures),) float tensor.
    """
    out = [entropy(softened(logits, t)).mean() for t in _temperatures(temperatures)]
    return torch.stack(out) if out else torch.empty(0)


def class_similarity(logits: Tensor, labels: Tensor, num_classes: int, temperature: float = 1.0) -> Tensor:
    """The teacher's "dark knowledge": row k is its mean softened distribution over images of true class k.

    Returns:
        A (K, K) float tensor whose rows sum to 1; NaN rows for classes absent from `labels`.
    """
    probs = softened(logits, _temperatures([temperature])[0])  # (N, K)
    labels = labels.long()
    sums = torch.zeros(num_classes, probs.shape[1], dtype=probs.dtype).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).to(probs.dtype).unsqueeze(1)
    return sums / counts  # 0 / 0 -> NaN for an absent class


def confusion_matrix(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs; rows are true classes.

    Args:
        logits_or_preds: (N, K) logits or (N,) predicted classes.

    Returns:
        A (K, K) int64 tensor.
    """
    preds = _predictions(logits_or_preds)
    flat = labels.long() * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Share of each true class predicted correctly (recall).

    Returns:
        A (K,) float tensor; NaN for classes absent from `labels`.
    """
    cm = confusion_matrix(logits_or_preds, labels, num_classes).double()
    return (cm.diagonal() / cm.sum(1)).float()


# ---- calibration ---------------------------------------------------------------------------------
def reliability_table(logits: Tensor, labels: Tensor, bins: int = 15) -> list[dict]:
    """Predictions grouped into `bins` equal-width bins of confidence over [0, 1].

    Confidence is the max softmax probability of a row; a row falls in bin b when
    lower_b < confidence <= upper_b (the first bin also takes a confidence of exactly 0).

    Returns:
        One dict per bin, in order: lower, upper, count, accuracy and confidence (the mean max probability);
        accuracy and confidence are NaN for an empty bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probs = torch.softmax(logits.double(), dim=1)  # (N, K)
    confidence, preds = probs.max(1)  # (N,), (N,)
    correct = (preds == labels.long()).double()
    # bin b covers (b / bins, (b + 1) / bins]: ceil(c * bins) - 1, with c = 0 in the first bin
    which = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(which, minlength=bins)
    hits = torch.zeros(bins, dtype=torch.double).index_add_(0, which, correct)
    conf = torch.zeros(bins, dtype=torch.double).index_add_(0, which, confidence)
    rows = []
    for b in range(bins):
        n = int(counts[b])
        rows.append(dict(lower=b / bins, upper=(b + 1) / bins, count=n,
                         accuracy=float(hits[b] / n) if n else float("nan"),
                         confidence=float(conf[b] / n) if n else float("nan")))
    return rows


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    The predictions are grouped into `bins` equal-width bins of confidence (the max softmax probability,
    see `reliability_table`); ECE = Σ_b (n_b / N) · |acc_b − conf_b|, where n_b is the bin's count, acc_b the
    share of its predictions that are right and conf_b their mean confidence. 0 is perfectly calibrated: a
    model that says 80% is right 80% of the time. A fraction in [0, 1], like an accuracy.

    Returns:
        The ECE; NaN for an empty test set.
    """
    table = reliability_table(logits, labels, bins)
    total = sum(r["count"] for r in table)
    if total == 0:
        return float("nan")
    return sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in table if r["count"])


# ---- per class -----------------------------------------------------------------------------------
def per_class_gain(student_logits: Tensor, baseline_logits: Tensor, labels: Tensor, num_classes: int) -> list[dict]:
    """The KD gain of each class: the distilled student's accuracy on it minus the baseline's.

    Args:
        student_logits, baseline_logits: (N, K) logits or (N,) predicted classes.

    Returns:
        One dict per class: class (its index), count (its test images), student, baseline (accuracies) and
        gain (student − baseline, a fraction: × 100 for points); NaN accuracies for a class absent from `labels`.
    """
    student = per_class_accuracy(student_logits, labels, num_classes).tolist()
    baseline = per_class_accuracy(baseline_logits, labels, num_classes).tolist()
    counts = torch.bincount(labels.long(), minlength=num_classes).tolist()
    return [dict(**{"class": k}, count=int(counts[k]), student=student[k], baseline=baseline[k],
                 gain=student[k] - baseline[k]) for k in range(num_classes)]


def fixed_and_broken(student_logits: Tensor, baseline_logits: Tensor, labels: Tensor) -> tuple[list[int], list[int]]:
    """The test images on which distillation changed the outcome.

    Args:
        student_logits, baseline_logits: (N, K) logits or (N,) predicted classes.

    Returns:
        (fixed, broken): indices, ascending, of the images the distilled student gets right and the baseline
        wrong, and of those the baseline gets right and the student wrong. Their counts are McNemar's
        discordant pairs.
    """
    labels = labels.long()
    student_right = _predictions(student_logits) == labels
    baseline_right = _predictions(baseline_logits) == labels
    fixed = (student_right & ~baseline_right).nonzero().flatten().tolist()
    broken = (baseline_right & ~student_right).nonzero().flatten().tolist()
    return fixed, broken


# ---- cost against accuracy -----------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The non-dominated points when a lower cost (x) and a higher accuracy (y) are better.

    A point is dominated when another is at least as good on both and better on one. Points with the same
    cost and the same accuracy do not dominate each other: every copy of a frontier point is on the front.
    Points with a missing (NaN or None) value are never on it.

    Returns:
        Indices into `points` of the frontier, by increasing cost (then by index).
    """
    def finite(v) -> bool:
        return v is not None and v == v and abs(v) != float("inf")

    kept = sorted((i for i, (x, y) in enumerate(points) if finite(x) and finite(y)),
                  key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], float("-inf")  # best: the highest accuracy at a strictly lower cost
    j = 0
    while j < len(kept):
        cost = points[kept[j]][0]
        same = [i for i in kept[j:] if points[i][0] == cost]  # one cost, accuracy descending
        top = points[same[0]][1]
        if top > best:
            front += [i for i in same if points[i][1] == top]
            best = top
        j += len(same)
    return front


def frontier_points(runs, int8: Optional[Mapping[int, dict]] = None) -> "pd.DataFrame":
    """Teacher, baseline, distilled-student and int8-student points of runs, for an accuracy-against-cost chart.

    Args:
        runs: records with id, name, method, dataset, teacher_arch, student_arch and summary (store Runs, or
            dicts with those keys); runs without a student test accuracy are left out.
        int8: per run id, the record of its kept int8 student (kdcore.export.read_int8_record), if any.

    Returns:
        One row per (run, role): run_id, run (its name), method, dataset, role ("teacher", "baseline",
        "student", "int8 student"), arch, accuracy (test), params, flops (a multiply-add counted as 2), macs (the
        summary's `<phase>_macs`, else flops / 2), size_mb and latency_ms_b1 (PyTorch's; NaN when not measured).
        With several teachers the teacher point is their ensemble: its accuracy, the teachers' costs summed. The
        baseline, the same architecture as the student, takes the student's costs where it has none of its own.
        An int8 student has the student's parameters and multiply-adds, its file's size, and no latency here:
        it was timed by onnxruntime, which does not compare with PyTorch's figures.
    """
    import pandas as pd

    nan = float("nan")

    def field(run, key):
        return run.get(key) if isinstance(run, dict) else getattr(run, key, None)

    def num(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return nan

    rows = []
    for run in runs:
        s = field(run, "summary") or {}
        if not isinstance(s, dict) or num(s.get("student_test_acc")) != num(s.get("student_test_acc")):
            continue
        teachers = RunSummary.from_stored(s).teacher_phases() or ["teacher"]

        def cost(phases, what):
            values = [num(s.get(f"{p}_{what}")) for p in phases]
            if what == "macs":
                values = [v if v == v else num(s.get(f"{p}_flops")) / 2 for v, p in zip(values, phases)]
            return sum(values)  # NaN when one is unknown

        base = dict(run_id=int(field(run, "id")), run=field(run, "name"), method=field(run, "method"),
                    dataset=field(run, "dataset"))
        several = len(teachers) > 1
        roles = [("teacher", teachers, s.get("ensemble_test_acc") if several else s.get("teacher_test_acc"),
                  field(run, "teacher_arch") or None),  # the column names every teacher: "small_cnn + mlp"
                 ("baseline", ["baseline"], s.get("baseline_test_acc"), field(run, "student_arch")),
                 ("student", ["student"], s.get("student_test_acc"), field(run, "student_arch"))]
        for role, phases, acc, arch in roles:
            if num(acc) != num(acc):
                continue
            row = dict(base, role=role, arch=arch, accuracy=num(acc))
            for what in ("params", "flops", "macs", "size_mb", "latency_ms_b1"):
                row[what] = cost(phases, what)
                if role == "baseline" and row[what] != row[what]:
                    row[what] = cost(["student"], what)
            rows.append(row)
        record = (int8 or {}).get(base["run_id"])
        if record is not None and num(record.get("int8_accuracy")) == num(record.get("int8_accuracy")):
            # rows[-1] is the student's point, appended last above: the int8 file has its parameters and MACs
            rows.append(dict(rows[-1], role="int8 student", arch=f"{field(run, 'student_arch')} int8",
                             accuracy=num(record["int8_accuracy"]), size_mb=num(record.get("int8_bytes")) / 2**20,
                             latency_ms_b1=nan))
    columns = ["run_id", "run", "method", "dataset", "role", "arch", "accuracy", "params", "flops", "macs",
               "size_mb", "latency_ms_b1"]
    return pd.DataFrame(rows, columns=columns)
