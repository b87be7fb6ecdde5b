"""A run with train.nproc > 1: torchrun starts N ranks, each training its shard of every global batch.

The process that claimed the run starts `python -m torch.distributed.run` and waits on it; it does not
write the store while the ranks live. Rank 0 executes the run as any worker would, under the same
worker name (claim, heartbeat, metrics, run folder). The other ranks train silently: they read the
stored config and a private copy of the run folder taken before rank 0 starts, so a resumed run's
saved state is loaded by every rank and their own writes land in a scratch folder that is removed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from kdcore.store import Store

STOP_GRACE_S = 60.0  # after a SIGTERM, how long the ranks get to record the run before they are killed


def launch(store: Store, run_id: int, *, worker: str, nproc: int,
           interrupt: Optional[threading.Event] = None) -> str:
    """Runs claimed run `run_id` on `nproc` processes under torchrun; returns its final status."""
    interrupt = interrupt or threading.Event()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "kdcore.jobs.torchrun", store.url, str(run_id), worker]  # positional: torchrun reads --options
    env = dict(os.environ, KDCORE_ARTEFACT_ROOT=str(store.artefact_root))
    proc = subprocess.Popen(command, env=env, start_new_session=True)  # a terminal's Ctrl-C reaches us alone
    signalled = False
    while proc.poll() is None:
        if interrupt.wait(0.5) and not signalled:
            proc.send_signal(signal.SIGTERM)  # torchrun passes it to every rank; rank 0 records "interrupted"
            signalled = True
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
    run = store.get_run(run_id)
    if run.status == "running":  # rank 0 died before it could record the end (a no-op once the lease is lost)
        store.finish_run(run_id, "failed", error=f"torchrun ended with exit code {proc.returncode} before rank 0 "
                         "recorded the run", worker=worker)
        run = store.get_run(run_id)
    return run.status


def _rank_main(argv: Optional[list[str]] = None) -> int:
    from kdcore.configure import build_config
    from kdcore.engine import distributed
    from kdcore.engine.device import resolve_device
    from kdcore.jobs.worker import execute_job

    parser = argparse.ArgumentParser(prog="kdcore.jobs.torchrun")
    parser.add_argument("db")
    parser.add_argument("run", type=int)
    parser.add_argument("worker")
    args = parser.parse_args(argv)
    store = Store(args.db)
    config = build_config(store.get_run(args.run).config)
    device = distributed.start(resolve_device(config.train.device).type)
    run_dir = store.run_dir(args.run)
    if distributed.rank() == 0:
        interrupt = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: interrupt.set())
        signal.signal(signal.SIGINT, lambda *_: interrupt.set())
        dist.barrier()  # the other ranks have copied the run folder
        status = execute_job(store, args.run, worker=args.worker, device=device, interrupt=interrupt)
        dist.destroy_process_group()
        return 0 if status == "completed" else 1  # else torchrun ends ranks still waiting on rank 0
    # rank 0 decides when to stop and tells the others at the next step
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with tempfile.TemporaryDirectory(prefix=f"kdcore-rank{distributed.rank()}-") as scratch:
        own = Path(scratch) / "run"
        if run_dir.is_dir():
            shutil.copytree(run_dir, own)
        dist.barrier()
        _silent_rank(store, args.run, config, own, device)
    dist.destroy_process_group()
    return 0


def _silent_rank(store: Store, run_id: int, config, run_dir: Path, device: torch.device) -> None:
    """A rank other than 0: the same phases, in step with rank 0, reporting nothing."""
    from kdcore.engine.run import execute_run
    from kdcore.engine.sources import sibling_finder, teacher_sources
    from kdcore.jobs.worker import StoreRuns

    execute_run(config, run_dir, device=device, teacher_sources=teacher_sources(config, StoreRuns(store)),
                find_sibling=sibling_finder(config, run_id, StoreRuns(store)))


if __name__ == "__main__":
    sys.exit(_rank_main())
