"""kdcore: knowledge distillation for image classifiers, with a run store and a job runner.

Headless by design: nothing here imports Streamlit.
"""
__version__ = "0.1.0"
