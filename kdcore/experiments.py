"""Experiments of several runs: seed groups and sweeps, and what a group adds up to.

A group is a set of runs that share a `group` name. Expanding a config into a
group only writes configs; the job layer lets runs of one group reuse a
sibling's identical teacher or baseline instead of training it again.

A group is summarised per cell: one cell is one setting of the keys its runs differ
in (other than seeds and labels), read from the stored configs, so a sweep stored by
any version reads the same. Only a cell's repeats over seeds have a spread across
seeds; different settings are never averaged together.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Iterable, Mapping, Optional, Sequence

from pydantic import ValidationError

from kdcore.config import SEED_MAX, ConfigError, RunConfig, _format_errors, check_seed
from kdcore.record.summary import gain_sentence
from kdcore.stats import across_seeds, describe_spread

MAX_SEEDS = 100
MAX_GROUP_RUNS = 1000  # seeds x settings in one group
AGGREGATED = ("kd_gain", "student_test_acc", "baseline_test_acc", "teacher_test_acc")
SWEEP_LABELS = {"distill.temperature": "T", "distill.alpha": "α"}
# keys that differ between repeats of one setting: seeds (a teacher's too, with teacher_per_seed) and labels
REPEAT_KEYS = re.compile(r"train\.seed|teacher\.seed|teachers\.\d+\.seed|name|tags|group|notes")


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


def parse_sweep(item: str) -> tuple[str, list]:
    """'distill.temperature=2,4,8' -> ('distill.temperature', [2, 4, 8]); values are read as YAML, as --set reads
    them. Refuses a missing key or value, a seed (use --seeds) and a value given twice."""
    from kdcore.configure import _parse_value as parse_value  # --set's reading of a value

    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--sweep {item!r}: write KEY=V1,V2, e.g. distill.temperature=2,4,8")
    if REPEAT_KEYS.fullmatch(key):
        raise ConfigError(f"--sweep {key}: {'use --seeds for seeds' if 'seed' in key else 'not a setting to sweep'}")
    values = [parse_value(v.strip(), key) for v in text.split(",")]
    for i, value in enumerate(values):
        if value == "":
            raise ConfigError(f"--sweep {key}: an empty value in {text!r}")
        if any(_same(value, earlier) for earlier in values[:i]):
            raise ConfigError(f"--sweep {key}: the value {_shown(value)} is given twice")
    return key, values


def _same(a, b) -> bool:
    """Equal as settings: 4 and 4.0 are one value, True and 1 are not."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _with(config: RunConfig, key: str, value) -> RunConfig:
    """The config with `key` (dotted) set to `value`, validated; unknown keys and bad values refused by name."""
    data = config.model_dump(mode="json", exclude={"teacher"} if config.teachers else None)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise ConfigError(f"--sweep {key}: unknown key" if child is None else f"--sweep {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        message = _format_errors(err).removeprefix(f"{key}: ")
        if message == "unknown key":
            raise ConfigError(f"--sweep {key}: unknown key; `kdcore train --help` and examples/ show the keys") from None
        raise ConfigError(f"--sweep {key}={_shown(value)}: {message}") from None


def expand(config: RunConfig, *, seeds: Optional[Sequence[int]] = None,
           temperatures: Optional[Sequence[float]] = None, alphas: Optional[Sequence[float]] = None,
           sweep: Optional[Mapping[str, Sequence]] = None, group: Optional[str] = None,
           teacher_per_seed: bool = False) -> list[RunConfig]:
    """One config per seed and setting of the swept keys, all in one group.

    `sweep` maps dotted config keys to their values (`temperatures` and `alphas` are the form's T x alpha sweep).
    By default every run's teachers train (or fine-tune) with the first seed, so the group trains each teacher
    once; `teacher_per_seed` trains them per seed, putting teacher variance into the interval across seeds.
    """
    seeds = list(seeds) if seeds else [config.train.seed]
    grid = {k: list(v) for k, v in (sweep or {}).items()}
    if temperatures:
        grid["distill.temperature"] = list(temperatures)
    if alphas:
        grid["distill.alpha"] = list(alphas)
    is_sweep = any(len(v) > 1 for v in grid.values())
    settings: list[dict] = [{}]
    for key, values in grid.items():
        settings = [{**s, key: v} for s in settings for v in values]
    if len(settings) * len(seeds) > MAX_GROUP_RUNS:
        raise ConfigError(f"--sweep: {len(settings)} settings x {len(seeds)} seeds is {len(settings) * len(seeds)} "
                          f"runs; at most {MAX_GROUP_RUNS} in one group")
    cells = []
    for setting in settings:
        cfg = config
        for key, value in setting.items():
            cfg = _with(cfg, key, value)
        cells.append((setting, cfg))
    if group is None:
        what = [f"sweep {'×'.join(str(len(v)) for v in grid.values())}"] if is_sweep else []
        if len(seeds) > 1 or not is_sweep:
            what.append(f"seeds {format_seeds(seeds)}")
        group = new_group_name(config, ", ".join(what))
    base_name = config.name or config.display_name()
    configs = []
    for seed in seeds:
        for setting, cell in cells:
            cfg = cell.model_copy(deep=True)
            cfg.group = group
            cfg.train.seed = seed
            if not teacher_per_seed:
                for teacher in cfg.all_teachers:  # `teacher` is `teachers[0]` itself: the two stay equal
                    if (teacher.source == "train" or teacher.finetune_epochs > 0) and teacher.seed is None:
                        teacher.seed = seeds[0]
            name = base_name + (f" {setting_label(setting)}" if is_sweep else "")
            cfg.name = name + (f" seed {seed}" if len(seeds) > 1 or not is_sweep else "")
            configs.append(cfg)
    return configs


def setting_label(setting: Mapping[str, Any]) -> str:
    """{'distill.temperature': 2.0, 'distill.alpha': 0.5} -> 'T=2 α=0.5'; other keys by their dotted name."""
    return " ".join(f"{SWEEP_LABELS.get(k, k)}={_shown(v)}" for k, v in setting.items())


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _flat(data: Mapping, prefix: str = "") -> dict[str, str]:
    """A config as {dotted key: its value as JSON}; lists of sections are indexed (teachers.0.arch)."""
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, path + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(_flat(item, f"{path}.{i}."))
        else:
            out[path] = json.dumps(value, sort_keys=True)
    return out


def swept_keys(configs: Sequence[Mapping]) -> list[str]:
    """The keys whose values differ between a group's configs, seeds and labels aside: what its sweep sweeps.

    Empty for a seed group (repeats of one setting). Keys come in the configs' own order (T before α).
    """
    flats = [_flat(c) for c in configs if c]  # a damaged config ({}) says nothing about the setting
    keys = dict.fromkeys(k for f in flats for k in f)
    return [k for k in keys if not REPEAT_KEYS.fullmatch(k) and len({f.get(k) for f in flats}) > 1]


def aggregate(runs: Iterable) -> dict:
    """Mean, std, n and the t-interval across completed runs, per quantity: only for repeats of one setting
    over seeds (a cell of group_report), never across a sweep's settings.

    `runs` are store Run rows (or anything with `status` and the summary columns).
    """
    done = [r for r in runs if r.status == "completed"]
    out = {}
    for key in AGGREGATED:
        spread = across_seeds(getattr(r, key) for r in done)
        out[key] = spread.as_dict() if spread else None
    return out


def _cell_words(runs: Sequence, agg: dict) -> str:
    """One cell's KD gain in words: its interval across seeds, or with one seed that run's paired verdict."""
    done = [r for r in runs if r.status == "completed" and r.kd_gain is not None]
    if len(done) == 1:
        return f"one seed: {gain_sentence(done[0].summary)}; add seeds for an interval across seeds"
    return describe_spread(agg["kd_gain"])


def _sort_key(setting: Mapping) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, json.dumps(v))
                 for v in setting.values())


