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

from typing import Dict, FrozenSet, NamedTuple

from .model import PYTHON_ACTIVATIONS, Architecture

FP32 = 4
INDEX_BYTES = 8  # int64 token ids / labels


class Trainable(NamedTuple):
    """Which weights get gradients: everything (full training) or LoRA adapters on some modules."""

    full: bool
    adapted: FrozenSet[str] = frozenset()  # module names with a LoRA adapter
    adapter_bytes: int = FP32  # PEFT keeps adapters in fp32 by default

    def adapter_copy(self, name: str, act: int) -> int:
        """Bytes per input element a LoRA adapter on ``name`` keeps beyond the input itself.

        PEFT casts the input to the adapter's dtype before lora_A (peft/tuners/lora/layer.py
        ``_cast_input_dtype``): a new tensor when the dtypes differ, the input itself when not.
        """
        if name not in self.adapted:
            return 0
        return self.adapter_bytes if self.adapter_bytes != act else 0

    def keeps_input(self, name: str, act: int) -> bool:
        """Does the base input of ``name`` stay alive for backward (trainable weight or same-dtype adapter)?"""
        return self.full or (name in self.adapted and self.adapter_bytes == act)


def _norm_saved(arch: Architecture, tokens: int, act: int, weight_trainable: bool, amp: bool) -> int:
    """What one norm keeps (its output is counted by whoever consumes it).

    RMSNorm as HF LLaMA writes it upcasts to fp32, keeps that fp32 copy (for pow and the
    multiply by rsqrt), and keeps the normalised 16-bit tensor for ``weight * x`` when the weight
    trains. LayerNorm (``native_layer_norm``) keeps its input and two per-token statistics.
    Under autocast the residual stream and the norms stay fp32 (torch.autocast op lists).
    """
    h = arch.hidden_size
    stream = FP32 if amp else act
    if arch.family.norm == "rms":
        return tokens * h * FP32 + (tokens * h * stream if weight_trainable else 0) + tokens * FP32
    return tokens * h * stream + 2 * tokens * FP32


def _consumer_input(arch: Architecture, names, tokens: int, width: int, act: int, t: Trainable, amp: bool = False) -> int:
    """The input shared by the linears in ``names``, kept once, plus each adapter's own cast copy.

    Under autocast each linear casts an fp32 input to 16 bit itself and keeps its own copy.
    """
    keepers = sum(1 for n in names if t.keeps_input(n, act))
    kept = tokens * width * act * (keepers if amp else min(keepers, 1))
    return kept + sum(tokens * width * t.adapter_copy(n, act) for n in names)


