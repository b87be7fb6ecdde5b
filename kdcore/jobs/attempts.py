"""Every attempt at a run, kept in its summary: where it trained, on how many threads, for how long.

A resumed run trains in several attempts, each possibly on another device or thread count; the run's
`seconds` is their sum. An attempt whose worker was killed records nothing itself: the next attempt
finds it missing (the claim counter is ahead of the list) and records it with its device and no time.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Optional

import torch

KILLED = "its worker died before recording it (killed, or its machine stopped); its time is not known"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Attempt:
    """This process's attempt at a run, begun when its worker starts executing it."""

    def __init__(self, run):
        self.number = run.attempt  # claim() counted this attempt already
        self.earlier = _earlier(run)
        self.started_at = _now()
        self._start = time.perf_counter()
        self.device: Optional[str] = None
        self.threads = torch.get_num_threads()

    def record(self, status: str) -> dict:
        return {"attempt": self.number, "status": status, "device": self.device, "threads": self.threads,
                "seconds": round(time.perf_counter() - self._start, 2), "started_at": self.started_at,
                "ended_at": _now()}

    def summary(self, run, summary: Optional[dict], status: str) -> Optional[dict]:
        """The summary to store: this attempt's (or, when it produced none, the stored one) with every attempt
        listed and `seconds` their sum. None where the stored summary is damaged and this attempt made none."""
        if summary is None and "summary_json" in run.damaged:
            return None  # never overwrite a damaged record with a near-empty one
        attempts = [*self.earlier, self.record(status)]
        out = dict(run.summary if summary is None else summary)
        out["attempts"] = attempts
        out["seconds"] = round(sum(a["seconds"] or 0 for a in attempts), 2)
        return out


def _earlier(run) -> list[dict]:
    """The attempts before this one, from the stored summary, with any that a killed worker left unrecorded."""
    listed = run.summary.get("attempts")
    listed = [a for a in listed if isinstance(a, dict)] if isinstance(listed, list) else []
    if not listed and run.summary.get("seconds") is not None:  # a run stored before attempts were listed
        listed = [{"attempt": max(1, run.attempt - 1), "status": run.status, "device": run.device, "threads": None,
                   "seconds": run.summary["seconds"], "started_at": None, "ended_at": None}]
    known = {a.get("attempt") for a in listed}
    for number in range(1, run.attempt):
        if number not in known:
            # run.device was written by the last attempt before this one
            listed.append({"attempt": number, "status": "interrupted", "note": KILLED,
                           "device": run.device if number == run.attempt - 1 else None, "threads": None,
                           "seconds": None, "started_at": None, "ended_at": None})
    return sorted(listed, key=lambda a: a.get("attempt") or 0)
