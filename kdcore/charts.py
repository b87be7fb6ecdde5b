"""Plotly figure builders, shared by the dashboard and the report. Pure: data in, figure out; no Streamlit.

Metric frames have the store's columns: (run_id,) phase, kind, step, epoch, name, value.
`uirevision` keeps a user's zoom and legend choices while the data under a chart refreshes.
"""
from __future__ import annotations

import html
import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kdcore.record.phases import TEACHER, is_teacher, phase_order, teacher_index

PHASE_COLORS = {"teacher": "#6c757d", "student": "#1f77b4", "baseline": "#ff7f0e", "ensemble": "#2ca02c"}
# teacherN, …: greys and browns apart from the first teacher's
_MORE_TEACHERS = ["#8c564b", "#bcbd22", "#17becf", "#9467bd", "#e377c2", "#7f7f7f"]
# the loss terms every run can have, with their nice names; a method's own terms (train_<term>, weighted, summing
# to train_loss) are drawn the same way, labelled by their term name
LOSS_PARTS = {"train_loss": ("total", "solid"), "train_ce": ("CE on labels", "dot"), "train_kd": ("KD term", "dash")}
_TERM_DASHES = ["dash", "dashdot", "longdash", "longdashdot", "dot"]
NOT_LOSSES = {"train_acc"}  # train_* metrics that are not loss terms
METRIC_LABELS = {"train_loss": "training loss", "train_ce": "CE on labels", "train_kd": "KD term",
                 "train_acc": "training accuracy", "val_acc": "validation accuracy",
                 "agreement": "teacher-student agreement", "images_per_s": "images per second", "lr": "learning rate"}
FRACTIONS = {"train_acc", "val_acc", "agreement", "student_test_acc", "teacher_test_acc", "baseline_test_acc",
             "student_best_val_acc", "kd_gain"}
# d3 formats keyed on the tick spacing plotly picks (1, 2 or 5 x 10^k): at any zoom each label gets the decimals
# its spacing needs, so an axis never reads "89% 89% 88%"
_PERCENT_STOPS = [dict(dtickrange=[None, 0.000099], value=".3%"), dict(dtickrange=[0.000099, 0.00099], value=".2%"),
                  dict(dtickrange=[0.00099, 0.0099], value=".1%"), dict(dtickrange=[0.0099, None], value=".0%")]
# Magma without its first colour: Streamlit's chart theme rewrites "#000004" (a placeholder of its own) to a
# categorical colour, which turned every near-zero cell pink; "#0b0724" is as dark and left alone
MAGMA = ["#0b0724", "#180f3d", "#440f76", "#721f81", "#9e2f7f", "#cd4071", "#f1605d", "#fd9668", "#feca8d", "#fcfdbf"]
NOISE_COLOR = "#d9d9d9"  # sweep cells whose 95% interval includes zero
# two-sided 95% Student-t quantiles by degrees of freedom, for when scipy is missing; between rows the
# smaller df's (larger, so wider) quantile is used
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def _legend_rows(fig: go.Figure, width: float = 360.0) -> int:
    """About how many rows a horizontal legend takes in a chart `width` px wide (a third of the page)."""
    if fig.layout.showlegend is False:
        return 0
    shown = lambda t: t.showlegend or (t.showlegend is None and t.type in ("scatter", "bar"))  # noqa: E731
    names = [t.name for t in fig.data if t.name and shown(t)]
    rows, used = 0, width
    for name in names:
        need = 7.0 * len(name) + 45  # ~7 px a character, and the line sample before it
        rows, used = (rows + 1, need) if used + need > width else (rows, used + need)
    return rows


