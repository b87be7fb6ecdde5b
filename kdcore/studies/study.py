"""A study: Optuna asks settings, each trial is an ordinary run in the queue, validation decides.

One process at a time drives a running study (a lease in its row): it reads finished trials'
runs, tells Optuna their objective, and asks new trials while fewer than `parallel` are in
flight. Any worker executes the trials' runs; the worker running a trial reports its student's
validation accuracy after each epoch and stops it when the pruner says so. `kdcore tune` drives
its study and executes trials; every `kdcore worker` (the dashboard's too) drives any running
study no live process drives, so a study goes on while any worker lives.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import warnings
from typing import Optional

import optuna
from optuna.trial import TrialState

from kdcore.config import ConfigError, RunConfig
from kdcore.configure import build_config
from kdcore.engine.events import Event
from kdcore.engine.run import fine_tuned, read_finished, teacher_phase
from kdcore.experiments import format_seeds, parse_seeds
from kdcore.store import Run, Store, Study, lease_grace_s, this_worker
from kdcore.studies.journal import optuna_storage
from kdcore.studies.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, TestSplitRead, ValidationView
from kdcore.studies.space import PRUNERS, SAMPLERS, SearchSpace, apply, grid_order, parse_space

SEARCH_SEED_BASE = 1000  # trials train with seed 1000 + the study's seed, apart from the seeds people confirm with
MAX_NAME = 100


class StudyError(ValueError):
    """A study that cannot be created, continued or confirmed; the message says why."""


def trials_group(name: str) -> str:
    return f"{name} · trials"


def confirm_group(name: str) -> str:
    return f"{name} · confirm"


def stored_space(study: Study) -> SearchSpace:
    return parse_space(study.space, build_config(study.config), where=f"study {study.name!r}'s space")


# ---- creating ------------------------------------------------------------------------------------
def create_study(store: Store, name: str, config: RunConfig, space: dict, *, trials: int,
                 objective: str = DEFAULT_OBJECTIVE, sampler: str = "tpe", pruner: str = "median", seed: int = 0,
                 parallel: int = 1, confirm_seeds: Optional[str] = None) -> Study:
    """Checks everything a study needs, then stores it; no trial is queued yet (the driver does that).

    Raises:
        SpaceError (a ConfigError) naming the space's key, StudyError for the rest, StudyExists for a taken name.
    """
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        raise StudyError(f"a study needs a name of 1 to {MAX_NAME} characters")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise StudyError(f"--trials must be a whole number of at least 1, not {trials!r}")
    if objective not in OBJECTIVES:
        raise StudyError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES.names())}")
    if sampler not in SAMPLERS:
        raise StudyError(f"unknown sampler {sampler!r}; choose {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise StudyError(f"unknown pruner {pruner!r}; choose {', '.join(PRUNERS)}")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise StudyError(f"--parallel must be at least 1, not {parallel!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31 - SEARCH_SEED_BASE:
        raise StudyError(f"--seed must be a whole number from 0 to {2**31 - SEARCH_SEED_BASE - 1}")
    if config.dataset.val_fraction <= 0:
        raise StudyError("dataset.val_fraction is 0: a study chooses on the validation split, so it needs one "
                         "(e.g. --set dataset.val_fraction=0.1)")
    parsed = parse_space(space, config)
    if sampler == "grid":
        points = parsed.grid_points(config.distill.method)
        trials = min(trials, len(points))  # a grid is tried once through
    trial_seed = SEARCH_SEED_BASE + seed
    if confirm_seeds is not None:
        confirm_seeds = format_seeds(fresh_seeds(confirm_seeds, trial_seed))
    base = config.model_copy(deep=True)
    base.baseline = OBJECTIVES.get(objective).needs_baseline or config.baseline
    store.check_writable()
    store.create_study(
        name, objective=objective, space_json=json.dumps(parsed.to_json()), config_json=base.model_dump_json(),
        sampler=sampler, pruner=pruner, n_trials=trials, parallel=parallel, seed=seed, trial_seed=trial_seed,
        group=trials_group(name), confirm_seeds=confirm_seeds)
    storage = optuna_storage(store)
    try:  # a study of this name deleted earlier leaves its Optuna record behind only if its delete broke off
        storage.delete_study(storage.get_study_id_from_name(name))
    except KeyError:
        pass
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    return store.get_study(name)


def fresh_seeds(text: str, trial_seed: int) -> list[int]:
    seeds = parse_seeds(text)
    if trial_seed in seeds:
        raise StudyError(f"--confirm-seeds {text} includes seed {trial_seed}, which the trials train with; "
                         "confirmation needs seeds the search never saw")
    if len(seeds) < 2:
        raise StudyError("--confirm-seeds needs at least 2 seeds for an interval (5 or more is better)")
    return seeds


# ---- Optuna's side --------------------------------------------------------------------------------
def _sampler(study: Study, asked: int):
    seed = study.seed * 100_003 + asked  # a driver that restarts does not repeat the first random settings
    if study.sampler == "random" or study.sampler == "grid":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna, and what TPE needs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # for options tied to a method
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=min(10, max(2, study.n_trials // 3)))


def _pruner(study: Study):
    if study.pruner == "none":
        return optuna.pruners.NopPruner()
    epochs = build_config(study.config).train.epochs
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    # a trial is compared with finished ones from its second epoch on, after the first quarter of its epochs
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))


def optuna_study(store: Store, study: Study, asked: int = 0) -> optuna.Study:
    return optuna.load_study(study_name=study.name, storage=optuna_storage(store),
                             sampler=_sampler(study, asked), pruner=_pruner(study))


# ---- driving ----------------------------------------------------------------------------------------
class StudyDriver:
    """Asks a running study's trials and tells Optuna what their runs gave. `step()` does one round."""

    def __init__(self, store: Store, name: str, who: Optional[str] = None):
        self.store, self.name = store, name
        self.who = who or this_worker("study")
        self._teacher_ready = False

    def step(self) -> str:
        """One round; returns the study's status ("running", "stopped", "finished"), or "elsewhere" while
        another process drives it."""
        study = self.store.get_study(self.name)
        if study.status != "running":
            return study.status
        if not self.store.claim_driver(study.id, self.who, lease_grace_s()):
            return "elsewhere"
        ostudy = optuna_study(self.store, study)
        runs = {r.id: r for r in self.store.list_runs(group=study.group)}
        numbers = self.store.trial_runs(study.id)
        try:
            self._tell_finished(study, ostudy, numbers, runs)
        except TestSplitRead as err:
            self.store.finish_study(study.id, "stopped", f"the objective read the test split: {err}")
            raise
        frozen = ostudy.get_trials(deepcopy=False)
        in_flight = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in frozen)
        if len(frozen) >= study.n_trials and in_flight == 0:
            self.store.finish_study(study.id, "finished")
            if study.confirm_seeds and not study.confirm_group:
                confirm(self.store, self.name, study.confirm_seeds)
            return "finished"
        self._ask(study, ostudy, len(frozen), in_flight, numbers, runs)
        return "running"

    def _tell_finished(self, study: Study, ostudy: optuna.Study, numbers: dict[int, int], runs: dict[int, Run]):
        objective = OBJECTIVES.get(study.objective)
        for trial in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run = runs.get(numbers.get(trial.number))
            if run is None:  # asked, but its driver stopped before queuing its run
                ostudy.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            elif run.status == "completed":
                value = objective.read(ValidationView(run.summary))
                good = value is not None and math.isfinite(value)
                ostudy.tell(trial.number, value if good else None,
                            state=TrialState.COMPLETE if good else TrialState.FAIL, skip_if_finished=True)
            elif run.status in ("failed", "cancelled", "interrupted"):  # a killed worker's trial ends here
                ostudy.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def _shares_teacher(self, space: SearchSpace, base: RunConfig) -> bool:
        trained = any(t.source == "train" or fine_tuned(t) for t in base.all_teachers)
        return trained and not (space.varies("teacher") or space.varies("teachers"))

    def _teacher_trained(self, base: RunConfig, numbers: dict[int, int]) -> bool:
        """Whether a trial's run has finished training every teacher, for the others to reuse."""
        if not self._teacher_ready:
            phases = {teacher_phase(i) for i in range(len(base.all_teachers))}
            self._teacher_ready = any(phases <= set(read_finished(self.store.run_dir(run_id)))
                                      for run_id in numbers.values())
        return self._teacher_ready

    def _ask(self, study: Study, ostudy: optuna.Study, asked: int, in_flight: int, numbers: dict[int, int],
             runs: dict[int, Run]) -> None:
        base = build_config(study.config)
        space = stored_space(study)
        # the first trial trains the teacher; the others wait for it rather than train their own
        limit = study.parallel if (not self._shares_teacher(space, base)
                                   or self._teacher_trained(base, numbers)) else 1
        points = grid_order(space.grid_points(base.distill.method), study.seed) if study.sampler == "grid" else None
        while asked < study.n_trials and in_flight < limit:
            ostudy.sampler = _sampler(study, asked)
            if points is not None:
                taken = [t.params for t in ostudy.get_trials(deepcopy=False)]
                ostudy.enqueue_trial(next(p for p in points if p not in taken))
            trial = ostudy.ask()
            params = space.sample(trial, base.distill.method)
            try:
                config = trial_config(study, base, space, params, trial.number)
            except ConfigError as err:  # a combination the checks of each key alone could not see
                ostudy.tell(trial, state=TrialState.FAIL)
                print(f"study {study.name!r}: trial {trial.number} cannot run ({err})")
            else:
                self.store.add_trial(study.id, trial.number, config)
                in_flight += 1
            asked += 1

    def stop(self, reason: str) -> None:
        """Stops asking trials; queued trials are cancelled, running ones left to whoever runs them.

        `kdcore tune --resume` later resumes every trial this stop left unfinished.
        """
        study = self.store.get_study(self.name)
        self.store.finish_study(study.id, "stopped", reason)
        for run_id in self.store.trial_runs(study.id).values():
            try:
                if self.store.get_run(run_id).status == "queued":
                    self.store.request_cancel(run_id)
            except ValueError:
                pass  # it started meanwhile

    def release(self) -> None:
        try:
            self.store.release_driver(self.store.get_study(self.name).id, self.who)
        except KeyError:
            pass


