"""A run's summary: the facts it starts with, each phase's size and speed, and the statistics it ends with."""
from __future__ import annotations

import torch
from torch import nn

from kdcore.config import RunConfig
from kdcore.data import DataSplits
from kdcore.engine.cpu_watch import threads_wait
from kdcore.engine.device import FastPath, describe_device
from kdcore.engine.finetune import fine_tuned
from kdcore.engine.sources import baseline_key, teacher_key
from kdcore.latency import cpu_model, phase_latency
from kdcore.models import profile_model
from kdcore.record.phases import BASELINE, STUDENT, teacher_phase
from kdcore.stats import paired_gain


def opening_summary(config: RunConfig, data: DataSplits, device: torch.device, path: FastPath) -> dict:
    """What a run records before its first phase: where and how it runs, its splits, its phases' keys."""
    # bf16 and fp32 runs may share one runs table: say how this one was trained and evaluated
    summary: dict = {"device": describe_device(device), "eval_precision": path.precision,
                     "fast_path": path.describe(),
                     "num_classes": data.num_classes,
                     **({"cpu_threads_wait": threads_wait()} if device.type == "cpu" else {}),
                     "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test)}
    summary.update({f"{teacher_phase(i)}_key": teacher_key(config, i) for i in range(len(config.all_teachers))})
    summary[f"{BASELINE}_key"] = baseline_key(config)
    return summary


def phase_profile(phase: str, model: nn.Module, data: DataSplits) -> dict:
    """The phase's model size, FLOPs and PyTorch latency at batch 1 and 64."""
    profile = profile_model(model, data.in_channels, data.image_size)
    # PyTorch latency on the training device, a fraction of a second for the zoo's small models;
    # zero images, no random draws, so the run's RNG state and results are untouched
    latency = phase_latency(model, (data.in_channels, data.image_size, data.image_size), (1, 64))
    return {f"{phase}_params": profile.params, f"{phase}_size_mb": round(profile.size_mb, 4),
            f"{phase}_flops": profile.flops, f"{phase}_macs": profile.macs,
            f"{phase}_latency_ms_b1": round(latency[1], 4), f"{phase}_latency_ms_b64": round(latency[64], 4),
            "latency_threads": torch.get_num_threads(), "latency_cpu": cpu_model()}


def teachers_record(config: RunConfig, summary: dict) -> list[dict]:
    """Each teacher's line of the summary's `teachers` list, in order."""
    return [{"phase": phase, "arch": t_cfg.arch, "source": t_cfg.source, "test_acc": summary[f"{phase}_test_acc"],
             "params": summary[f"{phase}_params"], "pretrained_test_acc": summary.get(f"{phase}_pretrained_test_acc"),
             "finetune_epochs": t_cfg.finetune_epochs if fine_tuned(t_cfg) else 0}
            for phase, t_cfg in ((teacher_phase(i), t) for i, t in enumerate(config.all_teachers))]


def closing_statistics(summary: dict, test_logits: dict[str, torch.Tensor], t_phases: list[str]) -> dict:
    """The KD gain with its paired interval (when a baseline finished) and the compression ratios."""
    statistics: dict = {}
    if f"{BASELINE}_test_acc" in summary:
        labels = test_logits["labels"]
        paired = paired_gain((test_logits[STUDENT].argmax(1) == labels).numpy(),
                             (test_logits[BASELINE].argmax(1) == labels).numpy())
        statistics.update(paired.as_summary())
    # the ensemble is what is compressed into the student
    statistics["compression"] = sum(summary[f"{p}_params"] for p in t_phases) / max(1, summary[f"{STUDENT}_params"])
    if all(f"{p}_flops" in summary for p in t_phases):  # an ONNX teacher's FLOPs are not counted
        statistics["flops_ratio"] = sum(summary[f"{p}_flops"] for p in t_phases) / max(1, summary[f"{STUDENT}_flops"])
    return statistics
