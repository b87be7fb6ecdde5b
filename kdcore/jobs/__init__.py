"""Running runs: workers that claim them from the store's queue, and the dashboard's manager.

The store is the queue. A worker claims the oldest queued run, executes its stored
config, renews its lease with heartbeats that carry the run's progress, and reads the
cancel flag; any process can submit, watch or cancel any run.
"""
from kdcore.jobs.live import LiveState
from kdcore.jobs.manager import JobManager, get_manager
from kdcore.jobs.recorder import FLUSH_SECONDS, Heartbeat, Recorder
from kdcore.jobs.worker import Worker, describe_error, execute_job, resumable, resume_here, run_here

__all__ = ["FLUSH_SECONDS", "Heartbeat", "JobManager", "LiveState", "Recorder", "Worker", "describe_error",
           "execute_job", "get_manager", "resumable", "resume_here", "run_here"]
