"""The Plotly builders in kdcore/charts.py on small made-up frames: what a reader of each chart relies on."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the app's own packages, as `streamlit run` sees them

from kdcore import charts  # noqa: E402


def _run(t, a, gain, low=np.nan, high=np.nan, status="completed", baseline=0.90):
    return dict(temperature=t, alpha=a, status=status, student_test_acc=baseline + gain, baseline_test_acc=baseline,
                kd_gain=gain, kd_gain_low=low, kd_gain_high=high)


@pytest.fixture
def sweep() -> pd.DataFrame:
    return pd.DataFrame([
        # T=4, α=0.5: three seeds, clearly above zero
        _run(4, 0.5, 0.012), _run(4, 0.5, 0.014), _run(4, 0.5, 0.016),
        # T=2, α=0.5: three seeds straddling zero
        _run(2, 0.5, 0.004), _run(2, 0.5, -0.003), _run(2, 0.5, 0.001),
        # single runs: their own interval decides
        _run(10, 0.5, 0.02, low=0.01, high=0.03), _run(10, 0.9, 0.005, low=-0.002, high=0.012),
        _run(2, 0.9, 0.03, low=0.02, high=0.04),
        # these must not count: not completed, or no value
        _run(4, 0.5, 0.5, status="failed"), _run(4, 0.5, np.nan),
    ])


def _cell(fig, x: str, y: str):
    """(text, z, trace index) of the one heatmap trace that draws cell (x, y)."""
    for k, trace in enumerate(fig.data):
        if trace.type != "heatmap":
            continue
        i, j = list(trace.y).index(y), list(trace.x).index(x)
        z = np.asarray(trace.z, dtype=float)[i, j]
        if np.isfinite(z):
            return trace.text[i][j], z, k
    raise AssertionError(f"no trace draws cell T={x}, alpha={y}")


def test_sweep_heatmap_cell_mean_and_n(sweep):
    fig = charts.sweep_heatmap(sweep)
    text, z, _ = _cell(fig, "4", "0.5")
    assert z == pytest.approx(1.4)  # mean gain in points; the failed and the NaN run left out
    assert "+1.40 pts" in text and "n=3" in text
    text, z, _ = _cell(fig, "10", "0.5")
    assert z == pytest.approx(2.0) and "n=1" in text


def test_sweep_heatmap_marks_cells_whose_interval_includes_zero(sweep):
    fig = charts.sweep_heatmap(sweep)
    noisy = [("2", "0.5"), ("10", "0.9")]  # seeds straddle zero; a lone run whose own interval includes zero
    real = [("4", "0.5"), ("10", "0.5"), ("2", "0.9")]
    for x, y in noisy + real:
        text, _, k = _cell(fig, x, y)
        marked = "noise" in text
        assert marked == ((x, y) in noisy), (x, y, text)
        # noise cells are drawn by the grey trace, real ones by the diverging-scale trace
        assert (fig.data[k].name == "interval includes 0") == marked
    assert len(fig.layout.shapes) == len(noisy)  # one dotted outline per noise cell
    gain = next(t for t in fig.data if t.name == "KD gain")
    assert gain.zmid == 0 and gain.zmin == -gain.zmax and gain.colorbar.ticksuffix == " pts"


def test_sweep_heatmap_axes_are_the_swept_values_in_numeric_order(sweep):
    fig = charts.sweep_heatmap(sweep, title="g1: KD gain")
    for trace in fig.data:
        assert list(trace.x) == ["2", "4", "10"]  # 10 after 4, not before 2 as text would sort
        assert list(trace.y) == ["0.5", "0.9"]
    assert list(fig.layout.xaxis.categoryarray) == ["2", "4", "10"]
    assert fig.layout.title.text.startswith("g1: KD gain")


def test_sweep_heatmap_accuracy_ticks_do_not_repeat(sweep):
    fig = charts.sweep_heatmap(sweep, "student_test_acc")
    bar = fig.data[0].colorbar
    assert bar.tickformat != ".0%"  # a 4-point span at ".0%" read "89% 89% 88%"
    stops = {s.value: tuple(s.dtickrange) for s in bar.tickformatstops}
    assert stops[".1%"][0] < 0.005 < stops[".1%"][1]  # half-point ticks get a decimal
    assert not any("noise" in t for row in fig.data[0].text for t in row)


def test_sweep_heatmap_without_completed_runs_is_empty(sweep):
    fig = charts.sweep_heatmap(sweep[sweep["status"] != "completed"])
    assert not fig.data and "no completed runs" in fig.layout.annotations[0].text


def test_similarity_colours_and_labels():
    matrix = np.array([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    fig = charts.similarity(matrix, ["a", "b", "c"], 4.0)
    first = fig.data[0].colorscale[0][1].lower()
    assert first != "#000004"  # Streamlit's theme swaps that colour for a pink
    assert fig.data[0].texttemplate == "%{z:.2f}" and fig.data[0].text is None


def _history(values, name="agreement", phase="student"):
    return pd.DataFrame({"phase": phase, "kind": "epoch", "step": range(len(values)), "epoch": range(1, len(values) + 1),
                         "name": name, "value": values})


def test_agreement_axis_stays_within_zero_and_one():
    lo, hi = charts.agreement(_history([0.93])).layout.yaxis.range
    assert 0 <= lo < 0.93 < hi <= 1  # one point autoranged to 0-150%
    lo, hi = charts.agreement(_history([0.97, 0.99, 1.0])).layout.yaxis.range
    assert 0.9 < lo < 0.97 and hi == 1
    assert charts.agreement(_history([0.97, 0.99, 1.0])).layout.yaxis.tickformat != ".0%"


def test_accuracy_bars_keep_their_base():
    runs = pd.DataFrame({"id": [1, 2], "teacher_test_acc": [0.98, 0.97], "student_test_acc": [0.95, 0.96],
                         "baseline_test_acc": [0.94, np.nan]})
    lo, hi = charts.accuracy_bars(runs, {1: "a", 2: "b"}).layout.yaxis.range
    assert lo == 0 and 0.98 < hi <= 1


@pytest.fixture
def group():
    runs = pd.DataFrame({"id": [12, 13, 14], "seed": [3, 1, 2], "teacher_test_acc": [0.972, 0.970, 0.975],
                         "student_test_acc": [0.951, 0.948, 0.955], "baseline_test_acc": [0.940, 0.941, 0.938]})
    runs["kd_gain"] = runs["student_test_acc"] - runs["baseline_test_acc"]

    def stats(column):
        v = runs[column]
        return {"mean": v.mean(), "std": v.std(), "n": 3, "ci95": [v.mean() - 0.01, v.mean() + 0.01]}
    return runs, {c: stats(c) for c in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain")}


def test_group_dots_one_dot_per_seed_per_model(group):
    runs, aggregate = group
    fig = charts.group_dots(runs, aggregate)
    dots = {t.name: t for t in fig.data if t.marker.symbol != "line-ew"}
    assert set(dots) == {"teacher", "student", "baseline", "KD gain"}
    for name, trace in dots.items():
        assert len(trace.y) == 3
    # sorted by seed: seed 1 is run #13
    assert dots["teacher"].text[0] == "seed 1, run #13: 97.0%"
    assert list(dots["KD gain"].y) == pytest.approx(100 * runs.sort_values("seed")["kd_gain"].to_numpy())
    means = [t for t in fig.data if t.marker.symbol == "line-ew"]
    assert len(means) == 4
    student = means[1]
    assert student.y[0] == pytest.approx(aggregate["student_test_acc"]["mean"])
    assert student.error_y.array[0] == pytest.approx(0.01) and student.error_y.arrayminus[0] == pytest.approx(0.01)
    assert fig.layout.title.text == "n = 3 seeds"


def test_group_dots_single_seed_has_no_interval(group):
    runs, _ = group
    one = runs.iloc[:1]
    aggregate = {c: {"mean": float(one[c].iloc[0]), "std": None, "n": 1, "ci95": None}
                 for c in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain")}
    fig = charts.group_dots(one, aggregate)
    assert fig.layout.title.text == "n = 1 seed"
    assert not any(t.error_y.visible for t in fig.data if t.marker.symbol == "line-ew")


def _curves():
    rows = []
    for run_id, offset in ((1, 0.00), (2, 0.02), (3, 0.07)):
        for epoch in (1, 2, 3):
            for phase, base in (("student", 0.60), ("baseline", 0.75)):
                rows.append(dict(run_id=run_id, phase=phase, kind="epoch", step=epoch, epoch=epoch, name="val_acc",
                                 value=base + 0.05 * epoch + offset))
    rows.append(dict(run_id=1, phase="student", kind="step", step=7, epoch=1, name="val_acc", value=0.0))
    return pd.DataFrame(rows)


def test_averaged_curves_mean_line_is_the_mean_over_runs():
    frame = _curves()
    fig = charts.averaged_curves(frame, "val_acc")
    line = next(t for t in fig.data if t.name.startswith("student · mean"))
    expected = [np.mean([0.60 + 0.05 * e + o for o in (0.0, 0.02, 0.07)]) for e in (1, 2, 3)]
    assert list(line.x) == [1, 2, 3] and list(line.y) == pytest.approx(expected)
    assert line.name == "student · mean of 3 runs"
    band = next(t for t in fig.data if t.name == "student · ± 1 sd")
    sd = np.std([0.0, 0.02, 0.07], ddof=1)
    assert max(band.y) == pytest.approx(expected[-1] + sd)
    lo, hi = fig.layout.yaxis.range
    assert 0 <= lo and hi <= 1


def test_averaged_curves_band_of_accuracies_stays_below_one():
    frame = _curves()
    frame.loc[frame["phase"] == "student", "value"] += 0.3  # mean + sd above 100% at the last epoch
    band = next(t for t in charts.averaged_curves(frame, "val_acc").data if t.name == "student · ± 1 sd")
    assert max(band.y) == 1.0


def test_averaged_curves_two_runs_band_is_min_max():
    frame = _curves()
    fig = charts.averaged_curves(frame[frame["run_id"] != 3], "val_acc", phases=("baseline",))
    band = next(t for t in fig.data if "min–max" in t.name)
    assert max(band.y) == pytest.approx(0.75 + 0.15 + 0.02) and min(band.y) == pytest.approx(0.80)


def test_averaged_curves_empty():
    fig = charts.averaged_curves(_curves().iloc[:0], "val_acc")
    assert not fig.data and fig.layout.annotations


# ---- loss terms: whatever a method logs -----------------------------------------------------------------
def _terms_history(names_by_phase: dict[str, list[str]], kind: str = "step") -> pd.DataFrame:
    rows = []
    for phase, names in names_by_phase.items():
        for step in (1, 2, 3):
            for n, name in enumerate(names):
                rows.append(dict(phase=phase, kind=kind, step=step, epoch=1, name=name, value=1.0 / step + n))
    return pd.DataFrame(rows, columns=["phase", "kind", "step", "epoch", "name", "value"])


def test_loss_parts_draws_every_logged_term_by_its_name_and_keeps_the_nice_names():
    history = _terms_history({"teacher": ["train_loss", "train_acc"],
                        "student": ["train_loss", "train_ce", "train_tckd", "train_nckd", "train_acc", "val_acc"]})
    names = [t.name for t in charts.loss_parts(history).data]
    assert names == ["teacher · total", "student · total", "student · CE on labels", "student · nckd",
                     "student · tckd"]
    kd = _terms_history({"student": ["train_loss", "train_ce", "train_kd"]})
    assert [t.name for t in charts.loss_parts(kd).data] == ["student · total", "student · CE on labels",
                                                             "student · KD term"]


def test_loss_parts_gives_each_term_its_own_dash_and_each_teacher_its_colour():
    history = _terms_history({"teacher2": ["train_loss"],
                              "student": ["train_loss", "train_ce", "train_inter", "train_intra"]})
    fig = charts.loss_parts(history)
    dashes = [t.line.dash for t in fig.data if t.name.startswith("student")]
    assert len(set(dashes)) == len(dashes)
    teacher2 = next(t for t in fig.data if t.name.startswith("teacher 2"))
    assert teacher2.line.color and teacher2.line.color != charts.PHASE_COLORS["teacher"]


def test_a_methods_own_terms_are_offered_and_drawn_among_the_curves():
    history = _terms_history({"student": ["train_loss", "train_ce", "train_hint", "val_acc"]}, kind="epoch")
    names = charts.metric_names(history)
    assert names[:len(charts.METRIC_LABELS)] == list(charts.METRIC_LABELS) and names[-1] == "train_hint"
    assert charts.metric_label("train_hint") == "hint term" and charts.metric_label("train_ce") == "CE on labels"
    titles = [f.layout.title.text for f in charts.all_curves(history)]
    assert "hint term" in titles and "CE on labels" in titles


# ---- calibration, per class, frontier ------------------------------------------------------------
def _table(pairs):
    """A reliability table over 3 bins from (accuracy, confidence, count) per bin."""
    return [dict(lower=b / 3, upper=(b + 1) / 3, count=n, accuracy=a, confidence=c)
            for b, (a, c, n) in enumerate(pairs)]


def test_reliability_diagram_draws_a_bar_trace_per_model_with_its_ece_and_the_diagonal():
    tables = {"teacher": _table([(0.2, 0.3, 4), (0.6, 0.5, 10), (0.9, 0.85, 30)]),
              "student": _table([(0.0, 0.0, 0), (0.4, 0.55, 12), (0.7, 0.8, 20)]),
              "baseline": _table([(0.5, 0.3, 2), (0.5, 0.5, 2), (0.5, 0.9, 2)])}
    fig = charts.reliability_diagram(tables, {"teacher": 0.031, "student": 0.12, "baseline": 0.2})
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["teacher (ECE 3.1%)", "student (ECE 12.0%)", "baseline (ECE 20.0%)"]
    assert list(bars[0].y) == [0.2, 0.6, 0.9] and list(bars[0].x) == pytest.approx([1 / 6, 0.5, 5 / 6])
    assert len(bars[1].x) == 2  # the empty bin draws no bar
    diagonal = next(t for t in fig.data if t.name == "perfectly calibrated")
    assert list(diagonal.x) == [0, 1] and list(diagonal.y) == [0, 1]


def test_class_gain_bars_are_green_up_red_down_with_each_class_count():
    gains = [{"class": 0, "count": 12, "student": 0.9, "baseline": 0.8, "gain": 0.1},
             {"class": 1, "count": 7, "student": 0.5, "baseline": 0.6, "gain": -0.1}]
    fig = charts.class_gain_bars(gains, ["cat", "dog"])
    bar = fig.data[0]
    assert list(bar.x) == ["cat", "dog"] and list(bar.y) == pytest.approx([10.0, -10.0])
    assert list(bar.marker.color) == [charts.GAIN_COLORS["up"], charts.GAIN_COLORS["down"]]
    assert [row[0] for row in bar.customdata] == [12, 7] and "test images" in bar.hovertemplate


def _points():
    def row(run_id, role, acc, params, dataset="digits"):
        return dict(run_id=run_id, run=f"run {run_id}", method="kd", dataset=dataset, role=role, arch="a",
                    accuracy=acc, params=params, flops=2.0 * params, macs=float(params), latency_ms_b1=np.nan)
    return pd.DataFrame([row(1, "teacher", 0.97, 1000), row(1, "baseline", 0.85, 100), row(1, "student", 0.90, 100),
                         row(2, "teacher", 0.95, 2000), row(2, "baseline", 0.80, 50), row(2, "student", 0.80, 60),
                         row(3, "student", 0.99, 10, dataset="mnist")])


def test_pareto_frontier_draws_each_role_with_its_symbol_and_the_front_through_the_best_points():
    fig = charts.pareto_frontier(_points(), "params", "digits")
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"teacher", "baseline", "distilled student", "Pareto front"}
    assert by_name["teacher"].marker.symbol == "diamond" and by_name["distilled student"].marker.symbol == "circle"
    front = by_name["Pareto front"]
    # baseline of run 2 (50, 0.80), student of run 1 (100, 0.90), teacher of run 1 (1000, 0.97); the rest dominated
    assert list(zip(front.x, front.y)) == [(50, 0.80), (100, 0.90), (1000, 0.97)]
    assert fig.layout.xaxis.type == "log" and "parameters" in fig.layout.xaxis.title.text
    hover = str(by_name["teacher"].customdata.tolist())
    assert "run 1" in hover and "kd" in hover


def test_pareto_frontier_takes_one_dataset_and_labels_flops_as_twice_macs():
    with pytest.raises(ValueError, match="several datasets"):
        charts.pareto_frontier(_points(), "params")
    assert "2 × MACs" in charts.pareto_frontier(_points(), "flops", "digits").layout.xaxis.title.text
    unmeasured = charts.pareto_frontier(_points(), "latency_ms_b1", "digits")  # no run measured its latency
    assert "no finished runs with a latency" in unmeasured.layout.annotations[0].text
    mnist = charts.pareto_frontier(_points(), "macs", "mnist")
    assert [len(t.x) for t in mnist.data if t.name == "Pareto front"] == [1]


# ---- live curves: panels per phase, means that run across epochs, a range past the first steps --------------
def _running_history(per_batch, steps_per_epoch=100, epochs=3, every=10, phase="student", name="train_loss"):
    """Step rows as the trainer stores them (each the mean since its epoch began, every `every` steps) and epoch
    rows (at the epoch's last step), from a per-batch value `per_batch(global step)`."""
    rows = []
    for e in range(1, epochs + 1):
        first = (e - 1) * steps_per_epoch + 1
        for k in range(every, steps_per_epoch + 1, every):
            mean = float(np.mean([per_batch(s) for s in range(first, first + k)]))
            rows.append(dict(phase=phase, kind="step", step=first + k - 1, epoch=e, name=name, value=mean))
        rows.append(dict(phase=phase, kind="epoch", step=e * steps_per_epoch, epoch=e, name=name, value=mean))
    return pd.DataFrame(rows, columns=["phase", "kind", "step", "epoch", "name", "value"])


def test_live_loss_runs_on_across_epochs_without_a_cliff_at_each_boundary():
    history = _running_history(lambda s: 2.0 / (1 + s / 30))
    trace = charts.loss_parts(history).data[0]
    y, x = np.asarray(trace.y, dtype=float), np.asarray(trace.x)
    jumps = np.abs(np.diff(y))
    at_boundary = jumps[np.isin(x[1:], [101 + 9, 201 + 9])]  # the first point of epochs 2 and 3
    inside = jumps[~np.isin(x[1:], [101 + 9, 201 + 9])]
    assert at_boundary.max() <= 1.5 * inside[5:].max() + 1e-9, (at_boundary, inside)
    # each point is the mean of the 10 steps before it
    assert y[-1] == pytest.approx(np.mean([2.0 / (1 + s / 30) for s in range(291, 301)]), rel=1e-6)
    assert np.all(np.diff(y) < 0), "a falling loss must fall at every point"


def test_live_charts_give_each_phase_its_own_panel_and_step_axis():
    history = pd.concat([_running_history(lambda s: 1.0, phase="teacher"), _running_history(lambda s: 2.0),
                         _running_history(lambda s: 0.5, phase="teacher", name="train_acc"),
                         _running_history(lambda s: 0.4, name="train_acc")])
    for fig in (charts.loss_parts(history), charts.accuracy(history)):
        axes = {t.name.split(" · ")[0]: t.xaxis for t in fig.data}
        assert axes["teacher"] != axes["student"], axes
        assert [a.text for a in fig.layout.annotations][:2] == ["teacher", "student"]


def test_a_huge_first_loss_does_not_flatten_the_rest_of_its_panel():
    history = _running_history(lambda s: 40.0 if s <= 10 else 1.0 + 1 / s, name="train_kd")
    history = pd.concat([history, _running_history(lambda s: 0.8 + 1 / s, name="train_ce")])
    fig = charts.loss_parts(history)
    low, high = fig.layout.yaxis.range
    assert high < 3, (low, high)
    assert low >= 0
