"""`kdcore runs`: list, show, resume, cancel and delete stored runs."""
from __future__ import annotations

import json
import sys
import threading

from kdcore.cli.common import _interrupt_on_signals, _pct, _print_summary, _ProgressBars, _run_json, _stored_run


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


def cmd_runs_resume(args) -> int:
    from kdcore.jobs import ActionRefused, RunService, execute_job
    from kdcore.store import Store, this_worker

    store = Store(args.db)
    store.expire_leases(force=True)
    interrupt = threading.Event()
    bars = _ProgressBars()
    worker = this_worker("resume")
    try:
        RunService(store).resume(args.id, here=worker)
        with _interrupt_on_signals(interrupt):
            status = execute_job(store, args.id, worker=worker, interrupt=interrupt, listener=bars)
    except ActionRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        bars.close()
    run = store.get_run(args.id)
    print(json.dumps(_run_json(run), indent=2)) if args.json else _print_summary(run)
    if interrupt.is_set():
        return 130
    return 0 if status == "completed" else 1


def cmd_runs_cancel(args) -> int:
    from kdcore.jobs import ActionRefused, RunService
    from kdcore.store import Store

    try:
        outcome = RunService(Store(args.db), here=False).cancel(args.id, refuse=True)
    except ActionRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {args.id} " + ("cancelled (it was queued)" if outcome == "cancelled"
                               else "will stop at its next step (its worker reads the request within a few seconds)"))
    return 0


def cmd_runs_delete(args) -> int:
    from kdcore.jobs import ActionRefused, RunService
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
        kept = RunService(store, here=False).delete(args.id)
    except ActionRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {args.id} deleted" + (f"; {kept}" if kept else ""))
    return 0


def add_parsers(sub) -> None:
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
