"""Studies: search config keys with Optuna, choose on validation, confirm over fresh seeds on test.

    from kdcore.studies import create_study, StudyDriver, confirm
    from kdcore.studies.view import describe_study

Names load on first use, so the CLI can list the objectives and samplers without loading
Optuna and PyTorch.
"""
import importlib

_HOMES = {
    "objectives": ("DEFAULT_OBJECTIVE", "OBJECTIVES", "Objective", "TestSplitRead", "ValidationView"),
    "space": ("PRUNERS", "SAMPLERS", "SearchSpace", "SpaceError", "load_space", "parse_space"),
    "study": ("StudyDriver", "StudyDrivers", "StudyError", "TrialPruning", "confirm", "confirm_group", "create_study",
              "delete_study", "resume_study", "stop_study", "trials_group"),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
