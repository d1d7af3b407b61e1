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

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Optional, Tuple

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
