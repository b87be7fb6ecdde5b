"""Every distillation method against soft-target KD and the student from scratch, over seeds.

    .venv/bin/python bench/methods.py                              # examples/methods_fashion.yaml, seeds 0-2
    .venv/bin/python bench/methods.py --seeds 0-4 --methods soft,dkd,ls
    .venv/bin/python bench/methods.py --markdown docs/benchmarks.md   # also write the table there

All runs go into one group of one temporary store, so they share one teacher (trained
with the first seed) and one scratch baseline per seed, exactly as a seed group does:
each method's students differ from KD's and from scratch only in the loss.

Per method: the distilled student's test accuracy (mean ± std over seeds), its gain over
scratch with the Student-t 95% interval across seeds, and its difference from soft-target
KD paired by seed with its interval. An interval that includes zero is reported as such.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.machine import cpu_model  # noqa: E402
from bench.markdown import old_block, put_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "examples" / "methods_fashion.yaml"))
    p.add_argument("--seeds", default="0-2", help="seeds, e.g. 0-2 (default) or 0,1,2,3,4")
    p.add_argument("--methods", default="", help="comma-separated methods (default: every registered one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key in every run")
    p.add_argument("--markdown", metavar="FILE", help="write the table between the methods markers of FILE")
    return p.parse_args(argv)


def run_all(config_path: str, seeds: list[int], methods: list[str], overrides: list[str]) -> dict:
    from tqdm import tqdm

    from kdcore.configure import load_config
    from kdcore.experiments import expand
    from kdcore.jobs import execute_job
    from kdcore.store import Store, this_worker

    base = load_config(config_path, overrides)
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="methods_") as tmp:
        store = Store(f"sqlite:///{tmp}/runs.db", artefact_root=tmp)
        worker = this_worker("bench")
        group = f"methods {datetime.datetime.now():%Y-%m-%d %H:%M}"
        queued = []
        for method in methods:
            config = base.model_copy(deep=True)
            config.distill.method = method
            config.distill.options = {}
            config = type(config).model_validate(config.model_dump(mode="json"))  # the method's defaults filled in
            for cfg in expand(config, seeds=seeds, group=group):
                cfg.name = f"{method} seed {cfg.train.seed}"
                queued.append((method, store.create_run(cfg)))
        with tqdm(total=len(queued), desc="runs", unit="run", file=sys.stderr) as bar:
            for method, run_id in queued:
                started = time.perf_counter()
                store.claim(worker, run_id=run_id)
                status = execute_job(store, run_id, worker=worker)
                run = store.get_run(run_id)
                if status != "completed":
                    raise SystemExit(f"run {run_id} ({method}) {status}: {(run.error or '').splitlines()[0]}")
                results.setdefault(method, []).append(dict(run.summary, seconds_here=time.perf_counter() - started,
                                                           seed=run.config["train"]["seed"]))
                bar.set_postfix_str(f"{method} seed {run.config['train']['seed']}")
                bar.update()
    return results


def _spread(values: list[float]) -> dict | None:
    from kdcore.stats import across_seeds

    spread = across_seeds(values)
    return spread.as_dict() if spread else None


def _pts(s: dict | None, signed: bool = True) -> str:
    if not s:
        return "-"
    text = f"{100 * s['mean']:+.2f}" if signed else f"{100 * s['mean']:.2f}"
    if s.get("std") is not None:
        text += f" ± {100 * s['std']:.2f}"
    if signed and s.get("ci95"):
        low, high = s["ci95"]
        verdict = "above zero" if low > 0 else "below zero" if high < 0 else "includes zero"
        text += f" [{100 * low:+.2f}, {100 * high:+.2f}] ({verdict})"
    return text


def table(results: dict, setting: str) -> list[str]:
    soft = {r["seed"]: r["student_test_acc"] for r in results.get("soft", [])}
    first = next(iter(results.values()))
    rows = [f"| {setting} | teacher | {_pts(_spread([first[0]['teacher_test_acc']]), False)} | | | |",
            f"| {setting} | scratch | {_pts(_spread([r['baseline_test_acc'] for r in first]), False)} | | | |"]
    for method, runs in results.items():
        acc = _spread([r["student_test_acc"] for r in runs])
        gain = _spread([r["kd_gain"] for r in runs])
        vs_soft = _spread([r["student_test_acc"] - soft[r["seed"]] for r in runs if r["seed"] in soft]) if method != "soft" else None
        minutes = sum(r["seconds_here"] for r in runs) / 60
        rows.append(f"| {setting} | {method} | {_pts(acc, False)} | {_pts(gain)} | {_pts(vs_soft) if vs_soft else '(KD itself)'} | "
                    f"{minutes:.1f} min |")
    return rows


HEADER = ("| setting | method | student test % (mean ± std) | gain over scratch, points [95% interval across seeds] | "
          "difference from KD (soft), points, paired by seed [95% interval] | wall (all seeds) |\n|---|---|---|---|---|---|")


def write_markdown(path: Path, rows: list[str], command: str, seeds: list[int], test_images: int) -> None:
    stamp = f"{datetime.date.today():%Y-%m-%d}, {cpu_model()}, {os.cpu_count()} cores"
    import torch

    stamp += f", torch {torch.__version__}, seeds {','.join(map(str, seeds))}, {test_images:,} test images"
    old = old_block(path.read_text() if path.exists() else "", BEGIN, END)
    setting = rows[0].split("|")[1]  # rows of other settings stay; this setting's are replaced
    rows = [line for line in old if line.startswith("| ") and not line.startswith("| setting")
            and line.split("|")[1] != setting] + rows
    commands = [line for line in old if line.startswith("- ") and not line.startswith(f"- `{command}`")]
    commands.append(f"- `{command}` ({stamp})")
    put_block(path, BEGIN, END, f"{HEADER}\n" + "\n".join(rows) + "\n\nWritten by:\n" + "\n".join(commands))


def main(argv=None) -> int:
    args = parse_args(argv)
    from kdcore.distill import METHODS
    from kdcore.experiments import parse_seeds

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or METHODS.names()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(METHODS.names())}")
    methods = ["soft"] + [m for m in methods if m != "soft"]  # KD first: every other row is compared with it
    seeds = parse_seeds(args.seeds)
    results = run_all(args.config, seeds, methods, args.set)
    from kdcore.configure import load_config

    config = load_config(args.config, args.set)
    others = [item for item in args.set if not item.startswith(("distill.alpha=", "distill.temperature="))]
    setting = ", ".join([f"α {config.distill.alpha:g}, T {config.distill.temperature:g}"] + others)
    rows = table(results, setting)
    print(HEADER)
    print("\n".join(rows))
    if args.markdown:
        command = "python bench/methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
        test_images = next(iter(results.values()))[0].get("test_images") or 0
        write_markdown(Path(args.markdown), rows, re.sub(r"\s+", " ", command).strip(), seeds, test_images)
        print(f"written to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
