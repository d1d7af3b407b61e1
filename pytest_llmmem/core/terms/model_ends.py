"""What the layers' surroundings keep for backward: the token ids and labels, the embedding and final
norms, the head's input and its adapters' tensors, and the rotary tables every layer reads.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from ...model.architecture import Architecture
from .activations import norm_saved
from .trainable import Trainable

INDEX_BYTES = 8  # int64 token ids / labels


def rotary_tables(arch: Architecture, *, seq: int, act: int) -> int:
    """cos and sin for every position, computed once and kept by each layer's q * cos and
    rotate_half(q) * sin (one storage for the whole model, shaped (1, seq, rotary dims) from HF's
    default position_ids; HF RotaryEmbedding)."""
    if arch.family.learned_positions:
        return 0
    dims = arch.d_head if arch.rotary_dim is None else arch.rotary_dim
    return 2 * seq * dims * act


def head_saved(arch: Architecture, *, batch: int, seq: int, act: int, trainable: Trainable, amp: bool = False) -> int:
    """Embedding ids, the final norm and the LM head's input (the loss buffers are counted in ``logits``)."""
    tokens = batch * seq
    n = tokens * INDEX_BYTES * 2  # input ids for the embedding, labels for the loss
    if arch.family.final_norm:
        n += norm_saved(arch, tokens, act, trainable.full, amp, kernels=trainable.kernels)
    h = arch.hidden_size
    if (trainable.full or trainable.keeps_input("lm_head", act)) and not arch.family.classifier:
        n += tokens * h * act  # lm_head input
    # An adapted head keeps what an adapted linear keeps (adapters.lora_saved); an adapted embedding keeps
    # lora_embedding_A's r-wide output for B's gradient (peft/tuners/lora/layer.py Embedding.forward: after_A @ B;
    # it applies no dropout). Measured: tests/data/adapters/lora-head.json, lora-embed.json.
    n += trainable.adapter_kept("lm_head", h, act, tokens)
    if "embed_tokens" in trainable.adapted:
        n += tokens * trainable.rank * trainable.adapter_bytes
    if arch.family.embedding_norm:
        n += norm_saved(arch, tokens, act, trainable.full, amp, kernels=trainable.kernels)
    if arch.hidden_dropout:
        n += tokens * arch.hidden_size  # embedding dropout mask
    return n
