"""What several test files share: waiting on runs by their progress, and reading AppTest pages."""
from __future__ import annotations

import importlib
import os
import re
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

STALL_S = 600  # a busy machine is slow, not broken: waits give up only after this long without progress


def progress(store) -> tuple:
    """Changes whenever any run moves: a status, its stored progress, or a metric row."""
    runs = store.list_runs()
    return tuple((r.id, r.status, r.live_json) for r in runs), len(store.metrics_frame([r.id for r in runs]))


def wait_while_progressing(store, done: Callable[[], bool], what: str, *, stall_s: float = STALL_S,
                           pause: Callable[[], None] = lambda: time.sleep(0.2)) -> None:
    """Waits until done(); fails only after `stall_s` seconds in which no run in the store moved."""
    last, since = None, time.monotonic()
    while not done():
        now = progress(store)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise AssertionError(f"{what}: no run made progress for {stall_s:.0f} s")
        pause()


def no_exceptions(at) -> None:
    """An AppTest page rendered without an exception."""
    assert not at.exception, [e.value for e in at.exception]


def errors(at) -> str:
    """The error boxes an AppTest page shows, one per line, as a reader sees them: Markdown's backslash escapes
    (which keep `__init__` from turning bold) removed."""
    return re.sub(r"\\([\\`*_{}\[\]<>()#+\-.!|~$])", r"\1", "\n".join(e.value for e in at.error))


def open_page(page: str):
    """The dashboard in AppTest, as a browser opens it (through app.py), on `page`."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    no_exceptions(at)
    return at


def new_experiment_with(**values):
    """The New experiment page with these session-state values (widget keys) set."""
    at = open_page("pages/new_experiment.py")
    for key, value in values.items():
        at.session_state[key] = value
    at.run()
    no_exceptions(at)
    return at


def method_losses(method: str, student_logits, teacher_logits, labels=None, *, temperature: float = 4.0,
                  alpha: float = 0.9, options: dict | None = None, epoch: int = 1, epochs: int = 1,
                  teacher_weights=None, teacher_logits_each=None) -> dict:
    """A logit method's weighted terms on fixed tensors, built through the same config path as a run."""
    import torch
    from torch import nn

    from kdcore.config import DistillConfig
    from kdcore.distill import METHODS, build_distiller
    from kdcore.distill.base import Step

    # model_construct: the formulas are also checked outside the ranges a run may use (T = 200)
    settings = DistillConfig.model_construct(method=method, temperature=temperature, alpha=alpha,
                                             options=METHODS.get(method).Options.model_validate(options or {}).model_dump(),
                                             teacher_weights=teacher_weights)
    each = teacher_logits_each or [teacher_logits]
    distiller = build_distiller(settings, nn.Identity(), [nn.Identity()] * len(each), torch.zeros(1))
    if teacher_logits is None:
        teacher_logits = distiller.combine(each)
    step = Step(x=torch.zeros(len(student_logits)), y=labels, idx=torch.arange(len(student_logits)), epoch=epoch,
                epochs=epochs, student_logits=student_logits, teacher_logits=teacher_logits, teacher_logits_each=each)
    return distiller.losses(step)


def method_terms(config) -> set[str]:
    """The loss terms a run of `config` logs for its student ("ce" and the method's), found by one forward
    pass of its real teacher(s), student and distiller on a batch of the run's data."""
    import torch

    from kdcore.data import load_dataset
    from kdcore.distill import build_distiller
    from kdcore.models import create_model

    data = load_dataset(config.dataset)
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    teachers = [create_model(t.arch, **shape, **t.options).eval() for t in config.all_teachers]
    student = create_model(config.student.arch, **shape, **config.student.options)
    idx = torch.arange(min(8, len(data.train)))
    x, y = data.train.images(idx), data.train.y[idx]
    distiller = build_distiller(config.distill, student, teachers, x)
    _, terms = distiller.forward_train(x, y, idx, epoch=1, epochs=max(1, config.train.epochs))
    return set(terms)


def changed_option(option: dict):
    """Another valid value for a declared method option (kdcore.distill.describe's entry), or None for free
    text (a layer name), whose other valid values depend on the models."""
    default, kind = option["default"], option.get("type")
    if "enum" in option:
        others = [e for e in option["enum"] if e != default]
        return others[0] if others else None
    if kind == "boolean":
        return not default
    if kind in ("number", "integer"):
        high = option.get("maximum", option.get("exclusiveMaximum"))
        low = option.get("minimum", option.get("exclusiveMinimum"))
        if kind == "integer":
            fits = high is None or default + 1 < high or (default + 1 == high and "maximum" in option)
            return default + 1 if fits else default - 1
        target = default * 2 if default else 1.0
        if high is not None and target >= high:
            target = (default + high) / 2 if default < high else ((low if low is not None else 0.0) + default) / 2
        return target
    return None


def require_extra(module: str) -> None:
    """Skips where `module` (from the test extra) is missing, unless KDCORE_REQUIRE_EXTRAS=1 (CI): then fails."""
    import pytest

    try:
        importlib.import_module(module)
    except ImportError:
        why = f'{module} is not installed: pip install -e ".[test]" installs it'
        if os.environ.get("KDCORE_REQUIRE_EXTRAS") == "1":
            pytest.fail(why)
        pytest.skip(why)


def cli(capsys, *args, db):
    """A `kdcore` command run in this process (real store and files), for the cases that need no fresh interpreter."""
    import subprocess

    from kdcore.cli import main

    capsys.readouterr()
    code = main(["--db", db, *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def select_first_run(at):
    """The Runs page (an AppTest) with the first row of its runs table selected, as a click would, rendered again."""
    at.session_state[at.dataframe[0].key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    no_exceptions(at)
    return at
