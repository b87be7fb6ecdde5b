"""pandas frames of the store: one row per run for the runs table, and runs' metric rows."""
from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, Iterable, Optional

from sqlmodel import Session, select

from kdcore.record.summary import FRAME_KEYS, RunSummary
from kdcore.store.tables import JSON_COLUMNS, Metric, Run, unreadable
from kdcore.text import teachers_cell

if TYPE_CHECKING:  # imported where a frame is made: workers and `kdcore submit` make none
    import pandas as pd


def _loads_any(text: Optional[str]):
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


def _loads(text: Optional[str]) -> dict:
    value = _loads_any(text)
    return value if isinstance(value, dict) else {}


def _ci(i: int):
    """One end of the gain's interval: the exact one that agrees with the run's test, recomputed from its stored
    counts where a run stored a bootstrap interval before (RunSummary.gain_interval)."""
    def read(summary: dict):
        return RunSummary.view(summary).gain_interval()[i]
    return read


# Columns of the runs table read from each run's summary JSON (kdcore.record.summary.FRAME_KEYS): the interval as
# its two ends, the evaluation precision as text, every other key as a number of the same name
FRAME_FROM_SUMMARY = {
    "kd_gain_low": _ci(0), "kd_gain_high": _ci(1),
    **{key: (lambda s, key=key: s.get(key)) for key in FRAME_KEYS if key not in ("kd_gain_ci95", "eval_precision")},
    "kd_gain_p_value": lambda s: RunSummary.view(s).gain_p_value(),  # from the same counts as the interval
}
TEXT_FROM_SUMMARY = {"precision": lambda s: s.get("eval_precision"),  # bf16 or fp32
                     "teachers": teachers_cell}  # every teacher with its test accuracy, not the first one's alone


# The runs table's columns read from the row as stored (runs_table); runs_frame selects the same
TABLE_COLUMNS = ("id", "name", "status", "dataset", "teacher_arch", "student_arch", "method", "temperature", "alpha",
                 "student_best_val_acc", "teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain",
                 "teacher_params", "student_params", "teacher_flops", "student_flops", "tags", "group", "notes",
                 "error", "device", "created_at", "started_at", "finished_at", "config_json", "summary_json",
                 "live_json")


def _parsed(texts: tuple) -> tuple:
    """What the runs table reads from one row's JSON columns (JSON_COLUMNS' texts): its damaged columns, tags,
    the FRAME_FROM_SUMMARY and TEXT_FROM_SUMMARY values and the seed."""
    damaged = [c for c, t in zip(JSON_COLUMNS, texts) if unreadable(c, t)]
    by_column = dict(zip(JSON_COLUMNS, texts))
    tags = [] if "tags" in damaged else _loads_any(by_column["tags"]) or []
    summary, config = _loads(by_column["summary_json"]), _loads(by_column["config_json"])
    numbers = tuple(read(summary) for read in FRAME_FROM_SUMMARY.values())
    words = tuple(read(summary) if isinstance(read(summary), str) else None for read in TEXT_FROM_SUMMARY.values())
    seed = config["train"].get("seed") if isinstance(config.get("train"), dict) else None
    return damaged, tags, numbers, words, seed


