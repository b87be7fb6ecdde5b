"""Running runs: workers that claim them from the store's queue, and the dashboard's manager.

The store is the queue. A worker claims the oldest queued run, executes its stored
config, renews its lease with heartbeats that carry the run's progress, and reads the
cancel flag; any process can submit, watch or cancel any run.
"""
from kdcore.jobs.live import LiveState
from kdcore.jobs.manager import JobManager, get_manager
from kdcore.jobs.recorder import FLUSH_SECONDS, Heartbeat, Recorder
from kdcore.jobs.service import ActionRefused, RunService, resumable
from kdcore.jobs.worker import Worker, describe_error, execute_job, run_here

__all__ = ["FLUSH_SECONDS", "ActionRefused", "Heartbeat", "JobManager", "LiveState", "Recorder", "RunService", "Worker",
           "describe_error", "execute_job", "get_manager", "resumable", "run_here"]
