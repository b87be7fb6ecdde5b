"""Studies in the store: a search's row, its trials, and the lease of the one process that asks its trials.

A trial is an ordinary run: the trial's row says which run (run_id), which parameters it set,
and what the study made of it (complete with a value, pruned, failed, interrupted). The run
row and its metrics stay the one record of what was trained.
"""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Iterable, Optional

from sqlalchemy import insert, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, delete, select

from kdcore.store.tables import Artefact, Metric, OptunaLog, Run, Study, Trial, utcnow


class StudyNotFound(KeyError):
    pass


class StudyExists(ValueError):
    pass


class StudyRecords:
    """The studies part of the Store (mixed into kdcore.store.Store)."""

    engine: Any

    def create_study(self, name: str, **fields) -> int:
        """Stores a new study; raises StudyExists when the name is taken."""
        study = Study(name=name, **fields)
        try:
            with Session(self.engine) as s:
                s.add(study)
                s.commit()
                s.refresh(study)
                return study.id
        except IntegrityError:
            raise StudyExists(f"a study named {name!r} already exists; choose another --name, or continue it "
                              f"with `kdcore tune --resume {name!r}`") from None

    def get_study(self, name: str) -> Study:
        with Session(self.engine) as s:
            study = s.exec(select(Study).where(Study.name == name)).first()
            if study is None:
                raise StudyNotFound(f"no study named {name!r}; see `kdcore studies list`")
            s.expunge(study)
            return study

    def list_studies(self) -> list[Study]:
        """Every study, newest first."""
        with Session(self.engine) as s:
            studies = list(s.exec(select(Study).order_by(Study.id.desc())))
            for study in studies:
                s.expunge(study)
            return studies

    def study_names(self) -> list[str]:
        """Every study's name, newest first."""
        with Session(self.engine) as s:
            return list(s.exec(select(Study.name).order_by(Study.id.desc())))

    def update_study(self, study_id: int, **values) -> None:
        with Session(self.engine) as s:
            s.execute(update(Study).where(Study.id == study_id).values(**values))
            s.commit()

    def finish_study(self, study_id: int, status: str, reason: Optional[str] = None,
                     only_from: Iterable[str] = ("running",)) -> bool:
        """Ends a study's asking (stopped or finished) unless it has left `only_from` already."""
        with Session(self.engine) as s:
            done = s.execute(update(Study).where(Study.id == study_id, Study.status.in_(list(only_from))).values(
                status=status, reason=reason, finished_at=utcnow(), driver=None, driver_heartbeat_at=None)).rowcount
            s.commit()
        return bool(done)

    # ---- the one process that asks a study's trials ---------------------------------------
    def claim_driver(self, study_id: int, driver: str, grace_s: float) -> bool:
        """Takes (or renews) the right to ask this running study's trials; False while another process holds it.

        A driver that stops renewing for `grace_s` seconds (killed, its machine stopped) loses it to the
        next process that asks.
        """
        cutoff = utcnow() - timedelta(seconds=grace_s)
        free = or_(Study.driver.is_(None), Study.driver == driver, Study.driver_heartbeat_at.is_(None),
                   Study.driver_heartbeat_at < cutoff)
        with Session(self.engine) as s:
            held = s.execute(update(Study).where(Study.id == study_id, Study.status == "running", free)
                             .values(driver=driver, driver_heartbeat_at=utcnow())).rowcount
            s.commit()
        return bool(held)

    def release_driver(self, study_id: int, driver: str) -> None:
        with Session(self.engine) as s:
            s.execute(update(Study).where(Study.id == study_id, Study.driver == driver)
                      .values(driver=None, driver_heartbeat_at=None))
            s.commit()

    # ---- trials ------------------------------------------------------------------------------
    def add_trial(self, study_id: int, number: int, config) -> int:
        """Queues `config` as the run of trial `number`, both in one transaction; returns the run's number."""
        run = self._new_run(config)
        with Session(self.engine) as s:
            s.add(run)
            s.flush()
            s.add(Trial(study_id=study_id, number=number, run_id=run.id))
            s.commit()
            self._folders[run.id] = run.folder
            return run.id

    def trial_runs(self, study_id: int) -> dict[int, int]:
        """A study's trial numbers and the runs that train them."""
        with Session(self.engine) as s:
            return dict(s.exec(select(Trial.number, Trial.run_id).where(Trial.study_id == study_id)).all())

    def trial_of_run(self, run_id: int) -> Optional[tuple[Study, Trial]]:
        """The study and trial a run trains, or None for a run of no study."""
        with Session(self.engine) as s:
            row = s.exec(select(Study, Trial).join(Trial, Trial.study_id == Study.id)
                         .where(Trial.run_id == run_id)).first()
            if row is None:
                return None
            study, trial = row
            s.expunge(study)
            s.expunge(trial)
            return study, trial

    def study_holding(self, run: Run) -> Optional[str]:
        """Why a run belongs to a study (a trial of it, or its confirmation), in words; None when it does not."""
        found = self.trial_of_run(run.id)
        if found is not None:
            return f"run {run.id} is trial {found[1].number} of study {found[0].name!r}"
        if run.group:
            with Session(self.engine) as s:
                name = s.exec(select(Study.name).where(Study.confirm_group == run.group)).first()
            if name is not None:
                return f"run {run.id} is part of study {name!r}'s confirmation"
        return None

    def study_groups(self) -> set[str]:
        """The groups that hold studies' trials (settings that differ, never repeats of one setting)."""
        with Session(self.engine) as s:
            return set(s.exec(select(Study.group)))

    def delete_study(self, name: str) -> list[int]:
        """Deletes a study, its trials and their runs (curves and files too), and its confirmation's runs.

        Returns:
            The numbers of the runs deleted.
        Raises:
            ValueError while the study asks trials or any of its runs is queued or running.
        """
        study = self.get_study(name)
        if study.status == "running":
            raise ValueError(f"study {name!r} is running; stop it first (Ctrl-C on `kdcore tune`, or "
                             f"`kdcore studies stop {name!r}`)")
        self.expire_leases(force=True)
        run_ids = list(self.trial_runs(study.id).values())
        if study.confirm_group:
            run_ids += [r.id for r in self.list_runs(group=study.confirm_group)]
        with Session(self.engine) as s:
            busy = list(s.exec(select(Run.id).where(Run.id.in_(run_ids), Run.status.in_(("queued", "running")))))
        if busy:
            raise ValueError(f"study {name!r} still has run(s) {', '.join(map(str, busy))} queued or running; "
                             "cancel them first (`kdcore runs cancel ID`)")
        folders = [self.run_dir(r) for r in run_ids]
        with Session(self.engine) as s:
            s.exec(delete(Trial).where(Trial.study_id == study.id))
            s.exec(delete(Metric).where(Metric.run_id.in_(run_ids)))
            s.exec(delete(Artefact).where(Artefact.run_id.in_(run_ids)))
            s.exec(delete(Run).where(Run.id.in_(run_ids)))
            s.exec(delete(Study).where(Study.id == study.id))
            s.commit()
        for run_id, folder in zip(run_ids, folders):
            self._folders.pop(run_id, None)
            self._remove_folder(folder)
        return run_ids

    # ---- Optuna's journal ----------------------------------------------------------------------
    def journal_logs(self, after: int) -> list[dict]:
        """Optuna's journal operations from the `after`-th on (0: all), in the order they were written."""
        with Session(self.engine) as s:
            rows = s.exec(select(OptunaLog.log).order_by(OptunaLog.id).offset(after)).all()
        return [json.loads(row) for row in rows]

    def append_journal(self, logs: list[dict]) -> None:
        """Appends operations so that every reader sees them in one order: their ids are committed in order."""
        with Session(self.engine) as s:
            if self.engine.dialect.name == "postgresql":  # SQLite has one writer at a time already
                s.execute(text("SELECT pg_advisory_xact_lock(7272)"))
            s.execute(insert(OptunaLog), [{"log": json.dumps(log)} for log in logs])
            s.commit()
