"""Fills a run store with plausible finished runs, to check the dashboard stays fast.

    python bench/seed_runs.py sqlite:////tmp/kd-bench/kdcore.db --runs 1000 --epochs 50
    python bench/seed_runs.py sqlite:////tmp/kd-bench/kdcore.db --runs 0 --time-page

Every run goes through kdcore.store.Store (create_run, mark_running, add_metrics,
finish_run) with epoch-level metrics for its teacher, student and baseline;
a few runs form sweep groups over T x alpha. No weights are written.
--time-page then renders the dashboard's Runs page against the store and prints
how long it took.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Sequence

from kdcore.configure import build_config
from kdcore.models import model_profile
from kdcore.store import Store

# dataset -> (teacher archs, student archs, shape (classes, channels, side), reachable accuracy)
FAMILIES = {
    "digits": (["small_cnn", "mlp"], ["tiny_cnn", "mlp_tiny"], (10, 1, 8), 0.97),
    "mnist": (["mlp_1200x2", "small_cnn"], ["mlp_800x2", "tiny_cnn", "mlp_tiny"], (10, 1, 28), 0.99),
    "fashion_mnist": (["small_cnn", "resnet20"], ["tiny_cnn", "mlp_tiny"], (10, 1, 28), 0.91),
    "cifar10": (["resnet56", "wrn_40_2", "vgg13"], ["resnet20", "resnet8", "wrn_16_2", "vgg8"], (10, 3, 32), 0.93),
    "cifar100": (["resnet32x4", "wrn_40_2"], ["resnet8x4", "wrn_16_2"], (100, 3, 32), 0.75),
}
TEMPERATURES = [1.0, 2.0, 4.0, 8.0, 16.0]
ALPHAS = [0.1, 0.3, 0.5, 0.7, 0.9]
SWEEP_GROUPS = 4  # each a 3 x 3 grid over T x alpha


def _curve(rng: random.Random, final: float, epochs: int, speed: float) -> list[float]:
    # saturating rise with a little noise, reaching about `final` at the last epoch
    return [min(0.999, max(0.0, final * (1 - math.exp(-speed * (e + 1) / epochs)) / (1 - math.exp(-speed))
                           + rng.gauss(0, 0.004))) for e in range(epochs)]


def _phase_rows(rng: random.Random, phase: str, final_acc: float, epochs: int, steps_per_epoch: int,
                lr: float, distill: bool) -> list[dict]:
    val = _curve(rng, final_acc, epochs, speed=rng.uniform(3, 6))
    rows = []
    for e in range(epochs):
        train_acc = min(0.999, val[e] + rng.uniform(0.0, 0.03))
        ce = -math.log(max(1e-3, train_acc)) + rng.uniform(0, 0.05)
        values = {"train_ce": ce, "train_acc": train_acc, "val_acc": val[e],
                  "lr": lr * 0.5 * (1 + math.cos(math.pi * (e + 1) / epochs))}
        if distill:
            kd = ce * rng.uniform(0.3, 0.8)
            values.update(train_kd=kd, train_loss=0.1 * ce + 0.9 * kd, agreement=min(0.999, val[e] + 0.02))
        else:
            values["train_loss"] = ce
        step = (e + 1) * steps_per_epoch
        rows += [dict(phase=phase, kind="epoch", step=step, epoch=e + 1, name=k, value=float(v))
                 for k, v in values.items()]
    return rows


def _seed_one(store: Store, rng: random.Random, epochs: int, datasets: Sequence[str], *, group: str | None = None,
              dataset: str | None = None, teacher: str | None = None, student: str | None = None,
              temperature: float | None = None, alpha: float | None = None) -> int:
    dataset = dataset or rng.choice(list(datasets))
    teachers, students, (classes, channels, side), ceiling = FAMILIES[dataset]
    teacher, student = teacher or rng.choice(teachers), student or rng.choice(students)
    method = "soft" if group or rng.random() < 0.8 else "hard"
    temperature = temperature if temperature is not None else rng.choice(TEMPERATURES)
    alpha = alpha if alpha is not None else rng.choice(ALPHAS)
    lr = rng.choice([1e-3, 3e-3, 0.05, 0.1])
    config = build_config({
        "tags": rng.sample(["baseline-study", "paper", "quick", "long", "ablation"], k=rng.randint(0, 2)),
        "group": group,
        "dataset": {"name": dataset},
        "teacher": {"arch": teacher, "epochs": epochs},
        "student": {"arch": student},
        "distill": {"method": method, "temperature": temperature, "alpha": alpha},
        "train": {"epochs": epochs, "lr": lr, "optimizer": "sgd" if lr > 0.01 else "adam",
                  "batch_size": rng.choice([64, 128, 256]), "seed": rng.randint(0, 9)},
    })
    run_id = store.create_run(config)
    store.mark_running(run_id, "CPU (seeded)")

    outcome = rng.random()
    t_acc = ceiling - rng.uniform(0, 0.04)
    b_acc = t_acc - rng.uniform(0.01, 0.08)
    # KD helps most near T = 4 and alpha = 0.9, a little less elsewhere
    s_acc = min(t_acc, b_acc + 0.02 - 0.004 * abs(math.log2(temperature) - 2) - 0.02 * (0.9 - alpha)
                + rng.gauss(0, 0.004))
    steps = rng.choice([12, 50, 200, 390])
    rows = _phase_rows(rng, "teacher", t_acc, epochs, steps, lr, False)
    if outcome < 0.05:  # failed in the student phase
        store.add_metrics(run_id, rows)
        store.finish_run(run_id, "failed", error=(
            f"student: the loss became nan at epoch 3, step {3 * steps}; lower train.lr or the temperature\n\n"
            "Traceback (most recent call last):\n  File \"kdcore/engine/trainer.py\", line 190, in fit\n"
            "kdcore.engine.trainer.TrainingDiverged: the loss became nan"))
        return run_id
    rows += _phase_rows(rng, "student", s_acc, epochs, steps, lr, True)
    rows += _phase_rows(rng, "baseline", b_acc, epochs, steps, lr, False)
    store.add_metrics(run_id, rows)

    tp = model_profile(teacher, classes, channels, side)
    sp = model_profile(student, classes, channels, side)
    summary = {
        "teacher_test_acc": t_acc, "student_test_acc": s_acc, "baseline_test_acc": b_acc, "kd_gain": s_acc - b_acc,
        "student_best_val_acc": s_acc + rng.uniform(-0.005, 0.01), "teacher_params": tp.params,
        "student_params": sp.params, "teacher_flops": tp.flops, "student_flops": sp.flops,
        "teacher_size_mb": tp.size_mb, "student_size_mb": sp.size_mb, "compression": tp.params / sp.params,
        "flops_ratio": tp.flops / max(1, sp.flops), "num_classes": classes, "cancelled": outcome < 0.08,
        "seconds": epochs * steps * 0.02 * 3,
    }
    store.finish_run(run_id, "cancelled" if outcome < 0.08 else "completed", summary)
    return run_id


def seed(url: str, runs: int, epochs: int = 50, seed: int = 0, datasets: Sequence[str] = tuple(FAMILIES)) -> list[int]:
    """Adds `runs` finished runs (sweep groups included) to the store at `url`; returns their ids.

    Args:
        datasets: the families to draw from; the small ones (digits, mnist) seed fastest, since
            each new architecture is profiled once for its parameter and FLOP counts.
    """
    store = Store(url)
    rng = random.Random(seed)
    ids: list[int] = []
    grid = [(t, a) for t in (2.0, 4.0, 8.0) for a in (0.5, 0.7, 0.9)]
    for g in range(min(SWEEP_GROUPS, runs // (2 * len(grid)))):
        dataset = datasets[g % len(datasets)]
        teachers, students, _, _ = FAMILIES[dataset]
        for t, a in grid:
            ids.append(_seed_one(store, rng, epochs, datasets, group=f"sweep-{g + 1}-{dataset}", dataset=dataset,
                                 teacher=teachers[0], student=students[0], temperature=t, alpha=a))
    while len(ids) < runs:
        ids.append(_seed_one(store, rng, epochs, datasets))
    return ids


def time_runs_page(url: str) -> float:
    """Seconds for one render of the Runs page (AppTest, no browser) against the store at `url`."""
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["KDCORE_DB_URL"] = url
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    at = AppTest.from_file(str(root / "app.py"), default_timeout=60).run()  # imports and caches warm up here
    at.switch_page("pages/runs.py")
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the Runs page failed: {at.exception[0].value}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="SQLAlchemy URL of the store, e.g. sqlite:////tmp/kd-bench/kdcore.db")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--time-page", action="store_true", help="then time one render of the Runs page")
    args = parser.parse_args()
    start = time.perf_counter()
    ids = seed(args.url, args.runs, args.epochs, args.seed, args.datasets)
    print(f"seeded {len(ids)} runs x {args.epochs} epochs into {args.url} in {time.perf_counter() - start:.1f} s")
    if args.time_page:
        print(f"Runs page rendered in {time_runs_page(args.url):.2f} s with {Store(args.url).count_runs()} runs stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
