"""The `kdcore` command: train from YAML, list and show stored runs, list models and datasets."""
from __future__ import annotations

import argparse
import json
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


def cmd_train(args) -> int:
    from kdcore.jobs import execute_job
    from kdcore.store import Store

    try:
        config = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"error: invalid config: {err}", file=sys.stderr)
        return 2
    store = Store(args.db)
    store.recover_interrupted()
    run_id = store.create_run(config)
    print(f"run {run_id}: {config.display_name()}", file=sys.stderr)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: (stop.set(), print("\ncancelling at the next step…", file=sys.stderr)))
    bars = _ProgressBars()
    try:
        status = execute_job(store, run_id, config, stop=stop, listener=bars)
    finally:
        bars.close()
        signal.signal(signal.SIGINT, previous)
    run = store.get_run(run_id)
    if args.json:
        print(json.dumps(_run_json(run), indent=2))
    else:
        _print_summary(run)
    return 0 if status == "completed" else 1


def _print_summary(run) -> None:
    s = run.summary
    print(f"run {run.id} {run.status}" + (f" on {run.device}" if run.device else ""))
    if run.error:
        print(f"error: {run.error.split(chr(10) + chr(10))[0]}")
    if not s:
        return
    print(f"  teacher  {run.teacher_arch:<20} test acc {_pct(s.get('teacher_test_acc'))}  params {s.get('teacher_params', 0):,}")
    print(f"  student  {run.student_arch:<20} test acc {_pct(s.get('student_test_acc'))}  params {s.get('student_params', 0):,}")
    if "baseline_test_acc" in s:
        print(f"  baseline {'(student from scratch)':<20} test acc {_pct(s.get('baseline_test_acc'))}")
        gain = s.get("kd_gain")
        if gain is not None:
            print(f"  KD gain  {100 * gain:+.2f} points")
    if "compression" in s:
        print(f"  student is {s['compression']:.1f}x smaller, {s['flops_ratio']:.1f}x fewer FLOPs; took {s.get('seconds', 0):.1f} s")


def _run_json(run) -> dict:
    return {
        "id": run.id, "name": run.name, "status": run.status, "error": run.error, "device": run.device,
        "group": run.group, "tags": run.tag_list, "notes": run.notes,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "config": run.config, "summary": run.summary,
        "teacher_test_acc": run.teacher_test_acc, "student_test_acc": run.student_test_acc,
        "baseline_test_acc": run.baseline_test_acc, "kd_gain": run.kd_gain,
    }


def cmd_runs_list(args) -> int:
    from kdcore.store import Store

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
              f"{_pct(r.student_test_acc):>8} {_pct(r.baseline_test_acc):>8} {gain:>7}")
    return 0


def cmd_runs_show(args) -> int:
    from kdcore.store import RunNotFound, Store

    try:
        run = Store(args.db).get_run(args.id)
    except RunNotFound as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_run_json(run), indent=2))
    else:
        print(f"run {run.id}: {run.name}")
        _print_summary(run)
        print("config:")
        import yaml

        print("  " + yaml.safe_dump(run.config, sort_keys=False).replace("\n", "\n  ").rstrip())
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
    train.add_argument("--json", action="store_true", help="print the finished run as JSON")
    train.set_defaults(func=cmd_train)

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

    sub.add_parser("models", help="list the model zoo").set_defaults(func=cmd_models)
    ds = sub.add_parser("datasets", help="list datasets and whether they are ready")
    ds.add_argument("--root", default=None, help="data folder (default $KDCORE_DATA_ROOT or ./data)")
    ds.set_defaults(func=cmd_datasets)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
