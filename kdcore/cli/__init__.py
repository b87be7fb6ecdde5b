"""The `kdcore` command: train from YAML, list and show stored runs, list models and datasets.

Each group of commands is a module here with its `add_parsers(sub)`; this one assembles the parser and runs
the command.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from kdcore.cli import groups, info, runs, share, slurm, studies, train
from kdcore.cli.common import (_interrupt_on_signals, _lease_suffix, _pct, _print_group, _print_summary,  # noqa: F401
                               _ProgressBars, _run_json, _stored_run)
from kdcore.cli.groups import cmd_groups_list, cmd_groups_show  # noqa: F401
from kdcore.cli.info import cmd_datasets, cmd_methods, cmd_models  # noqa: F401
from kdcore.cli.runs import (_print_attempts, cmd_runs_cancel, cmd_runs_delete, cmd_runs_list,  # noqa: F401
                             cmd_runs_resume, cmd_runs_show)
from kdcore.cli.share import _ReportFile, cmd_export, cmd_report  # noqa: F401
from kdcore.cli.train import _configs, cmd_submit, cmd_train, cmd_worker  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcore", description="Knowledge distillation for image classifiers.")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL of the run store (default $KDCORE_DB_URL or sqlite:///runs/kdcore.db)")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (train, runs, groups, share, info, studies, slurm):
        commands.add_parsers(sub)
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
