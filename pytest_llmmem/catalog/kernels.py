"""Fused kernels that replace a module's autograd, and so what it keeps for backward (issue 25).

A run declares them with ``kernels = ["liger"]`` (or one part: ``"liger-rms-norm"``, ...); the
trainer-config readers map the trainers' own flags (HF/TRL ``use_liger_kernel``, axolotl
``liger_rms_norm`` / ``liger_glu_activation`` / ``liger_fused_linear_cross_entropy`` / ...,
LLaMA-Factory ``enable_liger_kernel`` / ``use_unsloth``). Each name resolves to the *parts* it
replaces; ``core/terms/activations.py`` and ``trainer_terms.py`` price each part from the kernel's
``save_for_backward`` (sources below: linkedin/Liger-Kernel @ ead96b6, unslothai/unsloth @ 015bdef).

Parts:
- ``rms-norm``: the norm keeps its input in its own dtype and one fp32 rstd per row, no fp32 copy of
  the input (liger_kernel/ops/rms_norm.py:453 RSTD fp32, :657 save_for_backward(X, W, RSTD);
  unsloth/kernels/rms_layernorm.py:183, :205 save_for_backward(X, W, r)).
- ``glu``: a gated MLP keeps gate and up only, not act(gate) (liger_kernel/ops/swiglu.py:262
  LigerSiLUMulFunction save_for_backward(a, b); geglu.py:138 LigerGELUMulFunction the same).
- ``rope``: rotates q and k in place and keeps cos and sin (liger_kernel/ops/rope.py:226;
  unsloth/kernels/rope_embedding.py:342-343 Fast_RoPE_Embedding_QK ctx.cos, ctx.sin): what HF's Python rotary keeps too, so no change in bytes.
- ``cross-entropy``: the loss writes its gradient into the logits it is given and keeps them
  (liger_kernel/ops/cross_entropy.py:564 save_for_backward(_input.detach())): ``loss = "inplace"``.
- ``fused-linear-cross-entropy``: no b*s*V logits (liger_kernel/ops/fused_linear_cross_entropy.py:68-72
  chunked): ``loss = "fused"``.
- ``fast-lora``: Unsloth's LoRA autograd (dropout 0 only, unsloth/models/llama.py:3695): an MLP with
  gate, up and down all adapted keeps X, gate and up (unsloth/kernels/fast_lora.py:110
  save_for_backward(..., X, e, g)) and recomputes act(gate) * up; q/k/v and o keep their input and
  the adapter weights only (fast_lora.py:418, :612), no r-wide adapter output.
- ``foak-lora``: fms-acceleration's fused_lora (foundation-model-stack/fms-acceleration @ 733992a,
  plugins/fused-ops-and-kernels/src/fms_acceleration_foak/fused_ops/unsloth_lora/{bnb,gptq}/fast_lora.py), Unsloth's
  LoRA autograd with dropout: matmul_lora (unsloth_lora/utils.py:262-269) runs each module's nn.Dropout on X inside the
  Function's forward (no grad, so no mask is kept) and saves the dropped X, in X's dtype, beside what Unsloth's keeps:
  LoRA_QKV save_for_backward(X, QA, QB, KA, KB, VA, VB, *_dropped_X) (bnb/fast_lora.py:289-292), LoRA_W (A, B, X,
  _dropped_X) (:421), LoRA_MLP (..., X, e, g, *_dropped_X) (:97-100); without dropout _dropped_X is X itself. The plugin
  installs it only over a quantized base (framework_plugin_fast_kernels.py:156-159: fused_lora is omitted when the
  model has no quantization_method), so it changes nothing for 16-bit LoRA. Measured on the CPU with the plugin's own
  source (benchmarks/measure_foak_lora.py, r 16 on q/k/v/o, dropout 0.1): 10.000 B x h a token, PEFT's 33.000 there.
- ``sdpa-math``: attention that reaches PyTorch's math SDPA backend, which keeps the fp32 probabilities
  (activations.py prices it). Unsloth's Gemma 3 attention calls ``scaled_dot_product_attention`` with the
  mask and ``enable_gqa`` (unslothai/unsloth-zoo @ d8644f7, 2025-04-07, unsloth_zoo/temporary_patches.py
  patch_Gemma3Attention; still so in temporary_patches/gemma.py patch_Gemma3Attention_generic @ HEAD), a call
  no fused kernel takes: flash rejects a mask and the efficient kernel has no grouped-query heads
  (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp: check_batch_size_and_num_heads_dense<false> in its list).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Tuple

PARTS = ("rms-norm", "glu", "rope", "cross-entropy", "fused-linear-cross-entropy", "fast-lora", "foak-lora", "sdpa-math")

# A kernel name -> the parts it replaces. "liger" is what apply_liger_kernel_to_llama (and
# AutoLigerKernelForCausalLM, HF's use_liger_kernel) patches by default: rope, rms_norm, swiglu and
# fused_linear_cross_entropy; cross_entropy is off (liger_kernel/transformers/monkey_patch.py:221-226).
KERNELS: Dict[str, FrozenSet[str]] = {
    "liger": frozenset({"rope", "rms-norm", "glu", "fused-linear-cross-entropy"}),
    "liger-rope": frozenset({"rope"}),
    "liger-rms-norm": frozenset({"rms-norm"}),
    "liger-glu": frozenset({"glu"}),  # SwiGLU and GeGLU (axolotl liger_glu_activation)
    "liger-cross-entropy": frozenset({"cross-entropy"}),
    "liger-fused-linear-cross-entropy": frozenset({"fused-linear-cross-entropy"}),
    # FastLanguageModel: its RMSNorm, RoPE, LoRA autograd and fused CE loss (unsloth/models/llama.py:1497).
    "unsloth": frozenset({"rms-norm", "rope", "fast-lora", "fused-linear-cross-entropy"}),
    # fms-acceleration's fused-ops-and-kernels plugin with ``fused_lora: true`` (its accelerated-peft-*-foak configs,
    # sample-configurations/accelerated-peft-bnb-nf4-foak-liger-sample-configuration.yaml @ 733992a)
    "foak-fused-lora": frozenset({"foak-lora"}),
}


# The model types Liger patches (liger_kernel/transformers/monkey_patch.py:3534 MODEL_TYPE_TO_APPLY_LIGER_FN);
# for any other, _apply_liger_kernel_to_instance logs that it has no kernels and changes nothing.
LIGER_MODEL_TYPES = frozenset((
    "deepseek_v4 gemma gemma2 gemma3_text gemma3 gemma4_text gemma4 glm4 glm4v glm4v_moe gpt_oss internvl llama llama4_text "
    "llama4 llava granite mllama mllama_text_model ministral mistral mixtral nemotron olmo2 pixtral olmo3 qwen2 qwen3 "
    "qwen3_moe qwen2_vl qwen2_vl_text qwen2_5_vl qwen2_5_vl_text qwen3_next qwen3_5 qwen3_5_text qwen3_5_moe "
    "qwen3_5_moe_text qwen3_vl qwen3_vl_text qwen3_vl_moe qwen3_vl_moe_text smollm3 phi3 paligemma falcon_h1 smolvlm "
    "hunyuan_v1_dense hunyuan_v1_moe exaone4").split())


# The model types whose attention Unsloth replaces with a math-backend SDPA call (``sdpa-math`` above):
# unsloth_zoo/temporary_patches.py patch_Gemma3Attention patches transformers' gemma3 module, which serves
# Gemma3ForCausalLM (gemma3_text) and Gemma3ForConditionalGeneration (gemma3) alike.
UNSLOTH_MATH_SDPA_TYPES = frozenset(("gemma3", "gemma3_text"))


# The model types whose fms-acceleration rules include the fused LoRA (a "<type>-qkvo" rule in fms_acceleration_foak/models/
# @ 733992a: granite.py:75, granitemoe.py:62, mixtral.py:54, llama.py:70, mistral.py; gpt_bigcode.py has only its loss rule).
FOAK_MODEL_TYPES = frozenset(("granite", "granitemoe", "mixtral", "llama", "mistral"))


def applied(names: Tuple[str, ...], model_type: str) -> Tuple[FrozenSet[str], str]:
    """The parts that apply to a model of ``model_type``, and a note when Liger (or fms-acceleration) has no patch for it."""
    own = frozenset({"sdpa-math"}) if "unsloth" in names and model_type in UNSLOTH_MATH_SDPA_TYPES else frozenset()
    if "foak-fused-lora" in names and model_type not in FOAK_MODEL_TYPES:
        rest, note = applied(tuple(n for n in names if n != "foak-fused-lora"), model_type)
        foak = (f"fms-acceleration has no fused LoRA rule for model_type {model_type!r} (fms_acceleration_foak/models/): "
                "foak-fused-lora changes nothing here")
        return rest | own, "; ".join(n for n in (note, foak) if n)
    liger = tuple(n for n in names if n.startswith("liger"))
    if not liger or model_type in LIGER_MODEL_TYPES:
        return parts(names) | own, ""
    note = (f"Liger has no kernels for model_type {model_type!r} (liger_kernel/transformers/monkey_patch.py:3534): "
            f"{', '.join(liger)} change nothing here")
    return parts(n for n in names if n not in liger) | own, note


def parts(names: Iterable[str]) -> FrozenSet[str]:
    """The parts a list of kernel names replaces."""
    out: FrozenSet[str] = frozenset()
    for name in names:
        out |= KERNELS[name]
    return out


def loss_of(names: Tuple[str, ...]) -> str:
    """The loss implementation the kernels imply ("" when they leave the loss alone)."""
    replaced = parts(names)
    if "fused-linear-cross-entropy" in replaced:
        return "fused"
    if "cross-entropy" in replaced:
        return "inplace"
    return ""
