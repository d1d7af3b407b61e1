"""TRL configs as the TRL CLI and ``accelerate launch`` take them (YAML or JSON): TrainingArguments +
SFTConfig / DPOConfig / GRPOConfig + ModelConfig (model_name_or_path, use_peft, lora_r, load_in_4bit).
Which trainer: num_generations means GRPO, max_prompt_length without it DPO, else SFT. Defaults cite
trl/trainer/sft_config.py (its docstring lists where it differs from TrainingArguments),
trl/trainer/dpo_config.py, trl/trainer/grpo_config.py and trl/trainer/model_config.py.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path

from . import hf_args
from ...errors import shown_name
from ...core.run import ATTN_IMPLEMENTATIONS
from .mapper import Mapper, model_table

SFT = "trl/trainer/sft_config.py"
MODEL = "trl/trainer/model_config.py"
# TRL's bundled accelerate profiles (docs/source/clis.md table; trl/accelerate_configs/*.yaml).
ACCELERATE_PROFILES = {"zero1": ("zero-stage", 1), "zero2": ("zero-stage", 2), "zero3": ("zero-stage", 3),
                       "fsdp1": ("fsdp", "full-shard"), "fsdp2": ("fsdp", "full-shard")}
UNMODELLED = (
    ("padding_free", "unpadded batches (fewer tokens than batch x length)"),
)


def read(m: Mapper, base_dir: Path) -> None:
    name = m.get("model_name_or_path")
    if isinstance(name, str) and name:
        m.put("model", model_table(name, m, base_dir), "model_name_or_path")
    # `trl dpo --config x.yaml` names the trainer on the command line: the run's recipe key says it
    recipe = m.recipe or ("grpo" if "num_generations" in m.data else "dpo" if "max_prompt_length" in m.data or "beta" in m.data else "sft")
    peft = m.get("use_peft") is True
    four, eight = m.get("load_in_4bit") is True, m.get("load_in_8bit") is True
    if peft:
        m.put("mode", "qlora" if four else "lora", "use_peft")
        if "lora_r" in m.data:
            m.put("lora-rank", m.get("lora_r"), "lora_r")
        else:
            m.assume("lora-rank", 16, f"{MODEL}: lora_r 16")
        targets = m.get("lora_target_modules")
        if targets == "all-linear" or (isinstance(targets, list) and targets == ["all-linear"]):
            m.put("lora-targets", "all-linear", "lora_target_modules")
        elif isinstance(targets, list) and targets:
            m.put("lora-targets", targets, "lora_target_modules")
        if "lora_dropout" in m.data:
            m.put("lora-dropout", m.get("lora_dropout"), "lora_dropout")
        else:
            m.assume("lora-dropout", 0.05, f"{MODEL}:115: lora_dropout 0.05")
        m.modules_to_save("lora_modules_to_save")
        m.dora_and_rslora("use_dora", "use_rslora")  # trl/trainer/model_config.py:142, :135 (False)
    else:
        m.assume("mode", "train", f"{MODEL}: use_peft False")
    if peft and four:
        quant = str(m.get("bnb_4bit_quant_type", "nf4")).lower()  # model_config.py: bnb_4bit_quant_type "nf4"
        m.put("dtype", "nf4" if quant == "nf4" else "int4", "load_in_4bit")
        # SFTTrainer wraps the model with get_peft_model only (trl/trainer/sft_trainer.py:1097); of TRL's trainers only
        # the experimental BCO, CPO and ORPO call prepare_model_for_kbit_training (experimental/bco/bco_trainer.py:526)
        m.assume("kbit-prepare", False, "trl/trainer/sft_trainer.py:1097: get_peft_model, no prepare_model_for_kbit_training")
        if m.given("use_bnb_nested_quant"):
            m.put("double-quant", m.get("use_bnb_nested_quant") is True, "use_bnb_nested_quant")
        else:
            m.assume("double-quant", False, f"{MODEL}: use_bnb_nested_quant False")
    elif peft and eight:
        m.put("dtype", "int8", "load_in_8bit")
    if "per_device_train_batch_size" in m.data:
        m.put("batch-size", m.get("per_device_train_batch_size"), "per_device_train_batch_size")
    else:
        m.assume("batch-size", 8, "transformers/training_args.py: per_device_train_batch_size 8")
    if recipe == "sft":
        if "max_length" in m.data and m.get("max_length") is not None:
            m.put("seq-len", m.get("max_length"), "max_length")
        else:
            m.assume("seq-len", 1024, f"{SFT}: max_length 1024")
        loss = m.get("loss_type")
        if m.get("use_liger_kernel") is True:  # transformers Trainer: apply_liger_kernel_to_<model>'s defaults (kernels.py "liger")
            m.put("kernels", ["liger"], "use_liger_kernel")
        elif loss == "chunked_nll":
            m.put("loss", "fused", "loss_type")
        elif loss is None:  # sft_config.py __post_init__: unset -> "chunked_nll" (lm_head on kept tokens, in chunks)
            m.assume("loss", "fused", f'{SFT}: loss_type "chunked_nll"')
    else:
        if not m.recipe:  # a recipe the run names is the run's own setting, not the file's
            m.put("recipe", recipe, "num_generations" if recipe == "grpo" else "max_prompt_length" if m.given("max_prompt_length") else "beta")
        for theirs, ours in (("beta", "beta"), ("max_prompt_length", "max-prompt-length"), ("num_generations", "num-generations"),
                             ("max_completion_length", "max-completion-length"), ("max_length", "max-length")):
            if m.get(theirs) is not None and (recipe == "dpo" or theirs != "max_length"):
                if recipe == "grpo" and theirs == "max_length":
                    continue
                m.put(ours, m.get(theirs), theirs)
        if recipe == "dpo" and m.get("loss_type") in ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down", "exo_pair", "aot", "aot_pair", "discopop"):
            m.put("loss-type", m.get("loss_type"), "loss_type")
        if recipe == "grpo" and m.get("use_vllm") is True:
            m.put("generation", "vllm-colocate" if m.get("vllm_mode") == "colocate" else "vllm-server", "use_vllm / vllm_mode")
        if recipe == "grpo":
            _generation_batch(m)
    hf_args.optimizer(m)
    if "gradient_checkpointing" in m.data:
        hf_args.checkpointing(m)
    else:
        m.assume("gradient-checkpointing", True, f"{SFT}: gradient_checkpointing defaults to True")
    # unset: transformers' default, reentrant before 5 (4.48.1 modeling_utils.py:2539); TRL 0.28 on sets use_reentrant
    # False under transformers < 5 (trl @ f2cd577 trl/trainer/sft_trainer.py:1332-1334, dpo_trainer.py:858-860) but needs
    # transformers >= 4.53.2 (TRL 0.20 on, setup.cfg), past the hold's < 4.52: left to the trainer's default
    hf_args.reentrant(m)
    if m.get("activation_offloading") is True:
        m.put("activation-offload", True, "activation_offloading")
    attn = str(m.get("attn_implementation", "")).lower()
    if attn == "eager":
        m.put("flash-attention", False, "attn_implementation")
    elif attn:
        m.put("flash-attention", True, "attn_implementation")
        if attn in ATTN_IMPLEMENTATIONS:  # TRL ModelConfig.attn_implementation, passed to from_pretrained as given
            m.put("attn-implementation", attn, "attn_implementation")
    hf_args.deepspeed(m, base_dir)
    hf_args.fsdp(m)
    profile = str(m.get("accelerate_config", ""))
    if profile in ACCELERATE_PROFILES:
        key, value = ACCELERATE_PROFILES[profile]
        m.put(key, value, f"accelerate_config = {profile} (trl/accelerate_configs/{profile}.yaml)")
        if profile.startswith("fsdp"):  # fsdp_config.fsdp_version 1 / 2 (trl/accelerate_configs/fsdp1.yaml @ 5b2c1fa, fsdp2.yaml @ 9ce14f8)
            m.put("fsdp-version", int(profile[-1]), f"accelerate_config = {profile} (trl/accelerate_configs/{profile}.yaml)")
    elif profile:
        m.not_modelled(f"accelerate_config = {profile}", "a custom accelerate config is not followed; give zero-stage or fsdp on the run")
    if isinstance(m.get("num_processes"), int):  # an accelerate config merged into the same file
        m.put("gpus", m.get("num_processes"), "num_processes")
    _precision(m, quantized=peft and (four or eight))  # after deepspeed, fsdp and accelerate_config: an fp32 copy or not
    if m.get("torch_compile") is True:  # transformers TrainingArguments.torch_compile (axolotl passes it on)
        m.put("compile", True, "torch_compile")
    for key, why in UNMODELLED:
        if m.is_set(key):
            m.not_modelled(key, why)


def _generation_batch(m: Mapper) -> None:
    """GRPO generates for steps_per_generation optimisation steps at once; unset, it is
    gradient_accumulation_steps (trl/trainer/grpo_config.py:1098-1100). generation_batch_size counts
    completions over every process, which the run's per-GPU generation-batch-size is not."""
    if m.get("steps_per_generation") is not None:
        m.put("steps-per-generation", m.get("steps_per_generation"), "steps_per_generation")
    elif m.get("generation_batch_size") is not None:
        m.not_modelled("generation_batch_size", "a generation batch over all processes; give generation-batch-size per GPU on the run")
    elif m.get("gradient_accumulation_steps") is not None:
        m.put("steps-per-generation", m.get("gradient_accumulation_steps"),
              "gradient_accumulation_steps (GRPOConfig's steps_per_generation defaults to it)")


