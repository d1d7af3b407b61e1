"""Trainer profiles: what torchtune, Unsloth, litgpt or the Hugging Face stack do by default.

A profile is only a record of defaults for the trainer knobs (loss implementation, activation
offload, optimizer implementation, 4-bit layout, adapter dtype, ...). Every knob is also a key of
its own and wins over the profile. Each default names the line of the framework's source it was
read from (the commit read is in the comment at the top of each profile). TRL, Axolotl and
LLaMA-Factory run on ``transformers`` and use its profile plus knobs (e.g. ``loss = "fused"`` for
Liger's kernels).

The built-ins below are registered through the ``llmmem_register_profiles`` hook (catalog/builtin.py),
as a plugin's are; a run's ``framework`` is looked up in the catalog. Adding a framework = one
``Profile`` entry (here, or a plugin's) + a test; nothing in estimate.py changes.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ..record import Record
from .kernels import loss_of

# inplace: a cross-entropy kernel that writes its gradient into the logits it is given (Liger cross_entropy; kernels.py)
LOSSES = ("upcast", "chunked", "fused", "inplace")
OPTIMIZER_IMPLS = ("foreach", "fused", "for-loop")
NF4_LAYOUTS = ("bitsandbytes", "torchao")
# The knobs a profile sets, as config keys (kebab-case), in the order the report lists them.
KNOBS = ("loss", "loss-chunks", "kernels", "activation-offload", "optimizer-in-backward", "optimizer-impl",
         "double-quant", "adapter-dtype", "gradient-checkpointing")


class Profile(Record):
    """Defaults of one trainer, each knob cited to the trainer's source in ``sources``."""

    name: str
    loss: str  # upcast | chunked | fused
    loss_chunks: int  # chunks of the chunked loss (0: one per ``loss_chunk_tokens`` tokens)
    loss_chunk_tokens: int  # litgpt chunks by tokens, not by count (0: by count)
    chunk_upcast: bool  # the chunked loss casts each chunk's logits to fp32 before cross_entropy
    keeps_logits: bool  # the whole b*s*V logits stay alive until backward (a model output)
    activation_offload: bool
    optimizer_in_backward: bool
    optimizer_impl: str  # foreach | fused | for-loop
    double_quant: bool
    nf4_layout: str  # bitsandbytes | torchao
    adapter_dtype: Optional[str]  # None: the base model's compute dtype
    gradient_checkpointing: bool
    sources: Dict[str, str]
    describes: str
    aliases: Tuple[str, ...] = ()
    # The job's phase defaults (config.phase_keys.PhaseDefaults); None: the built-in table's entry for
    # this name, or the Hugging Face Trainer's (what TRL, Axolotl, Unsloth and most trainers run on).
    phases: Any = None
    kernels: Tuple[str, ...] = ()  # fused kernels the trainer applies by default (kernels.py)
    # activation-offload: checkpointed layer inputs its offload keeps on the GPU at the start of backward
    offload_resident: int = 1
    # compile = true also compiles the loss (its source is cited under "loss"): Inductor's saved set (trainer_terms.loss_terms)
    compiles_loss: bool = False
    # releases [first, fixed) of the trainer that load a dtype = "int8" (load_in_8bit) model in 16 bit; () = none
    ignores_8bit: Tuple[Tuple[int, ...], ...] = ()
    # releases before this one compute the whole b*s*V logits and their CE kernel writes the gradient into them (loss "inplace", no upcast)
    inplace_loss_before: Tuple[int, ...] = ()
    # releases before this one give every attention layer its own cos/sin cache for max(seq-len, max_position_embeddings) positions
    rope_caches_before: Tuple[int, ...] = ()
    # the loop keeps the model's output (its whole logits) referenced through backward (core/terms/backward.py held_logits)
    holds_output: bool = False
    # ... and through the optimizer step too (fsdp_qlora's ``output = None`` comes after optimizer.step(); job_phases.step_phases)
    holds_output_to_step: bool = False
    # the model returns fp32 logits and takes its loss from a shifted copy (transformers before 4.46; trainer_terms.loss_terms)
    returns_fp32_logits: bool = False
    # releases [first, fixed) whose loss runs on a shifted fp32 copy of the logits (trainer_terms.loss_terms); () = none
    shifted_loss_copy: Tuple[Tuple[int, ...], ...] = ()
    # releases before this one return fp32 logits, as returns_fp32_logits says (framework-version); () = none
    fp32_logits_before: Tuple[int, ...] = ()
    # releases [first, fixed) whose activation offload keeps every checkpointed layer input on the GPU in the first
    # forward and offloads from the second step (job_phases.first_step_phase); () = none
    first_pass_kept: Tuple[Tuple[int, ...], ...] = ()


