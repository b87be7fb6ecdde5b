"""Plotly figure builders. Pure: data in, figure out; no Streamlit calls.

Metric frames have the store's columns: (run_id,) phase, kind, step, epoch, name, value.
`uirevision` keeps a user's zoom and legend choices while the data under a chart refreshes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

PHASE_COLORS = {"teacher": "#6c757d", "student": "#1f77b4", "baseline": "#ff7f0e"}
LOSS_PARTS = {"train_loss": ("total", "solid"), "train_ce": ("CE on labels", "dot"), "train_kd": ("KD term", "dash")}
METRIC_LABELS = {"train_loss": "training loss", "train_ce": "CE on labels", "train_kd": "KD term",
                 "train_acc": "training accuracy", "val_acc": "validation accuracy",
                 "agreement": "teacher-student agreement", "images_per_s": "images per second", "lr": "learning rate"}
FRACTIONS = {"train_acc", "val_acc", "agreement", "student_test_acc", "teacher_test_acc", "baseline_test_acc",
             "student_best_val_acc", "kd_gain"}


def _style(fig: go.Figure, title: str, uirevision=None, height: int = 320, x: str = "", y: str = "") -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height, uirevision=uirevision,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", yref="container", yanchor="bottom", y=0),
                      xaxis_title=x, yaxis_title=y, hovermode="x unified")
    return fig


def _empty(title: str, note: str, uirevision=None) -> go.Figure:
    fig = _style(go.Figure(), title, uirevision)
    fig.add_annotation(text=note, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="grey"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _rows(history: pd.DataFrame, names: Sequence[str], prefer_steps: bool) -> pd.DataFrame:
    rows = history[history["name"].isin(names)]
    if prefer_steps:
        # step points where a phase has them (live runs), else the epoch points (seeded or old runs)
        stepped = set(zip(*[rows.loc[rows["kind"] == "step", c] for c in ("phase", "name")]))
        has_steps = np.array([key in stepped for key in zip(rows["phase"], rows["name"])], dtype=bool)
        rows = rows[(rows["kind"] == "step").to_numpy() == has_steps]
    else:
        rows = rows[rows["kind"] == "epoch"]
    return rows.sort_values("step")


def loss_parts(history: pd.DataFrame, uirevision=None) -> go.Figure:
    """Each loss part per phase against the step within the phase."""
    rows = _rows(history, list(LOSS_PARTS), prefer_steps=True)
    if rows.empty:
        return _empty("Loss", "waiting for the first steps", uirevision)
    fig = go.Figure()
    for (phase, name), g in rows.groupby(["phase", "name"], sort=False):
        label, dash = LOSS_PARTS[name]
        fig.add_scatter(x=g["step"], y=g["value"], name=f"{phase} · {label}", mode="lines",
                        line=dict(color=PHASE_COLORS.get(phase), dash=dash))
    return _style(fig, "Loss parts", uirevision, x="step (within phase)", y="loss")


def accuracy(history: pd.DataFrame, uirevision=None) -> go.Figure:
    """Training accuracy (dotted) and validation accuracy (solid, per epoch) for each phase."""
    train = _rows(history, ["train_acc"], prefer_steps=True)
    val = _rows(history, ["val_acc"], prefer_steps=False)
    if train.empty and val.empty:
        return _empty("Accuracy", "waiting for the first steps", uirevision)
    fig = go.Figure()
    for rows, label, dash, mode in ((train, "train", "dot", "lines"), (val, "val", "solid", "lines+markers")):
        for phase, g in rows.groupby("phase", sort=False):
            fig.add_scatter(x=g["step"], y=g["value"], name=f"{phase} · {label}", mode=mode,
                            line=dict(color=PHASE_COLORS.get(phase), dash=dash), marker=dict(size=5))
    fig.update_yaxes(tickformat=".0%")
    return _style(fig, "Accuracy", uirevision, x="step (within phase)")


def agreement(history: pd.DataFrame, uirevision=None) -> go.Figure:
    """How often the student's validation prediction matches the teacher's, per epoch."""
    rows = _rows(history, ["agreement"], prefer_steps=False)
    if rows.empty:
        return _empty("Teacher-student agreement", "measured after each student epoch", uirevision)
    fig = go.Figure()
    for phase, g in rows.groupby("phase", sort=False):
        fig.add_scatter(x=g["epoch"], y=g["value"], name=phase, mode="lines+markers",
                        line=dict(color=PHASE_COLORS.get(phase)))
    fig.update_yaxes(tickformat=".0%")
    return _style(fig, "Teacher-student agreement (validation)", uirevision, x="epoch")


def all_curves(history: pd.DataFrame, uirevision=None) -> list[go.Figure]:
    """One small chart per stored metric, phases overlaid, against the epoch."""
    figures = []
    epochs = history[history["kind"] == "epoch"]
    for name in [n for n in METRIC_LABELS if n in set(epochs["name"])]:
        fig = go.Figure()
        for phase, g in epochs[epochs["name"] == name].groupby("phase", sort=False):
            fig.add_scatter(x=g["epoch"], y=g["value"], name=phase, mode="lines",
                            line=dict(color=PHASE_COLORS.get(phase)))
        if name in FRACTIONS:
            fig.update_yaxes(tickformat=".0%")
        figures.append(_style(fig, METRIC_LABELS[name], uirevision, height=260, x="epoch"))
    return figures


def overlay(frame: pd.DataFrame, metric: str, labels: dict[int, str], smoothing: float = 0.0,
            phases: Sequence[str] = ("student",), uirevision=None) -> go.Figure:
    """One line per selected run and phase for `metric` against the epoch, EMA-smoothed by `smoothing` in [0, 1)."""
    rows = frame[(frame["kind"] == "epoch") & (frame["name"] == metric) & frame["phase"].isin(phases)]
    if rows.empty:
        return _empty(METRIC_LABELS.get(metric, metric), "no such curve in the selected runs", uirevision)
    fig = go.Figure()
    dashes = {"student": "solid", "baseline": "dash", "teacher": "dot"}
    for (run_id, phase), g in rows.sort_values("epoch").groupby(["run_id", "phase"], sort=False):
        y = g["value"].ewm(alpha=1 - smoothing).mean() if smoothing > 0 else g["value"]
        fig.add_scatter(x=g["epoch"], y=y, mode="lines", name=f"{labels.get(run_id, run_id)} · {phase}",
                        legendgroup=str(run_id), line=dict(dash=dashes.get(phase, "solid")))
    if metric in FRACTIONS:
        fig.update_yaxes(tickformat=".0%")
    return _style(fig, METRIC_LABELS.get(metric, metric), uirevision, height=380, x="epoch")


def accuracy_bars(runs: pd.DataFrame, labels: dict[int, str]) -> go.Figure:
    """Teacher, student and baseline test accuracy side by side for each run."""
    fig = go.Figure()
    names = [labels.get(i, str(i)) for i in runs["id"]]
    for phase in ("teacher", "student", "baseline"):
        values = runs[f"{phase}_test_acc"]
        fig.add_bar(x=names, y=values, name=phase, marker_color=PHASE_COLORS[phase],
                    text=[("" if pd.isna(v) else f"{100 * v:.1f}%") for v in values], textposition="outside")
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(barmode="group")
    return _style(fig, "Test accuracy", None, height=380)


def frontier(runs: pd.DataFrame, x: str, y: str, selected: Sequence[int] = (), x_label: str = "",
             y_label: str = "") -> go.Figure:
    """A metric against T, alpha or the student's size; selected runs drawn larger, outlined."""
    rows = runs.dropna(subset=[x, y])
    if rows.empty:
        return _empty(f"{y_label or y} against {x_label or x}", "no finished runs with both values")
    fig = go.Figure()
    chosen = rows["id"].isin(list(selected))
    for arch, g in rows.groupby("student_arch", sort=True):
        big = chosen[g.index]
        fig.add_scatter(
            x=g[x], y=g[y], mode="markers", name=arch,
            marker=dict(size=np.where(big, 14, 7), line=dict(width=np.where(big, 2, 0), color="black"), opacity=0.8),
            text=[f"#{i} {n}" for i, n in zip(g["id"], g["name"])],
            hovertemplate="%{text}<br>%{x}, %{y}<extra></extra>",
        )
    if x.endswith("params") or x.endswith("flops"):
        fig.update_xaxes(type="log")
    if y in FRACTIONS:
        fig.update_yaxes(tickformat=".1%")
    fig.update_layout(hovermode="closest")
    return _style(fig, f"{y_label or y} against {x_label or x}", None, height=380, x=x_label or x, y=y_label or y)