TRL_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}  # trl/trainer/utils.py:1144-1153 takes these and "auto"
LOADER = "trl/trainer/utils.py:1144 create_model_from_path"  # TRL @ f2cd57710ae3; dtype "float32" since v0.27.0 (#4778)


def _loaded_dtype(m: Mapper) -> hf_args.Stored:
    """The dtype the model loads in. The TRL CLI passes ModelConfig's dtype (the file's top-level ``dtype``,
    default "float32", model_config.py:89-95) as model_init_kwargs, replacing the file's (trl/scripts/sft.py:74-79,
    and dpo.py, grpo.py alike); a script of one's own passes SFTConfig.model_init_kwargs, whose unset dtype
    create_model_from_path makes float32. An older ``torch_dtype`` there loses to that float32: from_pretrained
    takes dtype before torch_dtype (transformers 5 modeling_utils.py:4233-4235)."""
    init = m.get("model_init_kwargs")
    init = init if isinstance(init, dict) else {}
    if m.given("dtype"):
        key, value = "dtype", m.data["dtype"]
    elif "dtype" in init:
        key, value = "model_init_kwargs.dtype", init["dtype"]
    else:
        if "torch_dtype" in init:
            m.not_modelled("model_init_kwargs.torch_dtype", f"{LOADER} sets dtype float32, which from_pretrained takes "
                                                            "before torch_dtype (modeling_utils.py:4233-4235): priced as float32")
        return hf_args.Stored("fp32", "", f"{LOADER}: dtype float32 unless set")
    if value is None or value == "auto":  # None passes through to from_pretrained, whose default is "auto" (transformers 5)
        # from_pretrained reads config.json's dtype (transformers modeling_utils.py:4236-4237, _get_dtype)
        return hf_args.Stored("bf16", key, "auto: the checkpoint's dtype, bf16 assumed")
    if value not in TRL_DTYPES:
        raise m.fail(key, f'"{shown_name(str(value), 40)}" is not a dtype TRL loads a model in; expected "auto", "bfloat16", '
                          '"float16" or "float32" (trl/trainer/utils.py:1144-1153 create_model_from_path).')
    return hf_args.Stored(TRL_DTYPES[value], key, "the model's dtype")