class FrameRecords:
    """The frames part of the Store (mixed into kdcore.store.Store)."""

    engine: Any

    def runs_frame(self) -> pd.DataFrame:
        """One row per run, the columns a runs table shows; read in one query."""
        import pandas as pd

        self.expire_leases()
        cols = [Run.id, Run.name, Run.status, Run.dataset, Run.teacher_arch, Run.student_arch, Run.method,
                Run.temperature, Run.alpha, Run.student_best_val_acc, Run.teacher_test_acc, Run.student_test_acc,
                Run.baseline_test_acc, Run.kd_gain, Run.teacher_params, Run.student_params, Run.teacher_flops,
                Run.student_flops, Run.tags, Run.group, Run.notes, Run.error, Run.device, Run.created_at,
                Run.started_at, Run.finished_at, Run.config_json, Run.summary_json, Run.live_json]
        # selected through the table's columns, so a missing column is an error, never a string constant
        with self.engine.connect() as conn:
            frame = pd.read_sql_query(select(*cols).order_by(Run.id.desc()), conn)
        for col in ("created_at", "started_at", "finished_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
        # a row whose JSON cannot be read stays listed, with the names of its damaged columns
        frame["damaged"] = [[c for c, t in zip(JSON_COLUMNS, texts) if unreadable(c, t)]
                            for texts in zip(*(frame[c] for c in JSON_COLUMNS))]
        frame.pop("live_json")
        frame["tags"] = frame["tags"].map(lambda t: [] if unreadable("tags", t) else _loads_any(t) or [])
        summaries = frame.pop("summary_json").map(_loads)
        configs = frame.pop("config_json").map(_loads)
        for column, read in FRAME_FROM_SUMMARY.items():
            frame[column] = pd.to_numeric(summaries.map(read), errors="coerce")
        for column, read in TEXT_FROM_SUMMARY.items():
            frame[column] = summaries.map(lambda s: read(s) if isinstance(read(s), str) else None)
        seeds = configs.map(lambda c: c["train"].get("seed") if isinstance(c.get("train"), dict) else None)
        frame["seed"] = pd.to_numeric(seeds, errors="coerce").astype("Int64")
        return frame

    def runs_table(self) -> pd.DataFrame:
        """runs_frame's rows and columns, with each row's JSON parsed once per store object: a later call parses
        only the rows whose JSON texts changed. Parsing was most of runs_frame's time (0.4 to 0.9 s for 1,000
        runs on 2 cores), and the dashboard reads the table on every page while most rows never change."""
        import pandas as pd

        self.expire_leases()
        cols = [getattr(Run, c) for c in TABLE_COLUMNS]
        with self.engine.connect() as conn:
            frame = pd.read_sql_query(select(*cols).order_by(Run.id.desc()), conn)
        for col in ("created_at", "started_at", "finished_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
        memo = self.__dict__.setdefault("_runs_table_memo", {})  # run id -> (hash of its JSON texts, _parsed)
        lock = self.__dict__.setdefault("_runs_table_lock", threading.Lock())
        texts = zip(frame["id"], zip(*(frame.pop(c) if c == "live_json" else frame[c] for c in JSON_COLUMNS)))
        with lock:
            rows = []
            for run_id, row_texts in texts:
                key = hash(row_texts)
                known = memo.get(run_id)
                if known is None or known[0] != key:
                    known = memo[run_id] = (key, _parsed(row_texts))
                rows.append(known[1])
            for gone in memo.keys() - set(frame["id"]):
                del memo[gone]
        damaged, tags, numbers, words, seeds = zip(*rows) if rows else ([], [], [], [], [])
        frame["damaged"] = [list(d) for d in damaged]
        frame["tags"] = [list(t) for t in tags]
        frame.pop("summary_json")
        frame.pop("config_json")
        for i, column in enumerate(FRAME_FROM_SUMMARY):
            frame[column] = pd.to_numeric(pd.Series([n[i] for n in numbers], index=frame.index, dtype=object),
                                          errors="coerce")
        for i, column in enumerate(TEXT_FROM_SUMMARY):
            frame[column] = pd.Series([w[i] for w in words], index=frame.index)
        frame["seed"] = pd.to_numeric(pd.Series(list(seeds), index=frame.index, dtype=object),
                                      errors="coerce").astype("Int64")
        return frame

    def metrics_frame(self, run_ids: Iterable[int], kind: Optional[str] = None,
                      names: Optional[Iterable[str]] = None) -> pd.DataFrame:
        import pandas as pd

        run_ids = [int(r) for r in run_ids]
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "phase", "kind", "step", "epoch", "name", "value"])
        q = select(Metric.run_id, Metric.phase, Metric.kind, Metric.step, Metric.epoch, Metric.name, Metric.value).where(
            Metric.run_id.in_(run_ids))
        if kind:
            q = q.where(Metric.kind == kind)
        if names:
            q = q.where(Metric.name.in_(list(names)))
        with Session(self.engine) as s:
            rows = s.exec(q.order_by(Metric.run_id, Metric.id)).all()
        return pd.DataFrame(rows, columns=["run_id", "phase", "kind", "step", "epoch", "name", "value"])