def trial_config(study: Study, base: RunConfig, space: SearchSpace, params: dict, number: int) -> RunConfig:
    """Trial `number`'s run: `params` on the base config, in the study's group, at the study's trial seed."""
    data = apply(base, space, params)
    data.update(name=f"{study.name} · trial {number}", group=study.group)
    data["train"]["seed"] = study.trial_seed
    data["baseline"] = base.baseline
    return build_config(data)


def resume_study(store: Store, name: str, trials: Optional[int] = None) -> Study:
    """Lets a stopped study ask trials again, and puts back in the queue the trials its stop left unfinished.

    A finished trial is never run again; an interrupted one goes on from its last saved epoch.
    """
    study = store.get_study(name)
    if trials is not None:
        if trials < 1:
            raise StudyError(f"--trials must be at least 1, not {trials}")
        asked = len(store.trial_runs(study.id))
        if trials < asked:
            raise StudyError(f"study {name!r} has asked {asked} trials already; --trials cannot be fewer")
        store.update_study(study.id, n_trials=trials)
    elif study.status == "finished":
        raise StudyError(f"study {name!r} is finished ({study.n_trials} trials); give --trials N to ask more")
    if study.status != "running":
        store.update_study(study.id, status="running", reason=None, finished_at=None)
    ostudy = optuna_study(store, study)
    numbers = store.trial_runs(study.id)
    for trial in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = numbers.get(trial.number)
        if run_id is not None:
            store.requeue(run_id, statuses=("interrupted", "cancelled"))
    return store.get_study(name)


