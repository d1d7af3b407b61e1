"""What an estimate is: the terms a breakdown names, the per-process constants every method adds,
and the :class:`Estimate` record. Kept apart from the methods (detailed, rule of thumb, recipes,
serving) so that each imports the record from below instead of from the core function.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from ..record import Record
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

# CUDA context, kernel images and library handles: what nvidia-smi shows beyond the caching allocator's
# pool. 0.75 GiB = nvidia-smi used - torch.cuda.max_memory_reserved after a training step on an H100,
# torch 2.11 + CUDA 13 (0.73-0.75 GiB over 19 phases; 0.67-0.68 GiB after a forward alone:
# benchmarks/data/gpu-peaks-h100*.jsonl, benchmarks/allocator_fit.py), with CUDA's lazy module loading (CUDA >= 11.7;
# torch/cuda/__init__.py _lazy_init sets CUDA_MODULE_LOADING=LAZY unless it is set: a kernel loads when first launched).
# vLLM's logs agree: 0.61 GiB used on an H100 before start-up (serving/vllm_engine.py CONTEXT_BYTES).
CUDA_CONTEXT_BYTES = 768 * MiB
# 1343 MiB with the eager module loading of torch 1.x (nvidia-smi after torch.ones((1, 1)).to("cuda") on a V100,
# Hugging Face transformers docs "Model training anatomy", 2022; shared/validation hf-anatomy-kernels): every kernel
# image loaded at start-up. A run that declares torch-version below 2.0 gets it.
TORCH1_CONTEXT_BYTES = 1343 * MiB
# cuBLAS workspace PyTorch reserves per handle/stream on Hopper (CUBLAS_WORKSPACE_CONFIG default
# ":4096:8" = 8 x 4 MiB; PyTorch docs, "Reproducibility" / CUDA semantics).
CUBLAS_WORKSPACE_BYTES = 32 * MiB
# The caching allocator rounds blocks up and keeps freed blocks: reserved exceeds allocated by a share of the
# short-lived tensors. 30 % fitted on the bert-large fp32 rows hf-anat-02 and hf-gpu1-01 of shared/validation
# measured.jsonl (nvidia-smi reserved pool vs summed tensors): what every short-lived item without a share of its own
# gets (a prefill, evaluation, generation). The training step's items carry their own, below.
FRAGMENTATION = 0.30
# The step's shares follow what the next step does with each kind of block (c10/cuda/CUDACachingAllocator.cpp, replayed
# by trace/allocator.py; fitted on benchmarks/allocator_replay.py --sweep and --sweep-lora, 68 steady steps at full
# depth; held out: the H100 rows and the published reserved rows, benchmarks/published_rows.py):
# - without checkpointing, the saved activations and the loss head's b x s x V buffers are asked for at the same sizes
#   every step, and get_free_block (best fit: the cached block of the least size that serves it) hands each one the
#   block its predecessor freed: the replayed slack is 0.6-57 % of them (median 9 %, 0.2-11.5 GiB) -> 5 %;
#   (a run declared on torch 1.x keeps 30 %: the V100 bert-large rows it was fitted on, nvidia-smi, are 18-23 % under
#   with 5 %; the replays and the H100 rows are torch 2);
SLACK_UNCHECKPOINTED = 0.05
# - with checkpointing, the loss head's freed blocks are the only large free blocks while the backward recomputes a
#   layer and makes the gradients, so best fit carves those out of them (should_split: a large-pool rest over 1 MiB
#   is split off, free_block merges only free neighbours) and the next step's b x s x V requests find no whole block
#   and cudaMalloc new segments (alloc_block). The steady replays ask 1-123 % of the loss buffers (median 75 %; LoRA,
#   with no gradients to carve them, about 20 %); 30 % keeps the published checkpointed reserved rows (torchtitan
#   within +3 %) and every verdict (50 % puts nine published runs that ran "over budget":
#   fsdp_qlora's 4090 rows, torchtitan's 8B rows);
#   A fused linear cross-entropy on one GPU makes no b x s x V block: 5 % (terms/backward.py pool_share).
SLACK_CHECKPOINTED = FRAGMENTATION
# - the optimizer step's foreach temporaries (one tensor per parameter) are served from the blocks the backward freed,
#   of other sizes: 15 % of them (the H100 steady rows whose optimizer step sets the peak: Phi-3-mini -15.6 -> -13.0 %);
#   one-GPU steps only: a sharded step's (FSDP, ZeRO) is measured by nothing (terms/job_phases.py _step_slack).
# The pool the backward leaves stays cached through the optimizer step (compose.Phase.follows).
SLACK_OPTIMIZER_STEP = 0.15


# What a flush leaves: after a failed cudaMalloc the caching allocator releases every cached segment with nothing
# allocated in it and retries before it raises the OOM (c10/cuda/CUDACachingAllocator.cpp DeviceCachingAllocator::malloc:
# release_available_cached_blocks, then release_cached_blocks), so only the free space split off segments that still
# hold a live block stays. Replayed under a cap at full depth (benchmarks/allocator_replay.py --run ... --need,
# docs/trace.md "Under a cap"): a one-GPU LoRA step with checkpointing and a fused attention kernel keeps 4.9-6.3 % of
# its slack (Mistral-7B, q/k/v/o, 8 / 16 / 32 x 4,096: 0.39 of 6.21, 0.67 of 12.16, 1.18 of 24.06 GiB) -> the largest,
# 6.3 %. Every other kind keeps its whole slack here: eager attention's s x s blocks strand 22 % and more (Gemma-3-12B
# at 15k; qlora issue 17's OOM message, 1.36 GiB cached after its flush), Unsloth's offloaded checkpointing 95-98 %,
# a full fine-tune's gradients 3-98 % by batch; a multi-GPU step was not replayed.
SLACK_KEPT_AFTER_FLUSH = 0.063
# The caveats a verdict that rests on the flush carries (strict refuses them): counted, or not counted.
FITS_BY_FLUSHING = ("fits only because the caching allocator flushes its cache when a cudaMalloc fails: the pool "
                    "the run would reserve is over the card; what stays cached after the flush is counted as {share} of "
                    "the allocator's slack, the figure replayed for one-GPU LoRA steps with a fused attention kernel "
                    "(docs/trace.md \"Under a cap\"); expect cudaFree stalls")
OVER_CUDA_TOTAL = ("within the budget but over the {cuda} the CUDA runtime gives {gpu} (nvidia-smi's total includes what "
                   "the driver keeps): it fits only if the caching allocator's flush gives back the difference, which the "
                   "estimate counts only for one-GPU adapter steps with a fused attention kernel")


def flush_counted(run: Run) -> bool:
    """Whether a run is of the kind whose flushed pool was replayed small (SLACK_KEPT_AFTER_FLUSH): one GPU, an adapter
    on a frozen base, checkpointing, a fused attention kernel, no activation offload."""
    return (run.trains and run.adapter is not None and run.gpus == 1 and run.gradient_checkpointing
            and run.flash_attention and not run.knobs.activation_offload and run.serve is None)


def torch1(version: Tuple[int, ...]) -> bool:
    """A declared torch-version before 2.0 (eager module loading and the allocator of the V100 rows); () is current."""
    return bool(version) and tuple(version) < (2, 0)


def cuda_context_bytes(torch_version: Tuple[int, ...] = ()) -> int:
    """The CUDA context: torch 1.x's measured eager-loading figure, else the lazy-loading one."""
    return TORCH1_CONTEXT_BYTES if torch1(torch_version) else CUDA_CONTEXT_BYTES


