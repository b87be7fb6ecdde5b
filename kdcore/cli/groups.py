"""`kdcore groups`: seed groups and sweeps; per setting of a sweep (a cell), the mean, spread and interval across seeds."""
from __future__ import annotations

import json
import sys

from kdcore.cli.common import _group_json, _print_group


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
        print(json.dumps(_group_json(report, runs), indent=2))
    else:
        _print_group(report, runs)
    return 0


def add_parsers(sub) -> None:
    groups = sub.add_parser("groups", help="seed groups and sweeps")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True)
    glist = groups_sub.add_parser("list", help="list groups, newest first")
    glist.add_argument("--json", action="store_true")
    glist.set_defaults(func=cmd_groups_list)
    gshow = groups_sub.add_parser("show", help="a group's runs; per setting, mean ± std and the interval across seeds")
    gshow.add_argument("name")
    gshow.add_argument("--json", action="store_true")
    gshow.set_defaults(func=cmd_groups_show)
