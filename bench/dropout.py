"""kdcore's dropout against torch's, alone and in the Hinton teacher's training step.

    .venv/bin/python bench/dropout.py
    .venv/bin/python bench/dropout.py --markdown docs/benchmarks.md

In one process, each figure the best of --repeats timed loops after a warm-up: one dropout
layer (p = 0.2) on a 128 x 1200 activation, in fp32 and bf16, in training mode; and a training
step (forward, backward, fused Adam, bf16 autocast as kdcore's fast path on this CPU) of the
MLP 1200-1200 with dropout 0.2 on batches of 128 MNIST-sized images, with torch's nn.Dropout
and with kdcore's.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.fast_path_parts import best_seconds, training_step  # noqa: E402
from bench.machine import cpu_flags, cpu_model  # noqa: E402
from bench.markdown import put_block  # noqa: E402
from kdcore.engine.device import cpu_runs_bf16  # noqa: E402
from kdcore.models import create_model  # noqa: E402
from kdcore.models.dropout import Dropout, use_generator  # noqa: E402

BEGIN, END = "<!-- dropout:begin -->", "<!-- dropout:end -->"


def best_ms(step, loops: int, repeats: int) -> float:
    return best_seconds(step, loops, repeats, warmup=5) * 1000


def teacher_step(torch_dropout: bool, bf16: bool):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[1200, 1200], dropout=0.2)
    if torch_dropout:
        for i, layer in enumerate(model):
            if isinstance(layer, Dropout):
                model[i] = nn.Dropout(layer.p)
    use_generator(model, torch.Generator().manual_seed(0))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    return training_step(model, optimizer, torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)), bf16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", type=Path, help="write the tables into this file between its markers")
    args = parser.parse_args()

    rows = ["| one dropout layer, 128 x 1200, training mode | torch (ms) | kdcore (ms) | kdcore faster |",
            "|---|---|---|---|"]
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(128, 1200, dtype=dtype)
        ours = Dropout(0.2).train()
        ours.generator = generator
        theirs = best_ms(lambda: F.dropout(x, 0.2, training=True), 200, args.repeats)
        mine = best_ms(lambda: ours(x), 200, args.repeats)
        rows.append(f"| {str(dtype).removeprefix('torch.')} | {theirs:.3f} | {mine:.3f} | {theirs / mine:.2f}x |")

    bf16 = cpu_runs_bf16()
    rows += ["", f"| MLP 1200-1200 training step, batch 128, {'bf16' if bf16 else 'fp32'} (ms) | torch's dropout | "
             "kdcore's dropout | kdcore faster |", "|---|---|---|---|"]
    theirs = best_ms(teacher_step(True, bf16), 30, args.repeats)
    mine = best_ms(teacher_step(False, bf16), 30, args.repeats)
    rows.append(f"| {torch.get_num_threads()} torch threads | {theirs:.2f} | {mine:.2f} | {theirs / mine:.2f}x |")

    footer = (f"Written by `python bench/dropout.py --markdown docs/benchmarks.md` ({datetime.date.today()}, "
              f"{cpu_model()}, {torch.get_num_threads()} torch threads, {cpu_flags()}, torch {torch.__version__}).")
    body = "\n".join(rows) + "\n\n" + footer
    print(body)
    if args.markdown:
        put_block(args.markdown, BEGIN, END, body)


if __name__ == "__main__":
    main()
