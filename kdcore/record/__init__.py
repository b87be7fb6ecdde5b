"""A run's vocabulary, on the ground floor: its phases, the files of its folder, its summary.

Everything above (engine, jobs, store, reports, pages) names phases and files through these, so each rule
lives in one place. Nothing here imports the rest of kdcore when loaded (the gain sentence borrows kdcore.stats
when asked for).
"""
from kdcore.record.folder import RunFolder
from kdcore.record.phases import (BASELINE, PHASE_ORDER, STUDENT, TEACHER, is_teacher, phase_order, teacher_index,
                                  teacher_phase, teacher_phases)
from kdcore.record.summary import PhaseResult, RunSummary, gain_sentence

__all__ = ["BASELINE", "PHASE_ORDER", "PhaseResult", "RunFolder", "RunSummary", "STUDENT", "TEACHER", "gain_sentence",
           "is_teacher", "phase_order", "teacher_index", "teacher_phase", "teacher_phases"]
