"""kdcore: knowledge distillation for image classifiers, with a run store and a job runner.

Headless by design: nothing here imports Streamlit.
"""
import os
import sys

from kdcore.cpu_load import BUSY_CORE, others_busy_now

# The thread policy. OpenMP threads that spin between kernels made the Hinton MNIST example's
# phases about 30% faster on an idle 2-core CPU than sleeping ones (OMP_WAIT_POLICY=PASSIVE),
# and 2.4x slower beside another busy process, where sleeping threads lost nothing.
# So threads spin only if the CPU is idle when kdcore loads (0.1 s of /proc/stat), and the
# trainer gives cores back if others take them later (kdcore.engine.cpu_watch). The policy
# is read when torch loads: set here, before it, and never over the user's own (a child
# process, a worker, decides again rather than inherit its parent's choice).
# KDCORE_THREADS_WAIT=spin or sleep fixes the choice (for measuring; the default is auto).
_CHOSEN = "KDCORE_CHOSE_OMP_WAIT_POLICY"
if "torch" not in sys.modules and ("OMP_WAIT_POLICY" not in os.environ or os.environ.get(_CHOSEN) == "1"):
    _wait = os.environ.get("KDCORE_THREADS_WAIT", "auto")
    if _wait == "auto":
        _others = others_busy_now()
        _wait = "sleep" if _others is None or _others >= BUSY_CORE else "spin"
    if _wait == "sleep":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        os.environ.pop("OMP_WAIT_POLICY", None)
    os.environ[_CHOSEN] = "1"

__version__ = "0.1.0"
