"""The store's tables. Their history lives in kdcore/store/migrations; change both together."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled", "interrupted")
JSON_COLUMNS = ("config_json", "summary_json", "live_json", "tags")  # a run's columns that hold JSON text
CONFIG_SECTIONS = ("dataset", "teacher", "student", "distill", "train")
DAMAGED_LABEL = "(damaged record)"  # after the name of a run with a damaged column, wherever it is listed


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}  # a deleted run's number is never given again
    id: Optional[int] = Field(default=None, primary_key=True)
    uuid: Optional[str] = Field(default=None, index=True, unique=True)  # names the run's folder; never repeats
    folder: Optional[str] = None  # relative to the artefact root: the uuid (0.1.0 runs: their number)
    name: str = ""
    status: str = Field(default="queued", index=True)
    config_json: str = "{}"
    summary_json: str = "{}"
    error: Optional[str] = None
    failure: Optional[str] = None  # a failed run's kind of failure (kdcore.record.failure), where it matters
    device: Optional[str] = None
    owner: Optional[str] = None  # 0.1.0's host:pid; kept for old stores, `worker` holds it now
    worker: Optional[str] = None  # host:pid of the process holding the run's lease
    heartbeat_at: Optional[datetime] = None  # the lease: renewed every few seconds while running
    cancel_requested: bool = False  # read by the worker at its next heartbeat; stops the run at its next step
    attempt: int = 0  # how many times a worker has claimed it
    phase: Optional[str] = None  # teacher | student | baseline while running
    live_json: str = "{}"  # progress while running: epoch, step, images/s, ETA (see kdcore.jobs.LiveState)
    group: Optional[str] = Field(default=None, index=True)
    tags: str = "[]"  # JSON list
    notes: str = ""
    # Copied out of the config and summary so the runs table filters and sorts in SQL
    dataset: str = ""
    teacher_arch: str = ""
    student_arch: str = ""
    method: str = ""
    temperature: float = 0.0
    alpha: float = 0.0
    teacher_test_acc: Optional[float] = None
    student_test_acc: Optional[float] = None
    baseline_test_acc: Optional[float] = None
    kd_gain: Optional[float] = None
    student_best_val_acc: Optional[float] = None
    teacher_params: Optional[int] = None
    student_params: Optional[int] = None
    teacher_flops: Optional[int] = None
    student_flops: Optional[int] = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None

    @property
    def config(self) -> dict:
        return {} if unreadable("config_json", self.config_json) else _loads(self.config_json)

    @property
    def summary(self) -> dict:
        return {} if unreadable("summary_json", self.summary_json) else _loads(self.summary_json)

    @property
    def live(self) -> dict:
        return _loads(self.live_json)

    @property
    def tag_list(self) -> list[str]:
        return [] if unreadable("tags", self.tags) else json.loads(self.tags or "[]")

    @property
    def damaged(self) -> list[str]:
        """Its JSON columns that cannot be read (an edit by hand, a disk fault, another program); [] when none."""
        return [column for column in JSON_COLUMNS if unreadable(column, getattr(self, column))]

    @property
    def duration_s(self) -> Optional[float]:
        if self.started_at and self.finished_at:
            return (_aware(self.finished_at) - _aware(self.started_at)).total_seconds()
        return None


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    phase: str  # teacher | student | baseline
    kind: str = "epoch"  # step (inside an epoch) | epoch (end of epoch, with validation)
    step: int
    epoch: int
    name: str
    value: float


class Artefact(SQLModel, table=True):
    __tablename__ = "artefacts"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    kind: str  # teacher_weights, student_weights, baseline_weights, test_logits, ...
    path: str  # relative to the artefact root


STUDY_STATUSES = ("running", "stopped", "finished")


class Study(SQLModel, table=True):
    """A search over config keys; each of its trials is an ordinary run (see Trial)."""

    __tablename__ = "studies"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    objective: str = ""  # a registered objective (kdcore.studies.objectives), read from validation only
    space_json: str = "{}"  # dotted config key -> {low, high, log, step} or {choices}
    config_json: str = "{}"  # the config every trial starts from
    sampler: str = "tpe"  # tpe | random | grid
    pruner: str = "median"  # median | hyperband | none
    n_trials: int = 0
    parallel: int = 1  # trials in the queue or running at once
    seed: int = 0  # the sampler's seed
    trial_seed: int = 0  # train.seed of every trial; confirmation seeds must differ
    group: str = ""  # the trials' runs form this group, so they share a teacher and baselines
    status: str = Field(default="running", index=True)
    reason: Optional[str] = None  # why it stopped or finished early
    driver: Optional[str] = None  # host:pid of the process asking its trials
    driver_heartbeat_at: Optional[datetime] = None
    confirm_seeds: Optional[str] = None  # confirm the best trial over these seeds once the trials are done
    confirm_group: Optional[str] = None  # the confirmation's seed group, once queued
    confirm_trial: Optional[int] = None  # the trial it confirms
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None

    @property
    def space(self) -> dict:
        return _loads(self.space_json)

    @property
    def config(self) -> dict:
        return _loads(self.config_json)


class Trial(SQLModel, table=True):
    """Which run trains which trial of a study. What the study made of the trial (its parameters, state,
    value, intermediate values) is Optuna's, in the journal below; what was trained is the run's."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("study_id", "number", name="uq_trials_study_number"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="studies.id", index=True)
    number: int  # Optuna's trial number within the study: 0, 1, 2, …
    run_id: int = Field(foreign_key="runs.id", index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class OptunaLog(SQLModel, table=True):
    """Optuna's journal storage, one operation a row, read back in order (kdcore.studies.journal)."""

    __tablename__ = "optuna_journal"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Optional[int] = Field(default=None, primary_key=True)
    log: str  # one JSON operation


metadata = SQLModel.metadata


def _loads(text: Optional[str]) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def unreadable(column: str, text: Optional[str]) -> bool:
    """Whether a JSON column's text is not what it should hold: a config with its sections, a dict, a list of tags."""
    if not text:
        return column == "config_json"  # every run is stored with its config; the others may be empty
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return True
    if column == "tags":
        return not (isinstance(value, list) and all(isinstance(t, str) for t in value))
    if column == "config_json":
        return not (isinstance(value, dict) and all(isinstance(value.get(k), dict) for k in CONFIG_SECTIONS))
    if column == "summary_json":
        return not (isinstance(value, dict) and _summary_types_hold(value))
    return not isinstance(value, dict)


# summary keys ending so hold a number (or null): readers compute and format with them
SUMMARY_NUMBERS = ("_acc", "_gain", "_p_value", "_params", "_flops", "_macs", "_size_mb", "seconds", "_epochs",
                   "_ms_b1", "_ms_b64", "_from_run", "_threads", "_train_size", "compression", "flops_ratio",
                   "test_images", "test_agreement")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary_types_hold(summary: dict) -> bool:
    """Whether a summary's values have the types kdcore wrote them with, where readers rely on them."""
    if not all(v is None or _number(v) for k, v in summary.items() if k.endswith(SUMMARY_NUMBERS)):
        return False
    teachers, ci = summary.get("teachers"), summary.get("kd_gain_ci95")
    discordant, weights = summary.get("kd_gain_discordant"), summary.get("teacher_weights")
    return ((teachers is None or isinstance(teachers, list) and all(
                isinstance(t, dict) and isinstance(t.get("phase"), str) and isinstance(t.get("arch"), str)
                for t in teachers))
            and (ci is None or isinstance(ci, list) and len(ci) == 2 and all(c is None or _number(c) for c in ci))
            and (discordant is None or isinstance(discordant, dict) and all(map(_number, discordant.values())))
            and (weights is None or isinstance(weights, list) and all(map(_number, weights))))


def _aware(moment: datetime) -> datetime:
    # SQLite and PostgreSQL's plain timestamps come back naive; they were written in UTC
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
