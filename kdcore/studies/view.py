"""A study in one object, and its answer in one sentence: for `kdcore studies show`, the pages and the report."""
from __future__ import annotations

import math
from typing import Any, Optional

from optuna.trial import TrialState

from kdcore.experiments import group_report
from kdcore.stats import signed_points
from kdcore.store import Run, Store, Study
from kdcore.studies.objectives import OBJECTIVES
from kdcore.studies.study import optuna_study

SHORT = {"distill.temperature": "T", "distill.alpha": "α", "train.lr": "lr", "train.epochs": "epochs",
         "train.batch_size": "batch", "train.weight_decay": "weight decay", "train.optimizer": "optimizer"}


def trial_state(state: TrialState, run: Optional[Run]) -> str:
    """A trial's state in words: Optuna's, told apart by its run where Optuna says only FAIL or RUNNING."""
    if state == TrialState.COMPLETE:
        return "complete"
    if state == TrialState.PRUNED:
        return "pruned"
    if state == TrialState.FAIL:
        return run.status if run is not None and run.status in ("interrupted", "cancelled") else "failed"
    if run is None:
        return "asked"
    return {"queued": "queued", "running": "running"}.get(run.status, f"stopped ({run.status})")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def setting_words(params: dict, base: dict) -> str:
    """'dist, T 4, α 0.5, lr 0.003': the method, then each parameter a trial set."""
    from kdcore.distill import METHODS

    distill = base.get("distill") or {}
    method = params.get("distill.method", distill.get("method", "soft"))
    uses_t = method in METHODS and METHODS.get(method).uses_temperature
    fixed = {"distill.temperature": distill.get("temperature"), "distill.alpha": distill.get("alpha")}
    params = {**{k: v for k, v in fixed.items() if v is not None}, **params}  # T and α always say where they were
    words = [str(method)]
    first = list(SHORT)  # T, then α, then the training settings, then the rest as the space lists them
    for key, value in sorted(params.items(), key=lambda kv: first.index(kv[0]) if kv[0] in first else len(first)):
        if key == "distill.method" or (key == "distill.temperature" and not uses_t):
            continue
        label = SHORT.get(key, key.rsplit(".", 1)[-1].replace("_", " "))
        words.append(f"{label} {_number(value)}")
    return ", ".join(words)


def answer(study: dict) -> str:
    """The study's answer in one sentence, with the confirmation's interval across fresh seeds."""
    best, confirmation = study["best"], study["confirmation"]
    if confirmation is None:
        if best is None:
            return "no trial has completed yet"
        value = (f"{signed_points(best['value'])} points" if study["objective"]["in_points"]
                 else f"{100 * best['value']:.2f}%")
        return (f"not confirmed yet: the best trial so far (#{best['number']}, {best['setting']}) has a "
                f"{study['objective']['label']} of {value}; confirm it over fresh seeds before trusting it")
    setting = confirmation["setting"]
    gain = (confirmation.get("aggregate") or {}).get("kd_gain")
    planned = len(confirmation["run_ids"])
    if gain is None or gain.get("n", 0) < planned or gain.get("ci95") is None:
        done = 0 if gain is None else gain["n"]
        return f"confirming trial {confirmation['trial']} ({setting}) over {planned} fresh seeds: {done} done"
    low, high = gain["ci95"]
    spread = (f"{signed_points(gain['mean'])} points over scratch (95% interval {signed_points(low)} to "
              f"{signed_points(high)}, {gain['n']} fresh seeds)")
    if low > 0:
        return f"{setting}: {spread}"
    if high < 0:
        return f"no setting tried makes distillation pay off: the best, {setting}, makes the student worse, {spread}"
    return f"no setting tried makes distillation pay off: the best, {setting}, gives {spread}"


def describe_study(store: Store, name: str, *, importance: bool = False) -> dict:
    """Everything about a study: its settings, each trial, the best, the confirmation and the answer.

    The JSON of `kdcore studies show --json`. Trials' `value` is the objective on validation; only the
    confirmation reads test images, after the search has chosen. With `importance`, each parameter's share
    of the objective's variation (Optuna's default evaluator), or why there is none yet.
    """
    study = store.get_study(name)
    objective = OBJECTIVES.get(study.objective)
    base = study.config
    numbers = store.trial_runs(study.id)
    runs = {r.id: r for r in store.list_runs(group=study.group)}
    trials = []
    ostudy = optuna_study(store, study)
    for t in ostudy.get_trials(deepcopy=False):
        run_id = numbers.get(t.number)
        run = runs.get(run_id)
        trials.append({
            "number": t.number, "state": trial_state(t.state, run), "params": dict(t.params),
            "setting": setting_words(dict(t.params), base),
            "value": t.value if t.state == TrialState.COMPLETE else None, "run_id": run_id,
            "run_status": run.status if run is not None else None,
            "pruned_at_epoch": t.last_step if t.state == TrialState.PRUNED else None,
            "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
            "seconds": run.duration_s if run is not None else None,
        })
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None and math.isfinite(t["value"])]
    best = max(complete, key=lambda t: t["value"], default=None)
    out = {
        "name": study.name, "status": study.status, "reason": study.reason,
        "objective": {"name": objective.name, "label": objective.label, "split": "validation",
                      "description": objective.description, "in_points": objective.in_points},
        "space": study.space, "sampler": study.sampler, "pruner": study.pruner, "n_trials": study.n_trials,
        "parallel": study.parallel, "seed": study.seed, "trial_seed": study.trial_seed, "group": study.group,
        "dataset": base.get("dataset", {}).get("name"), "method": base.get("distill", {}).get("method"),
        "created_at": study.created_at.isoformat() if study.created_at else None,
        "counts": {state: sum(t["state"] == state for t in trials) for state in sorted({t["state"] for t in trials})},
        "trials": trials, "best": best, "confirmation": _confirmation(store, study, trials),
    }
    out["answer"] = answer(out)
    if importance:
        out["importance"], out["importance_note"] = _importance(ostudy, len(complete))
    return out


def _importance(ostudy, complete: int) -> tuple[Optional[dict], Optional[str]]:
    if complete < 3:
        return None, "needs three complete trials"
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "some regimes have less than 2 trials": the chart says so itself
            shares = optuna.importance.get_param_importances(ostudy)
    except (RuntimeError, ValueError) as err:
        return None, f"not measurable yet ({err})"
    return {k: float(v) for k, v in shares.items()}, None


def _confirmation(store: Store, study: Study, trials: list[dict]) -> Optional[dict]:
    if not study.confirm_group:
        return None
    runs = store.list_runs(group=study.confirm_group)
    report = group_report(runs) if runs else {"aggregate": {}, "statuses": {}, "run_ids": [], "seeds": []}
    trial = next((t for t in trials if t["number"] == study.confirm_trial), None)
    return {"group": study.confirm_group, "trial": study.confirm_trial, "seeds": study.confirm_seeds,
            "setting": trial["setting"] if trial else f"trial {study.confirm_trial}",
            "run_ids": report["run_ids"], "statuses": report["statuses"], "aggregate": report["aggregate"]}


def study_rows(store: Store) -> list[dict]:
    """One line per study for `kdcore studies list` and the pages: name, status, trials, best, answer."""
    rows = []
    for study in store.list_studies():
        try:
            described = describe_study(store, study.name)
        except Exception as err:  # one damaged study must not hide the others
            rows.append({"name": study.name, "status": study.status, "error": str(err)})
            continue
        rows.append({k: described[k] for k in ("name", "status", "n_trials", "counts", "best", "answer", "dataset")}
                    | {"objective": described["objective"]["name"], "created_at": described["created_at"]})
    return rows
