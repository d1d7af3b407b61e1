"""LLaMA-Factory YAML (``llamafactory-cli train x.yaml``): model_name_or_path, stage, finetuning_type,
cutoff_len, plus transformers' TrainingArguments. Defaults cite src/llamafactory/hparams/
(model_args.py, data_args.py, finetuning_args.py).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path

from . import hf_args
from ...errors import shown
from ...core.run import ATTN_IMPLEMENTATIONS
from .mapper import Mapper, model_table

HP = "LLaMA-Factory src/llamafactory/hparams"  # line numbers below: LLaMA-Factory @ ff6d4d12e
UNMODELLED = (
    ("use_unsloth_gc", "Unsloth offloaded checkpointing"),
    ("use_galore", "GaLore projected optimizer states"), ("use_badam", "BAdam block-wise updates"), ("use_apollo", "APOLLO optimizer"),
    ("pissa_init", "PiSSA initialisation"),
    ("freeze_vision_tower", "multimodal towers"),
    ("use_kt", "KTransformers CPU experts"),
    # hparams fields at ff6d4d12e that change the peak and have no run key here
    ("use_adam_mini", "Adam-mini's reduced optimizer states"), ("use_muon", "the Muon optimizer"), ("fp8", "fp8 training"),
    ("use_llama_pro", "LLaMA Pro's expanded, partly trained blocks"), ("mixture_of_depths", "mixture-of-depths layers"),
    ("upcast_lmhead_output", "fp32 logits"),
    ("upcast_layernorm", "fp32 norms (model_args.py:153; their outputs make the residual stream fp32)"),
)
_STAGES = {"sft": "sft", "pt": "sft", "dpo": "dpo", "ppo": "ppo", "rm": "reward"}


def read(m: Mapper, base_dir: Path) -> None:
    name = m.get("model_name_or_path")
    if isinstance(name, str) and name:
        m.put("model", model_table(name, m, base_dir), "model_name_or_path")
    kind = str(m.get("finetuning_type", "lora")).lower()
    bits = m.get("quantization_bit")
    if kind == "lora":
        if "finetuning_type" in m.data:
            m.put("mode", "qlora" if bits == 4 else "lora", "finetuning_type")
        else:
            m.assume("mode", "qlora" if bits == 4 else "lora", f'{HP}/finetuning_args.py:464: finetuning_type "lora"')
        if "lora_rank" in m.data:
            m.put("lora-rank", m.get("lora_rank"), "lora_rank")
        else:
            m.assume("lora-rank", 8, f"{HP}/finetuning_args.py:77: lora_rank 8")
        target = m.get("lora_target", "all")
        value = "all-linear" if str(target).strip() == "all" else [t.strip() for t in str(target).split(",") if t.strip()]
        if "lora_target" in m.data:
            m.put("lora-targets", value, "lora_target")
        else:
            m.assume("lora-targets", value, f'{HP}/finetuning_args.py:81: lora_target "all"')
        if "lora_dropout" in m.data:
            m.put("lora-dropout", m.get("lora_dropout"), "lora_dropout")
        else:
            m.assume("lora-dropout", 0.0, f"{HP}/finetuning_args.py:73: lora_dropout 0.0")
        # additional_target is PEFT's modules_to_save (src/llamafactory/model/adapter.py:265); with resize_vocab and
        # none given, LLaMA-Factory trains both embeddings in full (adapter.py:246-254).
        if m.get("additional_target"):
            m.modules_to_save("additional_target")
        elif m.get("resize_vocab") is True:
            m.put("modules-to-save", ["embed_tokens", "lm_head"], "resize_vocab (adapter.py:246: the embeddings join additional_target)")
        m.dora_and_rslora("use_dora", "use_rslora")  # {HP}/finetuning_args.py:103, :99 (False)
    elif kind == "full":
        m.put("mode", "train", "finetuning_type")
    else:
        m.put("mode", "train", "finetuning_type")
        m.not_modelled(f"finetuning_type = {kind}", "priced as full fine-tuning")
    if bits == 4:
        quant_type = str(m.get("quantization_type", "nf4")).lower()  # model_args.py:287: quantization_type "nf4"
        m.put("dtype", "nf4" if quant_type == "nf4" else "int4", "quantization_bit")
        if m.given("double_quantization") and m.get("double_quantization") is not False:
            m.put("double-quant", True, "double_quantization")
        elif not m.given("double_quantization"):
            m.assume("double-quant", True, f"{HP}/model_args.py:291: double_quantization True")
        if kind == "lora":  # its own prepare_model_for_training casts only what upcast_* asks (model_utils/checkpointing.py:171)
            m.assume("kbit-prepare", False, "LLaMA-Factory src/llamafactory/model/model_utils/checkpointing.py: no prepare_model_for_kbit_training")
    elif bits == 8 and kind == "lora":
        m.put("dtype", "int8", "quantization_bit")
    elif bits is not None:
        m.not_modelled(f"quantization_bit = {bits}", "priced as 16-bit weights")
    if "per_device_train_batch_size" in m.data:
        m.put("batch-size", m.get("per_device_train_batch_size"), "per_device_train_batch_size")
    else:
        m.assume("batch-size", 8, "transformers/training_args.py: per_device_train_batch_size 8")
    if "cutoff_len" in m.data:
        m.put("seq-len", m.get("cutoff_len"), "cutoff_len")
    else:
        m.assume("seq-len", 2048, f"{HP}/data_args.py:46: cutoff_len 2048")
    if m.get("packing") is True or m.get("neat_packing") is True:
        m.origins["seq-len"] += " (packing: rows packed to it)"
    hf_args.optimizer(m)
    if m.get("disable_gradient_checkpointing") is True:
        m.put("gradient-checkpointing", False, "disable_gradient_checkpointing")
    else:  # LLaMA-Factory turns it on unless disabled (src/llamafactory/model/model_utils/checkpointing.py)
        m.assume("gradient-checkpointing", True, f"{HP}/model_args.py:145: disable_gradient_checkpointing False")
    if m.values.get("gradient-checkpointing"):
        _reentrant(m)
    attn = str(m.get("flash_attn", "auto")).lower()
    if attn == "disabled":
        m.put("flash-attention", False, "flash_attn")
    elif "flash_attn" in m.data:
        m.put("flash-attention", True, "flash_attn")
        # LLaMA-Factory @ ff6d4d12eeb0 src/llamafactory/model/model_utils/attention.py:65-92: auto leaves transformers'
        # default (sdpa), sdpa -> "sdpa", fa2 -> "flash_attention_2", fa3 -> "flash_attention_3" (hparams/model_args.py:117
        # flash_attn, default auto); auto on Gemma 2 picks fa2 where flash-attn is installed (:47-51), not followed here
        kernel = {"sdpa": "sdpa", "fa2": "flash_attention_2", "fa3": "flash_attention_3"}.get(attn)
        if kernel:
            m.put("attn-implementation", kernel, "flash_attn")
    if m.get("use_unsloth") is True:  # model/model_utils/unsloth.py: FastLanguageModel's kernels (kernels.py "unsloth")
        m.put("kernels", ["unsloth"], "use_unsloth")
    elif m.get("enable_liger_kernel") is True:
        # model/model_utils/liger_kernel.py:97-99 apply_liger_kernel: the model's Liger defaults, or, where the stage
        # needs the logits (loader.py:142 require_logits: every stage but pt / sft), cross_entropy for the fused linear one
        stage = str(m.get("stage", "sft")).lower()
        kernels = ["liger"] if stage in ("pt", "sft") else ["liger-rope", "liger-rms-norm", "liger-glu", "liger-cross-entropy"]
        m.put("kernels", kernels, "enable_liger_kernel")
    hf_args.deepspeed(m, base_dir)
    hf_args.fsdp(m)
    _precision(m)  # after deepspeed and fsdp: they decide whether an fp32 copy exists
    for key, why in UNMODELLED:
        if m.is_set(key):
            m.not_modelled(key, why)
    stage = str(m.get("stage", "sft")).lower()
    if stage in _STAGES:
        if _STAGES[stage] != "sft":
            m.put("recipe", _STAGES[stage], "stage")
    else:
        m.not_modelled(f"stage = {stage}", "priced as supervised fine-tuning")
    if stage == "dpo":
        # train/dpo/trainer.py concatenated_forward: model(**batch).logits.to(torch.float32), then get_batch_logps's
        # log_softmax over the whole vocabulary: no fused log-prob head
        m.put("log-prob-head", "logits", "stage")
        if "pref_beta" in m.data:
            m.put("beta", m.get("pref_beta"), "pref_beta")
        loss = str(m.get("pref_loss", "sigmoid")).lower()
        if loss in ("orpo", "simpo"):
            m.put("loss-type", loss, "pref_loss")


MODEL = "LLaMA-Factory src/llamafactory/model"  # @ ff6d4d12e


def _precision(m: Mapper) -> None:
    """LLaMA-Factory loads the checkpoint in its own dtype (model/loader.py:154 torch_dtype "auto") and then, unless
    pure_bf16 or use_badam is set or DeepSpeed ZeRO-3 holds an unquantised base, casts every trainable parameter to
    fp32 (model/adapter.py:340-349 init_adapter; :51-52 _setup_full_tuning): a full fine-tune under bf16 / fp16 is amp
    (fp32 weights, gradients and AdamW states under 16-bit autocast: its README's "AMP" rows), with pure_bf16 pure
    bf16 (its "16-bit" rows). LoRA adapters are fp32 either way: get_peft_model keeps PEFT's autocast_adapter_dtype
    True (adapter.py:308), which upcasts 16-bit adapters, so the run's fp32 adapter default stands."""
    if "dtype" in m.values:  # a quantised base: its format is read; the adapters stay PEFT's fp32
        return
    pure = m.get("pure_bf16") is True
    half = "bf16" if m.get("bf16") is True else "fp16" if m.get("fp16") is True else None
    autocast = hf_args.Stored(half, half, "TrainingArguments: torch.autocast") if half else None
    zero3 = m.declared("zero-stage") == 3  # is_deepspeed_zero3_enabled (adapter.py:345)
    upcast = not (pure or m.get("use_badam") is True or zero3)  # quantised bases returned above
    mode = m.values.get("mode")
    if mode == "train" and upcast:
        stored = hf_args.Stored("fp32", "", f"{MODEL}/adapter.py:51-52 _setup_full_tuning: every trainable parameter cast to fp32")
    elif mode == "train" and pure:
        stored = hf_args.Stored("bf16", "pure_bf16", f"{MODEL}/adapter.py:343-344: trainable parameters stay in half precision")
    else:  # a LoRA base, or a ZeRO-3 full fine-tune: the checkpoint's dtype, 16 bit for the published checkpoints
        stored = hf_args.Stored(half or "bf16", half or "", f'{MODEL}/loader.py:154 torch_dtype "auto": the checkpoint\'s 16-bit dtype')
    hf_args.weights_and_compute(m, stored, autocast)


def _reentrant(m: Mapper) -> None:
    """use_reentrant_gc (LLaMA-Factory's own, handed to gradient_checkpointing_enable: model/model_utils/checkpointing.py:46
    {"use_reentrant": model_args.use_reentrant_gc}, v0.9.2 :166), default true; FSDP2 forces it off (:177-182)."""
    value = m.get("use_reentrant_gc")
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value is not None and not isinstance(value, bool):
        raise m.fail("use_reentrant_gc", f"expected true or false, got {shown(value)}.",
                     hint="LLaMA-Factory's reentrant gradient checkpointing (model_args.py:149, default true).")
    if value is not None:
        m.put("checkpoint-reentrant", value, "use_reentrant_gc")
    else:
        m.assume("checkpoint-reentrant", True, f"{HP}/model_args.py:149-150: use_reentrant_gc default True (v0.9.2 :118-119)")
