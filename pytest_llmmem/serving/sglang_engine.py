"""SGLang's start-up, as its model runner sizes the token pool.

SGLang does not profile a dummy batch. It reads the free memory before loading the weights and
keeps ``1 - mem_fraction_static`` of it for activations and CUDA graphs:
``rest = free_after_weights - free_before_weights x (1 - mem_fraction_static)`` and
``max_total_num_tokens = rest // cell_size``, with cell_size = K and V bytes of one token over all
layers (python/sglang/srt/model_executor/model_runner.py profile_max_num_token; the pool has
page size 1). It refuses to start when no token fits ("Not enough memory. Please try to increase
--mem-fraction-static.").

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any

from .serve import Startup, context_limit, cuda_total, kv_kinds
from ..units import GiB
from .vllm_engine import weights

DEFAULT_VERSION = "0.4"
# Free memory before the weights: the CUDA context is already there (an H100 shows 78.57 of 79.18 GiB
# free when a server starts: llm-d vLLM logs) and, with tensor parallelism, NCCL and the custom
# all-reduce buffers (0.42 GiB more per GPU: vLLM's non-torch memory is 0.55 GiB at TP 2 against 0.13
# GiB at TP 1 in the same logs).
CONTEXT_BYTES = round(0.61 * GiB)
NCCL_BYTES = round(0.42 * GiB)


def default_fraction(tp: int) -> float:
    """mem_fraction_static when not given, by tensor-parallel size (python/sglang/srt/server_args.py
    __post_init__, SGLang 0.4.x: 0.79 at TP >= 16, 0.81 at >= 8, 0.85 at >= 4, 0.87 at >= 2, else 0.88)."""
    for at_least, fraction in ((16, 0.79), (8, 0.81), (4, 0.85), (2, 0.87)):
        if tp >= at_least:
            return fraction
    return 0.88


def startup(run: Any) -> Startup:
    arch, s = run.model, run.serve
    tp = run.tensor_parallel
    total, total_note = cuda_total(run)
    fraction = s.gpu_memory_utilization if s.gpu_memory_utilization is not None else default_fraction(tp)
    free_before = total - CONTEXT_BYTES - (NCCL_BYTES if tp > 1 else 0)
    w, items = weights(run, arch, tp)
    rest = (free_before - w) - round(free_before * (1 - fraction))
    kv_bytes = 1 if s.kv_cache_dtype.startswith("fp8") else run.dtype.compute_bytes
    kinds = kv_kinds(arch, kv_bytes, tp)
    cell = sum(k.layers * k.bytes_per_token for k in kinds if k.kind != "mamba") or 1
    tokens = max(0, rest // cell)
    max_len = s.max_model_len or context_limit(arch)[0] or run.seq_len
    refusal = "" if tokens > 0 else "Not enough memory. Please try to increase --mem-fraction-static."
    notes = []
    notes.append("SGLang keeps 1 - mem_fraction_static of the free memory for activations and CUDA graphs; "
                 "it does not refuse a context_len above the pool, it queues requests")
    version = s.engine_version or DEFAULT_VERSION
    return Startup(
        "sglang", version, total, fraction, w, 0, 0, total - free_before + round(free_before * (1 - fraction)),
        max(rest, 0), cell, tokens, tokens, max_len, tokens / max_len, s.max_num_batched_tokens or 0,
        s.max_num_seqs or 0, refusal, tuple(notes), tuple(items), tuple(n for n in (total_note,) if n),
    )
