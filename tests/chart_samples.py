"""Sample data for every chart builder of kdcore/charts.py and kdcore/studies/charts.py, drawn by
tests/test_chart_layout.py: several teachers, long run names (with markup), percentages near 100%."""
from __future__ import annotations

import numpy as np
import pandas as pd

from kdcore import charts
from kdcore.studies import charts as study_charts

PHASES = ("teacher", "teacher2", "student", "baseline")
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def history(phases=PHASES, epochs=4, steps=50, seed=0) -> pd.DataFrame:
    """A run's stored curves: at each report the mean since the epoch began (as the trainer stores them), from
    noisy per-batch values, and epoch rows; the student's KD term starts far above the rest."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, phase in enumerate(phases):
        for e in range(1, epochs + 1):
            sums: dict = {}
            for k in range(1, steps + 1):
                step = (e - 1) * steps + k
                loss = 2.3 * np.exp(-step / 60) + 0.2 + 0.1 * rng.random()
                terms = {"train_loss": loss, "train_acc": min(0.99, 0.5 + step / 400)}
                if phase == "student":
                    terms.update(train_ce=loss * 0.6, train_kd=loss * 9 if step < 6 else loss * 1.2)
                elif phase == "baseline":
                    terms.update(train_ce=loss)
                for n, v in terms.items():
                    sums[n] = sums.get(n, 0.0) + v
                if k % (steps // 10) == 0:
                    rows += [(phase, "step", step, e, n, v / k) for n, v in sums.items()]
            acc = min(0.999, 0.6 + 0.1 * e - 0.02 * p)
            rows += [(phase, "epoch", e * steps, e, n, v) for n, v in
                     {"train_loss": 0.5 / e, "train_acc": acc, "val_acc": acc - 0.01, "lr": 0.1 / e}.items()]
            if phase == "student":
                rows.append((phase, "epoch", e * steps, e, "agreement", 0.8 + 0.04 * e))
    return pd.DataFrame(rows, columns=["phase", "kind", "step", "epoch", "name", "value"])


def runs_frame(n=6) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "id": range(1, n + 1), "name": [f"<b>run</b> with a long name {i}" for i in range(n)],
        "status": ["completed"] * n, "seed": range(n), "temperature": [1, 4, 1, 4, 8, 8][:n],
        "alpha": [0.5, 0.5, 0.9, 0.9, 0.5, 0.9][:n], "student_arch": ["resnet8", "resnet8", "wrn_16_1"] * (n // 3),
        "teacher_test_acc": 0.99 + 0.005 * rng.random(n), "student_test_acc": 0.97 + 0.02 * rng.random(n),
        "baseline_test_acc": 0.96 + 0.02 * rng.random(n), "kd_gain": 0.02 * rng.random(n) - 0.005,
        "kd_gain_low": [-0.01] * n, "kd_gain_high": [0.03] * n, "student_params": [7.5e4, 7.5e4, 1.8e5] * (n // 3),
    })


def frontier_points() -> pd.DataFrame:
    rows = []
    for i, (role, arch, acc, params) in enumerate([("teacher", "resnet56", 0.935, 8.6e5), ("baseline", "resnet8", 0.87, 7.8e4),
                                                   ("student", "resnet8", 0.885, 7.8e4), ("student", "resnet20", 0.92, 2.7e5)]):
        rows.append(dict(run_id=i + 1, run=f"run {i}", method="kd", dataset="cifar10", role=role, arch=arch,
                         accuracy=acc, params=params, flops=params * 40, macs=params * 20, latency_ms_b1=1.0 + i))
    return pd.DataFrame(rows)


def study() -> dict:
    trials = [dict(number=i, state="complete" if i % 4 else "pruned", value=0.01 * (i % 5) - 0.015,
                   setting=f"T={i}", params={"distill.temperature": 1.0 + i, "distill.alpha": 0.1 * (i % 9 + 1)},
                   pruned_at_epoch=2 if i % 4 == 0 else None) for i in range(12)]
    return dict(objective=dict(label="KD gain", in_points=True), trials=trials,
                space={"distill.temperature": {"low": 1.0, "high": 16.0, "log": True},
                       "distill.alpha": {"low": 0.1, "high": 0.9}},
                importance={"distill.temperature": 0.7, "distill.alpha": 0.3})


def reliability() -> dict:
    table = [dict(lower=i / 10, upper=(i + 1) / 10, count=10 * i, accuracy=i / 10 + 0.03, confidence=i / 10 + 0.05)
             for i in range(10)]
    return {m: table for m in ("teacher", "teacher2", "student", "baseline")}


def figures() -> dict:
    h, runs = history(), runs_frame()
    labels = {int(i): n for i, n in zip(runs["id"], runs["name"])}
    many = pd.concat([history(seed=s).assign(run_id=s) for s in range(3)])
    cm = np.arange(100).reshape(10, 10)
    probs = np.full(10, 0.1)
    curves = pd.DataFrame({"T": [1, 2, 4, 8], "KL(teacher || student)": [0.1, 0.2, 0.3, 0.2],
                           "teacher entropy": [0.1, 0.5, 1.0, 2.0], "student entropy": [0.2, 0.6, 1.1, 2.1]})
    agg = {k: {"mean": float(runs[k].mean()), "std": 0.01, "n": len(runs), "ci95": [float(runs[k].min()),
                                                                                    float(runs[k].max())]}
           for k in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain")}
    figs = {"loss_parts": charts.loss_parts(h), "accuracy": charts.accuracy(h), "agreement": charts.agreement(h),
            "overlay": charts.overlay(many.assign(run_id=many["run_id"] + 1), "val_acc", labels,
                                      phases=("student", "baseline", "teacher")),
            "accuracy_bars": charts.accuracy_bars(runs, labels),
            "frontier": charts.frontier(runs, "student_params", "kd_gain", [1], "student parameters", "KD gain"),
            "sweep_heatmap": charts.sweep_heatmap(runs), "sweep_accuracy": charts.sweep_heatmap(runs, "student_test_acc"),
            "group_dots": charts.group_dots(runs, agg), "averaged_curves": charts.averaged_curves(many, "val_acc"),
            "confusion": charts.confusion(cm, NAMES, "Teacher: confusion on the test set"),
            "per_class": charts.per_class({p: np.linspace(0.9, 1.0, 10) for p in PHASES}, NAMES),
            "distributions": charts.distributions(probs, probs, NAMES, 4.0),
            "temperature_curves": charts.temperature_curves(curves, 4.0),
            "similarity": charts.similarity(cm / 100.0, NAMES, 4.0),
            "reliability": charts.reliability_diagram(reliability(), {m: 0.031 for m in reliability()}),
            "class_gain_bars": charts.class_gain_bars([dict(**{"class": i, "count": 100, "student": 0.9,
                                                               "baseline": 0.88, "gain": 0.02 - 0.005 * i})
                                                       for i in range(10)], NAMES),
            "pareto": charts.pareto_frontier(frontier_points()),
            "study_history": study_charts.history(study()), "study_importance": study_charts.importance(study()),
            "empty": charts.loss_parts(h.iloc[0:0])}
    for i, fig in enumerate(charts.all_curves(h)):
        figs[f"all_curves_{i}"] = fig
    return figs
