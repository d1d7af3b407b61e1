"""Attention masks: the (batch, 1, seq, seq) tensors transformers 5.24 builds, and where they stay.

A model's forward builds one mask per attention kind it has (full, sliding) and hands it to every
layer of that kind (transformers/masking_utils.py create_causal_mask, create_sliding_window_causal_mask):

- eager attention always gets one, as an additive float mask in the compute dtype
  (masking_utils.py:617 eager_mask: ``torch.where(mask, 0, finfo.min)`` over the (b, 1, q, kv) shape);
- SDPA gets none for full causal attention without padding (masking_utils.py:252-302
  _ignore_causal_mask_sdpa: ``is_causal`` instead), but a boolean one for a sliding layer once the
  sequence reaches its window (masking_utils.py:286), with the batch dimension when an attention_mask
  is passed (generate() and the Trainer's collators always pass one). torch then converts that bool
  mask to an additive mask in the query dtype on every call (aten/src/ATen/native/transformers/
  attention.cpp convert_boolean_attn_mask), and the kernel keeps the converted copy for backward
  (torch/include/torch/csrc/autograd/generated/Functions.h: ScaledDotProductEfficientAttentionBackward0
  ``attn_bias_`` on CUDA, ScaledDotProductFlashAttentionForCpuBackward0 ``attn_mask_`` on the CPU).

Measured on the CPU (torch 2.13, transformers 5.24, a 2-layer LLaMA/Mistral/Gemma 2 at b = 2, s = 256,
bf16; every new storage tracked with a TorchDispatchMode, saved tensors with saved_tensors_hooks):
eager prefill holds one (2, 1, 256, 256) bf16 mask per kind at its peak; eager training keeps none for
backward and none at the peak (the forward's mask is gone before backward); SDPA training with a
sliding window of 64 keeps one (2, 1, 256, 256) bf16 mask per layer for backward; with gradient
checkpointing the forward's mask (float for eager, bool for SDPA) stays, an input that every
checkpointed layer saves (benchmarks/measure_masks.py). The shared ground truth agrees: its
checkpointed eager GPT-2 run (gt04, b 4, s 512, fp32) saved 4 x 512 x 512 x 4 B more than the estimate
counted before this rule (-0.83 %), and now matches to 4 KiB. Padded batches under SDPA (a mask on every
layer) are not modelled: the estimate assumes none.

FlashAttention-2/3 (attn-implementation = "flash_attention_2" / "_3", ``fa``) get no 4D mask at all: their mask function
returns the 2D padding mask or None (transformers 5.25 masking_utils.py:621-660 flash_attention_mask, mapped at :724-725;
4.45.2 models/mistral/modeling_mistral.py:862-873 _update_causal_mask returns None for flash_attention_2 without
padding), and the window goes to the kernel as window_size (integrations/flash_attention.py:34, :86 sliding_window).
A prefix (prefix tuning) changes nothing there: PEFT's prefix mask is all ones, so flash_attention_mask returns None
and flash-attn's causal alignment (bottom-right when q is shorter than k) does the rest.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any

from ...model.layers import Attention, LatentAttention
from ...model.architecture import Architecture


def sdpa_layer_mask(arch: Architecture, attn: Any, *, batch: int, seq: int, act: int, flash: bool, prefix: int = 0,
                    fa: bool = False) -> int:
    """The additive mask torch's SDPA makes from the bool one in a sliding layer at seq >= window: kept
    for backward in training, a transient of that layer's call in a forward without grad. A prefix (prefix tuning)
    gives every layer one, (b, 1, s, prefix + s): queries and keys differ in length, so no is_causal. None under
    FlashAttention-2/3 (``fa``)."""
    if fa:
        return 0
    if prefix and flash and arch.family.sdpa and isinstance(attn, Attention):
        return batch * seq * (seq + prefix) * act
    if flash and arch.family.sdpa and isinstance(attn, Attention) and attn.window and seq >= attn.window:
        return batch * seq * seq * act
    return 0


def model_masks(arch: Architecture, *, batch: int, seq: int, act: int, flash: bool, fa: bool = False) -> int:
    """The masks one forward builds for all its layers (one per attention kind), alive until it returns:
    float in the compute dtype for eager attention, bool (1 byte) for SDPA's sliding layers, none for FlashAttention-2/3."""
    if fa and flash and arch.family.sdpa:
        return 0
    eager = not (flash and arch.family.sdpa)
    kinds = {}  # window (0: full) -> needs a mask
    for group in arch.layer_groups():
        attn = group.attention
        if isinstance(attn, (Attention, LatentAttention)):
            window = getattr(attn, "window", 0)
            kinds[bool(window)] = kinds.get(bool(window), False) or eager or bool(window and seq >= window)
    return sum(batch * seq * seq * (act if eager else 1) for needed in kinds.values() if needed)