def layer_saved(
    arch: Architecture,
    *,
    batch: int,
    seq: int,
    act: int,
    flash: bool,
    trainable: Trainable,
    input_requires_grad: bool = True,
    amp: bool = False,
    tp: int = 1,
    sp: bool = False,
) -> Dict[str, int]:
    """Bytes one transformer layer keeps for backward, by sub-block, on one tensor-parallel rank.

    ``act`` is the compute dtype's size; ``amp`` means fp32 weights under torch.autocast. Tensor
    parallelism splits what lives inside the column/row-parallel region (q, k, v, scores, MLP
    intermediates) ``tp`` ways; the norms and the full-width layer input stay replicated unless
    sequence parallelism splits them too (Korthikanti et al. 2022, eq. 2 and 4).
    """
    fam, h, d = arch.family, arch.hidden_size, arch.d_head
    tokens = batch * seq
    a, kv = arch.num_heads, arch.num_kv_heads
    full = trainable.full
    lin = {lin.role: lin for lin in arch.linears()}
    attn_in_names = [lin[r].name for r in ("qkv", "q", "k", "v") if r in lin]
    out: Dict[str, int] = {}

    # Attention block. In a LoRA run the first layer's input comes from a frozen embedding and
    # needs no gradient, so its norm keeps nothing.
    norm = _norm_saved(arch, tokens, act, full, amp) if (input_requires_grad or full) else 0
    attn_shared = norm + _consumer_input(arch, attn_in_names, tokens, h, act, trainable, amp)
    attn = tokens * (a + 2 * kv) * d * act  # q, k, v as the attention kernel receives them
    score_elems = batch * a * seq * seq
    if flash:
        # SDPA/flash keep their output and a fp32 log-sum-exp per row (Dao et al. 2022), no s*s matrix.
        attn += tokens * a * d * act + batch * a * seq * FP32
        o_input_kept = 0  # the kernel output is the o_proj input (a view), already counted
    else:
        # Eager: softmax keeps its (fp32 when upcast) output, the cast-back copy feeds attn @ V.
        # Autocast runs softmax in fp32 too, and the matmul with V keeps a 16-bit cast.
        upcast = fam.softmax_upcast or amp
        attn += score_elems * ((FP32 if upcast else act) + (act if upcast and act != FP32 else 0))
        # Grouped-query attention: eager code repeats K and V to every query head before the
        # matmuls that keep them (HF repeat_kv); SDPA takes the groups as they are (enable_gqa).
        attn += 2 * tokens * (a - kv) * d * act
        o_input_kept = tokens * a * d * act if trainable.keeps_input(lin["o"].name, act) else 0
    if arch.attention_dropout and not flash:
        # Dropout on the probabilities keeps a 1-byte mask (CUDA native_dropout) and, unless autocast
        # casts it for the matmul (counted above), its output for attn @ V.
        attn += score_elems * (1 + (0 if amp else act))
    attn += o_input_kept + tokens * a * d * trainable.adapter_copy(lin["o"].name, act)
    if arch.hidden_dropout:
        attn_shared += tokens * h  # residual dropout mask, 1 byte per element
    out["attention"] = attn_shared // (tp if sp else 1) + attn // tp

    # MLP block.
    mlp_shared = _norm_saved(arch, tokens, act, full, amp) if fam.norms_per_layer == 2 else 0
    mlp = 0
    f = arch.moe_intermediate_size or arch.intermediate_size
    routed = arch.experts_per_token if arch.num_experts else 1
    mlp_tokens = tokens * routed  # each token passes through top-k experts
    in_names = [lin[r].name for r in ("gate", "up") if r in lin]
    if arch.num_experts:
        # HF Mixtral sparse MoE block: fp32 router softmax, the router's input (when it trains),
        # each expert's gathered copy of its tokens, and expert outputs kept by the routing-weight multiply.
        mlp_shared += tokens * arch.num_experts * FP32
        mlp_shared += tokens * h * act if full else 0
        mlp_shared += _consumer_input(arch, in_names, mlp_tokens, h, act, trainable, amp)
        mlp_shared += mlp_tokens * h * act
    else:
        mlp_shared += _consumer_input(arch, in_names, mlp_tokens, h, act, trainable, amp)
    extra = PYTHON_ACTIVATIONS.get(arch.act, 0)
    if fam.gated_mlp:
        # act(gate) keeps gate's output; act(gate) * up keeps both factors.
        mlp += mlp_tokens * f * act * (3 + extra)
    else:
        mlp += mlp_tokens * f * act * (1 + extra)  # fc1 output, kept by the activation
    down_input = _consumer_input(arch, [lin["down"].name], mlp_tokens, f, act, trainable)
    mlp += down_input
    if arch.shared_expert_intermediate_size:
        fs = arch.shared_expert_intermediate_size
        mlp += tokens * fs * act * 3 + (tokens * fs * act if full else 0)
    if arch.hidden_dropout:
        mlp_shared += tokens * h
    out["mlp"] = mlp_shared // (tp if sp else 1) + mlp // tp
    return out


def rotary_tables(arch: Architecture, *, seq: int, act: int) -> int:
    """cos and sin for every position, computed once and kept by each layer's q * cos and
    rotate_half(q) * sin (one storage for the whole model, shaped (1, seq, head_dim) from HF's
    default position_ids; HF RotaryEmbedding)."""
    return 0 if arch.family.learned_positions else 2 * seq * arch.d_head * act


def head_saved(arch: Architecture, *, batch: int, seq: int, act: int, trainable: Trainable, amp: bool = False) -> int:
    """Embedding ids, the final norm and the LM head's input (the loss buffers are counted in ``logits``)."""
    tokens = batch * seq
    n = tokens * INDEX_BYTES * 2  # input ids for the embedding, labels for the loss
    if arch.family.final_norm:
        n += _norm_saved(arch, tokens, act, trainable.full, amp)
    if trainable.full and not arch.family.classifier:
        n += tokens * arch.hidden_size * act  # lm_head input
    if arch.family.embedding_norm:
        n += _norm_saved(arch, tokens, act, trainable.full, amp)
    if arch.hidden_dropout:
        n += tokens * arch.hidden_size  # embedding dropout mask
    return n


def forward_transient(arch: Architecture, *, batch: int, seq: int, act: int, flash: bool) -> int:
    """Peak of one layer's temporaries in a no-grad forward (inference prefill).

    MLP: the activation output, the up projection and their product live together (gated) or
    fc1's output and the activation (plain). Attention: q, k, v and the output, plus the s*s
    scores and their fp32 softmax in eager mode. The residual stream and the norm output sit beside.
    """
    h, d = arch.hidden_size, arch.d_head
    tokens = batch * seq
    a, kv = arch.num_heads, arch.num_kv_heads
    f = arch.moe_intermediate_size or arch.intermediate_size
    routed = arch.experts_per_token if arch.num_experts else 1
    mlp = tokens * routed * f * act * (3 if arch.family.gated_mlp else 2)
    attn = tokens * (2 * a + 2 * kv) * d * act
    if not flash:
        attn += batch * a * seq * seq * (FP32 + act)
    return 2 * tokens * h * act + max(mlp, attn)
