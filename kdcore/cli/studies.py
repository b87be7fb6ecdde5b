"""`kdcore tune` and `kdcore studies`: search config keys, choose on validation, confirm over fresh seeds."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from datetime import datetime
from typing import Optional

from kdcore.config import ConfigError

POLL_S = 0.5  # how often `kdcore tune` looks at its trials


def _store(args):
    from kdcore.store import Store

    return Store(args.db)


def _refused(err: Exception) -> int:
    print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
    return 2


def _new_study(args, store) -> str:
    """Creates the study the command line describes; returns its name."""
    from kdcore.checks import refuse_unrunnable
    from kdcore.configure import load_config
    from kdcore.studies import create_study, load_space

    for flag, value in (("CONFIG", args.config), ("--space", args.space), ("--trials", args.trials)):
        if value is None:
            raise ConfigError(f"{flag} is needed to start a study (or give --resume NAME to continue one)")
    config = load_config(args.config, args.set)
    space = load_space(args.space)
    name = args.name or f"{config.name or config.dataset.name} · study {datetime.now():%Y-%m-%d %H:%M:%S}"
    refuse_unrunnable([config], store=args.db, here=args.workers > 0)
    create_study(store, name, config, space, trials=args.trials, objective=args.objective, sampler=args.sampler,
                 pruner=args.pruner, seed=args.seed, parallel=args.parallel, confirm_seeds=args.confirm_seeds)
    return name


def _warn_about(study) -> None:
    from kdcore.studies.study import stored_space

    space = stored_space(study)
    if study.objective == "val_kd_gain" and (space.varies("train") or space.varies("student")):
        print("note: the objective compares each trial with a baseline trained with the same settings, so a setting "
              "that weakens the baseline (a poor lr, say) can score high; with the student's own training in the space, "
              "--objective student_val_acc asks the plainer question", file=sys.stderr)


class _TrialLines:
    """One line per trial as it ends, and the best so far."""

    def __init__(self):
        self.said: set[int] = set()

    def __call__(self, described: dict) -> None:
        from tqdm import tqdm

        objective = described["objective"]
        for t in described["trials"]:
            if t["number"] in self.said or t["state"] in ("queued", "running", "asked"):
                continue
            self.said.add(t["number"])
            what = _value(t["value"], objective) if t["state"] == "complete" else t["state"]
            if t["state"] == "pruned":
                what = f"pruned after epoch {t['pruned_at_epoch']}"
            best = described["best"]
            mark = "  (best so far)" if best is not None and best["number"] == t["number"] else ""
            tqdm.write(f"trial {t['number']:>3} {what:<24} {t['setting']}  [run {t['run_id']}]{mark}", file=sys.stderr)


def _value(value: Optional[float], objective: dict) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f} points" if objective["in_points"] else f"{100 * value:.2f}%"


def cmd_tune(args) -> int:
    if args.trials is not None and args.trials < 1:  # before anything loads
        return _refused(ValueError(f"--trials must be at least 1, not {args.trials}"))
    if args.workers < 0:
        return _refused(ValueError(f"--workers must be 0 or more, not {args.workers}"))
    from kdcore.store import StudyExists, StudyNotFound
    from kdcore.studies import StudyError, resume_study

    store = _store(args)
    try:
        if args.resume:
            if args.config or args.space:
                raise StudyError("--resume continues a stored study with its own config and space; give only its name")
            name = resume_study(store, args.resume, trials=args.trials).name
        else:
            name = _new_study(args, store)
    except (ConfigError, StudyError, StudyExists, StudyNotFound) as err:
        return _refused(err)
    return _drive(args, store, name)


def _drive(args, store, name: str) -> int:
    """Drives the study and runs its trials here until it is done, stopped, or Ctrl-C."""
    from kdcore.cli.common import _interrupt_on_signals, _ProgressBars
    from kdcore.jobs import Worker
    from kdcore.studies import StudyDriver, confirm_group, trials_group
    from kdcore.studies.view import describe_study

    study = store.get_study(name)
    _warn_about(study)
    print(f"study {name!r}: {study.n_trials} trials ({study.sampler} sampler, {study.pruner} pruner), "
          f"{study.parallel} at a time; objective: {describe_study(store, name)['objective']['description']}; "
          f"trials train with seed {study.trial_seed}", file=sys.stderr)
    interrupt, stop = threading.Event(), threading.Event()
    groups = [trials_group(name), confirm_group(name)]
    bars = _ProgressBars() if args.workers == 1 else None
    workers = [Worker(store, "auto", name=f"tune{i}", groups=groups, poll_s=POLL_S,
                      listener_for=(lambda run_id: bars) if bars else None) for i in range(args.workers)]
    threads = [threading.Thread(target=w.serve, args=(stop, interrupt), daemon=True) for w in workers]
    driver, lines = StudyDriver(store, name), _TrialLines()
    told_elsewhere = False
    with _interrupt_on_signals(interrupt):
        for t in threads:
            t.start()
        try:
            while not interrupt.is_set():
                fault = next((w.store_error for w in workers if w.store_error is not None), None)
                if fault is not None:
                    raise fault  # its trials cannot run: say why in one line (kdcore's main prints it)
                status = driver.step()
                described = describe_study(store, name)
                lines(described)
                if status == "elsewhere" and not told_elsewhere:
                    print(f"study {name!r} is driven by another process; this one runs its trials", file=sys.stderr)
                    told_elsewhere = True
                if status == "stopped":
                    print(f"study {name!r} was stopped: {store.get_study(name).reason}", file=sys.stderr)
                    break
                if status == "finished" and _confirmed(described):
                    break
                interrupt.wait(POLL_S)
        finally:
            if interrupt.is_set():
                driver.stop("stopped from the command line (Ctrl-C or SIGTERM)")
            driver.release()
            stop.set()
            for t in threads:
                t.join()
            if bars is not None:
                bars.close()
    described = describe_study(store, name)
    if args.json:
        print(json.dumps(described, indent=2, default=str))
    else:
        _print_study(described)
    if interrupt.is_set():
        print(f"stopped; `kdcore tune --resume {name!r}` goes on from here (no finished trial runs again)",
              file=sys.stderr)
        return 130
    return 0 if described["status"] == "finished" else 1


def _confirmed(described: dict) -> bool:
    """Done: no confirmation asked, or its runs all finished."""
    confirmation = described["confirmation"]
    if confirmation is None:
        return True  # a study without --confirm-seeds ends with its trials
    statuses = confirmation["statuses"]
    return bool(confirmation["run_ids"]) and not any(s in statuses for s in ("queued", "running"))


def _print_study(d: dict) -> None:
    objective = d["objective"]
    print(f"study {d['name']} ({d['status']}{': ' + d['reason'] if d['reason'] else ''})")
    print(f"  {d['n_trials']} trials, {d['sampler']} sampler, {d['pruner']} pruner, on {d['dataset']}; trials train "
          f"with seed {d['trial_seed']}")
    print(f"  objective: {objective['label']} ({objective['name']}): {objective['description']}")
    print("  space:")
    from kdcore.studies.space import describe_spec

    for key, spec in d["space"].items():
        print(f"    {key:<32} {describe_spec(spec)}")
    print(f"  {'#':>4} {'state':<12} {'value':>14} {'run':>5}  setting")
    for t in d["trials"]:
        value = _value(t["value"], objective) if t["state"] == "complete" else (
            f"epoch {t['pruned_at_epoch']}" if t["state"] == "pruned" else "-")
        print(f"  {t['number']:>4} {t['state']:<12} {value:>14} {t['run_id'] if t['run_id'] else '-':>5}  {t['setting']}")
    if d["best"]:
        b = d["best"]
        print(f"  best: trial {b['number']} ({b['setting']}), {objective['label']} {_value(b['value'], objective)} "
              f"on validation [run {b['run_id']}]")
    c = d["confirmation"]
    if c:
        runs = ", ".join(map(str, c["run_ids"]))
        print(f"  confirmation: trial {c['trial']} over seeds {c['seeds']} (group {c['group']!r}; runs {runs}; "
              + ", ".join(f"{n} {s}" for s, n in c["statuses"].items()) + ")")
    print(f"  answer: {d['answer']}")


def cmd_studies_list(args) -> int:
    from kdcore.studies.view import study_rows

    rows = study_rows(_store(args))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no studies yet; try: kdcore tune examples/digits.yaml --space examples/spaces/digits.yaml --trials 12")
    for r in rows:
        counts = ", ".join(f"{n} {s}" for s, n in (r.get("counts") or {}).items())
        print(f"{r['status']:<9} {r['name']}  ({r.get('n_trials', '?')} trials: {counts or 'none yet'})")
        print(f"          {r.get('answer') or r.get('error')}")
    return 0


def cmd_studies_show(args) -> int:
    from kdcore.store import StudyNotFound
    from kdcore.studies.view import describe_study

    try:
        described = describe_study(_store(args), args.name)
    except StudyNotFound as err:
        return _refused(err)
    if args.json:
        print(json.dumps(described, indent=2, default=str))
    else:
        _print_study(described)
    return 0


def cmd_studies_confirm(args) -> int:
    """Queues the confirmation and, unless --no-wait, runs it here."""
    from kdcore.cli.common import _interrupt_on_signals, _ProgressBars
    from kdcore.jobs import Worker
    from kdcore.store import StudyNotFound
    from kdcore.studies import StudyError, confirm
    from kdcore.studies.view import describe_study

    store = _store(args)
    try:
        run_ids = confirm(store, args.name, args.seeds, trial=args.trial)
    except (ConfigError, StudyError, StudyNotFound) as err:
        return _refused(err)
    study = store.get_study(args.name)
    print(f"queued the confirmation of trial {study.confirm_trial} over seeds {study.confirm_seeds}: runs "
          f"{', '.join(map(str, run_ids))} (group {study.confirm_group!r})", file=sys.stderr)
    if args.no_wait:
        return 0
    interrupt, stop = threading.Event(), threading.Event()
    bars = _ProgressBars()
    worker = Worker(store, "auto", name="confirm", groups=[study.confirm_group], listener_for=lambda run_id: bars)
    with _interrupt_on_signals(interrupt):
        worker.run(stop, interrupt, max_runs=len(run_ids), exit_when_idle=True)
    bars.close()
    described = describe_study(store, args.name)
    print(json.dumps(described, indent=2, default=str)) if args.json else _print_study(described)
    return 130 if interrupt.is_set() else 0


def cmd_studies_stop(args) -> int:
    from kdcore.store import StudyNotFound
    from kdcore.studies import StudyError, stop_study

    try:
        stop_study(_store(args), args.name)
    except (StudyError, StudyNotFound) as err:
        return _refused(err)
    print(f"study {args.name!r} stopped: it asks no more trials; `kdcore tune --resume {args.name!r}` continues it")
    return 0


def cmd_studies_delete(args) -> int:
    from kdcore.store import StudyNotFound
    from kdcore.studies import delete_study

    store = _store(args)
    try:
        store.get_study(args.name)
    except StudyNotFound as err:
        return _refused(err)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: deleting study {args.name!r} and its runs needs --yes when not asked at a terminal",
                  file=sys.stderr)
            return 2
        if input(f"Delete study {args.name!r}, its trials' runs and its confirmation? [y/N] ").strip().lower() not in (
                "y", "yes"):
            print("kept")
            return 1
    try:
        deleted = delete_study(store, args.name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"study {args.name!r} deleted with {len(deleted)} run(s)")
    return 0


def add_parsers(sub) -> None:
    from kdcore.studies.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
    from kdcore.studies.space import PRUNERS, SAMPLERS

    tune = sub.add_parser("tune", help="search config keys for a setting where distillation pays off (Optuna), "
                                       "choosing on validation; optionally confirm the best over fresh seeds",
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SPACE_HELP)
    tune.add_argument("config", nargs="?", help="YAML config every trial starts from, e.g. examples/digits.yaml")
    tune.add_argument("--space", metavar="SPACE.yaml", help="the keys to search and their ranges (see below)")
    tune.add_argument("--trials", type=int, default=None, metavar="N", help="how many settings to try")
    tune.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=OBJECTIVES.names(),
                      help=f"what to maximize, on the validation split (default {DEFAULT_OBJECTIVE})")
    tune.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="Optuna's sampler (default tpe)")
    tune.add_argument("--pruner", default="median", choices=PRUNERS,
                      help="stop trials whose student's validation accuracy lags (default median)")
    tune.add_argument("--seed", type=int, default=0, help="the sampler's seed; trials train with seed 1000 + it")
    tune.add_argument("--name", default=None, help="the study's name (default: the config's name and the time)")
    tune.add_argument("--parallel", type=int, default=1, metavar="K",
                      help="trials in the queue at once, for several workers (default 1)")
    tune.add_argument("--workers", type=int, default=1, metavar="W",
                      help="trials run in this process at once; 0 leaves them to `kdcore worker` processes")
    tune.add_argument("--confirm-seeds", default=None, metavar="LIST",
                      help="at the end, run the best trial again over these seeds (e.g. 0-4) and report its gain on "
                           "test with its interval")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tune.add_argument("--resume", default=None, metavar="NAME",
                      help="continue a stopped study (with --trials N, ask more of a finished one)")
    tune.add_argument("--json", action="store_true", help="print the study as `kdcore studies show --json` does")
    tune.set_defaults(func=cmd_tune)

    studies = sub.add_parser("studies", help="stored studies: their trials, best setting and confirmation")
    studies_sub = studies.add_subparsers(dest="studies_command", required=True)
    lst = studies_sub.add_parser("list", help="every study, newest first, with its answer")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_studies_list)
    show = studies_sub.add_parser("show", help="a study's objective, space, trials, best and confirmation")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_studies_show)
    conf = studies_sub.add_parser("confirm", help="run the best trial (or --trial N) again over fresh seeds")
    conf.add_argument("name")
    conf.add_argument("--seeds", required=True, metavar="LIST", help="seeds the search never used, e.g. 0-4")
    conf.add_argument("--trial", type=int, default=None, help="the trial to confirm (default: the best)")
    conf.add_argument("--no-wait", action="store_true", help="queue the runs for workers and return")
    conf.add_argument("--json", action="store_true")
    conf.set_defaults(func=cmd_studies_confirm)
    stop = studies_sub.add_parser("stop", help="ask no more trials (queued ones are cancelled)")
    stop.add_argument("name")
    stop.set_defaults(func=cmd_studies_stop)
    delete = studies_sub.add_parser("delete", help="delete a study with its trials' runs and its confirmation")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.set_defaults(func=cmd_studies_delete)


SPACE_HELP = """A space file maps config keys to ranges or choices:

  distill.method: {choices: [soft, dist]}
  distill.temperature: {low: 1.0, high: 8.0, log: true}
  distill.alpha: {low: 0.3, high: 0.95}
  distill.options.nckd_weight: {low: 1, high: 10}   # a method's option, used when that method is picked

Both bounds whole numbers make an int range; step: gives a grid's spacing."""
