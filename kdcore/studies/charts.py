"""A study's figures, from its described form (kdcore.studies.view.describe_study): pure, no Streamlit.

Best so far against the trial number, parallel coordinates of the parameters against the objective,
and each parameter's importance. Margins grow to fit their labels (automargin) and legends sit below
the plot, under the axis title, so nothing is clipped or covered in the dashboard or the report.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import plotly.graph_objects as go

from kdcore.charts import PHASE_COLORS, _empty

STATE_MARKERS = {"pruned": ("x", "#9e9e9e"), "failed": ("x-thin", "#d62728"), "interrupted": ("x-thin", "#ff7f0e"),
                 "cancelled": ("x-thin", "#9e9e9e")}
COLORSCALE = "Viridis"


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height, hovermode="closest",
                      margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", xref="container", x=0, yref="container", yanchor="bottom", y=0))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _scale(objective: dict) -> tuple[float, str]:
    """Objective values are fractions: points for a gain, percent for an accuracy."""
    return (100.0, " pts") if objective["in_points"] else (100.0, "%")


def label(key: str) -> str:
    """A parameter's axis label: 'distill.temperature' -> 'temperature', options by their own name."""
    return {"distill.temperature": "T", "distill.alpha": "α", "distill.method": "method"}.get(
        key, key.rsplit(".", 1)[-1].replace("_", " "))


def history(study: dict) -> go.Figure:
    """Each complete trial's objective by trial number, the best so far as a step line, and where the others
    ended (pruned, failed) as crosses along the bottom."""
    objective = study["objective"]
    scale, unit = _scale(objective)
    title = f"Best so far: {objective['label']}"
    complete = [t for t in study["trials"] if t["state"] == "complete" and t["value"] is not None]
    if not complete:
        return _empty(title, "no trial has completed yet")
    fig = go.Figure()
    x = [t["number"] for t in complete]
    y = [scale * t["value"] for t in complete]
    fig.add_scatter(x=x, y=y, mode="markers", name="trial", marker=dict(color=PHASE_COLORS["student"], size=9),
                    text=[f"trial {t['number']}: {t['setting']}" for t in complete],
                    hovertemplate="%{text}<br>%{y:.2f}" + unit + "<extra></extra>")
    best, best_y = [], -math.inf
    for t in sorted(study["trials"], key=lambda t: t["number"]):
        if t in complete:
            best_y = max(best_y, scale * t["value"])
        best.append((t["number"], best_y if math.isfinite(best_y) else None))
    fig.add_scatter(x=[b[0] for b in best], y=[b[1] for b in best], mode="lines", name="best so far",
                    line=dict(color=PHASE_COLORS["ensemble"], shape="hv", width=2), hoverinfo="skip")
    floor = min(y)
    for state, (symbol, color) in STATE_MARKERS.items():
        ended = [t for t in study["trials"] if t["state"] == state]
        if ended:
            fig.add_scatter(x=[t["number"] for t in ended], y=[floor] * len(ended), mode="markers", name=state,
                            marker=dict(symbol=symbol, color=color, size=9, line=dict(width=2, color=color)),
                            text=[f"trial {t['number']} {state}" + (f" after epoch {t['pruned_at_epoch']}"
                                                                    if t["pruned_at_epoch"] else "") for t in ended],
                            hovertemplate="%{text}<extra></extra>")
    if objective["in_points"]:
        fig.add_hline(y=0, line=dict(color="grey", dash="dash", width=1))
    fig.update_xaxes(title_text="trial", dtick=max(1, len(study["trials"]) // 10))
    fig.update_yaxes(title_text=f"{objective['label']} ({unit.strip()}, validation)", ticksuffix=unit)
    return _layout(fig, title)


def _dimension(key: str, spec: dict, values: list) -> dict:
    """One axis: categories spread evenly, log ranges on a log10 axis; a trial without this parameter (an option
    of another method) sits on a 'not used' tick below the range."""
    present = [v for v in values if v is not None]
    if "choices" in spec:
        choices = list(spec["choices"])
        ticks = list(range(len(choices)))
        mapped = [choices.index(v) if v in choices else -1 for v in values]
        text = [str(c) for c in choices]
        low, high = 0, max(1, len(choices) - 1)
    else:
        log = spec.get("log", False)
        tf = (lambda v: math.log10(v)) if log else (lambda v: float(v))
        low, high = tf(spec["low"]), tf(spec["high"])
        mapped = [tf(v) if v is not None else None for v in values]
        ticks = list(np.linspace(low, high, 5))
        text = [f"{10 ** t:.3g}" if log else f"{t:.3g}" for t in ticks]
    if len(present) < len(values):
        below = low - 0.15 * (high - low or 1)
        mapped = [below if m is None or m == -1 else m for m in mapped]
        ticks, text, low = [below] + ticks, ["not used"] + text, below
    return dict(label=label(key), values=mapped, range=[low, high], tickvals=ticks, ticktext=text)


def parallel(study: dict) -> go.Figure:
    """Parallel coordinates: one line per complete trial through its parameters to its objective, coloured by it."""
    objective = study["objective"]
    scale, unit = _scale(objective)
    title = f"Parameters against the {objective['label']}"
    complete = [t for t in study["trials"] if t["state"] == "complete" and t["value"] is not None]
    if len(complete) < 2:
        return _empty(title, "needs two complete trials")
    dims = [_dimension(key, spec, [t["params"].get(key) for t in complete]) for key, spec in study["space"].items()]
    values = [scale * t["value"] for t in complete]
    dims.append(dict(label=f"{objective['label']} ({unit.strip()})", values=values))
    fig = go.Figure(go.Parcoords(
        line=dict(color=values, colorscale=COLORSCALE, showscale=True,
                  colorbar=dict(title=dict(text=unit.strip()), thickness=12)),
        dimensions=dims, labelangle=0, labelside="top"))
    fig = _layout(fig, title, height=420)
    fig.update_layout(margin=dict(l=60, r=60, t=110, b=30))  # parcoords labels sit above the axes
    return fig


def importance(study: dict) -> go.Figure:
    """Each parameter's share of the objective's variation (Optuna's PED-ANOVA), largest on top."""
    title = "Parameter importance"
    shares = study.get("importance")
    if not shares:
        return _empty(title, study.get("importance_note") or "needs more complete trials")
    items = sorted(shares.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[100 * v for _, v in items], y=[label(k) for k, _ in items], orientation="h",
                           marker_color=PHASE_COLORS["student"], text=[f"{100 * v:.0f}%" for _, v in items],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.0f}% of the variation<extra></extra>"))
    fig.update_xaxes(title_text="share of the objective's variation (%)", range=[0, 115], ticksuffix="%")
    return _layout(fig, title, height=max(260, 60 + 40 * len(items)))


def figures(study: dict) -> list[go.Figure]:
    return [history(study), parallel(study), importance(study)]


def best_params_table(study: dict) -> Optional[list[tuple[str, str]]]:
    best = study.get("best")
    if not best:
        return None
    return [(label(k), f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in best["params"].items()]
