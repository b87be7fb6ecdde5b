"""`kdcore train`, `submit` and `worker`: run configs here, queue them, or run the queue."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from kdcore.cli.common import (_group_json, _interrupt_on_signals, _print_group, _print_summary, _ProgressBars,
                               _run_json)
from kdcore.config import ConfigError


def _configs(args):
    """The config(s) a train or submit command asks for: one, or a group (one run per seed and swept setting)."""
    from kdcore.configure import load_config  # torch and the zoo: only the commands that train pay for them
    from kdcore.experiments import expand, parse_seeds, parse_sweep

    config = load_config(args.config, args.set)
    if args.seeds is None and not args.sweep:
        return [config]
    sweep: dict[str, list] = {}
    for item in args.sweep:
        key, values = parse_sweep(item)
        if key in sweep:
            raise ConfigError(f"--sweep {key}: given twice; list all its values in one --sweep {key}=V1,V2")
        sweep[key] = values
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    return expand(config, seeds=seeds, sweep=sweep, teacher_per_seed=args.teacher_per_seed)


def _grouped(args) -> bool:
    return args.seeds is not None or bool(args.sweep)


def cmd_train(args) -> int:
    from kdcore.experiments import group_report
    from kdcore.jobs import execute_job
    from kdcore.store import Store, this_worker

    if args.nproc is not None:  # one more override: the stored config says it, so a resume keeps it
        args.set = [*args.set, f"train.nproc={args.nproc}"]
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
    if _grouped(args):
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
    if not _grouped(args):
        print(json.dumps(_run_json(runs[0]), indent=2)) if args.json else _print_summary(runs[0])
    else:
        report = group_report(runs)
        if args.json:
            print(json.dumps(_group_json(report, runs), indent=2))
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
        print(json.dumps({"runs": run_ids, "group": configs[0].group if _grouped(args) else None}))
    else:
        print(" ".join(map(str, run_ids)))
        print(f"queued {len(run_ids)} run(s); a `kdcore worker` (or the dashboard) on the same --db runs them",
              file=sys.stderr)
    return 0


def stop_with_parent(parent: int, interrupt: threading.Event) -> None:
    """Sets `interrupt` once the process `parent` (the dashboard that started this worker) is gone."""
    def watch() -> None:
        while not interrupt.wait(1.0):
            if os.getppid() != parent:
                print("the parent process is gone: stopping", file=sys.stderr, flush=True)
                interrupt.set()
    threading.Thread(target=watch, daemon=True, name="kdcore-watch-parent").start()


def cmd_worker(args) -> int:
    from kdcore.engine.device import resolve_device
    from kdcore.jobs import Worker
    from kdcore.store import Store

    if args.ray is not None:
        from kdcore.cli.ray_worker import cmd_ray_worker

        return cmd_ray_worker(args)
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
        stop_with_parent(args.parent, interrupt)
    results: list = []
    if not args.no_studies:  # asks the trials of any running study no other live process drives
        from kdcore.studies import StudyDrivers

        StudyDrivers(store, interrupt).start()
    wake = threading.Event()
    if args.parent:  # a dashboard's worker: its JobManager wakes it through stdin when a run is submitted
        from kdcore.jobs.manager import wake_from_parent

        wake_from_parent(wake)
    with _interrupt_on_signals(interrupt):
        threads = [threading.Thread(target=lambda w=w: results.extend(
            w.serve(stop, interrupt, max_runs=args.max_runs, exit_when_idle=args.exit_when_idle,
                    resume_interrupted=args.resume_interrupted, wake=wake)), daemon=True)
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


SWEEP_HELP = ("one run per value of a config key, all in one group, e.g. distill.temperature=2,4,8; repeat it to "
              "sweep several keys (every combination), combine it with --seeds to repeat each setting")


def add_parsers(sub) -> None:
    train = sub.add_parser("train", help="run a distillation experiment from a YAML config")
    train.add_argument("config", help="YAML file, e.g. examples/digits.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. distill.temperature=8")
    train.add_argument("--json", action="store_true", help="print the finished run (or group) as JSON")
    train.add_argument("--seeds", default=None, metavar="LIST",
                       help="run once per seed as one group, e.g. 0,1,2 or 0-4; prints the mean, spread and interval")
    train.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                       help=SWEEP_HELP + "; prints each setting's gain, over seeds with --seeds")
    train.add_argument("--teacher-per-seed", action="store_true",
                       help="with --seeds: train a teacher for each seed instead of one for the group")
    train.add_argument("--nproc", type=int, default=None, metavar="N",
                       help="train the run on N processes (GPUs on CUDA) under torchrun: each takes batch_size/N "
                            "images of every batch (sets train.nproc)")
    train.set_defaults(func=cmd_train)

    submit = sub.add_parser("submit", help="queue runs for workers (`kdcore worker` or the dashboard) and return")
    submit.add_argument("config", help="YAML file, e.g. examples/digits.yaml")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    submit.add_argument("--seeds", default=None, metavar="LIST", help="one run per seed, as one group: 0,1,2 or 0-4")
    submit.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help=SWEEP_HELP)
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
    worker.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run each queued run as a Ray task on a Ray cluster (auto, ray://HOST:10001, HOST:6379; "
                             "alone: ray.init's default); needs pip install -e \".[ray]\"")
    worker.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)  # the dashboard that started it
    worker.set_defaults(func=cmd_worker)