def _style(fig: go.Figure, title: str, uirevision=None, height: int = 320, x: str = "", y: str = "") -> go.Figure:
    """Title, size and the legend below the plot. Margins grow to fit tick labels, axis titles and the legend
    (automargin): Streamlit's plotly template, the default in the dashboard's process, sets none of it, and the
    report built there cut "100%" to "%". The figure grows by the legend's rows, so the plot keeps its height."""
    extra = 20 * max(0, _legend_rows(fig) - 1)
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height + extra, uirevision=uirevision,
                      margin=dict(l=10, r=10, t=40, b=10, autoexpand=True),
                      legend=dict(orientation="h", xref="container", x=0, yref="container", yanchor="bottom", y=0),
                      hovermode="x unified")
    if x:
        fig.update_layout(xaxis_title=x)
    if y:
        fig.update_layout(yaxis_title=y)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _empty(title: str, note: str, uirevision=None) -> go.Figure:
    fig = _style(go.Figure(), title, uirevision)
    fig.add_annotation(text=note, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="grey"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _percent_ticks(span: float) -> dict:
    """Percent tick settings: per-spacing formats, and a fallback format with enough decimals for `span`."""
    fmt = ".0%" if span >= 0.1 else ".1%" if span >= 0.01 else ".2%"
    return dict(tickformat=fmt, tickformatstops=_PERCENT_STOPS)


def _bounds(name: str) -> tuple[float, float]:
    """Where a fraction can lie: accuracies in [0, 1], a difference of two (the KD gain) in [-1, 1]."""
    return (-1.0, 1.0) if name == "kd_gain" else (0.0, 1.0)


def _fraction_axis(values, bounds: tuple[float, float] = (0.0, 1.0), include_zero: bool = False) -> dict:
    """Axis settings for fractions: the data's range padded, clamped to `bounds`, with percent ticks.

    Autorange pads past what a fraction can be (one point drew 0-150%); a single distinct value gets all of
    [0, 1] for accuracies, or 5 points either side. `include_zero` keeps bars' base on the axis.
    """
    v = pd.to_numeric(pd.Series(np.ravel(values)), errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    low, high = bounds
    if v.size == 0:
        return dict(range=[low, high], **_percent_ticks(high - low))
    lo, hi = float(v.min()), float(v.max())
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = hi - lo
    if span < 1e-9:
        lo, hi = (0.0, 1.0) if (low, high) == (0.0, 1.0) else (lo - 0.05, hi + 0.05)
    else:
        pad = max(0.08 * span, 0.005)
        lo, hi = (lo if include_zero and lo == 0.0 else lo - pad), hi + pad
    lo, hi = max(low, lo), min(high, hi)
    return dict(range=[lo, hi], **_percent_ticks(hi - lo))


def plain(words) -> str:
    """Text a person typed (a run's name), as plotly must show it: plotly reads <b>, <br> and the like in names,
    ticks and hovers as markup, so "<b>x</b>" drew a bold x."""
    return html.escape(str(words), quote=False)


def _rgba(color: str, alpha: float) -> str:
    """'#rrggbb' as an rgba() string, for translucent bands."""
    r, g, b = (int(color.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _finite(x) -> Optional[float]:
    """A float, or None for None / NaN / something that is not a number."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _t_quantile(n: int) -> float:
    """The two-sided 95% Student-t quantile for the mean of n >= 2 values."""
    try:
        from scipy import stats
        return float(stats.t.ppf(0.975, n - 1))
    except ImportError:
        return _T975[max(df for df in _T975 if df <= n - 1)]


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


def phase_color(phase: str) -> Optional[str]:
    """A phase's colour: teacher, student, baseline, ensemble, and one each for teacherN, …"""
    if phase in PHASE_COLORS:
        return PHASE_COLORS[phase]
    return _MORE_TEACHERS[(teacher_index(phase) - 1) % len(_MORE_TEACHERS)] if is_teacher(phase) else None


def phase_label(phase: str) -> str:
    """"teacherN" -> "teacher N"; other phases as they are."""
    return f"teacher {teacher_index(phase) + 1}" if is_teacher(phase) and phase != TEACHER else phase


def is_loss_term(name: str) -> bool:
    """Whether a metric is the training loss or one of its named terms (train_<term>)."""
    return name.startswith("train_") and name not in NOT_LOSSES


def metric_label(name: str) -> str:
    """A metric's name in words: the known ones' nice names, a method's loss term by its term name."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    if is_loss_term(name):
        return f"{name.removeprefix('train_')} term"
    return name.replace("_", " ")


def metric_names(frame: pd.DataFrame) -> list[str]:
    """The known metrics, then any other loss term that `frame` holds (a method's own), in a stable order."""
    present = set(frame["name"]) if not frame.empty else set()
    return list(METRIC_LABELS) + sorted(n for n in present if is_loss_term(n) and n not in METRIC_LABELS)


def _epoch_starts(history: pd.DataFrame, phase: str) -> dict[int, int]:
    """Per epoch of `phase`, the phase's step count before it began: the previous epoch's last step (epoch rows
    carry it), else epochs × the steps an epoch takes; epoch 1 starts at 0."""
    ends = history[(history["phase"] == phase) & (history["kind"] == "epoch")].groupby("epoch")["step"].max()
    per_epoch = float(np.median(ends.to_numpy() / ends.index.to_numpy())) if len(ends) else None
    steps = history[(history["phase"] == phase) & (history["kind"] == "step")]
    starts = {}
    for e in map(int, steps["epoch"].unique()):
        earlier = steps.loc[steps["epoch"] < e, "step"]
        if e - 1 in ends.index:
            starts[e] = int(ends[e - 1])
        elif e == 1 or (per_epoch is None and earlier.empty):
            starts[e] = 0
        elif per_epoch is not None:
            starts[e] = int(round(per_epoch * (e - 1)))
        else:  # no epoch has ended in the history: the previous epoch's last point is the nearest start known
            starts[e] = int(earlier.max())
    return starts


def window_means(rows: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Step rows as the trainer stores them hold each metric's running mean since its epoch began, which drops back
    to one batch's noise at every epoch's start (a false cliff at each boundary). Returns them as the mean over
    each reporting window (the steps since the previous point), a trailing mean that runs across epochs. Epoch rows
    pass unchanged."""
    steps = rows[rows["kind"] == "step"]
    if steps.empty:
        return rows
    out = []
    for (phase, name), g in steps.groupby(["phase", "name"], sort=False):
        starts = _epoch_starts(history, phase)
        g = g.sort_values("step").copy()
        done = (g["step"] - g["epoch"].astype(int).map(starts)).clip(lower=1).astype(float)  # steps into the epoch
        total = done * g["value"]
        new_epoch = g["epoch"].ne(g["epoch"].shift())
        # the sum and count of steps since the previous point; an epoch's first point covers the epoch so far
        d_total = total.diff().where(~new_epoch, total)
        d_done = done.diff().where(~new_epoch, done)
        g["value"] = (d_total / d_done).where(d_done > 0, g["value"])
        out.append(g)
    return pd.concat(out + [rows[rows["kind"] != "step"]]).sort_values("step")


def _phase_panels(phases: Sequence[str]) -> go.Figure:
    """One panel per phase side by side, each with its own axes: phases count steps from 0 and differ in scale."""
    fig = make_subplots(rows=1, cols=max(1, len(phases)), subplot_titles=[phase_label(p) for p in phases],
                        horizontal_spacing=min(0.08, 0.5 / max(1, len(phases))))
    return fig


def _clipped_range(values: pd.Series, steps: pd.Series) -> Optional[list[float]]:
    """A y range over the values after the phase's first tenth of steps, when the first steps lie far above them:
    a first loss of 20 would otherwise flatten every other curve of the panel. None keeps plotly's autorange."""
    late = values[steps >= steps.min() + 0.1 * (steps.max() - steps.min())]
    if late.empty or values.empty:
        return None
    lo, hi, top = float(min(values.min(), late.min())), float(late.max()), float(values.max())
    if top <= hi + 0.5 * (hi - lo) or hi == lo:
        return None
    pad = 0.08 * (hi - lo)
    return [max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad]


def loss_parts(history: pd.DataFrame, uirevision=None) -> go.Figure:
    """The total loss and each of its terms (CE on labels, the method's terms), one panel per phase against the
    step within the phase, each panel scaled to its own curves past their first steps. Live points are the mean
    over each reporting window (window_means), which runs on across epochs."""
    present = {n for n in history["name"] if is_loss_term(n)}
    others = sorted(present - set(LOSS_PARTS))  # a method's own terms, e.g. tckd and nckd
    names = [n for n in LOSS_PARTS if n in present] + others
    rows = window_means(_rows(history, names, prefer_steps=True), history)
    if rows.empty:
        return _empty("Loss parts", "waiting for the first steps", uirevision)
    phases = sorted(rows["phase"].unique(), key=phase_order)
    fig = _phase_panels(phases)
    for col, phase in enumerate(phases, start=1):
        panel = rows[rows["phase"] == phase]
        for name in names:
            g = panel[panel["name"] == name]
            if g.empty:
                continue
            label, dash = LOSS_PARTS.get(name) or (name.removeprefix("train_"),
                                                   _TERM_DASHES[others.index(name) % len(_TERM_DASHES)])
            fig.add_scatter(x=g["step"], y=g["value"], name=f"{phase_label(phase)} · {label}", mode="lines",
                            line=dict(color=phase_color(phase), dash=dash), row=1, col=col)
        clipped = _clipped_range(panel["value"], panel["step"])
        if clipped:
            fig.update_yaxes(range=clipped, row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig = _style(fig, "Loss parts", uirevision, height=340)
    fig.update_layout(margin=dict(t=70))  # the panels' titles under the figure's
    return fig


def accuracy(history: pd.DataFrame, uirevision=None) -> go.Figure:
    """Training accuracy (dotted, the mean over each reporting window) and validation accuracy (solid, per epoch),
    one panel per phase against the step within the phase."""
    train = window_means(_rows(history, ["train_acc"], prefer_steps=True), history)
    val = _rows(history, ["val_acc"], prefer_steps=False)
    if train.empty and val.empty:
        return _empty("Accuracy", "waiting for the first steps", uirevision)
    phases = sorted(set(train["phase"]) | set(val["phase"]), key=phase_order)
    fig = _phase_panels(phases)
    for col, phase in enumerate(phases, start=1):
        for rows, label, dash, mode in ((train, "train", "dot", "lines"), (val, "val", "solid", "lines+markers")):
            g = rows[rows["phase"] == phase]
            if not g.empty:
                fig.add_scatter(x=g["step"], y=g["value"], name=f"{phase_label(phase)} · {label}", mode=mode,
                                line=dict(color=phase_color(phase), dash=dash), marker=dict(size=5), row=1, col=col)
        drawn = pd.concat([train.loc[train["phase"] == phase, "value"], val.loc[val["phase"] == phase, "value"]])
        fig.update_yaxes(**_fraction_axis(drawn), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig = _style(fig, "Accuracy", uirevision, height=340)
    fig.update_layout(margin=dict(t=70))
    return fig


def agreement(history: pd.DataFrame, uirevision=None) -> go.Figure:
    """How often the student's validation prediction matches the teacher's, per epoch."""
    rows = _rows(history, ["agreement"], prefer_steps=False)
    if rows.empty:
        return _empty("Teacher-student agreement", "measured after each student epoch", uirevision)
    fig = go.Figure()
    for phase, g in rows.groupby("phase", sort=False):
        fig.add_scatter(x=g["epoch"], y=g["value"], name=phase, mode="lines+markers",
                        line=dict(color=phase_color(phase)))
    fig.update_yaxes(**_fraction_axis(rows["value"]))
    return _style(fig, "Teacher-student agreement (validation)", uirevision, x="epoch")


def all_curves(history: pd.DataFrame, uirevision=None) -> list[go.Figure]:
    """One small chart per stored metric (a method's own loss terms too), phases overlaid, against the epoch."""
    figures = []
    epochs = history[history["kind"] == "epoch"]
    for name in [n for n in metric_names(epochs) if n in set(epochs["name"])]:
        fig = go.Figure()
        curves = epochs[epochs["name"] == name]
        for phase, g in curves.groupby("phase", sort=False):
            fig.add_scatter(x=g["epoch"], y=g["value"], name=phase_label(phase), mode="lines",
                            line=dict(color=phase_color(phase)))
        if name in FRACTIONS:
            fig.update_yaxes(**_fraction_axis(curves["value"], _bounds(name)))
        figures.append(_style(fig, metric_label(name), uirevision, height=260, x="epoch"))
    return figures


def overlay(frame: pd.DataFrame, metric: str, labels: dict[int, str], smoothing: float = 0.0,
            phases: Sequence[str] = ("student",), uirevision=None) -> go.Figure:
    """One line per selected run and phase for `metric` against the epoch, EMA-smoothed by `smoothing` in [0, 1)."""
    rows = frame[(frame["kind"] == "epoch") & (frame["name"] == metric) & frame["phase"].isin(phases)]
    if rows.empty:
        return _empty(metric_label(metric), "no such curve in the selected runs", uirevision)
    fig = go.Figure()
    dashes = {"student": "solid", "baseline": "dash", "teacher": "dot"}
    for (run_id, phase), g in rows.sort_values("epoch").groupby(["run_id", "phase"], sort=False):
        y = g["value"].ewm(alpha=1 - smoothing).mean() if smoothing > 0 else g["value"]
        dash = dashes.get(phase, "dot" if is_teacher(phase) else "solid")  # teacherN, … as the teacher
        fig.add_scatter(x=g["epoch"], y=y, mode="lines", legendgroup=str(run_id), line=dict(dash=dash),
                        name=f"{plain(labels.get(run_id, run_id))} · {phase_label(phase)}")
    if metric in FRACTIONS:
        # smoothing stays within the raw values' range, so the raw values bound the axis
        fig.update_yaxes(**_fraction_axis(rows["value"], _bounds(metric)))
    return _style(fig, metric_label(metric), uirevision, height=380, x="epoch")


def accuracy_bars(runs: pd.DataFrame, labels: dict[int, str]) -> go.Figure:
    """Teacher, student and baseline test accuracy side by side for each run."""
    fig = go.Figure()
    names = [plain(labels.get(i, str(i))) for i in runs["id"]]
    columns = [f"{phase}_test_acc" for phase in ("teacher", "student", "baseline")]
    for phase, column in zip(("teacher", "student", "baseline"), columns):
        values = runs[column]
        # cliponaxis off: the labels above bars near 100% may overhang the clamped axis
        fig.add_bar(x=names, y=values, name=phase, marker_color=PHASE_COLORS[phase], cliponaxis=False,
                    text=[("" if pd.isna(v) else f"{100 * v:.1f}%") for v in values], textposition="outside")
    fig.update_yaxes(**_fraction_axis(runs[columns].to_numpy(dtype=float), include_zero=True))
    fig.update_layout(barmode="group")
    return _style(fig, "Test accuracy", None, height=380)


def frontier(runs: pd.DataFrame, x: str, y: str, selected: Sequence[int] = (), x_label: str = "",
             y_label: str = "") -> go.Figure:
    """A metric against T, alpha or the student's size; selected runs drawn larger, outlined.

    FLOPs columns count a multiply-add as 2 (FLOPs = 2 × MACs); an `x_label` should say so.
    """
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
            text=[f"#{i} {plain(n)}" for i, n in zip(g["id"], g["name"])],
            hovertemplate="%{text}<br>%{x}, %{y}<extra></extra>",
        )
    if x.endswith(("params", "flops", "macs")):
        fig.update_xaxes(type="log")
    x_label = x_label or (f"{x} (2 × MACs)" if x.endswith("flops") else x)
    if y in FRACTIONS:
        fig.update_yaxes(**_fraction_axis(rows[y], _bounds(y)))
    fig.update_layout(hovermode="closest")
    return _style(fig, f"{y_label or y} against {x_label or x}", None, height=380, x=x_label or x, y=y_label or y)


def _sweep_cells(group: pd.DataFrame, value: str) -> pd.DataFrame:
    """One row per (temperature, alpha) cell: mean, n, the 95% interval (low, high) and where it came from.

    Only completed runs with a value count. Several runs in a cell (seeds) give a Student-t interval of their
    mean; a lone run's KD gain keeps that run's own interval (kd_gain_low, kd_gain_high), where it has one.
    """
    rows = group[group["status"] == "completed"] if "status" in group else group
    rows = rows.dropna(subset=["temperature", "alpha", value])
    own = value == "kd_gain" and {"kd_gain_low", "kd_gain_high"} <= set(rows.columns)
    cells = []
    for (t, a), g in rows.groupby(["temperature", "alpha"]):
        x = g[value].to_numpy(dtype=float)
        n, mean = len(x), float(x.mean())
        low = high = math.nan
        source = "one run, no interval"
        if n >= 2:
            half = _t_quantile(n) * float(x.std(ddof=1)) / math.sqrt(n)
            low, high, source = mean - half, mean + half, f"Student-t over {n} runs"
        elif own and _finite(g["kd_gain_low"].iloc[0]) is not None and _finite(g["kd_gain_high"].iloc[0]) is not None:
            low, high, source = float(g["kd_gain_low"].iloc[0]), float(g["kd_gain_high"].iloc[0]), "the run's own"
        cells.append(dict(temperature=float(t), alpha=float(a), mean=mean, n=n, low=low, high=high, source=source))
    cells = pd.DataFrame(cells, columns=["temperature", "alpha", "mean", "n", "low", "high", "source"])
    # only a gain can be "no different from zero"; an accuracy's interval always excludes it
    cells["noise"] = (value == "kd_gain") & (cells["low"] <= 0) & (cells["high"] >= 0)
    return cells


def sweep_heatmap(group: pd.DataFrame, value: str = "kd_gain", title: str = "") -> go.Figure:
    """A sweep group's T x alpha grid: each cell's mean `value` over its runs, its 95% interval and n.

    For the KD gain (in points, diverging colours around zero) cells whose interval includes zero are drawn
    grey, outlined and marked "≈ 0: noise", so the real gains stand out from seed noise. Other values
    (accuracies) get Viridis and percent ticks.
    """
    gain = value == "kd_gain"
    label = "KD gain" if gain else \
        METRIC_LABELS.get(value, value.replace("_test_acc", " test accuracy").replace("_", " "))
    title = title or (f"{label} over T × α" + (" (student − baseline)" if gain else ""))
    if value not in group or not {"temperature", "alpha"} <= set(group.columns):
        return _empty(title, f"these runs have no {label}")
    cells = _sweep_cells(group, value)
    if cells.empty:
        return _empty(title, f"no completed runs with a {label} yet")

    temps, alphas = sorted(cells["temperature"].unique()), sorted(cells["alpha"].unique())
    xs, ys = [f"{t:g}" for t in temps], [f"{a:g}" for a in alphas]
    scale = 100.0  # text in points (gain) or percent (accuracies)
    number = (lambda v: f"{scale * v:+.2f} pts") if gain else (lambda v: f"{scale * v:.2f}%")
    shape = (len(ys), len(xs))
    z, noise_z = np.full(shape, np.nan), np.full(shape, np.nan)
    # each trace labels only its own cells: noise cells (grey) in one, the rest (coloured) in the other
    text = {flag: np.full(shape, "", dtype=object) for flag in (False, True)}
    hover = {flag: np.full(shape, "", dtype=object) for flag in (False, True)}
    fig = go.Figure()
    for c in cells.itertuples():
        i, j, noise = alphas.index(c.alpha), temps.index(c.temperature), bool(c.noise)
        if math.isnan(c.low):
            spread, interval = "no interval", "none"
        else:
            interval = f"{number(c.low)} to {number(c.high)} ({c.source})"
            half = scale * (c.high - c.low) / 2
            sign = "+" if gain else ""
            # a t interval is symmetric, so its half-width says it; a run's own need not be: both ends
            spread = (f"±{half:.1f}" if half >= 0.1 else f"±{half:.2f}") if c.n >= 2 else \
                f"[{scale * c.low:{sign}.1f}, {scale * c.high:{sign}.1f}]"
        text[noise][i, j] = f"{number(c.mean)}<br>{spread} · n={c.n}" + ("<br>≈ 0: noise" if noise else "")
        hover[noise][i, j] = (f"T = {c.temperature:g}, α = {c.alpha:g}<br>mean {number(c.mean)}"
                              f"<br>95% interval {interval}<br>n = {c.n} run{'s' if c.n != 1 else ''}"
                              + ("<br><b>the interval includes 0: not a real gain</b>" if noise else ""))
        (noise_z if noise else z)[i, j] = scale * c.mean if gain else c.mean
        if noise:
            fig.add_shape(type="rect", x0=j - 0.46, x1=j + 0.46, y0=i - 0.46, y1=i + 0.46, xref="x", yref="y",
                          line=dict(color="#6c757d", width=2, dash="dot"), layer="above")
    common = dict(x=xs, y=ys, texttemplate="%{text}", hovertemplate="%{hovertext}<extra></extra>",
                  hoverongaps=False, xgap=2, ygap=2)
    if gain:
        reach = float(np.nanmax(np.abs(scale * cells["mean"]))) or 1.0  # symmetric, so white is exactly 0
        fig.add_heatmap(z=z, colorscale="RdBu", zmid=0, zmin=-reach, zmax=reach, name="KD gain",
                        colorbar=dict(title="KD gain", ticksuffix=" pts"), text=text[False], hovertext=hover[False],
                        **common)
        if cells["noise"].any():
            fig.add_heatmap(z=noise_z, colorscale=[[0, NOISE_COLOR], [1, NOISE_COLOR]], showscale=False,
                            name="interval includes 0", text=text[True], hovertext=hover[True], **common)
        title += "<br><sup>grey, dotted cells: the 95% interval includes 0 (noise, not a gain)</sup>"
    else:
        fig.add_heatmap(z=z, colorscale="Viridis", name=label,
                        colorbar=dict(title=label, **_percent_ticks(float(np.nanmax(z) - np.nanmin(z)))),
                        text=text[False], hovertext=hover[False], **common)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=ys)
    fig.update_layout(hovermode="closest")
    fig = _style(fig, title, None, height=380, x="temperature T", y="alpha α")
    if gain:
        fig.update_layout(margin=dict(t=60))  # room for the title's second line
    return fig


def _mean_marker(fig: go.Figure, x: float, stats: Optional[dict], values: pd.Series, color: str, scale: float,
                 fmt, name: str, showlegend: bool, col: int) -> list[float]:
    """A mean as a wide tick with its 95% interval as an error bar; returns the y values drawn."""
    stats = stats or {}
    mean = _finite(stats.get("mean"))
    if mean is None:
        if values.dropna().empty:
            return []
        mean = float(values.mean())
    ci = stats.get("ci95") or (None, None)
    low, high = _finite(ci[0]), _finite(ci[1])
    has_ci = low is not None and high is not None
    n = stats.get("n", values.notna().sum())
    about = f"95% interval {fmt(low)} to {fmt(high)}" if has_ci else "no interval"
    fig.add_scatter(x=[x], y=[scale * mean], mode="markers", name="mean ± 95% interval", legendgroup="mean",
                    showlegend=showlegend, marker=dict(symbol="line-ew", size=28, line=dict(width=3, color=color)),
                    error_y=dict(type="data", symmetric=False, array=[scale * (high - mean)] if has_ci else [0],
                                 arrayminus=[scale * (mean - low)] if has_ci else [0], color=color, thickness=2,
                                 width=8, visible=has_ci),
                    hovertemplate=f"{name} mean {fmt(mean)}, {about} (n = {n})<extra></extra>", row=1, col=col)
    return [scale * v for v in (mean, low, high) if v is not None]


def group_dots(runs: pd.DataFrame, aggregate: dict) -> go.Figure:
    """A seed group's results: left, each model's test accuracy as one dot per seed with the mean and its 95%
    interval beside them; right, the KD gain in points the same way, against a dashed zero line.

    `aggregate` maps teacher_test_acc, student_test_acc, baseline_test_acc and kd_gain to {"mean", "std",
    "n", "ci95": [low, high]} (fractions; std and ci95 None for one run). Dots are jittered by seed, in the
    same order in every column, so one seed's dots sit at the same offset.
    """
    if runs.empty:
        return _empty("Seed group", "no finished runs in this group")
    runs = runs.sort_values("seed", na_position="last").reset_index(drop=True)
    n = len(runs)
    jitter = np.linspace(-0.1, 0.1, n) if n > 1 else np.zeros(1)
    seeds = ["?" if _finite(s) is None else f"{int(s)}" for s in runs["seed"]]
    who = [f"seed {s}, run #{i}" for s, i in zip(seeds, runs["id"])]
    percent = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    points = lambda v: f"{100 * v:+.2f} pts"  # noqa: E731

    fig = make_subplots(rows=1, cols=2, column_widths=[0.64, 0.36], horizontal_spacing=0.12,
                        subplot_titles=("Test accuracy", "KD gain (student − baseline)"))
    drawn = []
    models = ("teacher", "student", "baseline")
    for k, model in enumerate(models):
        column = f"{model}_test_acc"
        values = runs[column].astype(float) if column in runs else pd.Series(np.nan, index=runs.index)
        keep = values.notna().to_numpy()
        fig.add_scatter(x=k - 0.12 + jitter[keep], y=values[keep], mode="markers", name=model, legendgroup=model,
                        marker=dict(color=PHASE_COLORS[model], size=9, opacity=0.8, line=dict(width=1, color="white")),
                        text=[f"{w}: {percent(v)}" for w, v in zip(np.array(who)[keep], values[keep])],
                        hovertemplate="%{text}<extra></extra>", row=1, col=1)
        drawn += list(values[keep]) + _mean_marker(fig, k + 0.22, aggregate.get(column), values, PHASE_COLORS[model],
                                                   1.0, percent, model, k == 0, col=1)

    gain = runs["kd_gain"].astype(float) if "kd_gain" in runs else pd.Series(np.nan, index=runs.index)
    keep = gain.notna().to_numpy()
    color = PHASE_COLORS["student"]
    fig.add_scatter(x=-0.12 + jitter[keep], y=100 * gain[keep], mode="markers", name="KD gain", legendgroup="gain",
                    marker=dict(color=color, size=9, opacity=0.8, symbol="diamond", line=dict(width=1, color="white")),
                    text=[f"{w}: {points(v)}" for w, v in zip(np.array(who)[keep], gain[keep])],
                    hovertemplate="%{text}<extra></extra>", row=1, col=2)
    gains = list(100 * gain[keep]) + _mean_marker(fig, 0.22, aggregate.get("kd_gain"), gain, color, 100.0, points,
                                                  "KD gain", False, col=2)
    fig.add_hline(y=0, line=dict(color="grey", dash="dash", width=1), row=1, col=2)

    fig.update_xaxes(tickvals=list(range(len(models))), ticktext=list(models), range=[-0.5, len(models) - 0.5],
                     showgrid=False, row=1, col=1)
    fig.update_xaxes(tickvals=[0], ticktext=["student − baseline"], range=[-0.5, 0.5], showgrid=False, row=1, col=2)
    fig.update_yaxes(**_fraction_axis(drawn), row=1, col=1)
    # the zero line always on the gain axis, so a reader sees how far the gain is from none
    lo, hi = min(gains + [0.0]), max(gains + [0.0])
    pad = max(0.1 * (hi - lo), 0.1)
    fig.update_yaxes(range=[lo - pad, hi + pad], ticksuffix=" pts", zeroline=False, row=1, col=2)
    fig = _style(fig, f"n = {n} seed{'s' if n != 1 else ''}", None, height=400)
    fig.update_layout(hovermode="closest", margin=dict(t=70))  # the subplot titles sit under the figure's
    return fig


def averaged_curves(frame: pd.DataFrame, metric: str, phases: Sequence[str] = ("student", "baseline"),
                    uirevision=None) -> go.Figure:
    """`metric` against the epoch averaged over several runs: per phase the mean as a line, with a band of
    ± one standard deviation, or the min-max range when fewer than 3 runs (the legend says which)."""
    label = metric_label(metric)
    title = f"{label}, mean over runs"
    if frame.empty:
        return _empty(title, "no curves in these runs", uirevision)
    rows = frame[(frame["kind"] == "epoch") & (frame["name"] == metric) & frame["phase"].isin(phases)]
    rows = rows.dropna(subset=["epoch", "value"])
    if rows.empty:
        return _empty(title, "no such curve in these runs", uirevision)
    fraction = metric in FRACTIONS
    fmt = ".1%" if fraction else ".4g"
    bounds = _bounds(metric)
    fig = go.Figure()
    drawn = []
    for phase in phases:
        g = rows[rows["phase"] == phase]
        if g.empty:
            continue
        wide = g.pivot_table(index="epoch", columns="run_id", values="value", aggfunc="mean").sort_index()
        runs = wide.shape[1]
        mean, count = wide.mean(axis=1), wide.count(axis=1)
        if runs >= 3:
            sd = wide.std(axis=1, ddof=1).fillna(0.0)  # an epoch only one run reached has no spread
            low, high, band = mean - sd, mean + sd, "± 1 sd"
        else:
            low, high, band = wide.min(axis=1), wide.max(axis=1), "min–max"
        if fraction:  # a band of accuracies cannot leave [0, 1]
            low, high = low.clip(*bounds), high.clip(*bounds)
        epochs = wide.index.to_numpy()
        color = phase_color(phase) or "#444444"
        fig.add_scatter(x=np.concatenate([epochs, epochs[::-1]]), y=np.concatenate([high, low[::-1]]),
                        fill="toself", fillcolor=_rgba(color, 0.2), line=dict(width=0), hoverinfo="skip",
                        name=f"{phase} · {band}", legendgroup=phase)
        fig.add_scatter(x=epochs, y=mean.to_numpy(), mode="lines", line=dict(color=color),
                        name=f"{phase} · mean of {runs} run{'s' if runs != 1 else ''}", legendgroup=phase,
                        customdata=np.column_stack([low, high, count]),
                        hovertemplate=f"{phase}: %{{y:{fmt}}} ({band} %{{customdata[0]:{fmt}}} to "
                                      f"%{{customdata[1]:{fmt}}}, n = %{{customdata[2]}})<extra></extra>")
        drawn += [low.to_numpy(), high.to_numpy()]
    if fraction and drawn:
        fig.update_yaxes(**_fraction_axis(np.concatenate(drawn), bounds))
    return _style(fig, title, uirevision, height=380, x="epoch")


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
        fig.add_bar(x=list(class_names), y=acc, name=phase_label(model), marker_color=phase_color(model))
    values = [np.asarray(acc, dtype=float).ravel() for acc in accuracies.values()]
    fig.update_yaxes(**_fraction_axis(np.concatenate(values) if values else [], include_zero=True))
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group")
    return _style(fig, "Test accuracy per class", None, height=320)


def distributions(teacher: np.ndarray, student: np.ndarray, class_names: Sequence[str], temperature: float,
                  uirevision=None, teacher_phase: str = "teacher") -> go.Figure:
    """The teacher's (or `teacher_phase`'s: teacherN, the ensemble) and the student's softened distributions for
    one image, as grouped bars."""
    fig = go.Figure()
    fig.add_bar(x=list(class_names), y=teacher, name=phase_label(teacher_phase),
                marker_color=phase_color(teacher_phase) or PHASE_COLORS["teacher"])
    fig.add_bar(x=list(class_names), y=student, name="student", marker_color=PHASE_COLORS["student"])
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_xaxes(type="category")
    return _style(fig, f"softmax(z / T) at T = {temperature:g}", uirevision, height=340, x="class")


def temperature_curves(curves: pd.DataFrame, temperature: Optional[float] = None,
                       teacher_phase: str = "teacher") -> go.Figure:
    """KL(teacher || student) and entropies against T, with the chosen T marked; the legend names
    `teacher_phase` (teacher 2, ensemble) where the columns say teacher."""
    fig = go.Figure()
    styles = {"KL(teacher || student)": ("#d62728", "solid"),
              "teacher entropy": (phase_color(teacher_phase) or PHASE_COLORS["teacher"], "solid"),
              "student entropy": (PHASE_COLORS["student"], "dot")}
    for column, (color, dash) in styles.items():
        fig.add_scatter(x=curves["T"], y=curves[column], name=column.replace("teacher", phase_label(teacher_phase)),
                        mode="lines", line=dict(color=color, dash=dash))
    if temperature is not None:
        fig.add_vline(x=temperature, line=dict(color="black", dash="dash", width=1))
    return _style(fig, "Over the test set, against T", "temperature-curves", height=340, x="temperature T", y="nats")


def similarity(matrix: np.ndarray, class_names: Sequence[str], temperature: float,
               teacher_phase: str = "teacher") -> go.Figure:
    """The teacher's (or `teacher_phase`'s) mean softened probabilities per true class ("dark knowledge")."""
    k = len(class_names)
    # labels formatted from z by plotly: a text array of float32 printed as 0.20000000298023224
    fig = go.Figure(go.Heatmap(z=matrix, x=list(class_names), y=list(class_names), colorscale=MAGMA, zmin=0,
                               texttemplate="%{z:.2f}" if k <= 12 else None,
                               hovertemplate="true %{y} → %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(hovermode="closest")
    who = "The ensemble" if teacher_phase == "ensemble" else phase_label(teacher_phase).capitalize()
    return _style(fig, f"{who}'s class similarity at T = {temperature:g}", None, height=420,
                  x="probability given to class", y="true class")


# ---- calibration, per class, frontier ------------------------------------------------------------
GAIN_COLORS = {"up": "#2ca02c", "down": "#d62728"}
ROLE_SYMBOLS = {"teacher": "diamond", "baseline": "square", "student": "circle", "int8 student": "circle-open"}
ROLE_NAMES = {"student": "distilled student", "int8 student": "int8 student (ONNX)"}
# the frontier's cost axes: the frame column, its words (FLOPs say which convention), a log axis or not
FRONTIER_AXES = {"params": ("parameters", True), "flops": ("FLOPs per image (2 × MACs)", True),
                 "macs": ("MACs per image (multiply-adds)", True), "size_mb": ("size (MB)", True),
                 "latency_ms_b1": ("latency at batch 1 (ms)", False)}


def reliability_diagram(tables: dict[str, Sequence[dict]], eces: Optional[dict[str, float]] = None,
                        title: str = "Reliability on the test set") -> go.Figure:
    """Accuracy against confidence per confidence bin, one bar trace per model, with the diagonal.

    Args:
        tables: per model ("teacher", "student", "baseline", …) its kdcore.analysis.reliability_table.
        eces: per model its expected calibration error, shown in the legend.

    Bars below the diagonal are overconfident bins (right less often than the model claims), above it
    underconfident ones. Empty bins draw no bar.
    """
    eces = eces or {}
    fig = go.Figure()
    for model, table in tables.items():
        frame = pd.DataFrame(list(table), columns=["lower", "upper", "count", "accuracy", "confidence"])
        frame = frame[frame["count"] > 0]
        ece = _finite(eces.get(model))
        name = phase_label(model) + ("" if ece is None else f" (ECE {100 * ece:.1f}%)")
        fig.add_bar(x=(frame["lower"] + frame["upper"]) / 2, y=frame["accuracy"], name=name,
                    marker_color=phase_color(model),
                    customdata=frame[["lower", "upper", "count", "confidence"]].to_numpy(),
                    hovertemplate=f"{phase_label(model)}: confidence %{{customdata[0]:.0%}}–%{{customdata[1]:.0%}}, "
                                  "n = %{customdata[2]}<br>accuracy %{y:.1%}, mean confidence "
                                  "%{customdata[3]:.1%}<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                    line=dict(color="black", dash="dash", width=1), hoverinfo="skip")
    fig.update_layout(barmode="group", hovermode="closest")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return _style(fig, title, None, height=380, x="confidence (max softmax probability)", y="accuracy")


def class_gain_bars(gains: Sequence[dict] | pd.DataFrame, class_names: Sequence[str],
                    title: str = "KD gain per class (student − baseline)") -> go.Figure:
    """Each class's KD gain in points, green up and red down, its test-image count in the hover.

    Args:
        gains: kdcore.analysis.per_class_gain's rows (class, count, student, baseline, gain).
    """
    frame = pd.DataFrame(gains if isinstance(gains, pd.DataFrame) else list(gains),
                         columns=["class", "count", "student", "baseline", "gain"])
    if frame.empty:
        return _empty(title, "no classes")
    points = frame["gain"].astype(float) * 100
    names = [class_names[int(k)] if int(k) < len(class_names) else str(k) for k in frame["class"]]
    fig = go.Figure(go.Bar(
        x=names, y=points, name="KD gain",
        marker_color=[GAIN_COLORS["down"] if v < 0 else GAIN_COLORS["up"] for v in points.fillna(0)],
        customdata=frame[["count", "student", "baseline"]].to_numpy(dtype=float),
        hovertemplate="class %{x}: %{y:+.2f} pts<br>student %{customdata[1]:.1%}, baseline %{customdata[2]:.1%}"
                      "<br>%{customdata[0]:.0f} test images<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_xaxes(type="category")
    fig.update_layout(hovermode="closest", showlegend=False)
    return _style(fig, title, None, height=320, x="class", y="points")


def pareto_frontier(points: pd.DataFrame, x: str = "params", dataset: Optional[str] = None,
                    title: str = "") -> go.Figure:
    """Test accuracy against a cost for one dataset: teacher, baseline, distilled-student and int8-student points
    of each run (distinct symbols), and the Pareto front through the points no other beats on both.

    Args:
        points: kdcore.analysis.frontier_points' rows (run_id, run, method, dataset, role, arch, accuracy and the
            cost columns params, flops, macs, latency_ms_b1).
        x: the cost column, a key of FRONTIER_AXES.
        dataset: the dataset to draw; required when `points` holds several (accuracies on different test sets
            do not share an axis).

    Raises:
        ValueError: for an unknown `x`, or several datasets and no `dataset`.
    """
    from kdcore.analysis import pareto_front

    if x not in FRONTIER_AXES:
        raise ValueError(f"x must be one of {sorted(FRONTIER_AXES)}, got {x!r}")
    x_label, log = FRONTIER_AXES[x]
    if dataset is not None:
        points = points[points["dataset"] == dataset]
    elif points["dataset"].nunique() > 1:
        raise ValueError("points of several datasets: pick one (accuracies on different test sets do not compare)")
    where = dataset or (points["dataset"].iloc[0] if len(points) else "")
    title = title or f"Test accuracy against {x_label}" + (f" · {where}" if where else "")
    rows = points.dropna(subset=[x, "accuracy"]).reset_index(drop=True)
    if rows.empty:
        return _empty(title, f"no finished runs with a {x_label} on this dataset")
    fig = go.Figure()
    for role in ROLE_SYMBOLS:
        g = rows[rows["role"] == role]
        if g.empty:
            continue
        open_ = role == "int8 student"  # the student's colour, hollow: the same model in fewer bits
        fig.add_scatter(
            x=g[x], y=g["accuracy"], mode="markers", name=ROLE_NAMES.get(role, role),
            marker=dict(symbol=ROLE_SYMBOLS[role], color=PHASE_COLORS["student" if open_ else role], size=9,
                        opacity=0.85, line=dict(width=2 if open_ else 1, color=PHASE_COLORS["student"] if open_
                                                else "white")),
            customdata=np.column_stack([g["run_id"], g["run"].map(plain), g["method"].astype(str),
                                        g["arch"].astype(str)]),
            hovertemplate=f"#%{{customdata[0]}} %{{customdata[1]}}<br>{role} · %{{customdata[3]}} · method "
                          f"%{{customdata[2]}}<br>%{{x:.4~s}} {x_label}, accuracy %{{y:.2%}}<extra></extra>")
    front = rows.loc[pareto_front(list(zip(rows[x].astype(float), rows["accuracy"].astype(float))))]
    fig.add_scatter(x=front[x], y=front["accuracy"], mode="lines", name="Pareto front",
                    line=dict(color="black", width=1.5, shape="hv"), hoverinfo="skip")
    if log:
        fig.update_xaxes(type="log")
    fig.update_yaxes(**_fraction_axis(rows["accuracy"]))
    fig.update_layout(hovermode="closest")
    return _style(fig, title, None, height=420, x=x_label, y="test accuracy")