def stop_study(store: Store, name: str, reason: str = "stopped by request") -> Study:
    study = store.get_study(name)
    if study.status != "running":
        raise StudyError(f"study {name!r} is {study.status}, not running")
    StudyDriver(store, name).stop(reason)
    return store.get_study(name)


def delete_study(store: Store, name: str) -> list[int]:
    """Deletes a study with its trials' runs and its confirmation's runs; returns the runs deleted."""
    deleted = store.delete_study(name)
    storage = optuna_storage(store)
    try:
        storage.delete_study(storage.get_study_id_from_name(name))
    except KeyError:
        pass
    return deleted


class StudyDrivers:
    """A thread that drives every running study no other live process drives (in `kdcore worker`)."""

    def __init__(self, store: Store, stop: threading.Event, poll_s: float = 1.0):
        self.store, self.stop_event, self.poll_s = store, stop, poll_s
        self.who = this_worker("studies")
        self.thread = threading.Thread(target=self._loop, daemon=True, name="kdcore-study-drivers")

    def start(self) -> "StudyDrivers":
        self.thread.start()
        return self

    def _loop(self) -> None:
        drivers: dict[str, StudyDriver] = {}
        while not self.stop_event.wait(self.poll_s):
            try:
                running = [s.name for s in self.store.list_studies() if s.status == "running"]
                for name in running:
                    drivers.setdefault(name, StudyDriver(self.store, name, self.who)).step()
            except Exception as err:  # a study's fault is its own; the worker goes on
                print(f"kdcore worker: a study could not be driven: {err}", flush=True)
        for driver in drivers.values():
            driver.release()


