"""What vLLM's quantised layers and kernels hold beside the plain weights, each from its source: whole
routers, block-fp8 scales, the fused-MoE kernel's buffers and vLLM 0.2's AWQ split-K buffers.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Any

from .serve import mlp_width

# Row-parallel linears split their input over tensor parallelism, the others their output
# (vllm/model_executor/layers/linear.py RowParallelLinear vs ColumnParallelLinear / QKVParallelLinear).
ROW_PARALLEL = ("o", "down", "shared_down")
# MoE routers are whole on every rank and never quantised: vLLM builds them as ReplicatedLinear(...,
# quant_config=None) (model_executor/models/qwen3_moe.py, mixtral.py, deepseek_v2.py Qwen3MoeSparseMoeBlock /
# MixtralMoE / DeepseekV2MoE .gate; gpt_oss.py a plain bf16 nn.Linear); SGLang's models do the same.
ROUTER_ROLES = ("router", "shared_router")


def router_params(arch: Any) -> int:
    return sum(n * lin.params for n, group in arch.group_linears() for lin in group if lin.role in ROUTER_ROLES)


def quantization_config(arch: Any) -> dict:
    config = getattr(arch, "config", None)
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return qc if isinstance(qc, dict) else {}


def fp8_block_scales(arch: Any, tp: int) -> int:
    """Bytes of block-fp8 weight scales on one rank: one fp32 weight_scale_inv per block_n x block_k block
    of every quantised matrix, (ceil(out / bn), ceil(in / bk)) per matrix and expert (vllm
    quantization/fp8.py Fp8LinearMethod.create_weights and Fp8MoEMethod.create_weights with
    weight_block_size); 0 for a per-tensor fp8 checkpoint (one scale per matrix)."""
    block = quantization_config(arch).get("weight_block_size")
    if not (isinstance(block, (list, tuple)) and len(block) == 2):
        return 0
    bn, bk = int(block[0]), int(block[1])
    total = 0
    for n, group in arch.group_linears():
        for lin in group:
            if lin.role in ROUTER_ROLES:
                continue
            if lin.role in ROW_PARALLEL:
                d_in, d_out = max(1, lin.d_in // tp), lin.d_out
            else:
                d_in, d_out = lin.d_in, max(1, lin.d_out // tp)
            total += n * lin.count * math.ceil(d_out / bn) * math.ceil(d_in / bk) * 4
    return total



# fused_experts_impl works on chunks of at most this many tokens (vllm/envs.py VLLM_FUSED_MOE_CHUNK_SIZE default).
FUSED_MOE_CHUNK = 32768
# The fp8 kernels quantise activations per token group of 128 (fp8_utils.py per_token_group_quant_fp8).
FP8_GROUP = 128


def fused_moe_workspace(arch: Any, tokens: int, tp: int, act: int, fp8: bool) -> int:
    """Per-token-chunk buffers of vLLM's Triton fused MoE on one rank, beside the residual stream
    (model_executor/layers/fused_moe/fused_moe.py fused_experts_impl): cache13 = M x top_k x max(N, K)
    (cache1 and cache3 share it), cache2 = M x top_k x N/2, with M = min(tokens, chunk), N = 2 x the
    rank's expert width, K = hidden; fp8 weights also quantise both GEMM inputs to fp8 with one fp32
    scale per group of 128 (moe_kernel_quantize_input); the router's logits and the top-k weights and
    ids (fp32 / int32); a shared expert's output (hidden) waits beside them. 0 without routed experts."""
    moe = [g.mlp for g in arch.layer_groups() if getattr(g.mlp, "kind", "") == "moe"]
    if not moe:
        return 0
    m, h = min(tokens, FUSED_MOE_CHUNK), arch.hidden_size
    worst = 0
    for mlp in moe:
        f, k = max(1, mlp.d_ff // tp), mlp.top_k
        size = m * k * (max(2 * f, h) + f) * act + m * (mlp.experts * act + k * 8)
        if fp8:
            size += m * (h + 4 * math.ceil(h / FP8_GROUP)) + m * k * (f + 4 * math.ceil(f / FP8_GROUP))
        if mlp.shared_d_ff:
            size += m * h * act
        worst = max(worst, size)
    return worst


# vLLM 0.2.x ran every AWQ GEMM through awq_gemm with split_k_iters = pack_factor = 8 (quantization/awq.py
# apply_weights; the dequantise-then-matmul path for >= 256 tokens came in 0.3, PR #2566): the kernel fills an
# (8, tokens, out) fp16 buffer and returns its sum (csrc/quantization/awq/gemm_kernels.cu gemm_forward_cuda).
AWQ_SPLIT_K = 8


def awq_split_k_width(arch: Any, tp: int) -> int:
    """Elements per token live at vLLM 0.2's AWQ MLP peak on one rank. Mixtral-style MoE (models/mixtral.py,
    0.2.7): experts whole on a rank, each run over every token; the peak is w3's split-K buffer and its sum
    beside w1's activated output: (8 + 1 + 1) x f. Dense: the merged gate_up GEMM, (8 + 1) x 2f / tp."""
    f_token, top_k = mlp_width(arch)
    if top_k > 1:
        return (AWQ_SPLIT_K + 2) * (f_token // top_k)
    return (AWQ_SPLIT_K + 1) * 2 * f_token // tp


__all__ = ["AWQ_SPLIT_K", "FUSED_MOE_CHUNK", "ROUTER_ROLES", "awq_split_k_width", "fp8_block_scales",
           "fused_moe_workspace", "quantization_config", "router_params"]
