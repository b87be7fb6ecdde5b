"""The `kdcore` command: train from YAML, list and show stored runs, list models and datasets."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import math
import signal
import sys
import threading
from typing import Optional

from tqdm import tqdm

from kdcore.config import ConfigError, load_config


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


def _configs(args):
    """The config(s) a train or submit command asks for: one, or one per seed in a group."""
    from kdcore.experiments import expand, parse_seeds

    config = load_config(args.config, args.set)
    if args.seeds is None:
        return [config]
    return expand(config, seeds=parse_seeds(args.seeds), teacher_per_seed=args.teacher_per_seed)


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


def cmd_train(args) -> int:
    from kdcore.experiments import group_report
    from kdcore.jobs import execute_job
    from kdcore.store import Store, this_worker

    try:
        configs = _configs(args)
        from kdcore.checks import refuse_unrunnable

        refuse_unrunnable(configs, store=args.db, here=True)  # before the store is even opened
    except ConfigError as err:
        print(f"error: invalid config: {err}", file=sys.stderr)
        return 2
    store = Store(args.db)
    worker = this_worker("train")
    # submitted already claimed: another worker on the same queue cannot take them first
    run_ids = [store.create_run(cfg, worker=worker) for cfg in configs[:1]] + [store.create_run(cfg) for cfg in configs[1:]]
    if args.seeds is not None:
        print(f"group {configs[0].group!r}: runs {', '.join(map(str, run_ids))}", file=sys.stderr)
    interrupt = threading.Event()
    statuses = []
    with _interrupt_on_signals(interrupt):
        for i, (run_id, cfg) in enumerate(zip(run_ids, configs)):
            if interrupt.is_set():
                if i == 0:  # claimed at submission, never started
                    store.finish_run(run_id, "interrupted", error="stopped before it started", worker=worker)
                else:  # still queued
                    store.request_cancel(run_id)
                statuses.append("interrupted")
                continue
            if i and store.claim(worker, run_id=run_id) is None:
                statuses.append(store.get_run(run_id).status)  # taken by another worker on this queue
                continue
            print(f"run {run_id}: {cfg.display_name()}", file=sys.stderr)
            bars = _ProgressBars()
            try:
                statuses.append(execute_job(store, run_id, worker=worker, interrupt=interrupt, listener=bars))
            finally:
                bars.close()
    runs = [store.get_run(r) for r in run_ids]
    if args.seeds is None:
        print(json.dumps(_run_json(runs[0]), indent=2)) if args.json else _print_summary(runs[0])
    else:
        report = group_report(runs)
        if args.json:
            print(json.dumps({"group": report["group"], "runs": [_run_json(r) for r in runs],
                              "aggregate": report["aggregate"]}, indent=2))
        else:
            _print_group(report, runs)
    if interrupt.is_set():
        return 130
    return 0 if all(s == "completed" for s in statuses) else 1


def cmd_submit(args) -> int:
    from kdcore.store import Store

    try:
        configs = _configs(args)
        from kdcore.checks import refuse_unrunnable

        # here=False: a worker on any machine may take the runs, so this machine's devices and RAM do not decide
        refuse_unrunnable(configs, store=args.db, here=False)
    except ConfigError as err:
        print(f"error: invalid config: {err}", file=sys.stderr)
        return 2
    store = Store(args.db)
    run_ids = [store.create_run(cfg) for cfg in configs]
    if args.json:
        print(json.dumps({"runs": run_ids, "group": configs[0].group if args.seeds is not None else None}))
    else:
        print(" ".join(map(str, run_ids)))
        print(f"queued {len(run_ids)} run(s); a `kdcore worker` (or the dashboard) on the same --db runs them",
              file=sys.stderr)
    return 0


def cmd_worker(args) -> int:
    from kdcore.engine.device import resolve_device
    from kdcore.jobs import Worker
    from kdcore.store import Store

    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices:  # else it would start no worker and exit 0, as if the queue were done
        print(f"error: --devices {args.devices!r} names no device: give auto, cpu, cuda:0 or a list such as "
              "cuda:0,cuda:1", file=sys.stderr)
        return 2
    store = Store(args.db)
    store.check_writable()  # a worker records every step: refuse at once, not at its first run
    try:
        for device in devices:
            from kdcore.checks import device_problem

            problem = device_problem(device)  # resolve_device alone accepts cuda:3 on a one-GPU machine
            if problem:
                raise ValueError(problem)
            resolve_device(device)
    except (ValueError, RuntimeError) as err:
        print(f"error: --devices: {err}", file=sys.stderr)
        return 2
    stop, interrupt = threading.Event(), threading.Event()
    workers = [Worker(store, d, name=f"{i}" if len(devices) > 1 else "") for i, d in enumerate(devices)]

    def announce(run_id: int) -> None:  # one line per claimed run; no progress bars in a service's log
        print(f"run {run_id}: {store.get_run(run_id).name}", file=sys.stderr, flush=True)

    for w in workers:
        w.listener_for = announce
    if args.parent:  # a dashboard's own worker: stop with it, even if it dies without a word
        def watch_parent() -> None:
            while not interrupt.wait(1.0):
                if os.getppid() != args.parent:
                    print("the parent process is gone: stopping", file=sys.stderr, flush=True)
                    interrupt.set()
        threading.Thread(target=watch_parent, daemon=True).start()
    results: list = []
    if not args.no_studies:  # asks the trials of any running study no other live process drives
        from kdcore.studies import StudyDrivers

        StudyDrivers(store, interrupt).start()
    with _interrupt_on_signals(interrupt):
        threads = [threading.Thread(target=lambda w=w: results.extend(
            w.serve(stop, interrupt, max_runs=args.max_runs, exit_when_idle=args.exit_when_idle,
                    resume_interrupted=args.resume_interrupted)), daemon=True)
            for w in workers]
        print(f"kdcore worker on {', '.join(str(w.device) for w in workers)}, store {store.url}", file=sys.stderr,
              flush=True)
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    for run_id, status in results:
        print(f"run {run_id} {status}", flush=True)
    faults = [w.store_error for w in workers if w.store_error is not None]
    if faults:
        print(f"error: {faults[0]}", file=sys.stderr, flush=True)
        return 2
    return 130 if interrupt.is_set() else 0


def cmd_runs_resume(args) -> int:
    from kdcore.jobs import resume_here
    from kdcore.store import RunNotFound, Store

    store = Store(args.db)
    store.expire_leases(force=True)
    interrupt = threading.Event()
    bars = _ProgressBars()
    try:
        with _interrupt_on_signals(interrupt):
            status = resume_here(store, args.id, interrupt=interrupt, listener=bars)
    except (RunNotFound, ValueError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1
    finally:
        bars.close()
    run = store.get_run(args.id)
    print(json.dumps(_run_json(run), indent=2)) if args.json else _print_summary(run)
    if interrupt.is_set():
        return 130
    return 0 if status == "completed" else 1


def cmd_runs_cancel(args) -> int:
    from kdcore.store import RunNotFound, Store

    try:
        outcome = Store(args.db).request_cancel(args.id)
    except (RunNotFound, ValueError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1
    print(f"run {args.id} " + ("cancelled (it was queued)" if outcome == "cancelled"
                               else "will stop at its next step (its worker reads the request within a few seconds)"))
    return 0


def _stored_run(store, run_id: int):
    """The run, or None after saying on stderr that the store has no such run."""
    from kdcore.store import RunNotFound

    try:
        return store.get_run(run_id)
    except RunNotFound as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return None


def cmd_runs_delete(args) -> int:
    from kdcore.store import Store

    store = Store(args.db)
    run = _stored_run(store, args.id)
    if run is None:
        return 1
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: deleting run {args.id} ({run.name}) needs --yes when not asked at a terminal", file=sys.stderr)
            return 2
        if input(f"Delete run {args.id} ({run.name}), its curves and its files? [y/N] ").strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    try:
        kept = store.delete_run(args.id)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {args.id} deleted" + (f"; {kept}" if kept else ""))
    return 0


def _lease_suffix(run) -> str:
    """After a running run's status: when a killed worker's run will be marked interrupted."""
    from kdcore.store import lease_note

    return f"; {lease_note(run)}" if run.status == "running" else ""


def _print_summary(run) -> None:
    from kdcore.stats import describe_paired
    from kdcore.text import own_settings

    s = run.summary
    print(f"run {run.id} {run.status}" + (f" on {run.device}" if run.device else "") + _lease_suffix(run))
    if run.error:
        print(f"error: {run.error.split(chr(10) + chr(10))[0]}")
    if not s.keys() - {"attempts", "seconds"}:  # a failed run's summary may list its attempts only
        return
    teachers = s.get("teachers") or [{"phase": "teacher", "arch": run.teacher_arch}]  # a run stored before the list
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
            discordant = s.get("kd_gain_discordant") or {}
            net = discordant.get("student_only", 0) - discordant.get("baseline_only", 0) if discordant else None
            print(f"  KD gain  {describe_paired(s.get('kd_gain'), s.get('kd_gain_ci95'), s.get('kd_gain_p_value'), s.get('test_images'), net)}")
    if "compression" in s:
        than = " than its teachers together" if len(teachers) > 1 else ""
        print(f"  student is {s['compression']:.1f}x smaller, {s['flops_ratio']:.1f}x fewer FLOPs (2 per MAC){than}; "
              f"took {s.get('seconds', 0):.1f} s")
    if s.get("student_latency_ms_b1") is not None and s.get("teacher_latency_ms_b1") is not None:
        print(f"  latency at batch 1: student {s['student_latency_ms_b1']:.3g} ms, teacher {s['teacher_latency_ms_b1']:.3g} ms "
              f"(PyTorch, {s.get('latency_cpu') or 'this machine'}, {s.get('latency_threads', '?')} thread(s))")


def _print_group(report: dict, runs) -> None:
    from kdcore.experiments import format_seeds
    from kdcore.store import DAMAGED_LABEL

    print(f"group {report['group']}")
    print(f"  {len(runs)} runs (" + ", ".join(f"{n} {k}" for k, n in report["statuses"].items())
          + f"), seeds {format_seeds([s for s in report['seeds'] if s is not None])}, "
          f"{report['teachers_trained']} teacher(s) trained")
    print(f"  {'run':>5} {'seed':>5} {'status':<10} {'teacher':>8} {'student':>8} {'baseline':>8} {'gain':>7}  p")
    for r in sorted(runs, key=lambda r: r.id):
        s = r.summary
        gain = "-" if r.kd_gain is None else f"{100 * r.kd_gain:+.2f}"
        p = s.get("kd_gain_p_value")
        seed = r.config.get("train", {}).get("seed")  # None when its config is damaged
        print(f"  {r.id:>5} {'-' if seed is None else seed:>5} {r.status:<10} {_pct(r.teacher_test_acc):>8} "
              f"{_pct(r.student_test_acc):>8} {_pct(r.baseline_test_acc):>8} {gain:>7}  {'' if p is None else f'{p:.2g}'}"
              + (f"  {DAMAGED_LABEL}" if r.damaged else ""))
    agg = report["aggregate"]
    for key, label in (("teacher_test_acc", "teacher"), ("student_test_acc", "student"), ("baseline_test_acc", "baseline")):
        a = agg.get(key)
        if a:
            spread = f" ± {100 * a['std']:.2f}" if a["std"] is not None else ""
            print(f"  {label:<9} {100 * a['mean']:.2f}%{spread} over {a['n']} seed(s)")
    print(f"  KD gain   {report['kd_gain_in_words']}")


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


def cmd_groups_list(args) -> int:
    from kdcore.store import Store

    groups = Store(args.db).list_groups()
    if args.json:
        print(json.dumps(groups, indent=2))
        return 0
    if not groups:
        print("no groups yet; try: kdcore train examples/digits.yaml --seeds 0-4")
    for g in groups:
        print(f"{g['runs']:>4} runs  {g['group']}")
    return 0


def cmd_groups_show(args) -> int:
    from kdcore.experiments import group_report
    from kdcore.store import Store

    runs = Store(args.db).list_runs(group=args.name)
    if not runs:
        print(f"error: no group named {args.name!r}; see `kdcore groups list`", file=sys.stderr)
        return 1
    report = group_report(runs)
    if args.json:
        print(json.dumps({"group": report["group"], "runs": [_run_json(r) for r in sorted(runs, key=lambda r: r.id)],
                          "aggregate": report["aggregate"]}, indent=2))
    else:
        _print_group(report, runs)
    return 0


def cmd_runs_list(args) -> int:
    from kdcore.store import DAMAGED_LABEL, Store

    runs = Store(args.db).list_runs(limit=args.limit)
    if args.json:
        print(json.dumps([_run_json(r) for r in runs], indent=2))
        return 0
    if not runs:
        print("no runs stored yet; try: kdcore train examples/digits.yaml")
        return 0
    print(f"{'id':>5}  {'status':<11} {'dataset':<14} {'teacher → student':<32} {'T':>5} {'α':>5} {'student':>8} {'baseline':>8} {'gain':>7}")
    for r in runs:
        gain = "-" if r.kd_gain is None else f"{100 * r.kd_gain:+.2f}"
        pair = f"{r.teacher_arch} → {r.student_arch}"
        print(f"{r.id:>5}  {r.status:<11} {r.dataset:<14} {pair:<32} {r.temperature:>5g} {r.alpha:>5g} "
              f"{_pct(r.student_test_acc):>8} {_pct(r.baseline_test_acc):>8} {gain:>7}"
              + (f"  {DAMAGED_LABEL}" if r.damaged else ""))
    return 0


def cmd_runs_show(args) -> int:
    from kdcore.store import DAMAGED_LABEL, Store

    store = Store(args.db)
    store.expire_leases()
    run = _stored_run(store, args.id)
    if run is None:
        return 1
    if args.json:
        print(json.dumps(_run_json(run), indent=2))
    else:
        print(f"run {run.id}: {run.name}" + (f" {DAMAGED_LABEL}" if run.damaged else ""))
        if run.damaged:
            print(f"damaged: {', '.join(run.damaged)} cannot be read; the rest is shown as stored")
        _print_summary(run)
        _print_attempts(run)
        if "config_json" in run.damaged:
            print("config: unreadable")
            return 0
        print("config:")
        import yaml

        print("  " + yaml.safe_dump(run.config, sort_keys=False).replace("\n", "\n  ").rstrip())
    return 0


def _print_attempts(run) -> None:
    """Each attempt at the run (a resume is another), where it trained and for how long."""
    from kdcore.text import duration

    attempts = run.summary.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        return
    print(f"attempts: {len(attempts)}, {duration(run.summary.get('seconds'))} in all")
    for a in attempts:
        if not isinstance(a, dict):
            continue
        threads = f", {a['threads']} CPU thread(s)" if a.get("threads") else ""
        took = duration(a["seconds"]) if a.get("seconds") is not None else "time not known"
        when = f", {a['started_at']} to {a['ended_at']}" if a.get("started_at") else ""
        note = f" ({a['note']})" if a.get("note") else ""
        print(f"  {a.get('attempt', '?'):>3}  {a.get('status', '?'):<11} on {a.get('device') or 'an unknown device'}"
              f"{threads}, {took}{when}{note}")


class _ReportFile:
    """Where a report goes, checked before seconds go into building it.

    A file is written beside it and renamed over it at the end, so a failed build or a full disk leaves an older
    report whole. A device or pipe (/dev/stdout) is written in place: its first bytes go at once, so one that
    takes none (/dev/full) is refused before the build too.
    """
    HEAD = "<!DOCTYPE html>"  # how every report starts

    def __init__(self, path):
        self.path, self.stream, self.temp = path, None, None
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        if path.exists() and not path.is_file():
            self.stream = open(path, "w", encoding="utf-8")
            self.stream.write(self.HEAD)
            self.stream.flush()
            return
        folder = next(p for p in path.absolute().parents if p.exists())
        if not folder.is_dir():  # mkdir would say only "File exists"
            raise NotADirectoryError(20, f"{folder} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # may it be replaced? (read-only, immutable)
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.stream = os.fdopen(os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w",
                                encoding="utf-8")

    def write(self, html: str) -> None:
        if self.temp is None and html.startswith(self.HEAD):
            html = html[len(self.HEAD):]
        self.stream.write(html)
        self.stream.close()
        if self.temp is not None:
            os.replace(self.temp, self.path)
            self.temp = None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def cmd_report(args) -> int:
    from pathlib import Path

    from kdcore.report import ReportError, RunIdOutOfRange, build_report
    from kdcore.store import Store

    store = Store(args.db)
    out = Path(args.output)
    try:
        target = _ReportFile(out)
    except OSError as err:
        print(f"error: cannot write the report to {out}: {err.strerror}; choose another -o", file=sys.stderr)
        return 2
    try:
        try:
            html = build_report(store, args.target, latency=not args.no_latency)
        except ReportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2 if isinstance(err, RunIdOutOfRange) else 1
        try:
            target.write(html)
        except OSError as err:  # the disk filled while writing
            print(f"error: cannot write the report to {out}: {err.strerror}; choose another -o", file=sys.stderr)
            return 2
    finally:
        target.discard()
    print(f"wrote {out} ({len(html.encode()) / 2**20:.1f} MB): open it in any browser, no network needed",
          file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    import re

    from kdcore.config import RunConfig
    from kdcore.engine.checkpoint import CheckpointError
    from kdcore.export import DEFAULT_CHECK_IMAGES, FORMATS, TOLERANCE, ExportError, check_images, export_checkpoint
    from kdcore.store import Store

    if args.format not in FORMATS:  # argparse's choices would say it too, but not after a typo in a script's variable
        print(f"error: unknown format {args.format!r}; choose one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if not re.fullmatch(r"student|baseline|teacher\d*", args.phase):  # it names a file in the run's folder
        print(f"error: unknown phase {args.phase!r}; choose student, teacher (teacher2, …) or baseline",
              file=sys.stderr)
        return 2
    store = Store(args.db)
    run = _stored_run(store, args.id)
    if run is None:
        return 1
    weights = store.run_dir(run.id) / f"{args.phase}.pt"
    if not weights.is_file():
        print(f"error: run {run.id} has no {args.phase} weights ({weights} does not exist); "
              "a run stores each phase's weights once that phase has trained", file=sys.stderr)
        return 1
    try:
        images = check_images(RunConfig.model_validate(run.config).dataset, DEFAULT_CHECK_IMAGES)
        result = export_checkpoint(weights, args.output, args.format, images)
    except (CheckpointError, ExportError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result.path}  format {result.format}  max |logit difference| {result.max_abs_diff:.3g} "
          f"on {result.images_checked} test images  ({result.seconds:.1f} s)")
    if not result.within(TOLERANCE):
        print(f"error: the exported {result.format} file differs from the PyTorch model by up to "
              f"{result.max_abs_diff:.3g} on the test images, above the float32 tolerance {TOLERANCE:g}; "
              "do not use it", file=sys.stderr)
        return 3
    return 0


def cmd_models(args) -> int:
    from kdcore.models import MODELS, describe_model, model_profile

    print(f"{'name':<22} {'params (10 classes, 3x32x32)':>30}  description")
    for name in MODELS.names():
        try:
            params = f"{model_profile(name, 10, 3, 32).params:,}"
        except Exception:
            params = "?"
        print(f"{name:<22} {params:>30}  {describe_model(name)}")
    return 0


def cmd_methods(args) -> int:
    from kdcore.distill import describe_methods

    methods = describe_methods()
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for method in methods:
        print(f"{method['name']:<8} {method['title']}")
        for option in method["options"]:
            signs = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
            bounds = [f"{sign} {option[k]:g}" for k, sign in signs.items() if k in option]
            choices = f" one of {', '.join(map(str, option['enum']))}" if "enum" in option else ""
            print(f"{'':<10}{option['name']} = {option['default']!r}{choices}{' (' + ', '.join(bounds) + ')' if bounds else ''}"
                  f"  {option['help']}")
    return 0


def cmd_datasets(args) -> int:
    from kdcore.data import DATASETS, dataset_info, dataset_status

    for name in DATASETS.names():
        info = dataset_info(name)
        status = dataset_status(name, args.root)
        print(f"{name:<14} {'ready' if status.ready else 'not ready':<10} {info.description}")
        print(f"{'':<14} {status.message}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcore", description="Knowledge distillation for image classifiers.")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL of the run store (default $KDCORE_DB_URL or sqlite:///runs/kdcore.db)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a distillation experiment from a YAML config")
    train.add_argument("config", help="YAML file, e.g. examples/digits.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. distill.temperature=8")
    train.add_argument("--json", action="store_true", help="print the finished run (or group) as JSON")
    train.add_argument("--seeds", default=None, metavar="LIST",
                       help="run once per seed as one group, e.g. 0,1,2 or 0-4; prints the mean, spread and interval")
    train.add_argument("--teacher-per-seed", action="store_true",
                       help="with --seeds: train a teacher for each seed instead of one for the group")
    train.set_defaults(func=cmd_train)

    submit = sub.add_parser("submit", help="queue runs for workers (`kdcore worker` or the dashboard) and return")
    submit.add_argument("config", help="YAML file, e.g. examples/digits.yaml")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    submit.add_argument("--seeds", default=None, metavar="LIST", help="one run per seed, as one group: 0,1,2 or 0-4")
    submit.add_argument("--teacher-per-seed", action="store_true", help="with --seeds: a teacher per seed")
    submit.add_argument("--json", action="store_true", help="print the run ids as JSON")
    submit.set_defaults(func=cmd_submit)

    worker = sub.add_parser("worker", help="run queued runs from the store until stopped")
    worker.add_argument("--devices", default="auto", help="one worker per device: auto, cpu, cuda:0,cuda:1 (default auto)")
    worker.add_argument("--max-runs", type=int, default=None, metavar="N", help="stop after N runs (per device)")
    worker.add_argument("--exit-when-idle", action="store_true", help="stop when the queue is empty")
    worker.add_argument("--resume-interrupted", action="store_true",
                        help="put interrupted runs back in the queue and resume them from their last saved epoch")
    worker.add_argument("--no-studies", action="store_true",
                        help="do not drive studies (by default a worker asks the trials of running studies that no "
                             "live `kdcore tune` drives)")
    worker.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)  # the dashboard that started it
    worker.set_defaults(func=cmd_worker)

    runs = sub.add_parser("runs", help="stored runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    lst = runs_sub.add_parser("list", help="list stored runs, newest first")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--limit", type=int, default=None)
    lst.set_defaults(func=cmd_runs_list)
    show = runs_sub.add_parser("show", help="one run's config and summary")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_runs_show)
    resume = runs_sub.add_parser("resume", help="go on with an interrupted, cancelled or failed run from its last "
                                                "saved epoch, here; finished phases are not run again")
    resume.add_argument("id", type=int)
    resume.add_argument("--json", action="store_true", help="print the finished run as JSON")
    resume.set_defaults(func=cmd_runs_resume)
    cancel = runs_sub.add_parser("cancel", help="drop a queued run, or stop a running one at its next step")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(func=cmd_runs_cancel)
    remove = runs_sub.add_parser("delete", help="delete a finished run, its curves and its files")
    remove.add_argument("id", type=int)
    remove.add_argument("--yes", action="store_true", help="do not ask")
    remove.set_defaults(func=cmd_runs_delete)

    groups = sub.add_parser("groups", help="seed groups and sweeps")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True)
    glist = groups_sub.add_parser("list", help="list groups, newest first")
    glist.add_argument("--json", action="store_true")
    glist.set_defaults(func=cmd_groups_list)
    gshow = groups_sub.add_parser("show", help="a group's runs, mean ± std and the interval across seeds")
    gshow.add_argument("name")
    gshow.add_argument("--json", action="store_true")
    gshow.set_defaults(func=cmd_groups_show)

    report = sub.add_parser("report", help="one self-contained HTML report of a run or a group, to share")
    report.add_argument("target", metavar="ID|GROUP", help="a run id, or the name of a seed group or sweep")
    report.add_argument("-o", "--output", required=True, metavar="FILE.html", help="where to write the report")
    report.add_argument("--no-latency", action="store_true",
                        help="do not measure latency now when the run stored none")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="export a run's weights as ONNX, a torch.export program or the "
                                           "checkpoint, checked against PyTorch on the run's test images")
    export.add_argument("id", type=int, help="run id")
    export.add_argument("--format", required=True, help="onnx, pt2 or weights")
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.add_argument("--phase", default="student", help="student (default), teacher, teacher2, … or baseline")
    export.set_defaults(func=cmd_export)
    sub.add_parser("models", help="list the model zoo").set_defaults(func=cmd_models)
    methods = sub.add_parser("methods", help="list the distillation methods and their options (distill.options)")
    methods.add_argument("--json", action="store_true", help="a list of objects with name, options and formula")
    methods.set_defaults(func=cmd_methods)
    from kdcore.cli.studies import add_parsers as add_study_parsers

    add_study_parsers(sub)
    ds = sub.add_parser("datasets", help="list datasets and whether they are ready")
    ds.add_argument("--root", default=None, help="data folder (default $KDCORE_DATA_ROOT or ./data)")
    ds.set_defaults(func=cmd_datasets)
    return parser


MAX_RUN_ID = 2**63 - 1  # SQLite's largest integer; a larger id would overflow the query
# commands that act on what is stored; train, submit, worker and tune create a store where there is none
READ_ONLY_COMMANDS = ("runs", "groups", "report", "export", "studies")


def _refusal(args) -> Optional[str]:
    """What rules the command out before it opens the store or trains (None: nothing)."""
    run_id = getattr(args, "id", None)
    if run_id is not None and not -MAX_RUN_ID <= run_id <= MAX_RUN_ID:
        return f"run id {run_id} is out of range: no run has it (run ids go up to {MAX_RUN_ID})"
    if args.command in READ_ONLY_COMMANDS:
        from kdcore.store import _sqlite_path, default_url

        path = _sqlite_path(args.db or default_url())
        if path is not None and not path.exists():  # a typo in --db: say so instead of creating an empty store there
            return (f"no store at {path}: check --db (or KDCORE_DB_URL); `kdcore train`, `submit` and `worker` "
                    "create one")
    return None


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    refusal = _refusal(args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if args.command in ("train", "worker", "tune") or "resume" == getattr(args, "runs_command", None) or \
            "confirm" == getattr(args, "studies_command", None):
        from kdcore.engine.device import cpu_threads_from_env

        try:
            cpu_threads_from_env()
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except Exception as err:
        from kdcore.store import StoreError  # imported here: `kdcore models` never opens a store

        if not isinstance(err, StoreError):
            raise
        print(f"error: {err}", file=sys.stderr)  # one line: which file, what is wrong, what to do
        return 2


if __name__ == "__main__":
    sys.exit(main())