# ---- pruning, in the worker that runs a trial ------------------------------------------------------
class TrialPruning:
    """A trial run's listener: reports the student's validation accuracy after each epoch to the study, and
    marks the run to stop when the study's pruner says so."""

    def __init__(self, store: Store, study: Study, number: int):
        self.store, self.study, self.number = store, study, number
        self.pruned_epoch: Optional[int] = None
        self._trial = None

    @classmethod
    def for_run(cls, store: Store, run_id: int) -> Optional["TrialPruning"]:
        found = store.trial_of_run(run_id)
        if found is None or found[0].pruner == "none":
            return None
        return cls(store, found[0], found[1].number)

    def __call__(self, event: Event) -> None:
        if event.kind != "epoch" or event.phase != "student" or "val_acc" not in event.metrics:
            return
        try:
            self._check(event)
        except Exception as err:  # the study out of reach for a moment: the trial runs on, unpruned
            print(f"kdcore: trial {self.number} of study {self.study.name!r} could not be checked for pruning "
                  f"after epoch {event.epoch}: {err}", file=sys.stderr)

    def _check(self, event: Event) -> None:
        ostudy = optuna_study(self.store, self.study)
        if self._trial is None:
            storage = ostudy._storage
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(self.study.name), self.number)
            if storage.get_trial(trial_id).state != TrialState.RUNNING:
                return  # told already (a resumed run of a trial the study closed)
            self._trial = optuna.trial.Trial(ostudy, trial_id)
        self._trial.report(event.metrics["val_acc"], event.epoch)
        if self._trial.should_prune():
            ostudy.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
            self.pruned_epoch = event.epoch

    @property
    def reason(self) -> str:
        return (f"pruned by study {self.study.name!r} after student epoch {self.pruned_epoch}: its validation "
                f"accuracy was below what the study's other trials had at that epoch ({self.study.pruner} pruner)")


# ---- confirming -----------------------------------------------------------------------------------
def best_trial(store: Store, study: Study) -> Optional[optuna.trial.FrozenTrial]:
    complete = optuna_study(store, study).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value, default=None)


def confirm(store: Store, name: str, seeds: str, trial: Optional[int] = None) -> list[int]:
    """Queues the best trial (or `trial`) again over fresh seeds as one seed group; returns its runs.

    The group trains its own teacher (with the first seed) and a baseline per seed, as `kdcore train
    --seeds` does, so its interval on test says how the setting holds up on seeds the search never saw.
    """
    from kdcore.experiments import expand

    study = store.get_study(name)
    numbers = store.trial_runs(study.id)
    if trial is None:
        chosen = best_trial(store, study)
        if chosen is None:
            raise StudyError(f"study {name!r} has no complete trial yet to confirm")
        trial = chosen.number
    if trial not in numbers:
        raise StudyError(f"study {name!r} has no trial {trial}")
    seed_list = fresh_seeds(seeds, study.trial_seed)
    group = confirm_group(name)
    if study.confirm_group and store.list_runs(group=study.confirm_group):
        raise StudyError(f"study {name!r} was confirmed already (group {study.confirm_group!r}); start a new study "
                         "to confirm another trial")
    config = build_config(store.get_run(numbers[trial]).config)
    config.name = f"{name} · trial {trial} confirmed"
    config.baseline = True  # the confirmation's answer is the gain over scratch
    configs = expand(config, seeds=seed_list, group=group)
    store.update_study(study.id, confirm_group=group, confirm_trial=trial, confirm_seeds=format_seeds(seed_list))
    return [store.create_run(c) for c in configs]