def sweep_heatmap(group: pd.DataFrame, value: str = "student_test_acc", title: str = "") -> go.Figure:
    """Mean `value` over a sweep group's T x alpha grid."""
    grid = group.pivot_table(index="alpha", columns="temperature", values=value, aggfunc="mean")
    text = grid.map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    fig = go.Figure(go.Heatmap(z=grid.values, x=[f"{t:g}" for t in grid.columns], y=[f"{a:g}" for a in grid.index],
                               text=text.values, texttemplate="%{text}", colorscale="Viridis",
                               colorbar=dict(tickformat=".0%")))
    fig.update_layout(hovermode="closest")
    return _style(fig, title or "Student test accuracy over T × α", None, height=360, x="temperature T", y="alpha α")


def confusion(cm: np.ndarray, class_names: Sequence[str], title: str) -> go.Figure:
    """Rows: true class; columns: predicted class; counts."""
    annotate = len(class_names) <= 20
    fig = go.Figure(go.Heatmap(z=cm, x=list(class_names), y=list(class_names), colorscale="Blues", showscale=False,
                               text=cm if annotate else None, texttemplate="%{text}" if annotate else None,
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(hovermode="closest")
    return _style(fig, title, None, height=380, x="predicted", y="true")


def per_class(accuracies: dict[str, np.ndarray], class_names: Sequence[str]) -> go.Figure:
    fig = go.Figure()
    for model, acc in accuracies.items():
        fig.add_bar(x=list(class_names), y=acc, name=model, marker_color=PHASE_COLORS.get(model))
    fig.update_yaxes(tickformat=".0%")
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group")
    return _style(fig, "Test accuracy per class", None, height=320)


def distributions(teacher: np.ndarray, student: np.ndarray, class_names: Sequence[str], temperature: float,
                  uirevision=None) -> go.Figure:
    """The teacher's and the student's softened distributions for one image, as grouped bars."""
    fig = go.Figure()
    fig.add_bar(x=list(class_names), y=teacher, name="teacher", marker_color=PHASE_COLORS["teacher"])
    fig.add_bar(x=list(class_names), y=student, name="student", marker_color=PHASE_COLORS["student"])
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_xaxes(type="category")
    return _style(fig, f"softmax(z / T) at T = {temperature:g}", uirevision, height=340, x="class")


def temperature_curves(curves: pd.DataFrame, temperature: Optional[float] = None) -> go.Figure:
    """KL(teacher || student) and entropies against T, with the chosen T marked."""
    fig = go.Figure()
    styles = {"KL(teacher || student)": ("#d62728", "solid"), "teacher entropy": (PHASE_COLORS["teacher"], "solid"),
              "student entropy": (PHASE_COLORS["student"], "dot")}
    for column, (color, dash) in styles.items():
        fig.add_scatter(x=curves["T"], y=curves[column], name=column, mode="lines", line=dict(color=color, dash=dash))
    if temperature is not None:
        fig.add_vline(x=temperature, line=dict(color="black", dash="dash", width=1))
    return _style(fig, "Over the test set, against T", "temperature-curves", height=340, x="temperature T", y="nats")


def similarity(matrix: np.ndarray, class_names: Sequence[str], temperature: float) -> go.Figure:
    """The teacher's mean softened probabilities per true class ("dark knowledge")."""
    k = len(class_names)
    fig = go.Figure(go.Heatmap(z=matrix, x=list(class_names), y=list(class_names), colorscale="Magma", zmin=0,
                               text=np.round(matrix, 2) if k <= 12 else None,
                               texttemplate="%{text}" if k <= 12 else None,
                               hovertemplate="true %{y} → %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(hovermode="closest")
    return _style(fig, f"Teacher's class similarity at T = {temperature:g}", None, height=420,
                  x="probability given to class", y="true class")
