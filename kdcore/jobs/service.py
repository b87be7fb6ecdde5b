"""What a person can do to runs: submit, cancel, resume, delete, rename, tag.

The dashboard's pages act through this, never through the store's writes, so each action has one set of rules
(which runs can be resumed, what is checked before a run is queued) wherever it is asked for.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from kdcore.checks import check_runnable
from kdcore.config import ConfigError, RunConfig
from kdcore.record.failure import STOPPED, resumable_failure
from kdcore.store import RunNotFound, Store, lease_note


class ActionRefused(ValueError):
    """An action a run does not allow now (resume a completed run, delete a running one), in words."""


def folder_lost(store: Store, run) -> Optional[str]:
    """Why a run cannot go on from its folder: the folder is gone although the run saved work in it; else None.

    Resuming then would silently train every phase again, the teacher included.
    """
    folder = store.run_dir(run.id)
    if folder.is_dir():
        return None
    saved = store.artefacts(run.id) or len(store.metrics_frame([run.id], kind="epoch"))
    if not saved:  # it stopped before finishing an epoch: nothing was lost, it starts over as it would anyway
        return None
    return (f"run {run.id}'s folder {folder} is gone (deleted or moved), and with it the weights and state it saved; "
            "resuming would train everything again, its teacher included: start a new run from its config instead "
            f"(save the config `kdcore runs show {run.id}` prints as a YAML file and run `kdcore train FILE`)")


def resumable(run, store: Optional[Store] = None) -> Optional[str]:
    """Why a stored run cannot be resumed, or None when it can; with `store`, its folder is checked too."""
    if run.status not in STOPPED:
        lease = f" ({lease_note(run)})" if run.status == "running" else ""
        return f"run {run.id} is {run.status}{lease}; only an interrupted, cancelled or failed run can be resumed"
    if run.status == "failed" and not resumable_failure(run.failure):
        return (f"run {run.id} diverged ({(run.error or '').split(chr(10))[0]}); resuming it with the same settings "
                "would diverge again: start a new run from it with a lower train.lr or temperature")
    return folder_lost(store, run) if store is not None else None


class RunService:
    """Actions on a store's runs.

    Args:
        store: the runs.
        wake: told after a run is queued, so local workers look at the queue at once (JobManager.wake).
        here: queued runs train on this machine (its devices and memory are checked); False when any worker
            may take them.
    """

    def __init__(self, store: Store, wake: Optional[Callable[[], None]] = None, here: bool = True):
        self.store = store
        self._wake = wake or (lambda: None)
        self.here = here

    # ---- queueing --------------------------------------------------------------------------------------
    def problems(self, config: RunConfig) -> list[tuple[str, str]]:
        """What would refuse `config` before any work (kdcore.checks.check_runnable); [] when none."""
        return check_runnable(config, store=self.store, here=self.here)

    def submit(self, config: RunConfig) -> int:
        """Checks and queues one run; its number."""
        return self.submit_many([config])[0]

    def submit_many(self, configs: Sequence[RunConfig]) -> list[int]:
        """Checks, then queues runs in order (a seed group, a sweep): all of them or, on a problem, none.

        Raises:
            ConfigError naming every problem, before anything is queued.
        """
        seen: list[dict] = []
        for config in configs:
            # a group's runs differ in seed, T, α, name or group, which no check depends on: each other config
            # is checked once (checks read datasets and weights files, seconds each)
            rest = config.model_dump(mode="json")
            rest["train"].pop("seed", None)
            rest["distill"].pop("temperature", None)
            rest["distill"].pop("alpha", None)
            rest.pop("name", None)
            rest.pop("group", None)
            if rest in seen:
                continue
            seen.append(rest)
            problems = self.problems(config)
            if problems:
                raise ConfigError("; ".join(f"{where}: {message}" for where, message in problems))
        ids = [self.store.create_run(config) for config in configs]
        self._wake()
        return ids

    # ---- stopping and going on ---------------------------------------------------------------------------
    def cancel(self, run_id: int, *, refuse: bool = False) -> Optional[str]:
        """Drops a queued run ("cancelled"), or asks its worker to stop a running one at its next step
        ("requested"); None when it has already finished or is not stored.

        Raises:
            ActionRefused, with `refuse`, instead of returning None: why it cannot be cancelled.
        """
        try:
            return self.store.request_cancel(run_id)
        except (ValueError, RunNotFound) as err:
            if refuse:
                raise ActionRefused(err.args[0]) from None
            return None

    def resume_problem(self, run_id: int) -> Optional[str]:
        """Why the run cannot be resumed now (`resumable`, its folder included); None if it can."""
        try:
            run = self.store.get_run(run_id)
        except RunNotFound:
            return f"run {run_id} is not stored"
        return resumable(run, self.store)

    def resume(self, run_id: int, *, here: Optional[str] = None) -> None:
        """Resumes a stopped run from its last saved epoch: back in the queue for any worker or, with `here`
        (a worker's name, `kdcore resume`), taken straight by that worker, which then executes it.

        Raises:
            ActionRefused: it cannot be resumed (why), or another process requeued or took it meanwhile.
        """
        problem = self.resume_problem(run_id)
        if problem:
            raise ActionRefused(problem)
        taken = (self.store.claim(here, run_id=run_id, statuses=STOPPED) is not None if here
                 else self.store.requeue(run_id))
        if not taken:
            raise ActionRefused(f"run {run_id} was resumed or changed by another process meanwhile")
        if not here:
            self._wake()

    def resume_interrupted(self) -> list[tuple[int, str]]:
        """Resumes every interrupted run (a killed worker, a restarted machine) through the queue, except those
        whose folder is gone; returns (run number, why) of each run left."""
        left = []
        for run in self.store.list_runs(status=["interrupted"]):
            try:
                self.resume(run.id)
            except ActionRefused as why:
                left.append((run.id, str(why)))
        return left

    # ---- editing ----------------------------------------------------------------------------------------
    def delete(self, run_id: int) -> Optional[str]:
        """Deletes a finished run, its curves and its own folder; a note when the folder was kept (shared).

        Raises:
            ActionRefused: it is still queued or running.
        """
        try:
            return self.store.delete_run(run_id)
        except ValueError as err:
            raise ActionRefused(str(err)) from err

    def rename(self, run_id: int, name: str) -> None:
        if not name.strip():
            raise ActionRefused("a run's name cannot be empty")
        self.store.update_run(run_id, name=name)

    def tag(self, run_id: int, tags: Iterable[str]) -> None:
        """Sets the run's tags (blank ones dropped, each once)."""
        self.store.update_run(run_id, tags=list(tags))

    def annotate(self, run_id: int, notes: str) -> None:
        self.store.update_run(run_id, notes=notes)

    def edit(self, run_id: int, *, name: str, tags: Iterable[str], notes: str) -> None:
        """Name, tags and notes at once (the dashboard's form), all checked before any is written."""
        if not name.strip():
            raise ActionRefused("a run's name cannot be empty")
        self.store.update_run(run_id, name=name, tags=list(tags), notes=notes)
