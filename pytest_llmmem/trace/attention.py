"""Attention (and dropout) as the CUDA kernels run it, for a trace on the CPU build of torch.

A CPU-build trace runs CPU kernels, so ``F.scaled_dot_product_attention`` would choose among the
CPU backends. On a GPU, SDPA picks flash attention when there is no mask and the head fits
(16-bit inputs, head_dim <= 256), else the memory-efficient kernel, which takes the mask
(torch/nn/attention SDPBackend order; aten/src/ATen/native/transformers/cuda/sdp_utils.cpp).
This function calls those CUDA operators directly: under ``FakeTensorMode`` they run their meta
functions (torch/_meta_registrations.py ``meta__scaled_dot_product_flash_attention`` /
``meta__scaled_dot_product_efficient_attention``) on fake CPU tensors, and autograd saves what
their derivative formulas name (tools/autograd/derivatives.yaml): query, key, value, the output
and an fp32 log-sum-exp of (batch, heads, queries), plus the mask for the efficient kernel.
The kernels' workspaces inside backward (flash's fp32 dq accumulator) have no meta allocation and
are not seen.

Which kernel runs depends on whether transformers builds a mask, and on fake tensors it would build
one a GPU does not: :func:`gpu_mask_decisions`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import torch

NAME = "llmmem_cuda_sdpa"
DESCRIPTION = ("SDPA as the CUDA flash / memory-efficient kernels (their aten operators' meta functions: "
               "output and an fp32 log-sum-exp saved)")
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256


def cuda_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
              is_causal: Optional[bool] = None, **kwargs) -> Tuple[torch.Tensor, None]:
    """transformers' attention signature (integrations/sdpa_attention.py sdpa_attention_forward):
    (batch, heads, seq, head_dim) in, (batch, seq, heads, head_dim) out."""
    from transformers.integrations.sdpa_attention import repeat_kv

    q_len = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal and q_len > 1 and attention_mask is None)
    flash = attention_mask is None and query.dtype in FLASH_DTYPES and query.shape[-1] <= FLASH_MAX_HEAD_DIM \
        and key.shape[-1] == value.shape[-1]
    groups = getattr(module, "num_key_value_groups", 1)
    if flash:
        # flash takes grouped key/value heads as they are (transformers passes enable_gqa without a mask)
        out = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout, causal, False, scale=scaling)[0]
    else:
        if groups > 1:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        mask = attention_mask
        if mask is not None and mask.dtype == torch.bool:
            # SDPA turns a boolean mask into an additive one before the efficient kernel (sdp_utils convert_boolean_attn_mask)
            mask = torch.zeros_like(mask, dtype=query.dtype).masked_fill_(~mask, float("-inf"))
        if mask is not None:
            mask = mask[:, :, :, : key.shape[-2]]
        out = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, mask, True, dropout, causal, scale=scaling)[0]
    return out.transpose(1, 2).contiguous(), None


class CudaDropout(torch.nn.Module):
    """nn.Dropout as CUDA runs it. On a CPU tensor, fake ones included, ``F.dropout`` takes aten's
    ``_dropout_impl`` (aten/src/ATen/native/Dropout.cpp: the fused kernel only for CUDA/XPU inputs), which
    multiplies by a scaled noise tensor in the input's dtype that autograd keeps; CUDA's ``native_dropout``
    keeps a bool mask, one byte per element (derivatives.yaml native_dropout saves result1)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.native_dropout(x, self.p, self.training)[0] if self.p else x


def register() -> None:
    """Make ``attn_implementation = NAME`` build models with :func:`cuda_sdpa` and SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, cuda_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def gpu_mask_decisions() -> Iterator[None]:
    """Let transformers skip the causal mask on fake tensors where it skips it on a GPU.

    Training without a KV cache (checkpointing turns use_cache off; allocator_replay.py and gpu_peaks.measure set
    it off), the mask builder first asks whether the positions pack several sequences into one row
    (transformers/masking_utils.py _preprocess_mask_arguments -> find_packed_sequence_indices). On a GPU it
    reads them, finds the model's own arange positions unpacked and returns None, so sdpa_mask may skip the mask
    (_ignore_causal_mask_sdpa) and SDPA runs flash with is_causal and the grouped key/value heads as they are.
    A fake tensor's values cannot be read (utils/import_utils.py is_tracing counts a FakeTensor as tracing), so
    it returns the packed-sequence tensor, the skip is refused and every layer gets a (batch, 1, seq, seq) mask:
    :func:`cuda_sdpa` then takes the memory-efficient kernel, which saves the additive mask and key and value
    repeated to every query head. Qwen3-0.6B cut to 4 layers, b1 x 4096: 48 MiB a layer more saved (the 32 MiB
    bf16 mask and 32 MiB of repeated key/value, less the 16 MiB of key and value flash saves), 12 KB a token
    a layer. The H100 did not allocate them: its steady Qwen3-30B-A3B row (6 layers, b2 x 2048, no
    checkpointing; benchmarks/allocator_replay.py) measured a 37.07 GiB backward peak, replayed 37.42 with the
    mask and 37.00 without. The trace feeds one sequence per row (input ids, no position ids), so on fake
    positions this answers what the GPU would: not packed. Real tensors still go to transformers' own check."""
    from transformers import masking_utils

    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:  # an older transformers without packed-sequence detection: nothing to undo
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensor

    def unpacked_on_fake(position_ids: torch.Tensor):
        return None if isinstance(position_ids, FakeTensor) else original(position_ids)

    masking_utils.find_packed_sequence_indices = unpacked_on_fake
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original
