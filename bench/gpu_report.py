"""Writes what bench/gpu_check.sh measured into docs/benchmarks.md, between the gpu_check markers.

    python bench/gpu_report.py --out OUT --logs LOGS --env env.json --docs docs/benchmarks.md --total 412.3
    python bench/gpu_report.py --apply OUT/gpu_check.md --docs docs/benchmarks.md   # a block that came back

The block is also written to OUT/gpu_check.md, so that the figures of a check run on a lent
machine (whose checkout is a copy) can be put into this checkout's docs with --apply.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.markdown import put_block  # noqa: E402

BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
PEERS = {"tutorial": "tutorial", "strong": "strong, teacher every batch", "strong-cached": "strong, logits cached"}


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:,.0f}" if len(values) == 1 else f"{med:,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def steps_table(path: Path) -> list[str]:
    rows = ["| step | exit | seconds | limit |", "|---|---|---|---|"]
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, secs, limit = (line.split("\t") + ["", "", "", ""])[:4]
            rc = {"0": "ok", "124": "timed out", "137": "killed (timeout)"}.get(rc, rc)
            rows.append(f"| {name} | {rc} | {secs} | {limit} |")
    return rows


def tests_line(xml: Path) -> str:
    if not xml.exists():
        return "GPU tests: no result (the step did not finish)."
    suites = ET.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    names = [f"{c.get('classname', '').split('.')[-1]}::{c.get('name')}" for c in suite.iter("testcase")
             if c.find("failure") is not None or c.find("error") is not None]
    line = f"GPU tests: {total - failed - skipped} passed, {failed} failed, {skipped} skipped of {total}"
    return line + (f"; failed: {', '.join(names)}." if names else ".")


def throughput_table(path: Path) -> list[str]:
    if not path.exists():
        return ["Throughput: no result."]
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = ["| pair | images | batch | kdcore images/s | " + " | ".join(f"{v} images/s" for v in PEERS.values())
            + " | " + " | ".join(f"kdcore / {v}" for v in PEERS.values()) + " |", "|" + "---|" * (4 + 2 * len(PEERS))]
    notes = []
    for r in records:
        rates, ratios = r["rates"], r["ratios"]
        pair = f"{r['teacher']} → {r['student']}, {r['data']}"
        if r.get("overrides"):  # e.g. train.cuda_graphs=true beside the eager row
            pair += ", " + ", ".join(r["overrides"])
        cells = [pair, f"{r['images']:,}", str(r["batch_size"]),
                 fmt(rates["kdcore"])]
        cells += [fmt(rates[p]) if p in rates else "-" for p in PEERS]
        cells += [(f"**{ratios[p]['ratio']:.2f}x**" if ratios[p]["met"] else f"{ratios[p]['ratio']:.2f}x (target "
                   f"{ratios[p]['target']:g}x: not met)") if p in ratios else "-" for p in PEERS]
        rows.append("| " + " | ".join(cells) + " |")
        if r.get("note") and r["note"] not in notes:
            notes.append(r["note"])
    if records:
        r = records[0]
        rows += ["", f"Medians of {r['repeats']} alternating runs per side in one process, min–max in brackets; "
                     f"{r['epochs']} epoch(s) per run; kdcore's fast path: {r['fast_path']}. Bold: at or above the "
                     "target (1.2x against the strong loops; against the tutorial loop 3x on CUDA, 2x on CPU)."]
    return rows + [f"Note: {n}." for n in notes]


def hinton_line(steps: Path) -> str:
    for line in steps.read_text().splitlines() if steps.exists() else []:
        name, rc, secs, _ = (line.split("\t") + ["", "", "", ""])[:4]
        if name == "hinton":
            state = "" if rc == "0" else f" (exit {rc}: see the log)"
            return (f"examples/mnist_hinton.yaml through `kdcore train` (teacher, student and baseline): {secs} s"
                    f"{state}; the target is under 20 s on an H200-class GPU.")
    return "examples/mnist_hinton.yaml: not run."


def where_lines(log: Path) -> list[str]:
    if not log.exists():
        return []
    table = [line for line in log.read_text().splitlines() if line.startswith("|")]
    return ["", "bench/where_time_goes.py --device cuda:", ""] + table if table else []


def block(args) -> str:
    env = json.loads(Path(args.env).read_text()) if args.env and Path(args.env).exists() else {}
    out, logs = Path(args.out), Path(args.logs)
    gpu = env.get("gpu") or "no GPU (CPU dry run)"
    memory = f", {env['gpu_memory_gib']} GiB" if env.get("gpu_memory_gib") else ""
    from datetime import date

    head = (f"Measured by `bash bench/gpu_check.sh` on {gpu}{memory}, torch {env.get('torch', '?')} "
            f"(CUDA {env.get('cuda') or '-'}), Python {env.get('python', '?')}, {env.get('cpu_cores', '?')} CPU cores, "
            f"{date.today().isoformat()}; the whole check took {args.total} s.")
    if args.dry_run:
        head = "DRY RUN on the CPU at tiny sizes (bench/gpu_check.sh --dry-run): not GPU figures. " + head
    lines = [head, "", tests_line(logs / "tests.xml"), "", *throughput_table(out / "throughput.jsonl"), "",
             hinton_line(out / "steps.tsv"), *where_lines(logs / "where_time_goes.log"), "", "Steps:", "",
             *steps_table(out / "steps.tsv")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="the check's output folder (steps.tsv, throughput.jsonl)")
    p.add_argument("--logs", help="the check's per-step logs")
    p.add_argument("--env", help="env.json: GPU, torch and CUDA versions")
    p.add_argument("--total", default="?", help="seconds the whole check took")
    p.add_argument("--docs", required=True, help="the Markdown file to write the block into")
    p.add_argument("--dry-run", action="store_true", help="say that the figures are a CPU dry run's")
    p.add_argument("--apply", metavar="FILE", help="put this gpu_check.md into --docs and stop")
    args = p.parse_args(argv)
    if args.apply:
        body = Path(args.apply).read_text().strip()
        put_block(Path(args.docs), BEGIN, END, re.sub(rf"^{re.escape(BEGIN)}\n|\n{re.escape(END)}$", "", body))
        print(f"written into {args.docs}")
        return 0
    if not (args.out and args.logs):
        p.error("--out and --logs are needed unless --apply")
    text = block(args)
    (Path(args.out) / "gpu_check.md").write_text(text + "\n")
    put_block(Path(args.docs), BEGIN, END, text)
    print(text)
    print(f"written into {args.docs} and {Path(args.out) / 'gpu_check.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
