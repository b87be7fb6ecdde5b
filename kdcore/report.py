"""A run or a group as one self-contained HTML page, for people who will not open the dashboard.

    from kdcore.report import build_report
    html = build_report(Store(url), 12)            # one run
    html = build_report(Store(url), "my seeds")    # a seed group or a sweep

The page needs no server and no network: plotly.js is inlined once, images are
data: URIs, and nothing links outside the file. It prints cleanly (a small inline
stylesheet). The CLI (`kdcore report`) and the dashboard's Report page both call
`build_report`, so the two never differ.
"""
from __future__ import annotations

import base64
import html as _html
import io
import platform
from datetime import datetime
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from kdcore import charts, text
from kdcore.experiments import format_seeds, group_report
from kdcore.record import RunFolder, RunSummary, gain_sentence, teacher_phases
from kdcore.store.tables import DAMAGED_LABEL

SHOWN_IMAGES = 4  # test images whose softened distributions the report draws: 3 right, 1 wrong
CALIBRATION_BINS = 15
MAX_CLASSES_SHOWN = 20  # bars for one image's distribution: the teacher's most likely classes


class ReportError(ValueError):
    """The target cannot be reported: no such run or group, or nothing completed to show."""


class RunIdOutOfRange(ReportError):
    """A run id no store can hold: bad input rather than a run that is missing."""


# ---- what to report ------------------------------------------------------------------------------------
def resolve(store, target) -> tuple[str, list]:
    """("run", [run]), ("study", [name]) or ("group", runs) for a run id (an int or a string of digits), a study's
    name or a group's name.

    A string of digits that names a study or a group is that one: a name is never mistaken for a run.

    Raises:
        ReportError: an unknown run, study or group, a run that did not complete, a group with no completed run.
    """
    from kdcore.store import RunNotFound, StudyNotFound

    if isinstance(target, str):
        try:
            return "study", [store.get_study(target).name]
        except StudyNotFound:
            pass
    digits_only_group = isinstance(target, str) and target.strip().isdigit() and store.list_runs(group=target)
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit() and not digits_only_group):
        run_id = int(target)
        if not -2**63 < run_id < 2**63:  # SQLite's integers: a larger id would overflow the query
            raise RunIdOutOfRange(f"run id {run_id} is out of range: no run has it (run ids go up to {2**63 - 1})")
        try:
            run = store.get_run(run_id)
        except RunNotFound:
            raise ReportError(f"no run #{run_id} in this store; see `kdcore runs list`") from None
        if run.status != "completed":
            raise ReportError(f"run #{run_id} is {run.status}, not completed: a report needs a finished run")
        return "run", [run]
    runs = sorted(store.list_runs(group=str(target)), key=lambda r: r.id)
    if not runs:
        raise ReportError(f"no study or group named {target!r} (and it is not a run id); see `kdcore studies "
                          "list`, `kdcore groups list` and `kdcore runs list`")
    if not any(r.status == "completed" for r in runs):
        raise ReportError(f"group {target!r} has no completed run yet ({len(runs)} run(s)): nothing to report")
    return "group", runs


def build_report(store, target, *, presentation: bool = False, latency: bool = True,
                 plotly_src: Optional[str] = None) -> str:
    """The report of a run (an id) or a group (a name) as one HTML document.

    Args:
        store: a kdcore.store.Store.
        target: a run id, or the name of a study, a seed group or a sweep.
        presentation: bigger type and numbers, for a screen in a meeting.
        latency: measure latency now (kdcore.latency) when the run's summary holds none.
        plotly_src: load plotly.js from this URL instead of inlining it (the dashboard serves it once, rather
            than 4.9 MB in every report it shows); `with_plotly_inlined` makes such a page self-contained.

    Raises:
        ReportError: see `resolve`.
    """
    kind, runs = resolve(store, target)
    page = _Page(presentation, plotly_src)
    if kind == "run":
        _run_report(page, store, runs[0], latency=latency)
    elif kind == "study":
        _study_report(page, store, runs[0])
    else:
        _group_report(page, store, runs, latency=latency)
    return page.render()


# ---- the page ----------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
     max-width:1100px;margin:0 auto;padding:24px 32px;line-height:1.45}
h1{font-size:1.7em;margin:.2em 0}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #d0d7de;
     padding-bottom:.2em}
