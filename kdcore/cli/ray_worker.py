"""`kdcore worker --ray [ADDRESS]`: the queue's runs as Ray tasks, placed by Ray on a cluster's nodes."""
from __future__ import annotations

import sys
import threading

from kdcore.cli.common import _interrupt_on_signals


def cmd_ray_worker(args) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        from kdcore.jobs.ray_executor import INSTALL

        print(f"error: {INSTALL}", file=sys.stderr)
        return 2
    if args.devices != "auto" or args.max_runs is not None:
        print("error: --devices and --max-runs are for local workers: with --ray, Ray places each run and gives it "
              "a GPU when its config asks for CUDA", file=sys.stderr)
        return 2
    from kdcore.jobs.ray_executor import RayExecutor
    from kdcore.store import Store

    store = Store(args.db)
    store.check_writable()
    stop, interrupt = threading.Event(), threading.Event()
    if not args.no_studies:  # a study's trials are queued runs like any other: Ray runs them too
        from kdcore.studies import StudyDrivers

        StudyDrivers(store, interrupt).start()
    if args.parent:  # the dashboard's Ray driver ($KDCORE_RAY_ADDRESS): it stops with the dashboard
        from kdcore.cli.train import stop_with_parent

        stop_with_parent(args.parent, interrupt)
    executor = RayExecutor(store, args.ray)
    print(f"kdcore worker on Ray ({args.ray or 'ray.init default'}), store {store.url}", file=sys.stderr, flush=True)
    with _interrupt_on_signals(interrupt):
        results = executor.run(stop, interrupt, exit_when_idle=args.exit_when_idle,
                               resume_interrupted=args.resume_interrupted)
    for run_id, status in results:
        print(f"run {run_id} {status}", flush=True)
    return 130 if interrupt.is_set() else 0
