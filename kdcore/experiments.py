"""Experiments of several runs: seed groups and T x alpha sweeps, and what a group adds up to.

A group is a set of runs that share a `group` name. Expanding a config into a
group only writes configs; the job layer lets runs of one group reuse a
sibling's identical teacher or baseline instead of training it again.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Iterable, Optional, Sequence

from kdcore.config import SEED_MAX, ConfigError, RunConfig, check_seed
from kdcore.stats import across_seeds, describe_spread

MAX_SEEDS = 100
AGGREGATED = ("kd_gain", "student_test_acc", "baseline_test_acc", "teacher_test_acc")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2', '0-4' or '0-2,7' -> a sorted list of distinct seeds."""
    seeds: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if match:
            low, high = int(match[1]), int(match[2])
            if high < low:
                raise ConfigError(f"seeds: the range {part!r} runs backwards; write {high}-{low}")
            try:
                check_seed(high)  # the config's rule (low is smaller), so a group never holds a seed it refuses
            except ValueError as err:
                raise ConfigError(f"seeds: {err}") from None
            if high - low >= MAX_SEEDS:  # before the range is spelt out
                raise ConfigError(f"seeds: at most {MAX_SEEDS} seeds in one group")
            seeds.update(range(low, high + 1))
        elif re.fullmatch(r"\d+", part):
            try:
                seeds.add(check_seed(int(part)))
            except ValueError as err:
                raise ConfigError(f"seeds: {err}") from None
        else:
            raise ConfigError(f"seeds: {part!r} is not a seed or a range such as 0-4: a seed is a whole number "
                              f"from 0 to {SEED_MAX}")
        if len(seeds) > MAX_SEEDS:
            raise ConfigError(f"seeds: at most {MAX_SEEDS} seeds in one group")
    if not seeds:
        raise ConfigError("seeds: give at least one seed, e.g. 0,1,2 or 0-4")
    return sorted(seeds)


def format_seeds(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0-3,7'."""
    parts, seeds = [], sorted(seeds)
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(f"{seeds[i]}-{seeds[j]}" if j > i + 1 else ",".join(str(s) for s in seeds[i:j + 1]))
        i = j + 1
    return ",".join(parts)


def new_group_name(config: RunConfig, what: str) -> str:
    base = config.name or f"{config.dataset.name} {config.teacher.arch}→{config.student.arch}"
    return f"{base} · {what} · {datetime.now():%Y-%m-%d %H:%M:%S}"


def expand(config: RunConfig, *, seeds: Optional[Sequence[int]] = None,
           temperatures: Optional[Sequence[float]] = None, alphas: Optional[Sequence[float]] = None,
           group: Optional[str] = None, teacher_per_seed: bool = False) -> list[RunConfig]:
    """One config per (seed, T, alpha), all in one group.

    By default every run's teachers train (or fine-tune) with the first seed, so the group
    trains each teacher once; `teacher_per_seed` trains them per seed, putting teacher
    variance into the interval across seeds.
    """
    seeds = list(seeds) if seeds else [config.train.seed]
    temperatures = list(temperatures) if temperatures else [config.distill.temperature]
    alphas = list(alphas) if alphas else [config.distill.alpha]
    sweep = len(temperatures) > 1 or len(alphas) > 1
    if group is None:
        what = []
        if sweep:
            what.append(f"sweep {len(temperatures)}×{len(alphas)}")
        if len(seeds) > 1 or not sweep:
            what.append(f"seeds {format_seeds(seeds)}")
        group = new_group_name(config, ", ".join(what))
    base_name = config.name or config.display_name()
    configs = []
    for seed in seeds:
        for t in temperatures:
            for a in alphas:
                cfg = config.model_copy(deep=True)
                cfg.group = group
                cfg.train.seed = seed
                if not teacher_per_seed:
                    for teacher in cfg.all_teachers:  # `teacher` is `teachers[0]` itself: the two stay equal
                        if (teacher.source == "train" or teacher.finetune_epochs > 0) and teacher.seed is None:
                            teacher.seed = seeds[0]
                cfg.distill.temperature = t
                cfg.distill.alpha = a
                name = base_name + (f" T={t:g} α={a:g}" if sweep else "")
                cfg.name = name + (f" seed {seed}" if len(seeds) > 1 or not sweep else "")
                configs.append(cfg)
    return configs


def aggregate(runs: Iterable) -> dict:
    """Mean, std, n and the t-interval across a group's completed runs, per quantity.

    `runs` are store Run rows (or anything with `status` and the summary columns).
    """
    done = [r for r in runs if r.status == "completed"]
    out = {}
    for key in AGGREGATED:
        spread = across_seeds(getattr(r, key) for r in done)
        out[key] = spread.as_dict() if spread else None
    return out


def group_report(runs: Sequence) -> dict:
    """A group in one object: its runs' seeds, statuses, the aggregate and the gain in words."""
    runs = sorted(runs, key=lambda r: r.id)
    agg = aggregate(runs)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    teachers_trained = sum(1 for r in runs if r.status == "completed" and "teacher_from_run" not in r.summary
                           and r.config.get("teacher", {}).get("source") == "train")
    return {"group": runs[0].group if runs else None, "run_ids": [r.id for r in runs], "statuses": statuses,
            "seeds": sorted({r.config.get("train", {}).get("seed") for r in runs} - {None}),  # None: a damaged config
            "teachers_trained": teachers_trained, "aggregate": agg,
            "kd_gain_in_words": describe_spread(agg["kd_gain"])}