def _precision(m: Mapper, quantized: bool) -> None:
    """TRL loads the model in _loaded_dtype and casts nothing but a quantised model's adapters; bf16 is on unless
    fp16 is set (trl/trainer/base_config.py:105 __post_init__). So a full fine-tune with no dtype is amp (fp32
    weights under bf16 autocast), with dtype bfloat16 pure bf16. LoRA adapters are PEFT's fp32, except under ZeRO-3
    over an unquantised 16-bit base, where TRL passes autocast_adapter_dtype=False (sft_trainer.py:1089-1097), and
    over a 4- or 8-bit base, whose trainable parameters TRL casts to bf16 (sft_trainer.py:1127-1130; dpo_trainer.py:700-703,
    grpo_trainer.py:500-503, reward_trainer.py:527-530 alike)."""
    stored = _loaded_dtype(m)
    if m.get("fp16") is True:
        autocast = hf_args.Stored("fp16", "fp16", "TrainingArguments: torch.autocast")
    elif m.get("bf16") is False:
        autocast = None
    else:
        autocast = hf_args.Stored("bf16", "bf16" if m.given("bf16") else "", "trl/trainer/base_config.py:105: bf16 unless fp16")
    if quantized:
        four = m.get("load_in_4bit") is True
        m.put("adapter-dtype", "bf16", f"load_in_{'4' if four else '8'}bit (trl/trainer/sft_trainer.py:1127-1130: trainable parameters cast to bf16)")
        if four:  # bnb_4bit_compute_dtype is the dtype the model loads in (trl/trainer/utils.py:239): the compute-dtype key
            why = f"{stored.key or 'dtype'} (bnb_4bit_compute_dtype = the model's dtype, trl/trainer/utils.py:239)"
            if stored.key:
                m.put("compute-dtype", stored.dtype, why)
            else:
                m.assume("compute-dtype", stored.dtype, f"{stored.why}; {why}")
        elif stored.dtype == "fp32":
            m.not_modelled(f"{stored.key or 'dtype'} = float32 with load_in_8bit",
                           "fp32 embeddings, head and norms of the 8-bit model: priced in 16 bit")
        return
    hf_args.weights_and_compute(m, stored, autocast)
    if m.values.get("mode") == "lora" and m.declared("zero-stage") == 3 and stored.dtype != "fp32":
        why = "trl/trainer/sft_trainer.py:1089-1097: ZeRO-3 keeps the adapters in the base dtype"
        if "zero-stage" in m.engine:
            m.assume("adapter-dtype", stored.dtype, f"zero-stage 3 on the run; {why}")
        else:
            key = "deepspeed" if m.given("deepspeed") else "accelerate_config"  # whichever put zero-stage 3
            m.put("adapter-dtype", stored.dtype, f"{key} ({why})")
