"""torch's global generators are shared by every thread of a process: seed them under one lock.

Model initialisation holds it for the whole build, so a run's student and baseline start
from the same weights even while another worker thread seeds its own phase.
"""
import threading

global_rng_lock = threading.Lock()
