"""One layer's temporaries: what lives beside the saved tensors while a layer runs forward without
grad (prefill, generation, eval) or while its backward runs. Split from :mod:`.activations`, which
counts the tensors autograd keeps; these are the bytes that come and go within a layer.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Optional

from .activations import FP32, fast_lora_mlp, math_sdpa
from .attention_masks import model_masks, sdpa_layer_mask
from .trainable import Trainable
from ...model.layers import LatentAttention, LayerGroup, MoE, NoMLP, StateSpace
from ...model.architecture import Architecture


def _eager_softmax_bytes(arch: Architecture, act: int) -> int:
    """Bytes per attention score alive at once in an eager softmax, its input included.

    ``softmax(x, dim=-1, dtype=torch.float32)`` on a bf16 input converts the input to fp32 first
    (aten/src/ATen/native/SoftMax.cpp softmax(): only a CUDA Half input gets the fused
    half_to_float kernel), so the 16-bit input, its fp32 copy and the fp32 output live together:
    10 bytes per score (measured on an H100: Llama-3.1-8B eager prefill at 8192 tokens,
    benchmarks/data/gpu-peaks-h100-steady.jsonl). fp16 needs 8 (the cast back), counted as bf16.
    """
    if not arch.family.softmax_upcast:
        return 2 * act  # softmax in the compute dtype: its input and output
    return 2 * FP32 if act == FP32 else act + 2 * FP32


def forward_transient(arch: Architecture, group: Optional[LayerGroup] = None, *, batch: int, seq: int, act: int, flash: bool,
                      tp: int = 1, fa: bool = False) -> int:
    """Peak of one layer's temporaries in a no-grad forward (inference prefill), on one tensor-parallel rank.

    MLP: the activation output, the up projection and their product live together (gated) or
    fc1's output and the activation (plain). Attention: q, k, v and the output, plus the s*s
    scores and their fp32 softmax in eager mode, or SDPA's additive copy of a sliding layer's mask.
    Mamba: in_proj's output and the scan's inputs. The residual stream and the norm output sit
    beside, and so do the forward's attention masks (attention_masks.py), whole on every rank.
    """
    group = group or arch.layer_groups()[0]
    h, tokens = arch.hidden_size, batch * seq
    mlp = 0
    if not isinstance(group.mlp, NoMLP):
        routed = group.mlp.top_k if isinstance(group.mlp, MoE) else 1
        mlp = tokens * routed * group.mlp.d_ff * act * (3 if group.mlp.gated else 2)
    at = group.attention
    if isinstance(at, StateSpace):
        attn = tokens * (2 * at.d_inner + at.d_inner + at.dt_rank + 2 * at.d_state + at.d_inner) * act
    else:
        a = at.heads
        kv = at.heads if isinstance(at, LatentAttention) else at.kv_heads
        attn = tokens * (2 * a + 2 * kv) * at.head_dim * act
        if not (flash and arch.family.sdpa):
            sinks = getattr(at, "sinks", False)
            attn += batch * a * seq * (seq + (1 if sinks else 0)) * (FP32 + act if sinks else _eager_softmax_bytes(arch, act))
    layer = (2 * tokens * h * act + max(mlp, attn)) // tp
    mask = sdpa_layer_mask(arch, at, batch=batch, seq=seq, act=act, flash=flash, fa=fa)
    if mask:  # SDPA's additive copy of a sliding layer's mask, whole on every rank, beside the attention's share
        layer = max(layer, (2 * tokens * h * act + attn) // tp + mask)
    return layer + model_masks(arch, batch=batch, seq=seq, act=act, flash=flash, fa=fa)


def backward_transient(arch: Architecture, group: Optional[LayerGroup] = None, *, batch: int, seq: int, act: int,
                       tp: int = 1, trainable: Optional[Trainable] = None, expert_loop: bool = False) -> int:
    """One decoder layer's backward temporaries beyond its saved tensors, on one tensor-parallel rank.

    The MLP's backward is the widest: the gradient of the down projection's input, then the two
    gradients of act(gate) * up and the activation's own (three (tokens, d_ff) tensors in the compute
    dtype for a gated MLP, two for a plain one), beside the (tokens, hidden) gradient flowing out
    (measured on fake tensors: trace_sweep.py llama LoRA with checkpointing, 12.1 MB at 128 tokens =
    128 x (3 x 14336 + 4096) x 2 B). A routed MoE does it for its top-k copies of the tokens at once where its
    experts run as one grouped matmul (transformers 5's default experts_implementation "grouped_mm":
    modeling_utils.py get_correct_experts_implementation, integrations/moe.py grouped_mm_experts_forward), and for one
    expert's tokens at a time where they run in a Python loop (``expert_loop``: :func:`loops_over_experts`).
    Unsloth's LoRA_MLP (``trainable`` says where it runs) makes one: the down projection's input gradient
    DW, into which its SwiGLU backward kernel writes h, df and de over DW, e and g, and dX goes into X
    (unsloth/kernels/fast_lora.py:156 DW = matmul_lora(dY, ...), :157 _backward_function(DW, e, g),
    :194 torch.matmul(df, upW.t(), out = X); unsloth/kernels/swiglu.py:107-109 tl.store into DW, e, g).
    Attention on the math SDPA backend (activations.math_sdpa) makes two fp32 score matrices beside its kept
    probabilities: attn @ V's gradient for the probabilities, then _safe_softmax's (tools/autograd/derivatives.yaml
    _safe_softmax: _softmax_backward_data(grad, result, ...)); the wider of the two sub-blocks counts.
    """
    group = group or arch.layer_groups()[0]
    tokens = batch * seq
    mlp = group.mlp
    exact, mask = 0, 0
    linears = {l.role: l for l in group.linears(arch.family, arch.hidden_size)}
    if isinstance(mlp, NoMLP):
        width = 0
    elif trainable is not None and fast_lora_mlp(mlp, linears, trainable):
        width = mlp.d_ff
        # fms-acceleration's LoRA_MLP backward passes ``dropout=(downX != 0)`` to DW's matmul_lora: a bool (tokens, d_ff)
        # mask beside DW (bnb/fast_lora.py:124-127 @ 733992a), 1 B an element where its dropout is on
        mask = tokens * trainable.fused_dropped([linears["down"].name], mlp.d_ff, 1)
    elif isinstance(mlp, MoE) and expert_loop:
        # One expert's backward at a time: each expert's gather, gate/up, act * up, down and routing-weight multiply is
        # its own chain of autograd nodes, created after the previous expert's index_add_ and before its own, so the
        # engine (ready queue ordered by sequence number, torch/csrc/autograd/engine.cpp) runs one expert's chain to the
        # end, freeing its saved tensors, before the next; only the tokens routed to that expert are in flight, counted
        # as a balanced share, ceil(tokens x top-k / experts) (Mixtral-8x7B: a quarter of the top-2 copies). Measured on
        # the CPU (real tensors, LiveBytes; transformers 5.25 MixtralExperts with experts_implementation "eager", the
        # loop of 4.x's MixtralSparseMoeBlock.forward; 4,096 tokens, h 256, f 1,024, 8 experts, top-2, balanced
        # routing, experts frozen): 7.35 MB above the saved set with the gradient flowing in, this term 8.39 MB;
        # grouped_mm on the same block, 48.2 MB, the other branch 52.4 MB (tests/test_moe_expert_loop.py).
        width, exact = 0, -(-tokens * mlp.top_k // mlp.experts) * mlp.d_ff * (3 if mlp.gated else 2)
    else:
        routed = mlp.top_k if isinstance(mlp, MoE) else 1
        width = routed * mlp.d_ff * (3 if mlp.gated else 2)
    scores = 0
    if trainable is not None and math_sdpa(group.attention, trainable):
        scores = 2 * batch * group.attention.heads * seq * seq * FP32
    return max(tokens * width * act + exact * act + mask, scores) // tp + tokens * arch.hidden_size * act


# transformers 5 made the experts 3D parameters run by integrations/moe.py, grouped_mm by default
# (modeling_utils.py get_correct_experts_implementation at 5.25); every 4.x MoE block (Mixtral's since 4.36,
# MixtralSparseMoeBlock.forward: ``for expert_idx in range(self.num_experts)``, modeling_mixtral.py:136 at 4.48.1,
# ``for expert_idx in expert_hit`` in later 4.x) loops over nn.Linear experts.
EXPERT_LOOP_BEFORE = (5, 0)


def loops_over_experts(knobs) -> bool:
    """Whether the run's MoE blocks run their experts one at a time: the HF stack at a declared 4.x release."""
    version = tuple(getattr(knobs, "framework_version", ()) or ())
    return getattr(knobs, "framework", "") == "transformers" and bool(version) and version < EXPERT_LOOP_BEFORE
