"""The seed's rule of thumb (``method = "rule-of-thumb"``): weights, gradients and optimizer states
in one dtype, nothing else. Loaded only for runs that ask for it; the detailed method is in :mod:`estimate`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .records import Estimate
from ..model.architecture import Architecture, ParamsOnly
from .run import Run


def rule_of_thumb(run: Run) -> Estimate:
    """The seed's rules: weights = params x bytes; gradients = params; AdamW 2 states, SGD 1."""
    dtype, params = run.dtype, run.model.params if isinstance(run.model, ParamsOnly) else run.model.param_count()
    b = dtype.rule_bytes
    weights = params * b
    notes = ["rule of thumb: training = weights + gradients + optimizer states in the same dtype (4 x inference with AdamW); activations, KV cache and CUDA overhead are not counted"]
    trainable, grads, opt = 0, 0.0, 0.0
    if run.mode == "train":
        trainable = params
    elif run.trains:  # an adapter run (adapters.py)
        if isinstance(run.model, Architecture):
            trainable = run.adapter_params(run.model)
        else:
            notes.append("LoRA adapter count needs the architecture: the adapters are left out")
    if trainable:
        states = run.optimizer.states if run.optimizer else 2
        grads, opt = trainable * b, trainable * b * states
    breakdown = {"weights": round(weights), "gradients": round(grads), "optimizer_states": round(opt)}
    approximate = run.model.approximate if isinstance(run.model, Architecture) else ()
    return Estimate(run, "rule-of-thumb", breakdown, params, trainable, tuple(notes), {}, 0, (), approximate)
