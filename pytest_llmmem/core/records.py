"""What an estimate is: the terms a breakdown names, the per-process constants every method adds,
and the :class:`Estimate` record. Kept apart from the methods (detailed, rule of thumb, recipes,
serving) so that each imports the record from below instead of from the core function.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import Dict, NamedTuple, Optional, Tuple

from ..units import MiB
from .run import Run

TERMS = (
    "weights",
    "master_weights",
    "gradients",
    "optimizer_states",
    "optimizer_step",
    "activations",
    "logits",
    "kv_cache",
    "overhead",
    "forward",
    "load",
    "eval",
    "save",
    "calibration",
)

# CUDA context and kernel images, measured with nvidia-smi after torch.ones((1, 1)).to("cuda") on a
# V100 (Hugging Face transformers docs, "Model training anatomy"; shared/validation hf-anatomy-kernels).
CUDA_CONTEXT_BYTES = 1343 * MiB
# cuBLAS workspace PyTorch reserves per handle/stream on Hopper (CUBLAS_WORKSPACE_CONFIG default
# ":4096:8" = 8 x 4 MiB; PyTorch docs, "Reproducibility" / CUDA semantics).
CUBLAS_WORKSPACE_BYTES = 32 * MiB
# The caching allocator rounds blocks up and keeps freed blocks: reserved exceeds allocated by
# a share of the short-lived tensors. 30 % fitted on the bert-large fp32 rows hf-anat-02 and
# hf-gpu1-01 of shared/validation/measured.jsonl (nvidia-smi reserved pool vs summed tensors); see README.
FRAGMENTATION = 0.30


class Estimate(NamedTuple):
    """Peak per-GPU bytes of one run, as a breakdown whose terms add up to the total."""

    run: Run
    method: str
    breakdown: Dict[str, int]
    params: int
    trainable_params: int
    notes: Tuple[str, ...]
    details: Dict[str, int]  # finer items, "term.item" -> bytes
    host_bytes: int = 0  # host memory per node for offloaded states (0 without offload)
    # Why the figure is not the full peak (terms that could not be computed), or not exact (e.g. an
    # unknown model family read as a generic decoder). Every front-end shows both; strict fails them.
    partial: Tuple[str, ...] = ()
    approximate: Tuple[str, ...] = ()
    # Why the run fails whatever the budget (a serving engine that refuses to start, a min-concurrency
    # it does not reach), and the engine's start-up figures (serve.Startup) for the report.
    failures: Tuple[str, ...] = ()
    serving: Optional[object] = None
    # Training: which phase sets the peak ("load", "backward", "optimizer step", "eval", "save") and
    # each phase's total; phase_parts has each phase's own breakdown (compose.Shown).
    peak_phase: str = ""
    phases: Tuple[Tuple[str, int], ...] = ()
    phase_parts: Tuple[object, ...] = ()

    def full(self, term: str) -> int:
        """A term's full size over the step (every gradient, every saved activation, every loss buffer),
        where the breakdown shows only what is alive at the peak instant (core/terms/backward.py)."""
        return self.details.get(f"full.{term}", self.breakdown.get(term, 0))

    @property
    def full_terms(self) -> Dict[str, int]:
        """The breakdown with each term at its full size (:meth:`full`): what the per-term ground truth counts."""
        return {term: self.full(term) for term in self.breakdown}

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def host_fits(self) -> Optional[bool]:
        limit = self.run.host_memory_bytes
        return None if limit is None else self.host_bytes <= limit

    @property
    def budget_bytes(self) -> Optional[int]:
        return self.run.budget.bytes if self.run.budget else None

    @property
    def fits(self) -> Optional[bool]:
        budget = self.budget_bytes
        if self.failures:
            return False
        if budget is None:
            return None
        return self.total_bytes <= budget and self.host_fits is not False

    @property
    def used_fraction(self) -> Optional[float]:
        budget = self.budget_bytes
        return None if budget is None else self.total_bytes / budget

    @property
    def biggest_term(self) -> str:
        return max(self.breakdown, key=lambda k: self.breakdown[k])


class WayOut(NamedTuple):
    """One change that makes the run fit, with the estimate it gives: what fit's training search
    (fit/search.py) and a server's (fit/serving.py) both return. Here, below both, because the search
    loads the serving one lazily; a module of its own cost every over-budget ``llmmem check`` an import."""

    key: str
    value: object
    text: str
    estimate: Estimate
