"""``method = "trace"``: the run's own model code on fake tensors (docs/trace.md). Needs the measure extra.

estimate.py composes the Estimate and is what estimator.py calls; step.py runs the phases under
FakeTensorMode; live.py counts live storages; attention.py runs attention as the CUDA kernels do;
build.py builds the model and its optimizer (shared with ``llmmem measure``).
"""
