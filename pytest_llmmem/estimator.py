"""The one core function: a resolved :class:`Run` in, a per-GPU :class:`Estimate` out.

It picks the estimate a run takes and nothing else: the trace (:mod:`.trace`), a recipe's models
(:mod:`.recipes`), the rule of thumb, a serving engine's start-up (:mod:`.serving`), or the detailed count (:mod:`.core.detailed`).
It sits above all of them so that each imports the records from below (:mod:`.core.records`) and
none imports the dispatch back.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .core.detailed import detailed
from .core.records import FITS_BY_FLUSHING, OVER_CUDA_TOTAL, SLACK_KEPT_AFTER_FLUSH, Estimate
from .units import format_bytes
from .core.run import Run

__all__ = ["Estimate", "estimate"]


UNIFIED_MEMORY = ("unified memory (GB10 / DGX Spark): the GPU shares the system's memory, so the budget is what the OS, "
                  "the desktop and the page cache leave at start-up, not the device total; vLLM's gpu-memory-utilization "
                  "takes its share of that free figure")


def estimate(run: Run) -> Estimate:
    """Estimate the peak per-GPU memory of ``run`` by its method (a unified-memory budget, or a verdict that rests on
    the caching allocator's flush, marks it approximate)."""
    est = _by_method(run)
    if run.budget is not None and run.budget.unified:
        est = est._replace(approximate=tuple(est.approximate) + (UNIFIED_MEMORY,))
    if est.fits_by_flushing:
        est = est._replace(approximate=tuple(est.approximate) + (FITS_BY_FLUSHING.format(share=f"{SLACK_KEPT_AFTER_FLUSH:.1%}"),))
    elif est.over_cuda_total:
        cuda = format_bytes(est.cuda_total_bytes, "gib")
        est = est._replace(approximate=tuple(est.approximate) + (OVER_CUDA_TOTAL.format(cuda=cuda, gpu=run.budget.gpu),))
    return est


def _by_method(run: Run) -> Estimate:
    if run.method == "trace":  # the run's own model code on fake tensors (trace/, the measure extra)
        from .trace.estimate import traced

        return traced(run)
    if run.recipe.post_training:  # DPO / GRPO / PPO / reward / a plugin's: the models a step holds (recipes/recipes.py)
        from .recipes.recipes import estimate_recipe

        return estimate_recipe(run)
    if run.method == "rule-of-thumb":
        from .core.rule_of_thumb import rule_of_thumb

        return rule_of_thumb(run)
    if run.serve is not None:
        from .serving.estimate import served

        return served(run)
    return detailed(run)