# The built-in profiles (registered by catalog/builtin.py; a run looks its framework up in the catalog).
PROFILES: Dict[str, Profile] = {
    # transformers 5.24.0 (site-packages), peft 0.21.2, torch 2.13.
    "transformers": Profile(
        "transformers", loss="upcast", loss_chunks=1, loss_chunk_tokens=0, chunk_upcast=True, keeps_logits=True,
        activation_offload=False, optimizer_in_backward=False, optimizer_impl="fused", double_quant=False,
        nf4_layout="bitsandbytes", adapter_dtype="fp32", gradient_checkpointing=False,
        describes="Hugging Face Trainer / TRL / Axolotl / LLaMA-Factory (PEFT adapters)",
        sources={
            "loss": "transformers/loss/loss_utils.py ForCausalLMLoss: logits = logits.float() before cross_entropy",
            "optimizer-impl": 'transformers/training_args.py:806-811: default optim "adamw_torch_fused" for torch >= 2.8',
            "double-quant": "transformers/utils/quantization_config.py:450 BitsAndBytesConfig(bnb_4bit_use_double_quant=False)",
            "adapter-dtype": "peft/peft_model.py:157 autocast_adapter_dtype=True (adapters upcast to fp32)",
            "activation-offload": "Trainer has no activation offload",
            "optimizer-in-backward": "Trainer steps after backward (trainer.py optimizer.step())",
            "gradient-checkpointing": "transformers/training_args.py:926 TrainingArguments.gradient_checkpointing (off unless set)",
        },
        # transformers 4.46.0-4.48.x loss/loss_utils.py:36-39 ForCausalLMLoss: shift_logits = logits.float()[..., :-1, :].contiguous();
        # 4.49.0 pads the labels instead (loss_utils.py:39 nn.functional.pad(labels, (0, 1), value=ignore_index))
        shifted_loss_copy=((4, 46), (4, 49)),
        # before 4.46 the models upcast in forward and return fp32 logits, and the loss shifts a copy of them (4.45.2
        # models/llama/modeling_llama.py:1214 self.lm_head(...).float(), :1219-1228; models/mistral/modeling_mistral.py:1059-1074)
        fp32_logits_before=(4, 46),
    ),
    # pytorch/torchtune @ bd2a0fc (2026-04-23); NF4 from pytorch/ao @ 36027d8.
    "torchtune": Profile(
        "torchtune", loss="chunked", loss_chunks=8, loss_chunk_tokens=0, chunk_upcast=True, keeps_logits=False,
        activation_offload=False, optimizer_in_backward=False, optimizer_impl="fused", double_quant=True,
        nf4_layout="torchao", adapter_dtype=None, gradient_checkpointing=False,
        describes="torchtune recipes (LinearCrossEntropyLoss, torchao NF4, fused AdamW)",
        sources={
            "loss": "torchtune/modules/loss/cross_entropy_loss.py:36 LinearCrossEntropyLoss(num_output_chunks=8); "
                    ":113 logits.float() per chunk (recipes/configs/llama3_1/*.yaml loss: LinearCrossEntropyLoss); with compile: True the "
                    "recipes compile the loss too (recipes/full_finetune_single_device.py:281, lora_finetune_single_device.py:319 "
                    "training.compile_loss; training/_compile.py:70 apply_compile_strategy compiles compute_cross_entropy, one chunk's step)",
            "optimizer-impl": "recipes/configs/llama3_1/8B_qlora_single_device.yaml:62 optimizer fused: True",
            "activation-offload": 'recipes/lora_finetune_single_device.py:183 cfg.get("enable_activation_offloading", False); '
                                  "training/_activation_offloading.py:70 max_fwd_stash_size=5: the last 5 offloaded tensors stay on the GPU "
                                  "and backward takes them from the stash (unpack_tensor_with_streams)",
            "optimizer-in-backward": "recipes/full_finetune_single_device.py:151 cfg.optimizer_in_bwd (configs set it; off here)",
            "double-quant": "torchao/quantization/quantize_/workflows/nf4/nf4_tensor.py:1077 to_nf4(block_size=64, scaler_block_size=256): scalers are always "
                            "double-quantised (int8 per 64 weights + one bf16 factor per 256 scalers)",
            "adapter-dtype": "recipes/lora_finetune_single_device.py:410 set_default_dtype(self._dtype): LoRA in the base dtype",
            "gradient-checkpointing": 'recipes/lora_finetune_single_device.py:180 cfg.get("enable_activation_checkpointing", False)',
        },
        compiles_loss=True,
        offload_resident=5,  # OffloadActivations(max_fwd_stash_size=5): with checkpointing, the last 5 layers' inputs
    ),
    # unslothai/unsloth @ 015bdef (2026-08-22).
    "unsloth": Profile(
        "unsloth", loss="fused", loss_chunks=1, loss_chunk_tokens=0, chunk_upcast=True, keeps_logits=False,
        activation_offload=True, optimizer_in_backward=False, optimizer_impl="fused", double_quant=True,
        nf4_layout="bitsandbytes", adapter_dtype="fp32", gradient_checkpointing=True,
        describes='Unsloth (fused CE loss, use_gradient_checkpointing="unsloth" offload)',
        sources={
            "loss": "unsloth/models/llama.py:1497 unsloth_fused_ce_loss (logits never materialised unless UNSLOTH_RETURN_LOGITS=1)",
            "activation-offload": 'unsloth/models/llama.py:3079 get_peft_model(use_gradient_checkpointing="unsloth"): '
                                  "checkpointed layer inputs offloaded to host memory; unslothai/unsloth-zoo @ ce232d6 "
                                  "unsloth_zoo/gradient_checkpointing.py UnslothCheckpointFunction.forward: the last checkpointed layer's "
                                  "input is not offloaded (CURRENT_GC_INDEX != LAST_GC_INDEX) and backward copies each back into one "
                                  "GPU_BUFFER (the double buffer only when over 512 MiB is free)",
            "gradient-checkpointing": 'unsloth/models/llama.py:3079 use_gradient_checkpointing="unsloth" (checkpointing on)',
            "double-quant": "unsloth/models/llama.py:2622 bnb_4bit_use_double_quant = True",
            "adapter-dtype": "unsloth/models/llama.py:3488 peft get_peft_model (autocast_adapter_dtype=True: fp32)",
            "optimizer-impl": 'runs on the transformers Trainer (TRL SFTTrainer): "adamw_torch_fused"',
            "kernels": "unsloth/kernels/ (rms_layernorm.py, rope_embedding.py, fast_lora.py) patched in by FastLanguageModel",
        },
        kernels=("unsloth",),
        offload_resident=2,  # the last layer's input, kept, and the GPU_BUFFER the others come back into
        # unsloth/models/vision.py FastBaseModel.from_pretrained built the 8-bit BitsAndBytesConfig but passed it only
        # `if load_in_4bit:` from load_in_8bit's arrival (f35d597, 2025-03-12, 2025.3.10; FastLanguageModel sends
        # load_in_8bit there too, loader.py) to `if load_in_4bit or load_in_8bit:` (4e2b121, 2025-09-28, 2025.9.10)
        ignores_8bit=((2025, 3, 10), (2025, 9, 10)),
        # unsloth @ 0a433c3 (2024-05-08, 2024.4) llama.py CausalLM_fast_forward: logits = self.lm_head(hidden_states) whole, and
        # kernels/cross_entropy_loss.py:236 Fast_CrossEntropyLoss save_for_backward(logits, ...), :258 backward returns them as
        # the gradient, written in place; Cut Cross-Entropy arrives in fa8e59e (2024-11-17, 2024.11.7)
        inplace_loss_before=(2024, 11, 7),
        # llama.py LlamaRotaryEmbedding.__init__ @ 0a433c3: _set_cos_sin_cache(seq_len=max_position_embeddings) in each layer's
        # attention (pre_patch replaces transformers' class; transformers 4.40 builds one per LlamaAttention, _init_rope), from
        # max(max_seq_length, config's) positions, cast to the model's dtype after loading; 54dd81d (2024-07-18, 2024.7) caches 32k
        rope_caches_before=(2024, 8),
        # The first forward offloads nothing: unslothai/unsloth-zoo @ 936b85a (2025-03-04, unsloth_zoo 2025.3.1)
        # unsloth_zoo/gradient_checkpointing.py:389-403 UnslothCheckpointFunction.forward counts LAST_GC_INDEX up with
        # CURRENT_GC_INDEX while FIRST_PASS (:393, :396) and offloads only where they differ (:403); the first backward
        # sets FIRST_PASS = False (:512), so the second forward offloads all but the last layer. Since 5572cc4 (2025-01-07,
        # unsloth_zoo 2025.1.1); df5fe40 (2025-11-24, unsloth_zoo 2025.11.5) offloads every layer in the first pass
        # (`(CURRENT_GC_INDEX != LAST_GC_INDEX) or FIRST_PASS`, :424; ce232d6 :769). Unsloth's text models reach it from
        # 3e5f061 (2025-03-04, 2025.3.1, pins unsloth_zoo>=2025.3.1): llama.py:855 torch.utils.checkpoint.checkpoint,
        # patched at :2024 (before, llama.py called Unsloth_Offloaded_Gradient_Checkpointer, which offloads every layer
        # from the first step: unsloth @ 9e9d6fe models/_utils.py:798-826, unsloth_zoo @ 83f5318 gradient_checkpointing.py:136-148);
        # 86f7080 (2025-11-25, 2025.11.4) is the first to pin unsloth_zoo>=2025.11.5
        first_pass_kept=((2025, 3, 1), (2025, 11, 4)),
    ),
    # A hand-written loop over a transformers model, as benchmarks/gpu_peaks.py measure runs it: out = model(**batch);
    # out.loss.backward(); del out; optimizer.step(), with torch.optim.AdamW's defaults. torch 2.13, transformers 5.24.
    "pytorch": Profile(
        "pytorch", loss="upcast", loss_chunks=1, loss_chunk_tokens=0, chunk_upcast=True, keeps_logits=True,
        activation_offload=False, optimizer_in_backward=False, optimizer_impl="foreach", double_quant=False,
        nf4_layout="bitsandbytes", adapter_dtype="fp32", gradient_checkpointing=False,
        describes="a hand-written loop: out = model(**batch); out.loss.backward() (the output held through backward)",
        sources={
            "loss": "the model's own loss, transformers/loss/loss_utils.py ForCausalLMLoss: logits = logits.float(); the loop's "
                    "`out` (CausalLMOutputWithPast, e.g. models/qwen3/modeling_qwen3.py Qwen3ForCausalLM.forward) keeps the 16-bit "
                    "logits through backward",
            "optimizer-impl": "torch/optim/optimizer.py _default_to_fused_or_foreach: foreach when every parameter is on CUDA "
                              "(torch.optim.AdamW(fused=None, foreach=None))",
            "adapter-dtype": "peft/mapping_func.py get_peft_model(autocast_adapter_dtype=True): adapters upcast to fp32",
        },
        holds_output=True,
    ),
    # AnswerDotAI/fsdp_qlora train.py @ 23fafdfb (2024-05-06) on the transformers its README pins
    # ("transformers!=4.38.*,!=4.39.*", README.md:18: 4.37 or 4.40 then), torch >= 2.2 (README.md:24).
    "fsdp-qlora": Profile(
        "fsdp-qlora", loss="upcast", loss_chunks=1, loss_chunk_tokens=0, chunk_upcast=True, keeps_logits=True,
        activation_offload=False, optimizer_in_backward=False, optimizer_impl="foreach", double_quant=True,
        nf4_layout="bitsandbytes", adapter_dtype=None, gradient_checkpointing=True,
        describes="Answer.AI fsdp_qlora train.py (its own loop: fp32 logits of transformers 4.40 held to the optimizer step)",
        sources={
            "loss": "fsdp_qlora/train.py:841-846 output = model(input_ids, labels=labels); loss = output.loss, kept to :894 output = None "
                    "(after backward :863 and optimizer.step() :878); transformers 4.40.0 models/llama/modeling_llama.py:1227-1241 "
                    "(4.37.2 :1201-1215): logits = logits.float() returned, the loss on logits[..., :-1, :].contiguous()",
            "optimizer-impl": "fsdp_qlora/train.py:433-435 torch.optim.AdamW(...) without foreach/fused: foreach on CUDA "
                              "(torch/optim/optimizer.py _default_to_fused_or_foreach)",
            "double-quant": "fsdp_qlora/train.py:586 replace_linear(model.model, Linear4bit, quant_type='nf4', ...): bitsandbytes "
                            "nn/modules.py Linear4bit(compress_statistics=True) by default",
            "adapter-dtype": 'fsdp_qlora/train.py:1013 precision "bf16": torch_dtype = compute_dtype = bfloat16 (:509-510), no autocast',
            "gradient-checkpointing": "fsdp_qlora/train.py:1007 use_gradient_checkpointing = True (checkpoint_wrapper on each decoder layer, :749-763)",
            "activation-offload": "fsdp_qlora/train.py:1010 use_activation_cpu_offload = False",
        },
        holds_output=True, holds_output_to_step=True, returns_fp32_logits=True,
    ),
    # Lightning-AI/litgpt @ 2685705 (2026-06-29).
    "litgpt": Profile(
        "litgpt", loss="chunked", loss_chunks=0, loss_chunk_tokens=128, chunk_upcast=False, keeps_logits=True,
        activation_offload=False, optimizer_in_backward=False, optimizer_impl="foreach", double_quant=False,
        nf4_layout="bitsandbytes", adapter_dtype=None, gradient_checkpointing=False,
        describes="litgpt finetune (128-token chunked lm_head + cross-entropy in the compute dtype)",
        sources={
            "loss": "litgpt/finetune/lora.py:355 model(input_ids, lm_head_chunk_size=128); litgpt/utils.py:302 "
                    "chunked_cross_entropy (no fp32 upcast; the chunk logits stay alive until backward)",
            "optimizer-impl": 'litgpt/utils.py:636 instantiate_torch_optimizer("AdamW") without fused: foreach on CUDA',
            "double-quant": 'litgpt/finetune/lora.py:53 quantize="bnb.nf4" (double quantisation is "bnb.nf4-dq")',
            "adapter-dtype": 'config_hub/finetune/*/lora.yaml precision: bf16-true (the whole module, adapters included)',
            "activation-offload": "no activation offload in litgpt finetune",
        },
    ),
}
FRAMEWORKS: Tuple[str, ...] = tuple(PROFILES)


