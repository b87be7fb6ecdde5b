"""kdcore: knowledge distillation for image classifiers, with a run store and a job runner.

Headless by design: nothing here imports Streamlit.
"""
import os

# OpenMP threads that spin while waiting make a busy CPU pathological: on 2 cores shared
# with other work, a small model's step went from 16 ms to ~400 ms. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
