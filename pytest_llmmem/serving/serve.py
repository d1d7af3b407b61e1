"""What a serving engine holds once it has started, and whether it starts at all.

vLLM and SGLang do not grow with the traffic: at start-up they load the weights, run a dummy
batch to measure the activation peak, and turn a fixed share of the GPU into a KV-cache pool that
every request then draws blocks from. So the per-GPU memory of a server is decided by its flags, and
the questions that matter are the ones the engine answers in its start-up log: how much memory is
left for the KV cache, how many tokens that holds, how many ``max-model-len`` requests fit at once,
and whether it refuses to start. :mod:`vllm_engine` and :mod:`sglang_engine` model one engine each;
this module holds what they share: the model's KV bytes per token by layer kind (full, sliding,
MLA latent, Mamba state), the GPU memory the CUDA runtime reports, and the start-up record.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..errors import ConfigError
from ..record import Record
from ..units import GiB


class KVKind(Record):
    """Layers of one cache kind and what each keeps per token (attention) or per sequence (Mamba)."""

    kind: str  # "full" | "sliding" | "mla" | "mamba"
    layers: int
    bytes_per_token: int  # per layer, on one tensor-parallel rank (Mamba: the state per sequence)
    window: int = 0  # sliding window, tokens


def kv_kinds(arch: Any, kv_bytes: float, tp: int) -> List[KVKind]:
    """The model's cache by layer kind, from its layer groups (model.Architecture.layer_groups).

    Per token and layer: full/sliding attention keep K and V for the rank's KV heads
    (vllm/v1/kv_cache_interface.py AttentionSpec.real_page_size_bytes = 2 x block x heads x head_size x dtype;
    heads are replicated when there are fewer than ranks); MLA keeps one latent of kv_lora_rank +
    qk_rope_head_dim on every rank (MLAAttentionSpec: num_kv_heads = 1); Mamba keeps a fixed state.
    """
    merged: Dict[Tuple[str, int, int], int] = {}
    for group in arch.layer_groups():
        att = group.attention
        kind = getattr(att, "kind", "full")
        if not hasattr(att, "engine_cache_bytes"):
            continue
        per = att.engine_cache_bytes(kv_bytes, tp)  # each layer kind owns its page size, as vLLM's specs do
        window = att.window if kind == "sliding" else 0
        key = (kind, per, window)
        merged[key] = merged.get(key, 0) + group.count
    return [KVKind(kind, layers, per, window) for (kind, per, window), layers in merged.items()]


def mlp_width(arch: Any) -> Tuple[int, int]:
    """(d_ff a token passes through, routed copies of the token) of the widest MLP kind."""
    widths = []
    for group in arch.layer_groups():
        mlp = group.mlp
        if getattr(mlp, "kind", "") == "moe":
            widths.append((mlp.d_ff, mlp.top_k, getattr(mlp, "shared_d_ff", 0)))
        elif getattr(mlp, "kind", "") == "dense":
            widths.append((mlp.d_ff, 1, 0))
    if not widths:  # state-space layers only: no MLP
        widths.append((0, 1, 0))
    d_ff, top_k, shared = max(widths, key=lambda w: w[0] * w[1] + w[2])
    return d_ff * top_k + shared, top_k


def context_limit(arch: Any) -> Tuple[int, str]:
    """The longest max-model-len the engine accepts, and why (0: unknown): the model's derived context
    (context_window.derive, as vllm/config/model.py _get_and_verify_max_len derives max_model_len)."""
    return arch.context() if hasattr(arch, "context") else (0, "")


def cuda_total(run: Any) -> Tuple[int, str]:
    """GPU memory the engine takes its fraction of, and a note when it is only the catalog size."""
    budget = run.budget
    if budget is None:
        raise ConfigError(f'run "{run.name}" has engine = "{run.engine}" but no GPU: the KV pool is a share of the GPU\'s memory.',
                          path=run.file, line=run.line, hint='Add gpu = "H100-80GB" (or gpu-memory = "80 GiB").')
    # cudaMemGetInfo's total, which both engines multiply by their fraction: the catalog's (GPU.cuda_total_bytes), below
    # nvidia-smi's total since the driver keeps part of the board's memory
    if budget.cuda_total_bytes:
        return budget.cuda_total_bytes, ""
    return budget.ceiling_bytes, (f"GPU memory as the CUDA runtime reports it is not known for "
                                  f"{budget.gpu or 'a gpu-memory budget'}: the catalog size was used; the engine "
                                  f"sees 0.5 to 2 % less (79.15 of 80 GiB on an A100)")


class Startup(Record):
    """What the engine prints at start-up, per GPU, and whether it starts."""

    engine: str
    version: str
    total_bytes: int  # GPU memory the CUDA runtime reports
    utilization: float  # gpu-memory-utilization / mem_fraction_static
    weights_bytes: int
    activation_bytes: int  # profile-run peak (vLLM); 0 for SGLang, whose fraction leaves room for it
    non_torch_bytes: int  # NCCL buffers, cuBLAS/cuDNN handles outside PyTorch's allocator
    outside_bytes: int  # held on the GPU but outside the engine's share (CUDA context)
    kv_pool_bytes: int  # "Available KV cache memory"
    page_bytes: int  # one block of one layer
    blocks: int  # "num_gpu_blocks"
    tokens: int  # "GPU KV cache size: N tokens"
    max_model_len: int
    max_concurrency: float  # "Maximum concurrency for max-model-len tokens per request: Xx"
    max_num_batched_tokens: int
    max_num_seqs: int
    refusal: str = ""  # the engine's own error when it refuses to start
    notes: Tuple[str, ...] = ()
    items: Tuple[Tuple[str, int], ...] = ()  # finer parts of weights/activations for the report
    approximate: Tuple[str, ...] = ()  # why a figure is not the engine's own (e.g. GPU total from the catalog)
    unmodelled: Tuple[str, ...] = ()  # the subset of ``approximate`` naming engine code not modelled (scored apart)

    @property
    def starts(self) -> bool:
        return not self.refusal


def describe(s: Startup) -> List[str]:
    """The engine's own start-up figures, as it prints them."""
    gib = lambda n: f"{n / GiB:.2f} GiB"  # noqa: E731
    lines = [
        f"{s.engine} {s.version}: {gib(s.total_bytes)} x {s.utilization:g} = {gib(round(s.total_bytes * s.utilization))}; "
        f"weights {gib(s.weights_bytes)}, activation peak {gib(s.activation_bytes)}, non-torch {gib(s.non_torch_bytes)}",
        f"available KV cache memory: {gib(s.kv_pool_bytes)}; GPU KV cache size: {s.tokens:,} tokens",
        f"maximum concurrency for {s.max_model_len:,} tokens per request: {s.max_concurrency:.2f}x",
    ]
    return lines  # a refusal is one of the run's failures, which the report says once


__all__ = ["KVKind", "Startup", "context_limit", "cuda_total", "describe", "kv_kinds",
           "mlp_width"]
