"""vLLM's start-up, as its worker and KV-cache manager do it.

1. requested = gpu_memory_utilization x total GPU memory (vllm/v1/worker/gpu_worker.py init_device;
   V1 refuses to start when that is more than the memory free at start-up).
2. determine_available_memory runs a dummy batch of max_num_batched_tokens tokens spread over
   min(max_num_seqs, tokens) requests, then a dummy sampler run on one row per request
   (vllm/v1/worker/gpu_model_runner.py profile_run / _dummy_sampler_run), and keeps
   available = requested - (weights + torch peak increase + non-torch increase)
   (gpu_worker.py determine_available_memory, vllm/utils memory_profiling). CUDA graphs are
   captured afterwards and are not subtracted (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS is off by
   default, vllm/envs.py).
3. The pool is cut into blocks of block_size tokens per layer, by each layer kind's page size
   (vllm/v1/kv_cache_interface.py), and grouped as vllm/v1/core/kv_cache_utils.py does; it logs
   "GPU KV cache size: N tokens" and "Maximum concurrency for L tokens per request: Xx", and refuses to
   start when one max_model_len request does not fit (_check_enough_kv_cache_memory).

The profile run changed across releases (the dummy sampler's cost, the V0 engine's defaults); the
``engine-version`` key selects it, default :data:`DEFAULT_VERSION`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

from ..catalog.builtin import NF4_BYTES
from ..catalog.registry import default_catalog
from ..errors import ConfigError
from ..model.context_window import rope_scaled
from .serve import KVKind, Startup, context_limit, cuda_total, kv_kinds, mlp_width
from .vllm_kernels import awq_split_k_width, fp8_block_scales, fused_moe_workspace, quantization_config, router_params
from ..units import GiB
from ..values import release

DEFAULT_VERSION = "0.11"  # the newest release with published start-up logs in benchmarks/data/serving-logs.jsonl
# vllm CacheConfig.block_size default on CUDA.
BLOCK_SIZE = 16
# Vocabulary tables are padded to a multiple of 64 (vllm/model_executor/layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE).
VOCAB_PADDING = 64
# Dummy sampler run, bytes per (request x vocabulary entry): the PyTorch top-k/top-p path keeps bf16
# logits, their fp32 copy, sorted values, int64 sort indices, softmax, the scattered result, probs
# and exponential noise (vllm/v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p: ~36 B).
# Fitted: 38.3 B on the vLLM 0.11 log of Qwen3-0.6B (forward negligible; llm-d empirical results),
# 36.4 B on the vLLM 0.8.2 V0 log of Phi-4; checked on Llama-3.1-8B, gpt-oss-20b, Qwen3-32B (< 1 %).
TORCH_SAMPLER_BYTES = 38
# vLLM 0.8 - 0.10 V1 sampled through FlashInfer when installed (no sort): fp32 logits + probs. The
# 0.10.1.1 Qwen2-7B log leaves at most 6 B per entry beside the forward peak. vLLM <= 0.6 shows no
# sampler in its profile peak: issue 10517's 35k log peaks 0.06 GiB above the weights, the forward of
# its 512-token chunk alone, where 256 rows of fp32 logits would be 0.12 GiB.
FLASHINFER_SAMPLER_BYTES = 8
# Non-torch memory the profile finds (NCCL buffers and handles since the start-up snapshot):
# 0.13-0.14 GiB on one GPU, 0.54-0.55 GiB per GPU at tensor-parallel 2 (llm-d vLLM 0.11 H100 logs);
# 0.09 GiB in the vLLM 0.8.2 V0 Phi-4 log.
NON_TORCH_BYTES = round(0.13 * GiB)
NON_TORCH_TP_BYTES = round(0.55 * GiB)
# The V0 engine of 0.7 - 0.10 (worker.py determine_num_available_blocks) finds less: 0.09 GiB (0.8.2,
# Phi-4 on an A100) and 0.05 GiB (0.8.2, Llama-3.2-3B on a T4) in the two published one-GPU logs.
NON_TORCH_V0_BYTES = round(0.07 * GiB)
# vLLM <= 0.6 measured non-torch memory from zero, CUDA context included: 0.35 GiB (issue 10517, RTX 3090).
NON_TORCH_V0_OLD_BYTES = round(0.35 * GiB)
# CUDA context and NCCL set up before the start-up snapshot, outside the utilization share: an H100
# shows 78.57 of 79.18 GiB free when vLLM starts (llm-d logs).
CONTEXT_BYTES = round(0.61 * GiB)

# --quantization: bytes per quantised weight, which weights it covers, source.
QUANTIZATION = {
    "fp8": (1.0, "linears", "fp8 weights, one fp32 scale per tensor (vllm fp8.py Fp8LinearMethod)"),
    # int4 packed in int32, one fp16 scale and one 4-bit zero per group of 128 input rows (AutoAWQ/GPTQ layouts).
    "awq": (0.5 + 2.5 / 128, "linears", "AWQ int4, group 128"),
    "gptq": (0.5 + 2.5 / 128, "linears", "GPTQ int4, group 128"),
    "bitsandbytes": (NF4_BYTES, "linears", "bitsandbytes NF4 with double quantisation"),
    # 4-bit E2M1 plus one E8M0 scale per 32 (OCP MX spec); gpt-oss quantises only the experts
    # (its quantization_config modules_to_not_convert: attention, router, embeddings, head).
    "mxfp4": (0.5 + 1 / 32, "experts", "MXFP4 experts"),
}
QUANTIZATIONS = tuple(QUANTIZATION)


def version_tuple(text: str) -> Tuple[int, int]:
    """(major, minor) of an engine-version, checked as a release where the run was read (config/serve_keys.py)."""
    parts = release(text)
    if parts is None:
        raise ConfigError(f'engine-version "{text}" is not a release number.', key="engine-version", hint='For example "0.11.0".')
    return parts[0], parts[1]


def _hopper_or_newer(run: Any) -> bool:
    gpu = (run.budget.gpu or "") if run.budget else ""
    return gpu.upper().startswith(("H100", "H200", "B200", "GB200"))


def _linear_params(arch: Any) -> Tuple[int, int]:
    """(all layer weight-matrix params, the routed experts' share of them)."""
    linears = [(n, lin) for n, group in arch.group_linears() for lin in group]
    total = sum(n * lin.params for n, lin in linears)
    experts = sum(n * lin.params for n, lin in linears if lin.count > 1)
    return total, experts


def checkpoint_quantization(arch: Any) -> str:
    """The checkpoint's own format: vLLM reads quantization_config.quant_method from config.json
    when --quantization is not given (vllm/config ModelConfig._verify_quantization)."""
    method = quantization_config(arch).get("quant_method")
    return method if method in QUANTIZATION else ""


def weights(run: Any, arch: Any, tp: int) -> Tuple[int, List[Tuple[str, int]]]:
    """Weights on one GPU: the checkpoint's params in their format, split over tensor parallelism, plus
    vLLM's padded vocabulary and its rotary cos/sin cache."""
    act = run.dtype.compute_bytes
    router = router_params(arch)
    params = arch.param_count() - router
    linear, experts = _linear_params(arch)
    linear -= router
    quant = run.serve.quantization or checkpoint_quantization(arch)
    items: List[Tuple[str, int]] = [("weights.router_replicated", router * act)] if router else []
    if quant:
        per, covers, _ = QUANTIZATION[quant]
        quantised = experts if covers == "experts" else linear
        pad = 1.0
        if quant == "mxfp4" and experts:
            f_rank, h = max(1, (arch.moe_intermediate_size or arch.intermediate_size) // tp), arch.hidden_size
            moe = [g.mlp for g in arch.layer_groups() if getattr(g.mlp, "kind", "") == "moe"]
            if moe:
                f_rank = max(1, moe[0].d_ff // tp)
            # The expert matrices are padded for the kernels: Marlin (pre-Hopper) to hidden % 256 and
            # intermediate % 128 (vllm/model_executor/layers/quantization/mxfp4.py); on Hopper the
            # triton-kernels swizzle pads hidden to 256 (fitted: gpt-oss-20b / -120b logs within 0.3 %).
            h_pad = math.ceil(h / 256) * 256
            f_pad = f_rank if _hopper_or_newer(run) else math.ceil(f_rank / 128) * 128
            pad = h_pad * f_pad / (h * f_rank)
        items.append((f"weights.{quant}", round(quantised * per * pad / tp)))
        items.append(("weights.16bit", round((params - quantised) * act / tp)))
        if quant == "fp8" and fp8_block_scales(arch, tp):
            items.append(("weights.fp8_block_scales", fp8_block_scales(arch, tp)))
    elif run.dtype.quantized:
        items.append((f"weights.{run.dtype.name}", round(linear * run.dtype.bytes / tp)))
        items.append(("weights.16bit", round((params - linear) * act / tp)))
    else:
        items.append(("weights.params", round(params * run.dtype.bytes / tp)))
    padded = math.ceil(arch.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
    tables = 1 if arch.tie_embeddings else 2
    if padded != arch.vocab_size:
        items.append(("weights.vocab_padding", (padded - arch.vocab_size) * arch.hidden_size * act * tables // tp))
    # vLLM's get_rope sizes a scaled rope's cache per type (llama3, yarn, longrope...): only unscaled ones are counted
    positions = 0 if rope_scaled(arch.config) else context_limit(arch)[0]
    rotary = getattr(arch, "rotary_dim", None)
    rotary = arch.d_head if rotary is None else rotary
    if positions and rotary and not arch.family.learned_positions:
        # One cos/sin cache of (max_position, rotary_dim) in the model dtype (vllm rotary_embedding.py _compute_cos_sin_cache).
        items.append(("weights.rotary_cache", positions * rotary * act))
    return sum(v for _, v in items), items


def compute_capability(run: Any) -> Optional[Tuple[int, int]]:
    """The declared card's CUDA compute capability (catalog GPU.compute_capability; None: not known)."""
    gpu = run.budget.gpu if run.budget else None
    return default_catalog().gpu(gpu).compute_capability if gpu else None


def _era(run: Any) -> Tuple[str, Tuple[int, int]]:
    """"v0-old" (<= 0.6), "v0" (0.7, or a V0 fallback), "v1-flashinfer" (0.8 - 0.10) or "v1" (>= 0.11)."""
    version = version_tuple(run.serve.engine_version or DEFAULT_VERSION)
    if version < (0, 7):
        return "v0-old", version
    # vLLM 0.8/0.9 fell back to the V0 engine for bitsandbytes (V1 oracle in vllm/engine/arg_utils.py).
    if version < (0, 8) or (run.serve.quantization == "bitsandbytes" and version < (0, 10)):
        return "v0", version
    # 0.8 - 0.10 also fell back below compute capability 8.0 ("Compute Capability < 8.0 is not supported by
    # the V1 Engine. Falling back to V0.": _is_v1_supported_oracle, vllm/engine/arg_utils.py v0.8.x - v0.10.x,
    # "current_platform.get_device_capability().major < 8"); 0.11 removed V0 and runs V1 there.
    capability = compute_capability(run)
    if version < (0, 11) and capability is not None and capability < (8, 0):
        return "v0", version
    # 0.8 - 0.9 also fell back for an fp8 KV cache unless FlashAttention 3 takes fp8 (Hopper): the same oracle,
    # "--kv-cache-dtype" (flash_attn_supports_fp8); 0.10 asks the platform instead.
    if (version < (0, 10) and run.serve.kv_cache_dtype.startswith("fp8") and capability is not None
            and capability[0] != 9):
        return "v0", version
    return ("v1-flashinfer" if version < (0, 11) else "v1"), version


def _scheduler_defaults(run: Any, era: str, total: int, max_len: int) -> Tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM picks them when not given."""
    s = run.serve
    if era.startswith("v0"):
        # V0 without chunked prefill schedules a whole prompt: max(max_model_len, 2048); chunked prefill
        # is on by default above 32k tokens with 512-token chunks (vllm/config.py SchedulerConfig;
        # issue 10517: 0.06 GiB activation peak at 35k).
        tokens = 512 if max_len > 32768 else max(max_len, 2048)
        seqs = 256
    else:
        # V1 server defaults: 8192 tokens / 1024 sequences on >= 70 GiB GPUs other than the A100, else
        # 2048 / 256 (vllm/engine/arg_utils.py _set_default_args; tests/engine/test_arg_utils.py).
        gpu = (run.budget.gpu or "") if run.budget else ""
        big = total >= 70 * GiB and not gpu.upper().startswith("A100")
        tokens, seqs = (8192, 1024) if big else (2048, 256)
    return s.max_num_batched_tokens or tokens, s.max_num_seqs or seqs


def activation_peak(run: Any, arch: Any, era: str, tokens: int, seqs: int, tp: int) -> Tuple[int, List[Tuple[str, int]]]:
    """The profile run's torch peak above the weights: the larger of the dummy forward and the dummy sampler.

    Forward: per token the fused gate_up output (2 f), the activation's output (f) and three
    hidden-size tensors (residual, hidden, norm output); fused MoE adds each routed copy's output
    (vllm fused_moe intermediate_cache3). The slope matches vLLM issue 10517's two logs exactly
    (2.07 GiB at 20,000 tokens, 2.99 GiB at 29,000, Llama-3.1-8B: 110,592 B per token).
    """
    act, h = run.dtype.compute_bytes, arch.hidden_size
    f_token, top_k = mlp_width(arch)
    forward = tokens * (3 * f_token // tp + (3 + (top_k if top_k > 1 else 0)) * h) * act
    quant = run.serve.quantization or checkpoint_quantization(arch)
    if quant == "awq" and version_tuple(run.serve.engine_version or DEFAULT_VERSION) < (0, 3):
        forward = tokens * (3 * h + awq_split_k_width(arch, tp)) * act
    elif top_k > 1 and quant != "mxfp4":  # mxfp4 experts run other kernels (triton_kernels / Marlin), fitted above
        forward = tokens * 3 * h * act + fused_moe_workspace(arch, tokens, tp, act, fp8=quant == "fp8")
    per_entry = {"v0-old": 0, "v1-flashinfer": FLASHINFER_SAMPLER_BYTES}.get(era, TORCH_SAMPLER_BYTES)
    requests = min(seqs, tokens)
    # The sampler's logits are gathered to the full vocabulary on every rank (vllm logits_processor).
    sampler = requests * arch.vocab_size * per_entry + tokens * h * act
    items = [("activations.profile_forward", forward), ("activations.profile_sampler", sampler)]
    return max(forward, sampler), items


def _pool(kinds: List[KVKind], avail: int, block: int, max_len: int, batched: int, hybrid: bool) -> Tuple[int, int, int, int]:
    """(page bytes, blocks, tokens, blocks one max_len request needs), as kv_cache_utils.py cuts the pool."""
    attention = [k for k in kinds if k.kind != "mamba"]
    if not attention:
        # Attention-free (Mamba): one block per request holding every layer's state (MambaSpec, one
        # page per sequence); the printed token count is that many max_len sequences.
        state = sum(k.layers * k.bytes_per_token for k in kinds) or 1
        blocks = max(0, avail // state)
        return state, blocks, blocks * max_len, 1
    uniform = len({(k.kind == "sliding", k.window) for k in attention}) <= 1 or not hybrid
    if uniform:
        # One group: every layer gets a page per block (get_kv_cache_config_from_groups, uniform type).
        layer_pages = sum(k.layers * k.bytes_per_token * block for k in attention) or 1
        blocks = max(0, avail // layer_pages)
        page = attention[0].bytes_per_token * block
        return page, blocks, blocks * block, math.ceil(max_len / block)
    # Hybrid: groups of group_size layers share one pool of equal pages (_get_kv_cache_groups_uniform_page_size).
    counts = [k.layers for k in attention]
    group_size = max(counts) if max(counts) < min(counts) * 1.5 else min(counts)
    page = max(k.bytes_per_token for k in attention) * block
    blocks = max(0, avail // page // group_size)
    groups, per_request = 0, 0
    for k in attention:
        n = math.ceil(k.layers / group_size)
        groups += n
        if k.kind == "sliding":
            # SlidingWindowSpec.max_memory_usage_bytes: the window plus one chunk, +1 block for alignment.
            need = math.ceil(min(k.window - 1 + batched, max_len) / block) + 1
        else:
            need = math.ceil(max_len / block)
        per_request += n * need
    return page, blocks, blocks // groups * block, per_request


def _unmodelled(run: Any, arch: Any, version: Tuple[int, int], tp: int) -> List[str]:
    """Why a start-up figure is not modelled from its source here (each said, never a silent number)."""
    out = []
    quant = run.serve.quantization or checkpoint_quantization(arch)
    moe = mlp_width(arch)[1] > 1
    if version < (0, 3):
        # vLLM 0.2.x: Mixtral's experts ran one by one over every token (models/mixtral.py, 0.2.6-0.2.7) and
        # AWQ through split-K awq_gemm (vllm_kernels.awq_split_k_width); what else its profile run held is not
        # found in that source (issue 2382's log leaves ~12 GiB per GPU beyond both).
        out.append("vLLM < 0.3: the 0.2 engine's profile run is modelled only in part (AWQ's split-K buffers and the "
                   "dense per-expert MoE loop are counted); an AWQ Mixtral log at TP 2 (vLLM issue 2382) printed a pool "
                   "2.9x smaller than this estimate")
    if moe and quant == "fp8" and fp8_block_scales(arch, tp) and tp >= 4:
        out.append("block-fp8 MoE at tensor-parallel >= 4: the block scales, whole routers and the Triton fused-MoE "
                   "buffers are counted; the other FP8 MoE kernels' workspaces (DeepGEMM, CUTLASS grouped GEMM) and "
                   "NCCL's buffers at 4-8 ranks are not, and published logs printed 13-26 % fewer KV tokens before them")
    return out


def startup(run: Any) -> Startup:
    arch, s = run.model, run.serve
    tp = run.tensor_parallel
    era, version = _era(run)
    total, total_note = cuda_total(run)
    util = s.gpu_memory_utilization if s.gpu_memory_utilization is not None else 0.9  # vllm CacheConfig default
    max_len = s.max_model_len or context_limit(arch)[0] or run.seq_len
    batched, seqs = _scheduler_defaults(run, era, total, max_len)
    w, w_items = weights(run, arch, tp)
    peak, a_items = activation_peak(run, arch, era, batched, seqs, tp)
    if era == "v0-old":
        non_torch, outside = NON_TORCH_V0_OLD_BYTES, 0
    elif era == "v0" and tp == 1:
        non_torch, outside = NON_TORCH_V0_BYTES, CONTEXT_BYTES
    else:
        non_torch, outside = (NON_TORCH_TP_BYTES if tp > 1 else NON_TORCH_BYTES), CONTEXT_BYTES
    requested = math.ceil(total * util)
    avail = requested - w - peak - non_torch
    kv_bytes = 1 if s.kv_cache_dtype.startswith("fp8") else run.dtype.compute_bytes
    block = s.block_size or BLOCK_SIZE
    kinds = kv_kinds(arch, kv_bytes, tp)
    page, blocks, tokens, per_request = _pool(kinds, max(avail, 0), block, max_len, batched, hybrid=not era.startswith("v0"))
    concurrency = blocks / per_request if per_request else 0.0
    if era.startswith("v0"):
        concurrency = tokens / max_len
    refusal = ""
    if not era.startswith("v0") and requested > total - outside:
        refusal = (f"Free memory on device ({(total - outside) / GiB:.2f}/{total / GiB:.2f} GiB) on startup is less than desired "
                   f"GPU memory utilization ({util}, {requested / GiB:.2f} GiB).")
    elif avail <= 0:
        refusal = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
    elif era.startswith("v0") and tokens < max_len:
        refusal = (f"The model's max seq len ({max_len}) is larger than the maximum number of tokens that can be stored "
                   f"in KV cache ({tokens}). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`.")
    elif not era.startswith("v0") and concurrency < 1:
        refusal = (f"To serve at least one request with the model's max seq len ({max_len}), more KV cache is needed than "
                   f"the available KV cache memory ({avail / GiB:.2f} GiB). Try increasing `gpu_memory_utilization` "
                   f"or decreasing `max_model_len`.")
    notes, approximate = [], [n for n in (total_note,) if n]
    if any(k.kind == "mamba" for k in kinds) and any(k.kind != "mamba" for k in kinds):
        approximate.append("Mamba state pages are padded to the attention page size by vLLM; counted unpadded")
    unmodelled = _unmodelled(run, arch, version, tp)
    approximate += unmodelled
    notes.append("CUDA graphs are captured after the KV pool is sized and use memory beyond the utilization share "
                 "(-0.45 to +1.88 GiB in published logs); not counted" if not s.enforce_eager else "enforce-eager: no CUDA graphs")
    label = f"{version[0]}.{version[1]}" + (" (V0 engine)" if era.startswith("v0") else "")
    return Startup(
        "vllm", label, total, util, w, peak, non_torch, outside, max(avail, 0), page, blocks, tokens, max_len,
        concurrency, batched, seqs, refusal, tuple(notes), tuple(w_items + a_items), tuple(approximate),
        tuple(unmodelled),
    )