class Estimate(Record):
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
    def reserved_bytes(self) -> int:
        """What torch.cuda.max_memory_reserved would read: the total less the CUDA context (the verdict uses the total)."""
        return self.total_bytes - self.details.get("overhead.cuda_context", 0)

    @property
    def allocated_bytes(self) -> int:
        """What torch.cuda.max_memory_allocated would read: the total less the context, workspace and the pool's slack,
        or a phase's own allocated peak where that is higher: the two are separate high-water marks (torch/cuda/memory.py
        "allocated_bytes.all.peak"), and the phase with the most reserved need not hold the most allocated."""
        peak = self.total_bytes - self.breakdown.get("overhead", 0)
        if self.run.calibration is not None:  # a measured correction scales the shown phase only
            return peak
        return max([peak] + [p.total - p.breakdown.get("overhead", 0) for p in self.phase_parts])

    @property
    def flushed_bytes(self) -> int:
        """The total less the caching allocator's slack (``overhead.fragmentation``): what the run holds once a failed
        cudaMalloc has made the allocator release every cached segment with nothing allocated in it and retry
        (c10/cuda/CUDACachingAllocator.cpp DeviceCachingAllocator::malloc: alloc_block, then
        release_available_cached_blocks, then release_cached_blocks and alloc_block again, before the OOM). A lower
        bound: free blocks split from a segment that still holds a live one are not released ("The only remaining
        'cached' memory is split from a larger block that is partially in-use", the OOM branch's comment there)."""
        return self.total_bytes - self.details.get("overhead.fragmentation", 0)

    @property
    def cuda_total_bytes(self) -> Optional[int]:
        """What the CUDA runtime gives a process on the budget's card (catalog GPU.cuda_total_bytes), None if unknown."""
        return self.run.budget.cuda_total_bytes if self.run.budget else None

    @property
    def capacity_bytes(self) -> Optional[int]:
        """What the run may fill: the budget, or what the CUDA runtime gives the card where that is less (79.15 GiB of an
        A100-80GB's 80: a process cannot reserve nvidia-smi's whole total)."""
        budget, cuda = self.budget_bytes, self.cuda_total_bytes
        return None if budget is None else min(budget, cuda) if cuda else budget

    @property
    def after_flush_bytes(self) -> int:
        """What the run holds at the peak once the allocator has flushed: the total less the slack a flush releases
        (SLACK_KEPT_AFTER_FLUSH stays)."""
        return self.flushed_bytes + round(SLACK_KEPT_AFTER_FLUSH * self.details.get("overhead.fragmentation", 0))

    @property
    def fits_by_flushing(self) -> bool:
        """A detailed one-GPU adapter step (flush_counted) whose pool is over the card, the card being the limit (no
        headroom or smaller budget below it), and which fits once the allocator flushes (after_flush_bytes)."""
        capacity, cuda = self.capacity_bytes, self.cuda_total_bytes
        if capacity is None or not cuda or capacity != cuda or self.method != "detailed" or self.failures:
            return False
        return self.total_bytes > capacity >= self.after_flush_bytes and flush_counted(self.run)

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
        return (self.total_bytes <= budget or self.fits_by_flushing) and self.host_fits is not False

    @property
    def over_cuda_total(self) -> bool:
        """Within the budget (nvidia-smi's total for a ``gpu``) but over what the CUDA runtime gives the card, and not
        counted to fit by the flush: the verdict "fits" then rests on a flush the estimate does not count."""
        capacity = self.capacity_bytes
        return (capacity is not None and not self.failures and capacity < self.total_bytes <= (self.budget_bytes or 0)
                and not self.fits_by_flushing)

    @property
    def used_fraction(self) -> Optional[float]:
        budget = self.budget_bytes
        return None if budget is None else self.total_bytes / budget

    @property
    def biggest_term(self) -> str:
        return max(self.breakdown, key=lambda k: self.breakdown[k])


class WayOut(Record):
    """One change that makes the run fit, with the estimate it gives: what fit's training search
    (fit/search.py) and a server's (fit/serving.py) both return. Here, below both, because the search
    loads the serving one lazily; a module of its own cost every over-budget ``llmmem check`` an import."""

    key: str
    value: object
    text: str
    estimate: Estimate