class Knobs(Record):
    """The trainer knobs of one run, resolved: profile defaults with the run's own keys on top."""

    framework: str = "transformers"
    loss: str = "upcast"
    loss_chunks: int = 8  # used only with loss = "chunked"; torchtune's default count
    chunk_upcast: bool = True  # chunked: each chunk cast to fp32; inplace: False = the kernel takes the logits as they come
    keeps_logits: bool = True
    activation_offload: bool = False
    optimizer_in_backward: bool = False
    optimizer_impl: str = "fused"
    double_quant: bool = False
    nf4_layout: str = "bitsandbytes"
    given: Tuple[str, ...] = ()
    kernels: Tuple[str, ...] = ()  # fused kernels (kernels.py): what they replace keeps other tensors  # knob keys the config set itself (they win over the profile)
    # torch release the run uses, (major, minor); () = a current one (2.1 or later). Only the foreach
    # AdamW step depends on it today (core/terms/trainer_terms.py step_temporaries).
    torch_version: Tuple[int, ...] = ()
    offload_resident: int = 1  # the profile's (Profile.offload_resident)
    compiled_loss: bool = False  # the loss runs under torch.compile (compile = true and Profile.compiles_loss)
    framework_version: Tuple[int, ...] = ()  # the trainer's own release (framework-version); () = the profile's (a current one)
    rope_caches: bool = False  # each attention layer keeps cos/sin for every position (Profile.rope_caches_before)
    holds_output: bool = False  # the loop holds the model's output through backward (Profile.holds_output)
    returns_fp32_logits: bool = False  # the model returns fp32 logits, its loss on a shifted copy (Profile.returns_fp32_logits)
    shifted_loss_copy: bool = False  # the loss shifts an fp32 copy of the logits (Profile.shifted_loss_copy, framework-version)
    holds_output_to_step: bool = False  # ... and through the optimizer step (Profile.holds_output_to_step)
    # the first step's forward keeps every checkpointed layer input on the GPU (Profile.first_pass_kept, framework-version)
    first_pass_kept: bool = False
    checkpoint_reentrant: Optional[bool] = None  # checkpoint-reentrant: use_reentrant; None = the trainer's default


