"""Why a failed run failed, where the kind decides what can be done with the run next.

Stored in the runs table's `failure` column, so no reader has to recognise a failure by the words of its error.
"""
from typing import Optional

DIVERGED = "diverged"  # resuming with the same settings would diverge again
DEVICE_LOST = "device_lost"  # the GPU's context is unusable: its worker takes no more runs
NO_SPACE = "no_space"  # the disk is full: free space there, then resume
KINDS = (DIVERGED, DEVICE_LOST, NO_SPACE)

# Statuses of a stopped run: it can be resumed from its last saved epoch, unless its failure says otherwise
STOPPED = ("interrupted", "cancelled", "failed")


def resumable_failure(kind: Optional[str]) -> bool:
    """Whether a run that failed so can go on with the same settings."""
    return kind != DIVERGED
