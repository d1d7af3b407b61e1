"""axolotl YAML (``axolotl train config.yml``): base_model, micro_batch_size, sequence_len, adapter.
Defaults cite axolotl src/axolotl/utils/schemas/config.py (AxolotlInputConfig) and the
TrainingArguments it builds.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path

from . import hf_args
from ...core.run import ATTN_IMPLEMENTATIONS
from .mapper import Mapper, model_table

SCHEMA = "axolotl src/axolotl/utils/schemas/config.py"  # @ 067b021c8b87: sequence_len :665, gradient_checkpointing :600
# Memory-relevant keys this tool does not model: (key, what it changes).
LIGER_FLAGS = (("liger_rope", "liger-rope"), ("liger_rms_norm", "liger-rms-norm"), ("liger_glu_activation", "liger-glu"),
               ("liger_swiglu", "liger-glu"),
               ("liger_cross_entropy", "liger-cross-entropy"), ("liger_fused_linear_cross_entropy", "liger-fused-linear-cross-entropy"))
UNMODELLED = (
    ("lora_mlp_kernel", "fused LoRA MLP kernel"), ("liger_layer_norm", "Liger LayerNorm kernel"),
    ("sequence_parallel_degree", "context parallelism"),
    ("fp8", "fp8 compute"), ("unfrozen_parameters", "partly frozen full fine-tuning"),
    ("tensor_parallel_size", "tensor parallelism from the trainer config"), ("context_parallel_size", "context parallelism"),
    # schema fields at 067b021c8b87 that change the peak and have no run key here
    ("activation_offloading", "activations offloaded to host or disk"), ("tiled_mlp", "the MLP computed in sequence tiles"),
    ("chunked_cross_entropy", "axolotl's chunked cross entropy"), ("lora_qkv_kernel", "fused LoRA QKV kernel"),
    ("lora_o_kernel", "fused LoRA output-projection kernel"),
    ("gptq", "a GPTQ-quantised base"), ("relora", "ReLoRA's periodic merges"), ("lisa_n_layers", "LISA's few unfrozen layers"),
)


def read(m: Mapper, base_dir: Path) -> None:
    base = m.get("base_model")
    if isinstance(base, str) and base:
        m.put("model", model_table(base, m, base_dir), "base_model")
    adapter = str(m.get("adapter", "")).lower()
    four, eight = m.get("load_in_4bit") is True, m.get("load_in_8bit") is True
    if adapter in ("lora", "qlora"):
        m.put("mode", "qlora" if adapter == "qlora" or four else "lora", "adapter")
        rank = m.get("lora_r")
        if rank is not None:
            m.put("lora-rank", rank, "lora_r")
        if m.get("lora_target_linear") is True:
            m.put("lora-targets", "all-linear", "lora_target_linear")
        elif isinstance(m.get("lora_target_modules"), list):
            m.put("lora-targets", m.get("lora_target_modules"), "lora_target_modules")
        if m.get("lora_dropout") is not None:
            m.put("lora-dropout", m.get("lora_dropout"), "lora_dropout")
        else:
            m.assume("lora-dropout", 0.0, "axolotl src/axolotl/utils/schemas/peft.py:80 lora_dropout 0.0 (:236 validate_lora_dropout)")
        m.modules_to_save("lora_modules_to_save")
        m.dora_and_rslora("peft_use_dora", "peft_use_rslora")  # src/axolotl/utils/schemas/peft.py:89, :92 (None: PEFT's False)
    elif adapter:
        m.not_modelled(f"adapter = {adapter}", "priced as full fine-tuning")
    else:
        m.assume("mode", "train", f"{SCHEMA}: adapter None (full fine-tuning)")
    if four and m.values.get("mode") == "qlora":
        # axolotl's BitsAndBytesConfig: nf4 with double quant (src/axolotl/loaders/model.py:718-719 @ 067b021c8b87)
        m.put("dtype", "nf4", "load_in_4bit")
        m.put("double-quant", True, "load_in_4bit (axolotl sets bnb_4bit_use_double_quant=True)")
        # prepare_model_for_kbit_training runs (loaders/model.py:1016-1023), then an adapter run casts the norms and
        # embeddings back to torch_dtype for flash-attn (:447-476 _configure_embedding_dtypes): no fp32 stream is left
        m.assume("kbit-prepare", False, "axolotl src/axolotl/loaders/model.py:457-476: norms and embeddings cast back to torch_dtype after it")
    elif eight and m.values.get("mode") == "lora":
        m.put("dtype", "int8", "load_in_8bit")
    if m.given("micro_batch_size"):
        m.put("batch-size", m.get("micro_batch_size"), "micro_batch_size")
    else:
        m.assume("batch-size", 1, "axolotl src/axolotl/utils/schemas/training.py:77: micro_batch_size default 1")
    if "sequence_len" in m.data:
        m.put("seq-len", m.get("sequence_len"), "sequence_len")
    else:
        m.assume("seq-len", 512, f"{SCHEMA}: sequence_len default 512")
    if m.get("sample_packing") is True:  # packed rows are micro_batch_size x sequence_len tokens: the same peak
        m.origins["seq-len"] += " (sample_packing: rows packed to it)"
    hf_args.optimizer(m, "optimizer")
    grad_ckpt = m.get("gradient_checkpointing")
    if grad_ckpt in ("offload", "offload_disk", "unsloth"):  # activations checkpointed to host (or disk)
        m.put("gradient-checkpointing", True, "gradient_checkpointing")
        m.put("activation-offload", True, f"gradient_checkpointing = {grad_ckpt}")
    else:
        hf_args.checkpointing(m)
    if m.values.get("gradient-checkpointing") and not hf_args.reentrant(m) and m.get("unfrozen_parameters") is None \
            and m.get("rl") is None:
        # axolotl src/axolotl/utils/config/__init__.py:377-383 @ 067b021c8b87 (v0.7.0 :228-234, v0.9.0 :226-232): with
        # checkpointing, no gradient_checkpointing_kwargs, no unfrozen_parameters and no rl, {"use_reentrant": True}
        m.assume("checkpoint-reentrant", True, "utils/config/__init__.py:383 @ 067b021c8b87: use_reentrant True")
    # attn_implementation (schemas/config.py) replaced the boolean flags, which stay accepted as deprecated
    attention = str(m.get("attn_implementation", "")).lower()
    if m.get("eager_attention") is True or attention == "eager":
        m.put("flash-attention", False, "eager_attention" if m.get("eager_attention") else "attn_implementation")
    elif m.get("flash_attention") or m.get("sdp_attention") or m.get("flex_attention") or attention:
        key = next(k for k in ("flash_attention", "sdp_attention", "flex_attention", "attn_implementation") if m.get(k))
        m.put("flash-attention", True, key)
        # the kernel, for the masks (attention_masks.py): axolotl @ 067b021c8b87 src/axolotl/utils/schemas/enums.py:118-125
        # LEGACY_ATTN_FLAG_TO_IMPL maps flash_attention to "flash_attention_2" and sdp_attention to "sdpa"
        # (schemas/config.py:1533-1575 sets attn_implementation from it); attn_implementation as given
        kernel = attention if attention in ATTN_IMPLEMENTATIONS else "" if attention else \
            "flash_attention_2" if m.get("flash_attention") else "sdpa" if m.get("sdp_attention") else ""
        if kernel:
            m.put("attn-implementation", kernel, "attn_implementation" if attention else key)
    else:
        m.assume("flash-attention", True, "transformers' default attn_implementation sdpa (no s x s scores kept)")
    # The Liger plugin passes each flag to apply_liger_kernel_to_<model> (axolotl src/axolotl/integrations/liger/args.py
    # LigerArgs @ 0763f1ab: liger_rope, liger_rms_norm, liger_glu_activation (liger_swiglu, deprecated), liger_cross_entropy,
    # liger_fused_linear_cross_entropy).
    liger = [(flag, kernel) for flag, kernel in LIGER_FLAGS if m.get(flag) is True]
    if liger:
        m.put("kernels", [kernel for _, kernel in liger], ", ".join(flag for flag, _ in liger))
    elif m.get("cut_cross_entropy") is True:
        m.put("loss", "fused", "cut_cross_entropy")
    hf_args.deepspeed(m, base_dir)
    hf_args.fsdp(m)
    if "dtype" not in m.values:  # after deepspeed and fsdp: they decide whether an fp32 copy exists
        _precision(m)
    if m.get("torch_compile") is True:  # transformers TrainingArguments.torch_compile (axolotl passes it on)
        m.put("compile", True, "torch_compile")
    for key, why in UNMODELLED:
        if m.is_set(key):
            m.not_modelled(key, why)
    rl = str(m.get("rl", "")).lower()
    if rl == "dpo":
        m.put("recipe", "dpo", "rl")
        if m.get("rl_beta") is not None:
            m.put("beta", m.get("rl_beta"), "rl_beta")
    elif rl == "grpo":
        m.put("recipe", "grpo", "rl")
        trl = m.get("trl") or {}
        if isinstance(trl, dict) and trl.get("num_generations"):
            m.put("num-generations", trl["num_generations"], "trl.num_generations")
    elif rl:
        m.not_modelled(f"rl = {rl}", "priced as supervised fine-tuning")


CONFIG = "axolotl src/axolotl/utils/config/__init__.py"  # @ 067b021c8b87, resolve_dtype
BUILDER = "axolotl src/axolotl/core/builders/base.py"  # _configure_precision_settings


def _precision(m: Mapper) -> None:
    """The model loads in cfg.torch_dtype (loaders/model.py:611-612), bf16 with bf16 / bfloat16, fp16 with fp16 /
    float16 / load_in_8bit, else fp32 (utils/config/__init__.py:191-196; bf16 "auto" is bf16 on a GPU that has it
    unless fp16 is set, :157-170),
    and axolotl casts no trainable parameter up: a full fine-tune is pure 16-bit under the Trainer's autocast
    (hf_args.weights_and_compute), as the model loaded.
    TrainingArguments (src/axolotl/core/builders/base.py:270-278): bf16 = cfg.bf16 or cfg.bfloat16, except
    bf16 "full" (bf16_full_eval only: no autocast); fp16 = cfg.fp16 and not cfg.bf16."""
    bf16, fp16 = m.get("bf16"), m.get("fp16")
    on = bf16 in (True, "full", "true") or (bf16 == "auto" and fp16 is not True)
    if on or m.get("bfloat16") is True:
        key = "bf16" if on else "bfloat16"
        stored = hf_args.Stored("bf16", key, f"{CONFIG}:191-192: torch_dtype bfloat16")
        autocast = None if bf16 == "full" else hf_args.Stored("bf16", key, f"{BUILDER}:276-278: TrainingArguments bf16")
    elif fp16 is True or m.get("float16") is True or m.get("load_in_8bit") is True:
        key = "fp16" if fp16 is True else "float16" if m.get("float16") is True else "load_in_8bit"
        stored = hf_args.Stored("fp16", key, f"{CONFIG}:193-194: torch_dtype float16")
        autocast = hf_args.Stored("fp16", "fp16", f"{BUILDER}:271: TrainingArguments fp16") if fp16 is True else None
    else:
        stored, autocast = hf_args.Stored("fp32", "", f"{CONFIG}:195-196: torch_dtype float32 without bf16 or fp16"), None
    hf_args.weights_and_compute(m, stored, autocast)
    if m.values.get("mode") == "lora" and m.get("peft_autocast_adapter_dtype") is False:
        # passed to get_peft_model only when set (src/axolotl/loaders/adapter.py:368-369): the adapters keep the base dtype
        m.put("adapter-dtype", stored.dtype, "peft_autocast_adapter_dtype")
    attention = str(m.get("attn_implementation", "") or "").lower()
    # legacy flags (utils/schemas/enums.py:118 LEGACY_ATTN_FLAG_TO_IMPL): only sdp_attention / eager_attention keep sdpa / eager
    fa_like = any(m.get(k) is True for k in ("flash_attention", "flex_attention", "xformers_attention", "sage_attention"))
    if m.values.get("mode") == "train" and stored.dtype != "fp32" and not m.values.get("fsdp") and not fa_like \
            and attention in ("", "sdpa", "eager") and m.get("cut_cross_entropy") is not True:
        # loaders/model.py:427-437 casts embed_tokens, lm_head and every norm to fp32 before training and casts them
        # back (:456-477) only for an adapter, FSDP, cut_cross_entropy or an attention outside ATTN_IMPLS_WITHOUT_DTYPE_CAST
        # (utils/schemas/enums.py:159: eager, sdpa; schemas/config.py:1500 attn_needs_dtype_cast)
        m.not_modelled(f"attn_implementation = {attention or 'unset'}",
                       "axolotl keeps embed_tokens, lm_head and the norms in fp32 with sdpa / eager attention: their weights, "
                       "gradients and AdamW states are priced in 16 bit")