def group_cells(runs: Sequence) -> tuple[list[str], list[dict]]:
    """The swept keys and one cell per setting of them: its runs, seeds, aggregate over seeds and words.

    A run whose config cannot be read joins the only cell of a seed group; in a sweep its setting is unknown,
    so it is left out of every cell (it still counts in the group's statuses).
    """
    configs = {r.id: r.config for r in runs}
    keys = swept_keys(list(configs.values()))
    members: dict[str, tuple[dict, list]] = {}
    for r in runs:
        flat = _flat(configs[r.id])
        if keys and not configs[r.id]:
            continue
        setting = {k: json.loads(flat[k]) if k in flat else None for k in keys}
        members.setdefault(json.dumps(setting, sort_keys=True), (setting, []))[1].append(r)
    cells = []
    for setting, cell_runs in sorted(members.values(), key=lambda m: _sort_key(m[0])):
        agg = aggregate(cell_runs)
        cells.append({"setting": setting, "label": setting_label(setting), "run_ids": [r.id for r in cell_runs],
                      "seeds": sorted({(configs[r.id].get("train") or {}).get("seed") for r in cell_runs} - {None}),
                      "completed": sum(r.status == "completed" for r in cell_runs), "aggregate": agg,
                      "kd_gain_in_words": _cell_words(cell_runs, agg)})
    return keys, cells


def group_report(runs: Sequence) -> dict:
    """A group in one object: its runs' seeds and statuses, and its cells (one per setting of the swept keys).

    `aggregate` and `kd_gain_in_words` are the one cell's for a seed group; a sweep's `aggregate` holds no
    numbers (None per quantity), since averaging different settings as if they were repeats would be wrong.
    """
    runs = sorted(runs, key=lambda r: r.id)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    teachers_trained = sum(1 for r in runs if r.status == "completed" and "teacher_from_run" not in r.summary
                           and r.config.get("teacher", {}).get("source") == "train")
    keys, cells = group_cells(runs)
    if len(cells) <= 1:  # a seed group (or a group with no readable runs)
        agg = cells[0]["aggregate"] if cells else aggregate([])
        words = cells[0]["kd_gain_in_words"] if cells else describe_spread(None)
    else:
        agg = {key: None for key in AGGREGATED}
        swept = ", ".join(SWEEP_LABELS.get(k, k) for k in keys)
        words = (f"a sweep of {len(cells)} settings of {swept}: each setting has its own gain below; they are not "
                 "averaged, since their spread is the setting's effect, not noise")
    return {"group": runs[0].group if runs else None, "run_ids": [r.id for r in runs], "statuses": statuses,
            "seeds": sorted({r.config.get("train", {}).get("seed") for r in runs} - {None}),  # None: a damaged config
            "teachers_trained": teachers_trained, "swept": keys, "cells": cells, "aggregate": agg,
            "kd_gain_in_words": words}