# torch releases whose foreach Adam/AdamW keep two state-sized lists in the step (torch 2.0
# torch/optim/adamw.py _multi_tensor_adamw: exp_avg_sq_sqrt = _foreach_sqrt(...), then
# denom = _foreach_add(exp_avg_sq_sqrt, eps)); pytorch/pytorch#104898 (2023-07-10, torch 2.1) adds eps
# in place, leaving one.
FOREACH_TWO_LISTS_BEFORE = (2, 1)


def chunks_for(profile: Profile, seq_len: int) -> int:
    """Chunks of the chunked loss: a fixed count, or one per ``loss_chunk_tokens`` of the sequence (litgpt)."""
    if profile.loss_chunk_tokens:
        return max(1, -(-seq_len // profile.loss_chunk_tokens))
    return profile.loss_chunks


def shown(knobs: Knobs, *, mode: str, four_bit: str, adapter_dtype: str, adapter_given: bool, adapts: bool = False) -> Tuple[Tuple[str, str, str], ...]:
    """(key, value, origin) of each knob that applies to the run and differs from stock transformers
    or was set by the config; origin is "set" (the config) or "profile" (the framework's default)."""
    stock = PROFILES["transformers"]
    rows = []

    def add(key: str, value: str, stock_value: Optional[str], given: bool) -> None:
        if value != stock_value or given:
            rows.append((key, value, "set" if given else "profile"))

    if mode != "inference":
        if knobs.kernels and loss_of(knobs.kernels) == knobs.loss and "loss" not in knobs.given:
            rows.append(("loss", knobs.loss, "kernels"))
        else:
            add("loss", knobs.loss, stock.loss, "loss" in knobs.given)
        if knobs.kernels:
            add("kernels", ", ".join(knobs.kernels), None, "kernels" in knobs.given)
        if knobs.loss == "chunked":
            add("loss-chunks", str(knobs.loss_chunks), None, "loss-chunks" in knobs.given)
        for key, value, base in (("activation-offload", knobs.activation_offload, False),
                                 ("optimizer-in-backward", knobs.optimizer_in_backward, False)):
            add(key, str(value).lower(), str(base).lower(), key in knobs.given)
        add("optimizer-impl", knobs.optimizer_impl, stock.optimizer_impl, "optimizer-impl" in knobs.given)
        if knobs.torch_version:
            add("torch-version", ".".join(map(str, knobs.torch_version)), None, True)
    if knobs.framework_version:
        add("framework-version", ".".join(map(str, knobs.framework_version)), None, True)
    if four_bit:
        add("double-quant", str(knobs.double_quant).lower(), str(stock.double_quant).lower(), "double-quant" in knobs.given)
        if four_bit == "nf4" and knobs.nf4_layout != stock.nf4_layout:
            rows.append(("nf4-layout", knobs.nf4_layout, "profile"))
    if adapts:  # an adapter run (adapters.py)
        add("adapter-dtype", adapter_dtype, stock.adapter_dtype, adapter_given)
    return tuple(rows)


def describe(knobs: Knobs, rows: Tuple[Tuple[str, str, str], ...]) -> str:
    """'trainer: torchtune | loss = chunked (profile), activation-offload = true (set)' for the reports."""
    if not rows:
        return f"trainer: {knobs.framework}"
    return f"trainer: {knobs.framework} | " + ", ".join(f"{k} = {v} ({origin})" for k, v, origin in rows)