.meta{color:#57606a;font-size:.9em}
.headline{display:flex;flex-wrap:wrap;gap:16px;margin:16px 0}
.big{border:1px solid #d0d7de;border-radius:8px;padding:10px 16px;min-width:150px}
.big .label{color:#57606a;font-size:.85em}.big .value{font-size:1.8em;font-weight:600}
.verdict{border-left:4px solid #0969da;background:#f6f8fa;padding:8px 14px;margin:12px 0}
.verdict.good{border-color:#1a7f37}.verdict.bad{border-color:#cf222e}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.85em}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:8px}.figs>div{min-width:0}
.figs.one{display:block}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}
.sample{border:1px solid #d0d7de;border-radius:8px;padding:8px;display:flex;gap:8px;align-items:flex-start}
.sample img{image-rendering:pixelated;width:96px;height:96px;border:1px solid #d0d7de}
.sample .bars{flex:1;min-width:0}
.note{color:#57606a;font-size:.9em}
body.present{max-width:none;padding:24px 48px;font-size:20px}
body.present .big .value{font-size:2.8em}body.present h1{font-size:2.2em}
@media print{body{max-width:none;padding:0}.figs>div,.sample,table,.headline{break-inside:avoid}
  h2{break-after:avoid}}
"""


def _plotly_script(src: Optional[str]) -> str:
    """plotly.js inlined, or loaded from `src`."""
    if src is not None:
        return f'<script type="text/javascript" src="{esc(src)}"></script>'
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def with_plotly_inlined(page: str, plotly_src: str) -> str:
    """A report built with `plotly_src` as the self-contained file `kdcore report` writes (plotly.js inlined)."""
    return page.replace(_plotly_script(plotly_src), _plotly_script(None), 1)


class _Page:
    """HTML parts in order; plotly.js is written once, in the head."""

    def __init__(self, presentation: bool, plotly_src: Optional[str] = None):
        self.presentation = presentation
        self.plotly_src = plotly_src
        self.title = "kdcore report"
        self.parts: list[str] = []
        self.figures = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def h2(self, title: str) -> None:
        self.add(f"<h2>{esc(title)}</h2>")

    def p(self, words: str, cls: str = "") -> None:
        self.add(f'<p class="{cls}">{esc(words)}</p>' if cls else f"<p>{esc(words)}</p>")

    def figure(self, fig) -> str:
        """A plotly figure as a div and the script that draws it (plotly.js itself is in the head)."""
        self.figures += 1
        return fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False,
                           div_id=f"fig{self.figures}", config={"displaylogo": False, "responsive": True})

    def figures_row(self, figs: Sequence) -> None:
        one = " one" if len(figs) == 1 else ""
        self.add(f'<div class="figs{one}">' + "".join(f"<div>{self.figure(f)}</div>" for f in figs) + "</div>")

    def render(self) -> str:
        body_class = ' class="present"' if self.presentation else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style>"
                f"{_plotly_script(self.plotly_src)}</head>"
                f"<body{body_class}>\n" + "\n".join(self.parts)
                # each figure is drawn as the page is read, before the ones beside it exist: redraw each at
                # its final width once all are laid out
                + "\n<script>window.addEventListener('load',function(){window.dispatchEvent(new Event('resize'));"
                  "});</script>\n</body></html>\n")


def esc(value) -> str:
    return _html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _big(label: str, value: str) -> str:
    return f'<div class="big"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div></div>'


def _png_uri(image: torch.Tensor, side: int = 96) -> str:
    """A (C, H, W) image in [0, 1] as a data: URI of a PNG, enlarged with nearest-neighbour (8x8 digits stay crisp)."""
    from PIL import Image

    array = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if picture.width < side:
        scale = max(1, side // picture.width)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- the setup in words ----------------------------------------------------------------------------------
def _teacher_arches(run) -> str:
    return text.teachers_line(run.config, run.teacher_arch)


def _setup_sentences(run, seeds: Optional[Sequence[int]] = None, swept: Sequence[str] = ()) -> list[str]:
    cfg = run.config or {}
    train = cfg.get("train") or {}
    dataset = cfg.get("dataset") or {}
    student = cfg.get("student") or {}
    teachers = _teacher_arches(run)
    several = " + " in teachers
    sentences = [
        f"Question: does a small {run.student_arch} student learn {run.dataset} better when it is taught by "
        + (f"several teachers ({teachers})" if several else f"a {teachers} teacher")
        + " (knowledge distillation) than when it is trained on the labels alone?",
        f"Setup: the teacher{'s' if several else ''} ({teachers}) distil{'' if several else 's'} "
        f"into the student ({run.student_arch}{_options(student.get('options'))}) on the {run.dataset} dataset.",
        f"Method: {text.method_line(cfg, run.method)}, at "
        + ("the temperatures T swept below" if "distill.temperature" in swept
           else f"temperature T = {text.number(run.temperature)}")
        + " and " + ("the values of α swept below" if "distill.alpha" in swept else f"α = {text.number(run.alpha)}")
        + " (α is the weight of the teacher's soft targets; 1 − α weighs the labels).",
    ]
    epochs = train.get("epochs")
    teacher_epochs = (cfg.get("teacher") or {}).get("epochs")
    how = f"The student trained for {epochs} epochs" if epochs is not None else "The student trained"
    if teacher_epochs and (cfg.get("teacher") or {}).get("source") == "train":
        how += f", the teacher for {teacher_epochs}"
    own = text.own_settings(run.summary or {}, "teacher")
    if own:
        how += f"; the teacher alone trained with {own}"
    if seeds is not None and len(seeds) > 1:
        how += f"; {len(seeds)} seeds ({format_seeds(seeds)}), each a full repeat of the experiment"
    else:
        how += f", seed {train.get('seed')}"
    if swept:
        how += f"; a sweep over {', '.join(swept)}, each setting (a cell) run with every seed"
    if dataset.get("student_fraction") not in (None, 1, 1.0):
        how += f"; the student saw {text.pct(dataset['student_fraction'], 0)} of the labelled training images"
    sentences.append(how + ".")
    if cfg.get("baseline"):
        sentences.append("The baseline is the same student trained from scratch on the labels only, with the same "
                         "data and seed: the KD gain is the distilled student's test accuracy minus the baseline's.")
    return sentences


def _options(options) -> str:
    """", options hidden [128, 64], width 96" of a model's options; "" for none."""
    if not isinstance(options, dict) or not options:
        return ""
    return ", options " + ", ".join(f"{k} {text.number(v)}" for k, v in options.items())


# ---- size, cost, latency ---------------------------------------------------------------------------------
def _phases(run) -> list[str]:
    return RunSummary.from_stored(run.summary).phases()


def _arch_of(run, phase: str) -> str:
    if phase in ("student", "baseline"):
        return run.student_arch
    return RunSummary.from_stored(run.summary).phase(phase, run.teacher_arch).arch or "?"


def _measure_latency(store, run, phases: Sequence[str]) -> tuple[dict, str]:
    """Latency measured now per phase ({phase: {batch: median_ms}}) and where; ({}, why not) when it cannot be."""
    try:
        from kdcore.latency import measure_latency
    except ImportError:
        return {}, "latency was not measured (kdcore.latency is not available here)"
    from kdcore.engine.checkpoint import load_model_from_checkpoint, read_checkpoint

    out, where = {}, ""
    for phase in phases:
        path = RunFolder(store.run_dir(run.id)).weights(phase)
        if not path.is_file():
            continue
        try:
            info = read_checkpoint(path)
            model = load_model_from_checkpoint(path, arch=info["arch"], num_classes=info["num_classes"],
                                               in_channels=info["in_channels"], image_size=info["image_size"],
                                               options=info.get("options")).eval()
            shape = (info["in_channels"], info["image_size"], info["image_size"])
            rows = measure_latency(model, shape, batch_sizes=(1, 64), backends=("torch",), budget_s=0.1)
        except Exception as err:  # a latency that cannot be measured must not stop the report
            return out, f"latency could not be measured now ({type(err).__name__}: {text.headline(str(err))[:120]})"
        out[phase] = {r["batch"]: r["median_ms"] for r in rows}
        if rows and not where:
            r = rows[0]
            where = f"measured now on {r.get('device') or _cpu_name()}, {r.get('threads')} thread(s), torch backend"
    return out, where


def _cpu_name() -> str:
    return platform.processor() or platform.machine() or "this CPU"


def _size_rows(store, run, latency: bool) -> tuple[list[str], list[list[str]], str]:
    s = run.summary or {}
    phases = _phases(run)
    stored = {p: {1: s.get(f"{p}_latency_ms_b1"), 64: s.get(f"{p}_latency_ms_b64")} for p in phases
              if s.get(f"{p}_latency_ms_b1") is not None or s.get(f"{p}_latency_ms_b64") is not None}
    if stored:
        lat = stored
        where = (f"latency as stored with the run: measured on {s.get('latency_cpu') or 'its CPU'}, "
                 f"{s.get('latency_threads', '?')} thread(s)")
    elif latency:
        lat, where = _measure_latency(store, run, phases)
    else:
        lat, where = {}, "latency was not measured for this run"
    header = ["model", "architecture", "test accuracy", "parameters", "size (MB)", "FLOPs / image",
              "MACs / image", "latency, batch 1", "latency, batch 64"]
    rows = []
    for phase in phases:
        flops = s.get(f"{phase}_flops")
        macs = s.get(f"{phase}_macs", flops / 2 if isinstance(flops, (int, float)) else None)  # a multiply-add is 2 FLOPs
        size = s.get(f"{phase}_size_mb")
        ms = lat.get(phase, {})
        rows.append([charts.phase_label(phase), _arch_of(run, phase), text.pct(s.get(f"{phase}_test_acc")),
                     text.compact(s.get(f"{phase}_params")), "—" if text.missing(size) else f"{size:.3g}",
                     text.compact(flops), text.compact(macs), _ms(ms.get(1)), _ms(ms.get(64))])
        record = _int8_record(store, run, phase)
        if record is not None:  # beside its float32 model: same weights count, a quarter of the bytes
            rows.append([f"{charts.phase_label(phase)}, int8", f"{_arch_of(run, phase)} (int8 ONNX)",
                         text.pct(record.get("int8_accuracy")), text.compact(s.get(f"{phase}_params")),
                         _mb(record.get("int8_bytes")), text.compact(flops), text.compact(macs),
                         _ms(record.get("int8_latency_ms_b1"), " (onnxruntime)"),
                         _ms(record.get("int8_latency_ms_b64"), " (onnxruntime)")])
    return header, rows, where


def _int8_record(store, run, phase: str) -> Optional[dict]:
    from kdcore.export import read_int8_record
    from kdcore.store import FolderOutsideRoot

    try:
        return read_int8_record(RunFolder(store.run_dir(run.id)), phase)
    except FolderOutsideRoot:
        return None


def _mb(size_bytes) -> str:
    return "—" if text.missing(size_bytes) else f"{size_bytes / 2**20:.3g}"


def _int8_block(page: _Page, store, run) -> None:
    """The float32 and int8 ONNX files of each phase that has one, compared on the same test images."""
    for phase in _phases(run):
        r = _int8_record(store, run, phase)
        if r is None:
            continue
        name = charts.phase_label(phase)
        page.h2(f"The {name} as int8")
        rows = [[f"{name}, float32 ONNX", text.pct(r.get("fp32_accuracy"), 2), "—", _mb(r.get("fp32_bytes")),
                 _ms(r.get("fp32_latency_ms_b1")), _ms(r.get("fp32_latency_ms_b64"))],
                [f"{name}, int8 ONNX", text.pct(r.get("int8_accuracy"), 2), f"{r.get('drop_points', 0):.2f} pts",
                 _mb(r.get("int8_bytes")), _ms(r.get("int8_latency_ms_b1")), _ms(r.get("int8_latency_ms_b64"))]]
        page.add(_table(["file", "test accuracy", "drop vs float32", "size (MB)", "latency, batch 1",
                         "latency, batch 64"], rows))
        verdict = ("within" if r.get("within_bound") else "ABOVE, and kept only because --force was given:")
        page.p(f"Static int8 quantization by onnxruntime {r.get('onnxruntime', '')} (QDQ), its activation ranges "
               f"set on {r.get('calibration_images')} training images; both files checked on the same "
               f"{r.get('test_images')} test images. The drop is {verdict} the bound of "
               f"{text.number(r.get('max_drop'))} point(s). Latency is onnxruntime's median on "
               f"{r.get('latency_device') or 'the CPU'}, {r.get('latency_threads', '?')} thread(s), at export.",
               "note" if r.get("within_bound") else "verdict bad")


def _ms(value, backend: str = "") -> str:
    return "—" if text.missing(value) else f"{value:.3g} ms{backend}"


# ---- one run -----------------------------------------------------------------------------------------------
def _load_logits(store, run) -> Optional[dict]:
    from kdcore.engine.run import TEST_LOGITS_FILE

    path = store.run_dir(run.id) / TEST_LOGITS_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _dataset(run):
    """The run's dataset splits, or (None, why) when they cannot be loaded here."""
    from kdcore.config import DatasetConfig
    from kdcore.data import load_dataset

    try:
        return load_dataset(DatasetConfig.model_validate(run.config["dataset"])), ""
    except Exception as err:  # missing files, a damaged config: the report goes on without pictures
        return None, text.headline(str(err))[:200]


def _gain_block(page: _Page, summary: dict) -> None:
    stored = RunSummary.from_stored(summary)
    discordant = stored.discordant()
    words = gain_sentence(stored)
    low, high = stored.gain_interval()
    p = stored.gain_p_value()
    real = p is not None and p < 0.05 and low is not None and high is not None and (low > 0 or high < 0)
    cls = ("good" if low > 0 else "bad") if real else ""
    page.add('<div class="headline">'
             + _big("KD gain", text.points(summary.get("kd_gain")))
             + _big("95% interval", text.points_range(low, high) + " pts" if low is not None else "—")
             + _big("student test accuracy", text.pct(summary.get("student_test_acc")))
             + _big("baseline test accuracy", text.pct(summary.get("baseline_test_acc")))
             + "</div>")
    page.add(f'<div class="verdict {cls}" id="gain"><b>KD gain:</b> {esc(words)}.</div>')
    for flag in stored.teacher_flags():
        page.add(f'<div class="verdict bad teacher-flag"><b>Warning:</b> {esc(flag[0].upper() + flag[1:])}.</div>')
    if discordant:
        page.p(f"The distilled student gets {discordant.get('student_only', 0)} test images right that the baseline "
               f"gets wrong, and the baseline {discordant.get('baseline_only', 0)} that the student gets wrong; "
               "the p-value is McNemar's exact test on those images, and the interval is the exact interval that "
               "inverts the same test, so the two always agree.", "note")


def _samples(page: _Page, run, logits: dict, data, names: list[str], teacher: str) -> None:
    labels, student = logits["labels"], logits["student"]
    T = float(run.temperature)
    right = (student.argmax(1) == labels).nonzero().flatten().tolist()
    wrong = (student.argmax(1) != labels).nonzero().flatten().tolist()
    chosen = right[:SHOWN_IMAGES - 1] + wrong[:1]
    chosen += [i for i in right[SHOWN_IMAGES - 1:] + wrong[1:]][:SHOWN_IMAGES - len(chosen)]
    from kdcore.losses import softened

    cells = []
    for idx in chosen:
        p_t, p_s = softened(logits[teacher][idx], T), softened(student[idx], T)
        classes = list(range(len(names))) if len(names) <= MAX_CLASSES_SHOWN else \
            p_t.argsort(descending=True)[:MAX_CLASSES_SHOWN].sort().values.tolist()
        fig = charts.distributions(p_t[classes].numpy(), p_s[classes].numpy(), [names[i] for i in classes], T,
                                   teacher_phase=teacher)
        fig.update_layout(height=260, title=None, margin=dict(t=20, b=30))
        verdict = "right" if idx in right else "wrong"
        caption = (f"Test image #{idx}: true class <b>{esc(names[labels[idx]])}</b>; the student says "
                   f"<b>{esc(names[student[idx].argmax()])}</b> ({verdict}), the {esc(charts.phase_label(teacher))} "
                   f"says <b>{esc(names[logits[teacher][idx].argmax()])}</b>.")
        picture = ""
        if data is not None:
            picture = f'<img alt="test image {idx}" src="{_png_uri(data.denormalize(data.test.images(idx))[0])}">'
        cells.append(f'<div class="sample">{picture}<div class="bars"><div class="note">{caption}</div>'
                     f"{page.figure(fig)}</div></div>")
    page.add('<div class="samples">' + "".join(cells) + "</div>")


def _class_names(data, num_classes: int) -> list[str]:
    names = list(getattr(data, "class_names", None) or []) if data is not None else []
    return [str(n) for n in names] if len(names) == num_classes else [str(i) for i in range(num_classes)]


def _per_class(page: _Page, logits: dict, names: list[str]) -> None:
    from kdcore import analysis

    labels = logits["labels"]
    k = len(names)
    models = [*teacher_phases(logits), *(m for m in ("baseline", "student") if m in logits)]  # every teacher
    acc = {m: analysis.per_class_accuracy(logits[m], labels, k).numpy() for m in models}
    figs = [charts.per_class(acc, names)]
    gain_rows = None
    if "baseline" in logits:
        gain_rows = analysis.per_class_gain(logits["student"], logits["baseline"], labels, k)
        figs.append(charts.class_gain_bars(gain_rows, names))
    page.figures_row(figs)
    if gain_rows:
        ordered = sorted((r for r in gain_rows if not text.missing(r["gain"])), key=lambda r: r["gain"])
        if ordered:
            best, worst = ordered[-1], ordered[0]
            page.p(f"Distillation helped most on class {names[best['class']]} ({text.points(best['gain'])}, "
                   f"{best['count']} test images) and least on class {names[worst['class']]} "
                   f"({text.points(worst['gain'])}, {worst['count']} images). Per-class differences rest on few "
                   "images each: read them as hints, not results.", "note")
    if "baseline" in logits:
        fixed, broken = analysis.fixed_and_broken(logits["student"], logits["baseline"], labels)
        page.p(f"Distillation fixed {len(fixed)} test images the baseline got wrong and broke {len(broken)} it got "
               "right.", "note")


def _calibration(page: _Page, logits: dict) -> None:
    from kdcore import analysis

    labels = logits["labels"]
    # every teacher on its own; not the stored "ensemble", whose logits only mean something softened at the run's T
    models = [*teacher_phases(logits), *(m for m in ("baseline", "student") if m in logits)]
    ece = {m: analysis.expected_calibration_error(logits[m], labels, bins=CALIBRATION_BINS) for m in models}
    page.add('<div class="headline">' + "".join(_big(f"ECE · {charts.phase_label(m)}", text.pct(v, 1))
                                                 for m, v in ece.items()) + "</div>")
    page.p(f"Expected calibration error over {CALIBRATION_BINS} confidence bins: how far a model's confidence is "
           "from how often it is right (0% is perfectly calibrated; lower is better).", "note")
    tables = {m: analysis.reliability_table(logits[m], labels, bins=CALIBRATION_BINS) for m in models}
    page.figures_row([charts.reliability_diagram(tables, ece)])


def _curves(page: _Page, store, run) -> None:
    history = store.metrics_frame([run.id])
    if history.empty:
        page.p("No training curves were stored for this run.", "note")
        return
    page.figures_row([charts.accuracy(history)])  # a panel per phase: each across the page
    page.figures_row([charts.loss_parts(history)])


def _config(page: _Page, run) -> None:
    import yaml

    page.add(f"<pre>{esc(yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True))}</pre>")


def _run_report(page: _Page, store, run, *, latency: bool) -> None:
    s = run.summary or {}
    page.title = f"kdcore report · run #{run.id} {run.name}"
    page.add(f"<h1>Run #{run.id}: {esc(run.name)}</h1>")
    if run.damaged:
        page.p(f"{DAMAGED_LABEL} {', '.join(run.damaged)} cannot be read: what they hold is left out below; the rest "
               "is shown as stored.", "verdict bad")
    page.p(f"kdcore report generated {datetime.now():%Y-%m-%d %H:%M}; run finished "
           f"{run.finished_at:%Y-%m-%d %H:%M} on {run.device or 'an unknown device'}." if run.finished_at else
           f"kdcore report generated {datetime.now():%Y-%m-%d %H:%M}.", "meta")
    page.h2("The question and the setup")
    for sentence in _setup_sentences(run):
        page.p(sentence)
    page.h2("The answer: KD gain")
    _gain_block(page, s)
    page.h2("Accuracy, size and speed")
    header, rows, where = _size_rows(store, run, latency)
    page.add(_table(header, rows))
    page.p(f"FLOPs and MACs are per image for one forward pass (a multiply-add counts as 2 FLOPs, 1 MAC). "
           f"Latency is the median time of one forward pass; {where}.", "note")
    if "compression" in s:
        page.p(f"The student is {text.ratio(s.get('teacher_params'), s.get('student_params'))} smaller and needs "
               f"{s.get('flops_ratio', float('nan')):.1f}× fewer FLOPs than its teacher.")
    _int8_block(page, store, run)
    page.h2("Training curves")
    _curves(page, store, run)
    logits = _load_logits(store, run)
    if logits is None or "student" not in logits:
        page.p("This run stored no test-set predictions: no distributions, per-class results or calibration.", "note")
    else:
        data, why = _dataset(run)
        num_classes = logits["student"].shape[1]
        names = _class_names(data, num_classes)
        teacher = next(iter(teacher_phases(logits)), None)  # the first teacher stands for all of them here
        if teacher is not None:
            page.h2("What the teacher passes on")
            page.p(f"The teacher's and the student's predictions softened at the run's T = "
                   f"{text.number(run.temperature)} (softmax(z / T)), for {SHOWN_IMAGES} test images: the student "
                   "gets the first ones right and the last one wrong.")
            if data is None:
                page.p(f"The test images cannot be shown here ({why}).", "note")
            _samples(page, run, logits, data, names, teacher)
        page.h2("Per class")
        _per_class(page, logits, names)
        page.h2("Calibration")
        _calibration(page, logits)
    page.h2("The run's config")
    _config(page, run)


# ---- a group -------------------------------------------------------------------------------------------
def _group_frame(store, runs) -> pd.DataFrame:
    ids = {r.id for r in runs}
    frame = store.runs_frame()
    return frame[frame["id"].isin(ids)].sort_values("id").reset_index(drop=True)


def _group_report(page: _Page, store, runs, *, latency: bool) -> None:
    report = group_report(runs)
    done = [r for r in runs if r.status == "completed"]
    first = done[0]
    name = report["group"]
    swept = report["swept"]
    page.title = f"kdcore report · group {name}"
    page.add(f"<h1>Group: {esc(name)}</h1>")
    statuses = ", ".join(f"{n} {k}" for k, n in report["statuses"].items())
    page.p(f"kdcore report generated {datetime.now():%Y-%m-%d %H:%M}; {len(runs)} runs ({statuses}).", "meta")
    page.h2("The question and the setup")
    for sentence in _setup_sentences(first, report["seeds"], swept):
        page.p(sentence)
    frame = _group_frame(store, runs)
    if swept:
        _sweep_answer(page, report, frame[frame["status"] == "completed"])
    else:
        _seeds_answer(page, report, frame[frame["status"] == "completed"])
    page.h2("The runs" if swept else "The seeds")
    seed_rows = []
    cell_of = {i: c["label"] for c in report["cells"] for i in c["run_ids"]}
    for r in runs:
        s = RunSummary.from_stored(r.summary or {})
        seed_rows.append([f"#{r.id}" + (f" {DAMAGED_LABEL}" if r.damaged else ""),
                          r.config.get("train", {}).get("seed", "?"), r.status,
                          cell_of.get(r.id, "?") if swept else f"T={text.number(r.temperature)}, α={text.number(r.alpha)}",
                          text.pct(r.teacher_test_acc), text.pct(r.baseline_test_acc), text.pct(r.student_test_acc),
                          text.points(r.kd_gain), text.points_range(*s.gain_interval()),
                          text.p_value(s.gain_p_value())])
    page.add(_table(["run", "seed", "status", "setting" if swept else "T, α", "teacher", "baseline", "student",
                     "KD gain", "its 95% interval", "p"], seed_rows))
    for r in runs:
        for flag in RunSummary.from_stored(r.summary or {}).teacher_flags():
            page.add(f'<div class="verdict bad teacher-flag"><b>Warning, run #{r.id}:</b> {esc(flag)}.</div>')
    page.h2("Accuracy, size and speed")
    header, size_rows, where = _size_rows(store, first, latency)
    page.add(_table(header, size_rows))
    page.p(f"Test accuracy of run #{first.id} (seed {first.config.get('train', {}).get('seed')}"
           + (f", {cell_of.get(first.id)}" if swept else "") + "); sizes are the same "
           f"for every seed. FLOPs and MACs are per image (a multiply-add counts as 2 FLOPs, 1 MAC). Latency is the "
           f"median time of one forward pass; {where}.", "note")
    if not swept:  # a sweep's curves differ by setting: each run's report has its own
        page.h2("Training curves, mean over seeds")
        curves = store.metrics_frame([r.id for r in done], kind="epoch")
        page.figures_row([charts.averaged_curves(curves, "val_acc"), charts.averaged_curves(curves, "train_loss")])
    differ = ", ".join(["train.seed"] + swept)
    page.h2(f"The config (run #{first.id}; the runs differ only in {differ})")
    _config(page, first)


def _seeds_answer(page: _Page, report: dict, completed: pd.DataFrame) -> None:
    """A seed group's answer: the gain's mean over seeds, its t-interval, and each quantity's spread."""
    agg = report["aggregate"]
    page.h2("The answer: KD gain across seeds")
    spread = agg.get("kd_gain")
    ci = (spread or {}).get("ci95") or [None, None]
    cls = "good" if ci[0] is not None and ci[0] > 0 else "bad" if ci[1] is not None and ci[1] < 0 else ""
    page.add('<div class="headline">'
             + _big("mean KD gain", text.points((spread or {}).get("mean")))
             + _big("95% interval across seeds", text.points_range(*ci) + " pts" if ci[0] is not None else "—")
             + _big("seeds completed", str((spread or {}).get("n", 0)))
             + "</div>")
    page.add(f'<div class="verdict {cls}" id="gain"><b>KD gain:</b> {esc(report["kd_gain_in_words"])}.</div>')
    page.p("The interval is a Student-t interval of the mean over the completed seeds: each seed repeats the "
           "whole experiment, so it says how much the gain varies between repeats, not only within one test set.",
           "note")
    rows = []
    for key, label in (("teacher_test_acc", "teacher"), ("baseline_test_acc", "baseline"),
                       ("student_test_acc", "student"), ("kd_gain", "KD gain")):
        a = agg.get(key)
        if not a:
            continue
        if key == "kd_gain":
            mean, interval = text.points(a["mean"]), text.points_range(*a["ci95"]) + " pts" if a["ci95"] else "—"
        else:  # an accuracy's interval in percent, clamped to what an accuracy can be
            mean = text.pct(a["mean"], 1)
            interval = (f"{text.pct(max(a['ci95'][0], 0.0))} to {text.pct(min(a['ci95'][1], 1.0))}"
                        if a["ci95"] else "—")
        rows.append([label, mean, "—" if a["std"] is None else f"{100 * a['std']:.2f} pts", interval, a["n"]])
    page.add(_table(["", "mean", "std", "95% interval", "n"], rows))
    page.figures_row([charts.group_dots(completed, agg)])


def _sweep_answer(page: _Page, report: dict, completed: pd.DataFrame) -> None:
    """A sweep's answer, one row per setting (cell): never an average across settings."""
    cells = report["cells"]
    page.h2("The answer: KD gain per setting")
    page.add(f'<div class="verdict" id="gain"><b>KD gain:</b> {esc(report["kd_gain_in_words"])}.</div>')
    rows = []
    for cell in cells:
        gain = cell["aggregate"].get("kd_gain")
        seeds = (gain or {}).get("n", 0)
        interval = text.points_range(*gain["ci95"]) + " pts across seeds" if gain and gain["ci95"] else "—"
        rows.append([cell["label"], f"{seeds} of {len(cell['run_ids'])}", text.points((gain or {}).get("mean")),
                     interval, cell["kd_gain_in_words"]])
    page.add(_table(["setting", "seeds completed", "mean KD gain", "95% interval", "in words"], rows))
    page.p("Each setting is summarised on its own: with several seeds, by a Student-t interval of its mean gain over "
           "them; with one seed, by that run's own paired test over the test images, which says nothing about how "
           f"the gain varies between seeds. Picking the best of {len(cells)} settings by its gain favours a lucky "
           "one: confirm it over new seeds.", "note")
    if set(report["swept"]) <= {"distill.temperature", "distill.alpha"}:
        page.figures_row([charts.sweep_heatmap(completed, value="kd_gain")])


def _study_report(page: _Page, store, name: str) -> None:
    from kdcore.studies import charts as study_charts
    from kdcore.studies.space import describe_spec
    from kdcore.studies.view import describe_study

    d = describe_study(store, name, importance=True)
    objective, base = d["objective"], store.get_study(name).config
    page.title = f"kdcore report · study {name}"
    page.add(f"<h1>Study: {esc(name)}</h1>")
    counts = ", ".join(f"{n} {k}" for k, n in d["counts"].items())
    page.p(f"kdcore report generated {datetime.now():%Y-%m-%d %H:%M}; {len(d['trials'])} of {d['n_trials']} trials "
           f"({counts or 'none yet'}); the study is {d['status']}.", "meta")
    page.h2("The question and the search")
    teacher, student = (base.get("teacher") or {}).get("arch"), (base.get("student") or {}).get("arch")
    page.p(f"Which setting of {', '.join(d['space'])} makes distilling {teacher} into {student} on {d['dataset']} pay "
           f"off? Each trial is an ordinary kdcore run, trained with seed {d['trial_seed']}; Optuna's {d['sampler']} "
           f"sampler chose the next setting and the {d['pruner']} pruner stopped trials that lagged. Trials were "
           f"compared by the {objective['label']}: {objective['description']}. No test image steered the search; "
           "only the confirmation below reads test accuracy, on seeds the search never used.")
    page.add(_table(["key", "range searched"], [[k, describe_spec(v)] for k, v in d["space"].items()]))
    page.h2("The answer")
    confirmation = d["confirmation"] or {}
    gain = (confirmation.get("aggregate") or {}).get("kd_gain") or {}
    ci = gain.get("ci95") or [None, None]
    cls = "good" if ci[0] is not None and ci[0] > 0 else "bad" if ci[1] is not None and ci[1] < 0 else ""
    best = d["best"]
    best_value = "—" if best is None else (text.points(best["value"]) if objective["in_points"]
                                           else text.pct(best["value"], 2))
    page.add('<div class="headline">'
             + _big(f"best {objective['label']}", best_value)
             + _big("confirmed KD gain on test", text.points(gain.get("mean")))
             + _big("95% interval across fresh seeds", text.points_range(*ci) + " pts" if ci[0] is not None else "—")
             + _big("fresh seeds", str(gain.get("n", 0)))
             + "</div>")
    page.add(f'<div class="verdict {cls}" id="gain"><b>Answer:</b> {esc(d["answer"])}.</div>')
    page.h2("How the search went")
    page.figures_row([study_charts.history(d)])
    page.figures_row([study_charts.parallel(d)])
    page.figures_row([study_charts.importance(d)])
    rows = [[t["number"], t["state"] + (f" (epoch {t['pruned_at_epoch']})" if t["pruned_at_epoch"] else ""),
             "—" if t["value"] is None else (text.points(t["value"]) if objective["in_points"]
                                             else text.pct(t["value"], 2)),
             t["setting"], f"#{t['run_id']}" if t["run_id"] else "—"] for t in d["trials"]]
    page.add(_table(["trial", "state", f"{objective['label']} (validation)", "setting", "run"], rows))
    if confirmation.get("run_ids"):
        page.h2(f"The confirmation: trial {confirmation['trial']} over seeds {confirmation['seeds']}")
        runs = [store.get_run(r) for r in confirmation["run_ids"]]
        frame = _group_frame(store, runs)
        page.figures_row([charts.group_dots(frame[frame["status"] == "completed"], confirmation["aggregate"])])
        page.add(_table(["run", "seed", "status", "teacher", "baseline", "student", "KD gain"],
                        [[f"#{r.id}", r.config.get("train", {}).get("seed", "?"), r.status,
                          text.pct(r.teacher_test_acc), text.pct(r.baseline_test_acc), text.pct(r.student_test_acc),
                          text.points(r.kd_gain)] for r in runs]))
    page.h2("The config every trial started from")
    import yaml

    page.add(f"<pre>{esc(yaml.safe_dump(base, sort_keys=False))}</pre>")
