"""`kdcore slurm`: `kdcore worker` processes as a Slurm job array, through submitit.

The store stays the one record and the one queue: each job is a plain `kdcore worker --exit-when-idle`
that claims runs until none is queued. Slurm places the processes and gives them their GPUs; a job
killed with its run in flight leaves that run to expire its lease (interrupted, resumable).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

INSTALL = 'submitit is not installed: pip install -e ".[slurm]" (or pip install submitit)'
# what a job on another node must see as the submitter does; Slurm usually exports the environment, but not always
SHARED_ENV = ("KDCORE_ARTEFACT_ROOT", "KDCORE_DATA_ROOT", "KDCORE_LEASE_GRACE_S", "KDCORE_CPU_THREADS")


def worker_job(argv: list[str], env: dict[str, str]) -> int:
    """One job of the array: `kdcore ARGV` in this process. A module-level function, so submitit can pickle it.

    submitit's signal for a job near its time limit or pre-empted (USR2 by default) is taken as a SIGTERM: the
    worker stops its run at the next step and records it interrupted, with its metrics, and the job ends.
    Left to submitit, a timed-out job would die mid-run (the run seen as interrupted only once its lease
    expires) and a pre-empted one would restart a worker with its run still held.

    Returns:
        The command's exit status (0: the queue was drained; 130: stopped by a signal).
    """
    import signal

    from submitit.core.job_environment import JobEnvironment

    os.environ.update(env)
    signal.signal(JobEnvironment._usr_sig(), lambda *_: signal.raise_signal(signal.SIGTERM))
    from kdcore.cli import main

    return main(argv)


def worker_argv(url: str, args) -> list[str]:
    """The `kdcore` arguments each job runs: a worker on the given store until the queue is empty."""
    argv = ["--db", url, "worker", "--exit-when-idle", "--devices", args.devices]
    if args.resume_interrupted:
        argv.append("--resume-interrupted")
    if args.no_studies:
        argv.append("--no-studies")
    return argv


def absolute_url(store) -> str:
    """The store's URL with a SQLite file's path made absolute: the jobs may start in another folder."""
    from kdcore.store import _sqlite_path

    path = _sqlite_path(store.url)
    return store.url if path is None else f"sqlite:///{path.resolve()}"


def _parameters(args) -> dict:
    params = {"timeout_min": args.time, "gpus_per_node": args.gpus_per_job, "tasks_per_node": 1, "nodes": 1,
              "name": "kdcore-worker"}
    if args.cpus_per_job is not None:
        params["cpus_per_task"] = args.cpus_per_job
    if not args.local:
        params["slurm_array_parallelism"] = args.jobs
        if args.partition:
            params["slurm_partition"] = args.partition
    return params


def _refusal(args) -> str | None:
    if args.jobs < 1:
        return f"--jobs must be 1 or more, not {args.jobs}"
    if args.gpus_per_job < 0 or args.time < 1:
        return "--gpus-per-job must be 0 or more and --time 1 minute or more"
    if not args.local and shutil.which("sbatch") is None:
        return ("no Slurm here (sbatch is not on PATH): run this on a login node, or give --local to try it on "
                "this machine")
    return None


def cmd_slurm(args) -> int:
    try:
        import submitit
    except ImportError:
        print(f"error: {INSTALL}", file=sys.stderr)
        return 2
    refusal = _refusal(args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    from kdcore.store import Store, _sqlite_path

    store = Store(args.db)
    store.check_writable()  # refuse here, not in N jobs' logs
    url = absolute_url(store)
    if _sqlite_path(url) is not None and not args.local:
        print("note: a SQLite store works across nodes only on a shared file system with working locks; "
              "PostgreSQL (KDCORE_DB_URL) is the store for a cluster", file=sys.stderr)
    env = {k: os.environ[k] for k in SHARED_ENV if k in os.environ}
    env.setdefault("KDCORE_ARTEFACT_ROOT", str(store.artefact_root.resolve()))  # the run folders this store has
    folder = Path(args.folder) if args.folder else store.artefact_root.resolve() / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.local else "slurm")
    executor.update_parameters(**_parameters(args))
    jobs = executor.map_array(worker_job, [worker_argv(url, args)] * args.jobs, [env] * args.jobs)
    print(" ".join(job.job_id for job in jobs))
    print(f"submitted {len(jobs)} `kdcore worker --exit-when-idle` job(s) on {url}; logs in {folder}", file=sys.stderr,
          flush=True)
    if not args.wait:
        return 0
    return _wait(jobs)


def _wait(jobs) -> int:
    """Waits for every job; 0 when each worker ended with status 0."""
    failed = 0
    for job in jobs:
        try:
            code = job.result()
        except Exception as err:  # submitit raises the job's own failure, with its log's tail
            lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
            code = 1
            print(f"job {job.job_id}: failed: {lines[0]}" + (f" … {lines[-1]}" if len(lines) > 1 else ""),
                  file=sys.stderr)
        else:
            print(f"job {job.job_id}: worker exited with {code}", file=sys.stderr)
        failed += code != 0
    return 0 if failed == 0 else 1


def add_parsers(sub) -> None:
    slurm = sub.add_parser("slurm", help="submit `kdcore worker` processes as a Slurm job array (through submitit)")
    slurm.add_argument("--jobs", type=int, required=True, metavar="N", help="workers in the array")
    slurm.add_argument("--gpus-per-job", type=int, default=1, metavar="G", help="GPUs each job asks for (default 1)")
    slurm.add_argument("--cpus-per-job", type=int, default=None, metavar="C", help="CPUs each job asks for")
    slurm.add_argument("--partition", default=None, metavar="P", help="Slurm partition")
    slurm.add_argument("--time", type=int, default=240, metavar="MIN",
                       help="each job's time limit in minutes (default 240); a run cut off by it is interrupted "
                            "and resumed by a worker with --resume-interrupted")
    slurm.add_argument("--folder", default=None, metavar="DIR",
                       help="submitit's folder for job scripts and logs (default ARTEFACT_ROOT/slurm/%%j)")
    slurm.add_argument("--devices", default="auto", help="each worker's --devices (default auto: the job's GPU)")
    slurm.add_argument("--resume-interrupted", action="store_true",
                       help="the workers put interrupted runs back in the queue and resume them")
    slurm.add_argument("--no-studies", action="store_true", help="the workers do not drive studies")
    slurm.add_argument("--local", action="store_true",
                       help="run the jobs on this machine with submitit's local executor (no Slurm needed)")
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs and exit 1 if a worker failed")
    slurm.set_defaults(func=cmd_slurm)
