"""Activation memory: the tensors autograd keeps for backward, and one forward's transient peak.

Starting point: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4.1), which counts s*b*h*(34 + 5*a*s/h) bytes per layer for GPT with 16-bit
activations and dropout. Here every saved tensor is counted from the modelling code instead, so
the count follows the architecture (gated MLP, GQA, RMSNorm's fp32 upcast, Python-written GELUs),
the attention kernel (eager keeps the s*s probabilities; flash/SDPA keeps only a log-sum-exp) and
what is trainable (a frozen linear does not keep its input; a LoRA adapter keeps its own copy).
Checked tensor by tensor against PyTorch's saved-tensor hooks on real HF models (shared/validation
groundtruth.jsonl): GPT-2 keeps 28 * s*b*h fp32 per layer, LLaMA in bf16 8 + (4 + 4*f/h).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional, Tuple

from ...record import Record
from .attention_masks import sdpa_layer_mask
from .trainable import FP32, Trainable
from ...model.layers import Attention, Dense, LatentAttention, LayerGroup, Linear, MoE, NoMLP, StateSpace
from ...model.architecture import PYTHON_ACTIVATIONS, Architecture

def norm_saved(arch: Architecture, tokens: int, act: int, weight_trainable: bool, amp: bool, width: int = 0, rows: int = 0,
                kernels: FrozenSet[str] = frozenset()) -> int:
    """What one norm over ``width`` (default: hidden size) keeps (its output is counted by whoever consumes it).

    RMSNorm as HF LLaMA writes it upcasts to fp32, keeps that fp32 copy (for pow and the
    multiply by rsqrt), and keeps the normalised 16-bit tensor for ``weight * x`` when the weight
    trains (see Family.rms_weight for OLMo 2 and Gemma, which keep it in fp32). LayerNorm (``native_layer_norm``) keeps its input
    and two per-row statistics. Under autocast the residual stream and the norms stay fp32.
    """
    fam, h = arch.family, width or arch.hidden_size
    rows = rows or tokens
    stream = FP32 if amp else act
    if fam.norm == "rms" and "rms-norm" in kernels:
        # A fused RMSNorm (Liger, Unsloth) keeps its input as it comes and one fp32 rstd per row
        # (liger_kernel/ops/rms_norm.py:657 save_for_backward(X, W, RSTD); unsloth rms_layernorm.py:205).
        return tokens * h * stream + rows * FP32
    if fam.norm == "rms":
        # OLMo 2 (modeling_olmo2.py Olmo2RMSNorm) multiplies the weight in fp32 and keeps the fp32 x;
        # Gemma also keeps the fp32 (1 + weight) it multiplies by (modeling_gemma2.py Gemma2RMSNorm).
        normalised = stream if fam.rms_weight == "cast" else FP32
        extra = h * FP32 if fam.rms_weight == "gemma" else 0
        return tokens * h * FP32 + (tokens * h * normalised if weight_trainable else 0) + rows * FP32 + extra
    if fam.norm == "layer-nobias":
        # Cohere's LayerNorm is written in Python in fp32 (modeling_cohere.py:60-64 CohereLayerNorm): x - mean
        # is computed twice (pow keeps one, the multiply by rsqrt the other), the rsqrt per row, the fp32
        # copy of the weight (for the input's gradient, 16-bit models only) and, when the weight trains,
        # the normalised fp32 x. Measured (--explain cohere train bf16): 3 fp32 (b, s, h) + (b, s, 1) + (h,) per norm.
        weight_copy = h * FP32 if stream != FP32 else 0
        return 2 * tokens * h * FP32 + (tokens * h * FP32 if weight_trainable else 0) + rows * FP32 + weight_copy
    return tokens * h * stream + 2 * rows * FP32


def _consumer_input(arch: Architecture, names, tokens: int, width: int, act: int, t: Trainable, amp: bool = False) -> int:
    """The input shared by the linears in ``names``, kept once, plus each adapter's own cast copy.

    Under autocast each linear casts an fp32 input to 16 bit itself and keeps its own copy.
    """
    keepers = sum(1 for n in names if t.keeps_input(n, act))
    kept = tokens * width * act * (keepers if amp else min(keepers, 1))
    return kept + sum(t.adapter_kept(n, width, act, tokens) + tokens * t.cast_copy(n, width) for n in names)


class Pass(Record):
    """One forward's shape and what trains in it, as every kind's saved-bytes function needs it."""

    batch: int
    seq: int
    act: int
    flash: bool
    trainable: Trainable
    amp: bool = False
    prefix: int = 0  # virtual positions before every layer's own keys and values (prefix tuning, model/prompts.py)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def _attention_saved(arch: Architecture, attn: Attention, lin: Dict[str, Linear], p: Pass) -> Tuple[int, int]:
    """Softmax attention: (replicated part, tensor-parallel part) kept for backward."""
    fam, tokens, act, t = arch.family, p.tokens, p.act, p.trainable
    a, kv, d = attn.heads, attn.kv_heads, attn.head_dim
    qkv = [lin[r].name for r in ("qkv", "q", "k", "v") if r in lin]
    if t.fast_lora(qkv):  # Unsloth's LoRA_QKV keeps X and the adapter weights (unsloth/kernels/fast_lora.py:418)
        # fms-acceleration's also keeps each module's dropped X (Trainable.fused_dropped)
        shared = tokens * arch.hidden_size * act + tokens * t.fused_dropped(qkv, arch.hidden_size, act)
    else:
        shared = _consumer_input(arch, qkv, tokens, arch.hidden_size, act, t, p.amp) - tokens * t.shared_dropout_saved(qkv, arch.hidden_size, act)
    frozen_in = t.untouched(qkv)
    if frozen_in and not p.prefix:
        # The first layer of an adapter run whose q, k and v are frozen: nothing before o_proj needs a gradient, so
        # the kernel, rotary and softmax keep nothing; an adapted o_proj keeps what its adapter keeps of the kernel's
        # output (measured: tests/data/adapters/vera-mlp.json, MLP-only targets).
        o = lin["o"].name
        return shared, (tokens * a * d * act if t.keeps_input(o, act) else 0) + t.adapter_kept(o, a * d, act, tokens)
    kv_len = p.seq + p.prefix
    if p.prefix:
        # Prefix tuning: each layer's keys and values follow the prefix's (DynamicCache.update, torch.cat), so queries and keys
        # differ in length and transformers builds a mask (masking_utils.py: is_causal only when they agree); with a mask it
        # repeats K and V to every query head (integrations/sdpa_attention.py use_gqa_in_sdpa; eager: repeat_kv). The kernel
        # keeps q and the repeated K and V of seq + prefix positions (measured: tests/data/adapters/prefix-tuning.json).
        kept = tokens * a * d * act + 2 * p.batch * kv_len * a * d * act
    else:
        kept = tokens * (a + 2 * kv) * d * act  # q, k, v as the attention kernel receives them
    rotary = not fam.learned_positions and arch.rotary_dim != 0
    if "qkv" in lin and rotary and ((p.flash and fam.sdpa) or kv == a) and not p.prefix:
        # A fused projection (phi3 qkv_proj, Falcon, GPT-NeoX): rotary makes new q and k, but v stays a
        # view of the whole q+k+v output, which the kernel (or, without GQA, attn @ V) keeps alive.
        kept += tokens * (a + kv) * d * act
    if attn.qk_norm and not frozen_in:  # (a prefix layer's frozen q and k: their norms' inputs need no gradient)
        # q/k RMSNorms (Qwen3, Gemma 3: per head; OLMo 2: over the projection) keep their fp32 input,
        # the normalised tensor when the weight trains, and one rsqrt per row.
        per_head = attn.qk_norm == "head"
        for heads in (a, kv):
            kept += norm_saved(arch, tokens, act, t.full, p.amp, width=heads * d, rows=tokens * (heads if per_head else 1), kernels=t.kernels)
    score_elems = p.batch * a * p.seq * kv_len
    if math_sdpa(attn, t, p.prefix):
        # PyTorch's math SDPA backend (aten/src/ATen/native/transformers/attention.cpp _scaled_dot_product_attention_math):
        # q, k and v upcast to fp32 (allowFP16BF16ReductionMathSDP is off by default), K and V repeated to every query
        # head (pre_process_group_query_attention_input), and the matmuls keep the scaled q, the scaled K^T, the repeated
        # V and the fp32 probabilities (_safe_softmax's result, also attn @ V's input); the 16-bit q, k, v are only
        # cast, so nothing keeps them.
        kept += 3 * tokens * a * d * FP32 + score_elems * FP32 - tokens * (a + 2 * kv) * d * act
        # the (b, H, s, d) output transposed and reshaped (Unsloth's patch) is a copy, o_proj's input
        o_input_kept = tokens * a * d * act if t.keeps_input(lin["o"].name, act) else 0
    elif p.flash and fam.sdpa:
        # SDPA/flash keep their output and a fp32 log-sum-exp per row (Dao et al. 2022), no s*s matrix.
        kept += tokens * a * d * act + p.batch * a * p.seq * FP32
        if attn.window and p.seq >= attn.window and kv < a and not p.prefix:
            # A sliding window as long as the sequence needs a mask (masking_utils._ignore_causal_mask_sdpa skips it
            # only below the window), and with a mask transformers repeats K and V to every query head before SDPA
            # (integrations/sdpa_attention.py use_gqa_in_sdpa: enable_gqa only without one): the kernel keeps the
            # repeated copies (measured: --explain starcoder2 train bf16, 4 (b, H, s, d) per layer).
            kept += 2 * tokens * (a - kv) * d * act
        # The kernel's output takes q's layout. Usually q is a transposed view of the projection ((b, s, H, d)
        # underneath), so the output transposed back is o_proj's input, a view: already counted. A contiguous
        # (b, H, s, d) q makes o_proj's input a transposed copy, kept besides the kernel's output: partial rotary
        # (GLM, GLM-4, Phi-4-mini, GPT-NeoX, phi) concatenates the rotated and pass-through parts (torch.cat:
        # modeling_glm4.py apply_rotary_pos_emb), and rotary on a strided view of a fused projection writes a fresh
        # tensor (Family.fresh_rotary_q: Phi-3). Measured: an autograd-graph walk of 1-layer GLM-4 and Phi-3 (test_families).
        partial_rotary = arch.rotary_dim is not None and 0 < arch.rotary_dim < d and not fam.learned_positions
        fresh_q = partial_rotary or (fam.fresh_rotary_q and rotary)
        o_input_kept = tokens * a * d * act if fresh_q and t.keeps_input(lin["o"].name, act) else 0
    else:
        if attn.sinks:
            # gpt-oss eager: softmax over s + 1 columns (the sink) in the compute dtype keeps its
            # output, and max(dim=-1) keeps int64 indices (modeling_gpt_oss.py eager_attention_forward).
            kept += p.batch * a * p.seq * (p.seq + 1) * act + p.batch * a * p.seq * 8
        else:
            # Eager: softmax keeps its (fp32 when upcast) output, the cast-back copy feeds attn @ V.
            # Autocast runs softmax in fp32 too, and the matmul with V keeps a 16-bit cast.
            upcast = fam.softmax_upcast or p.amp
            kept += score_elems * ((FP32 if upcast else act) + (act if upcast and act != FP32 else 0))
        if attn.softcap:
            kept += score_elems * act  # tanh keeps its output (modeling_gemma2.py: scores / cap, tanh, * cap)
        # Grouped-query attention: eager code repeats K and V to every query head before the
        # matmuls that keep them (HF repeat_kv); SDPA takes the groups as they are (enable_gqa). A prefix's are counted above.
        kept += 0 if p.prefix else 2 * tokens * (a - kv) * d * act
        if p.prefix and frozen_in:
            # the first layer's q needs no gradient, so q @ K^T keeps no K, only q for the prefix's gradient (trace: test_prompts)
            kept -= p.batch * kv_len * a * d * act
        o_input_kept = tokens * a * d * act if t.keeps_input(lin["o"].name, act) else 0
        if arch.attention_dropout:
            # Dropout on the probabilities keeps a 1-byte mask (CUDA native_dropout) and, unless autocast
            # casts it for the matmul (counted above), its output for attn @ V.
            kept += score_elems * (1 + (0 if p.amp else act))
    # Unsloth's LoRA_W keeps o_proj's input and the adapter weights (fast_lora.py:612 save_for_backward(A, B, X))
    # (fms-acceleration's LoRA_W keeps its dropped X too: bnb/fast_lora.py:421 save_for_backward(A, B, X, _dropped_X))
    o_own = tokens * t.fused_dropped([lin["o"].name], a * d, act) if t.fast_lora([lin["o"].name]) \
        else t.adapter_kept(lin["o"].name, a * d, act, tokens)
    o_own += tokens * t.cast_copy(lin["o"].name, a * d)
    kept += o_input_kept + o_own
    return shared, kept


def math_sdpa(attn: Any, trainable: Trainable, prefix: int = 0) -> bool:
    """Whether this attention runs on PyTorch's math SDPA backend: a patch that calls SDPA with a mask and grouped-query
    heads (catalog/kernels.py ``sdpa-math``); without grouped heads the efficient kernel takes the mask."""
    return "sdpa-math" in trainable.kernels and isinstance(attn, Attention) and attn.kv_heads < attn.heads and not prefix


def _latent_saved(arch: Architecture, attn: LatentAttention, lin: Dict[str, Linear], p: Pass) -> Tuple[int, int]:
    """DeepSeek MLA: the down-projections' inputs, the latent norms, the expanded q/k/v and the kernel's own."""
    tokens, act, t, a = p.tokens, p.act, p.trainable, attn.heads
    h = arch.hidden_size
    first = [lin[r].name for r in ("q_a", "q", "kv_a") if r in lin and lin[r].d_in == h]
    shared = _consumer_input(arch, first, tokens, h, act, t, p.amp)
    kept = 0
    if attn.q_lora_rank:
        kept += norm_saved(arch, tokens, act, t.full, p.amp, width=attn.q_lora_rank, kernels=t.kernels)
        kept += _consumer_input(arch, [lin["q"].name], tokens, attn.q_lora_rank, act, t, p.amp)
    kept += norm_saved(arch, tokens, act, t.full, p.amp, width=attn.kv_lora_rank, kernels=t.kernels)
    kept += _consumer_input(arch, [lin["kv"].name], tokens, attn.kv_lora_rank, act, t, p.amp)
    qk, v = attn.head_dim, attn.v_head_dim
    # q and k (nope and rope concatenated into new tensors) and v, a view of kv_b_proj's whole
    # output (nope + v per head) (modeling_deepseek_v3.py DeepseekV3Attention.expand_kv)
    kept += tokens * a * (2 * qk + attn.qk_nope_head_dim + v) * act
    if p.flash:
        kept += tokens * a * v * act + p.batch * a * p.seq * FP32
    else:  # fp32 softmax and its cast back (none in fp32), then attn @ V keeps the o_proj input
        kept += p.batch * a * p.seq * p.seq * (FP32 + (act if act != FP32 else 0)) + tokens * a * v * act
    kept += t.adapter_kept(lin["o"].name, a * v, act, tokens)
    return shared, kept


def _mamba_saved(arch: Architecture, mixer: StateSpace, lin: Dict[str, Linear], p: Pass) -> Tuple[int, int]:
    """Mamba mixer, approximate: the in_proj input and output, the conv output, x_proj/dt_proj outputs,
    the scan's inputs and output (the CUDA selective-scan kernel of mamba-ssm recomputes the states
    in backward; Gu & Dao 2023, section 3.3.2) and the gated output before out_proj."""
    tokens, act, t, di = p.tokens, p.act, p.trainable, mixer.d_inner
    shared = _consumer_input(arch, [lin["in"].name], tokens, arch.hidden_size, act, t, p.amp)
    per_token = 2 * di + di + (mixer.dt_rank + 2 * mixer.d_state) + di + di + di  # in_proj, conv+silu, x_proj, dt, y, gated
    return shared, tokens * per_token * act


def fast_lora_mlp(mlp: Any, lin: Dict[str, Linear], trainable: Trainable) -> bool:
    """Whether Unsloth's LoRA_MLP runs this MLP: a dense gated one with gate, up and down all adapted
    (unsloth/kernels/fast_lora.py LoRA_MLP; Trainable.fast_lora says when the kernel applies at all)."""
    if isinstance(mlp, (NoMLP, MoE)) or not mlp.gated or "down" not in lin:
        return False
    return trainable.fast_lora([lin[r].name for r in ("gate_up", "gate", "up", "down") if r in lin])


def _mlp_saved(arch: Architecture, mlp: Any, lin: Dict[str, Linear], p: Pass) -> Tuple[int, int]:
    """Dense or MoE MLP (no norm): (replicated part, tensor-parallel part)."""
    if isinstance(mlp, NoMLP):
        return 0, 0
    tokens, act, t = p.tokens, p.act, p.trainable
    h, f = arch.hidden_size, mlp.d_ff
    moe = isinstance(mlp, MoE)
    routed = mlp.top_k if moe else 1
    mlp_tokens = tokens * routed  # each token passes through top-k experts
    in_names = [lin[r].name for r in ("gate_up", "gate", "up") if r in lin]
    if fast_lora_mlp(mlp, lin, t):
        # Unsloth's LoRA_MLP keeps X, gate's and up's outputs and recomputes act(gate) * up for down_proj
        # (unsloth/kernels/fast_lora.py:110 save_for_backward(gateA, gateB, upA, upB, downA, downB, X, e, g)).
        # fms-acceleration's keeps the dropped X of gate and up (h wide) and of down (f wide) beside them
        # (bnb/fast_lora.py:97-100 save_for_backward(..., X, e, g, *_dropped_X) @ 733992a)
        gate_up = [lin[r].name for r in ("gate_up", "gate", "up") if r in lin]
        return (tokens * h * act + tokens * t.fused_dropped(gate_up, h, act),
                tokens * f * act * 2 + tokens * t.fused_dropped([lin["down"].name], f, act))
    shared = 0
    if moe:
        # HF Mixtral sparse MoE block: fp32 router softmax, the router's input (when it trains),
        # each expert's gathered copy of its tokens, and expert outputs kept by the routing-weight multiply.
        shared += tokens * mlp.experts * FP32
        shared += tokens * h * act if t.full else 0
        if mlp.router_fp32 and t.full:
            shared += tokens * h * FP32  # DeepSeek routes an fp32 copy of the input (DeepseekV3TopkRouter.forward)
        if t.full:
            shared += _consumer_input(arch, in_names, mlp_tokens, h, act, t, p.amp)
        shared += mlp_tokens * h * act
    else:
        shared += _consumer_input(arch, in_names, mlp_tokens, h, act, t, p.amp)
    extra = PYTHON_ACTIVATIONS.get(arch.act, 0)
    if not moe and t.untouched(in_names):  # the first layer, gate and up frozen: the activation keeps nothing
        return shared, _consumer_input(arch, [lin["down"].name], mlp_tokens, f, act, t)
    if mlp.gated and "glu" in t.kernels and arch.family.glu_saves == 3:
        # Liger's SiLUMul / GELUMul keep gate's and up's outputs, not act(gate) (liger_kernel/ops/swiglu.py:262, geglu.py:138)
        kept = mlp_tokens * f * act * 2
    elif mlp.gated:
        # act(gate) keeps gate's output; act(gate) * up keeps both factors. gpt-oss's clamped SwiGLU
        # keeps gate_up, the clamped gate, its sigmoid, up + 1, the GLU and their product
        # (modeling_gpt_oss.py GptOssExperts._apply_gate): Family.glu_saves.
        kept = mlp_tokens * f * act * (arch.family.glu_saves + extra)
    else:
        kept = mlp_tokens * f * act * (1 + extra)  # fc1 output, kept by the activation
    if not moe or t.full:
        kept += _consumer_input(arch, [lin["down"].name], mlp_tokens, f, act, t)
    else:
        shared += _wrapped_experts_saved(mlp, p, h)
    if moe and mlp.shared_d_ff:
        fs = mlp.shared_d_ff
        kept += tokens * fs * act * 3 + (tokens * fs * act if t.full else 0)
    return shared, kept


def _wrapped_experts_saved(mlp: MoE, p: Pass, h: int) -> int:
    """Routed experts under LoRA: only a 3D expert parameter PEFT wraps keeps anything (frozen ones need no input).

    PEFT's ParamWrapper parametrises the parameter as ``baddbmm(W, lhs, rhs)`` (peft/tuners/lora/layer.py
    _LoraFactorsProxy): a new merged weight of the parameter's full size in the model dtype, which the
    grouped matmul keeps for backward (transformers/integrations/moe.py _grouped_linear hands
    ``weight.transpose(-2, -1)`` to grouped_mm), plus lhs/rhs, the factors cast to the model dtype.
    The gathered tokens feeding an adapted parameter stay too (its merged weight needs a gradient).
    Measured (--explain qwen3_moe lora bf16): (16, 2048, 1536) + (16, 768, 2048) bf16 merged weights,
    (16, 16, 2048) + (16, 1536, 16) and (16, 2048, 8) + (16, 8, 768) bf16 factors, (1024, 2048) and (1024, 768) inputs.
    """
    t, act = p.trainable, p.act
    tokens = p.tokens * mlp.top_k
    n = 0
    for lin in t.experts:
        if lin.count != mlp.experts or lin.d_in not in (h, mlp.d_ff):
            continue  # another MoE kind's experts
        r = t.rank * lin.rank_scale
        n += lin.count * lin.d_in * lin.d_out * act  # the merged weight
        n += lin.count * r * (lin.d_in + lin.d_out) * act if t.adapter_bytes != act else 0  # lhs / rhs casts
        n += tokens * lin.d_in * act  # the input (gathered tokens, or the GLU output for down_proj)
    return n


def held_inputs(arch: Architecture, group: LayerGroup, *, tokens: int, act: int, trainable: Trainable, first: bool) -> int:
    """What one layer's 4-bit linears keep in MatMul4Bit's ctx (bitsandbytes <= 0.43.1), distinct tensors only.

    A ctx attribute is not a saved variable, so backward does not free it (torch/csrc/autograd/python_function.cpp
    releases only saved_variables): it lives as long as the graph, i.e. until the trainer drops its last reference
    to the step's outputs. Linears that share an input share the tensor, unless each casts its own (base_cast).
    """
    t = trainable
    lin = {l.role: l for l in group.linears(arch.family, arch.hidden_size)}
    if first:
        t = t.first_layer(lin)
    total = 0
    for roles in (("qkv", "q", "k", "v", "in", "q_a", "kv_a"), ("o",), ("gate_up", "gate", "up"), ("down",)):
        keeping = [lin[r] for r in roles if r in lin and lin[r].wrap == "module" and t.base_keeps(lin[r].name)]
        if keeping:
            width = keeping[0].d_in
            total += tokens * width * (t.base_cast * len(keeping) if t.base_cast else act)
    return total


_ATTENTION_SAVED = {Attention: _attention_saved, LatentAttention: _latent_saved, StateSpace: _mamba_saved}


def layer_saved(
    arch: Architecture,
    group: Optional[LayerGroup] = None,
    *,
    batch: int,
    seq: int,
    act: int,
    flash: bool,
    trainable: Trainable,
    input_requires_grad: bool = True,
    amp: bool = False,
    tp: int = 1, sp: bool = False, prefix: int = 0, fa: bool = False,
) -> Dict[str, int]:
    """Bytes one decoder layer of ``group`` keeps for backward, by sub-block, on one tensor-parallel rank.

    ``act`` is the compute dtype's size; ``amp`` means fp32 weights under torch.autocast. Tensor
    parallelism splits what lives inside the column/row-parallel region (q, k, v, scores, MLP
    intermediates) ``tp`` ways; the norms and the full-width layer input stay replicated unless
    sequence parallelism splits them too (Korthikanti et al. 2022, eq. 2 and 4).
    """
    group = group or arch.layer_groups()[0]
    fam, h = arch.family, arch.hidden_size
    lin = {l.role: l for l in group.linears(fam, h)}
    if not (input_requires_grad or trainable.full):
        trainable = trainable.first_layer(lin)
    p = Pass(batch, seq, act, flash, trainable, amp, prefix)
    tokens, full = p.tokens, trainable.full
    post_norms = group.norms == 4  # Gemma 2/3, GLM-4: a norm after attention and after the MLP too
    # In a LoRA run the first layer's input comes from a frozen embedding and needs no gradient, so its norm keeps nothing.
    norm = norm_saved(arch, tokens, act, full, amp, kernels=trainable.kernels) if (input_requires_grad or full) else 0
    shared, kept = _ATTENTION_SAVED[type(group.attention)](arch, group.attention, lin, p)
    shared += norm + (norm_saved(arch, tokens, act, full, amp, kernels=trainable.kernels) if post_norms else 0)
    if arch.hidden_dropout:
        shared += tokens * h  # residual dropout mask, 1 byte per element
    # the additive mask SDPA keeps in a sliding layer is (b, 1, s, s) on every tensor-parallel rank
    mask = sdpa_layer_mask(arch, group.attention, batch=batch, seq=seq, act=act, flash=flash, prefix=prefix, fa=fa)
    # In the first layer of an adapter run with frozen attention the residual after it needs no gradient either:
    # the norms on it keep nothing (measured: tests/data/adapters/vera-mlp.json)
    frozen_attention = isinstance(group.attention, Attention) and trainable.untouched(
        [lin[r].name for r in ("qkv", "q", "k", "v", "o") if r in lin])
    if frozen_attention and post_norms:
        shared -= norm_saved(arch, tokens, act, full, amp, kernels=trainable.kernels)
    out = {"attention": shared // (tp if sp else 1) + kept // tp + mask}
    mlp_shared, mlp_kept = _mlp_saved(arch, group.mlp, lin, p)
    if not isinstance(group.mlp, NoMLP):
        # the pre-MLP norm (on the residual) and, with post-norms, the one on the MLP's output
        mlp_norms = (2 if post_norms else 1) - (1 if frozen_attention else 0)
        mlp_shared += norm_saved(arch, tokens, act, full, amp, kernels=trainable.kernels) * mlp_norms if group.norms >= 2 else 0
        if arch.hidden_dropout:
            mlp_shared += tokens * h
    if group.norms == 1 and not amp and isinstance(group.mlp, Dense):
        # Parallel attention and MLP off one norm (Cohere, phi, Falcon-7B): one normalised tensor feeds
        # both, kept once when both sides keep it (measured: --explain cohere train bf16, falcon-7b train bf16).
        attn_in = [lin[r].name for r in ("qkv", "q", "k", "v") if r in lin]
        mlp_in = [lin[r].name for r in ("gate_up", "gate", "up") if r in lin]
        if any(trainable.keeps_input(n, act) for n in attn_in) and any(trainable.keeps_input(n, act) for n in mlp_in):
            mlp_shared -= tokens * h * act
    out["mlp"] = mlp_shared // (tp if sp else 1) + mlp_kept // tp
    return out
