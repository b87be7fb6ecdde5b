"""What the commands share: progress bars, signal handling, and the printing of runs and groups."""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from typing import Optional

from tqdm import tqdm

from kdcore.record import TEACHER, RunSummary


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


class _ProgressBars:
    """One tqdm bar per phase, fed by the trainer's events."""

    def __init__(self):
        self.bar: Optional[tqdm] = None

    def __call__(self, event) -> None:
        if event.kind == "phase":
            self.close()
            total = event.info.get("epochs", 0) * event.info.get("steps_per_epoch", 0)
            if total:
                self.bar = tqdm(total=total, desc=f"{event.phase:>8}", unit="step", dynamic_ncols=True, file=sys.stderr)
            else:
                tqdm.write(f"{event.phase}: loaded from {event.info.get('loaded', 'a checkpoint')}", file=sys.stderr)
        elif event.kind in ("step", "epoch") and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            shown = {k: v for k, v in event.metrics.items() if k in ("train_loss", "train_acc", "val_acc", "images_per_s")}
            self.bar.set_postfix({k.replace("train_", ""): (f"{v:.3g}" if k != "images_per_s" else f"{v:,.0f}/s")
                                  for k, v in shown.items()}, refresh=False)
            if event.kind == "epoch":
                self.bar.set_description(f"{event.phase:>8} ep {event.epoch}/{event.info.get('epochs', '?')}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _interrupt_on_signals(interrupt: threading.Event):
    """SIGTERM and SIGINT end the current run as interrupted (metrics flushed), then the command exits."""
    def handler(signum, _frame):
        if not interrupt.is_set():
            print(f"\n{signal.Signals(signum).name}: stopping the run at its next step…", file=sys.stderr)
        interrupt.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stored_run(store, run_id: int):
    """The run, or None after saying on stderr that the store has no such run."""
    from kdcore.store import RunNotFound

    try:
        return store.get_run(run_id)
    except RunNotFound as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return None


def _lease_suffix(run) -> str:
    """After a running run's status: when a killed worker's run will be marked interrupted."""
    from kdcore.store import lease_note

    return f"; {lease_note(run)}" if run.status == "running" else ""


def _print_summary(run) -> None:
    from kdcore.record.summary import gain_sentence
    from kdcore.text import own_settings

    s = run.summary
    print(f"run {run.id} {run.status}" + (f" on {run.device}" if run.device else "") + _lease_suffix(run))
    if run.error:
        print(f"error: {run.error.split(chr(10) + chr(10))[0]}")
    if not s.keys() - {"attempts", "seconds"}:  # a failed run's summary may list its attempts only
        return
    teachers = s.get("teachers") or [{"phase": TEACHER, "arch": run.teacher_arch}]  # a run stored before the list
    for t in teachers:
        phase = t["phase"]
        origin = f"  (trained by run {s[f'{phase}_from_run']})" if f"{phase}_from_run" in s else ""
        print(f"  {phase:<8} {t['arch']:<20} test acc {_pct(s.get(f'{phase}_test_acc'))}  "
              f"params {s.get(f'{phase}_params', 0):,}{origin}")
        own = own_settings(s, phase)
        if own:
            print(f"  {'':<8} trained with settings of its own: {own} (the student and baseline without them)")
        if f"{phase}_pretrained_test_acc" in s:
            head = ", new classification head" if s.get(f"{phase}_new_head") else ""
            print(f"  {'':<8} fine-tuned {s.get(f'{phase}_finetune_epochs')} epoch(s) from "
                  f"{s.get(f'{phase}_finetuned_from', 'its source')}{head}: "
                  f"{_pct(s[f'{phase}_pretrained_test_acc'])} before, {_pct(s.get(f'{phase}_test_acc'))} after")
    if "ensemble_test_acc" in s:
        weights = "/".join(f"{w:.2f}" for w in s.get("teacher_weights") or [])
        print(f"  ensemble {f'{len(teachers)} teachers together':<20} test acc {_pct(s['ensemble_test_acc'])}  "
              f"(weights {weights} on their softened probabilities at T={run.temperature:g}, as the student sees them)")
    started = f"  (started from {s['student_init']})" if "student_init" in s else ""
    print(f"  student  {run.student_arch:<20} test acc {_pct(s.get('student_test_acc'))}  "
          f"params {s.get('student_params', 0):,}{started}")
    if "baseline_test_acc" in s:
        shared = f"  (trained by run {s['baseline_from_run']})" if "baseline_from_run" in s else ""
        print(f"  baseline {'(student from scratch)':<20} test acc {_pct(s.get('baseline_test_acc'))}{shared}")
        if s.get("kd_gain") is not None:
            print(f"  KD gain  {gain_sentence(s)}")
    for flag in RunSummary.from_stored(s).teacher_flags():
        print(f"  warning: {flag}")
    if "compression" in s:
        than = " than its teachers together" if len(teachers) > 1 else ""
        # no flops_ratio when a teacher's FLOPs are unknown (an ONNX file's)
        flops = f", {s['flops_ratio']:.1f}x fewer FLOPs (2 per MAC)" if "flops_ratio" in s else ""
        print(f"  student is {s['compression']:.1f}x smaller{flops}{than}; took {s.get('seconds', 0):.1f} s")
    if s.get("student_latency_ms_b1") is not None and s.get("teacher_latency_ms_b1") is not None:
        print(f"  latency at batch 1: student {s['student_latency_ms_b1']:.3g} ms, teacher {s['teacher_latency_ms_b1']:.3g} ms "
              f"(PyTorch, {s.get('latency_cpu') or 'this machine'}, {s.get('latency_threads', '?')} thread(s))")


def _print_group(report: dict, runs) -> None:
    """A group's runs, then per cell (one setting of the swept keys) its spread over seeds; never pooled."""
    from kdcore.experiments import SWEEP_LABELS, format_seeds
    from kdcore.store import DAMAGED_LABEL

    keys, cells = report["swept"], report["cells"]
    print(f"group {report['group']}")
    print(f"  {len(runs)} runs (" + ", ".join(f"{n} {k}" for k, n in report["statuses"].items())
          + f"), seeds {format_seeds([s for s in report['seeds'] if s is not None])}, "
          f"{report['teachers_trained']} teacher(s) trained"
          + (f"; a sweep of {len(cells)} settings of {', '.join(SWEEP_LABELS.get(k, k) for k in keys)}" if keys else ""))
    cell_of = {i: c["label"] for c in cells for i in c["run_ids"]}
    width = max([len("setting")] + [len(c["label"]) for c in cells]) if keys else 0
    setting = f" {'setting':<{width}}" if keys else ""
    print(f"  {'run':>5} {'seed':>5}{setting} {'status':<10} {'teacher':>8} {'student':>8} {'baseline':>8} {'gain':>7}  p")
    for r in sorted(runs, key=lambda r: r.id):
        s = r.summary
        gain = "-" if r.kd_gain is None else f"{100 * r.kd_gain:+.2f}"
        p = RunSummary.from_stored(s).gain_p_value()
        seed = r.config.get("train", {}).get("seed")  # None when its config is damaged
        label = f" {cell_of.get(r.id, '?'):<{width}}" if keys else ""
        print(f"  {r.id:>5} {'-' if seed is None else seed:>5}{label} {r.status:<10} {_pct(r.teacher_test_acc):>8} "
              f"{_pct(r.student_test_acc):>8} {_pct(r.baseline_test_acc):>8} {gain:>7}  {'' if p is None else f'{p:.2g}'}"
              + (f"  {DAMAGED_LABEL}" if r.damaged else ""))
    for r in sorted(runs, key=lambda r: r.id):
        for flag in RunSummary.from_stored(r.summary).teacher_flags():
            print(f"  warning: run {r.id}: {flag}")
    if not keys:
        _print_spread(report["aggregate"], "  ")
        print(f"  KD gain   {report['kd_gain_in_words']}")
        return
    print(f"  {report['kd_gain_in_words']}:")
    for cell in cells:
        print(f"  {cell['label']}  ({cell['completed']} of {len(cell['run_ids'])} runs completed)")
        _print_spread(cell["aggregate"], "    ")
        print(f"    KD gain   {cell['kd_gain_in_words']}")


def _print_spread(agg: dict, indent: str) -> None:
    for key, label in (("teacher_test_acc", "teacher"), ("student_test_acc", "student"), ("baseline_test_acc", "baseline")):
        a = agg.get(key)
        if a:
            spread = f" ± {100 * a['std']:.2f}" if a["std"] is not None else ""
            print(f"{indent}{label:<9} {100 * a['mean']:.2f}%{spread} over {a['n']} seed(s)")


def _group_json(report: dict, runs) -> dict:
    """A group as JSON: its runs, the swept keys and one entry per cell (setting) with its spread over seeds.
    `aggregate` is the one cell's for a seed group and null per quantity for a sweep (settings are not pooled)."""
    return {"group": report["group"], "runs": [_run_json(r) for r in sorted(runs, key=lambda r: r.id)],
            "swept": report["swept"], "cells": report["cells"], "aggregate": report["aggregate"],
            "kd_gain_in_words": report["kd_gain_in_words"]}


def _run_json(run) -> dict:
    s = run.summary
    damaged = run.damaged
    return {
        "id": run.id, "name": run.name, "status": run.status, "error": run.error, "device": run.device,
        "group": run.group, "tags": run.tag_list, "notes": run.notes,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "config": None if "config_json" in damaged else run.config,
        "summary": None if "summary_json" in damaged else s,
        "damaged": damaged,  # its JSON columns that cannot be read: null or empty above
        "teacher_test_acc": run.teacher_test_acc, "student_test_acc": run.student_test_acc,
        "baseline_test_acc": run.baseline_test_acc, "kd_gain": run.kd_gain,
        "kd_gain_ci95": s.get("kd_gain_ci95"), "kd_gain_p_value": s.get("kd_gain_p_value"),
        "test_images": s.get("test_images"),
    }
