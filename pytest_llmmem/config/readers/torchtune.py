"""torchtune recipe configs (``tune run <recipe> --config x.yaml``): ``_component_`` builders for the
model, optimizer and loss; batch_size, dtype, enable_activation_checkpointing. Defaults cite the
torchtune recipes (recipes/full_finetune_single_device.py, recipes/lora_finetune_single_device.py).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

from .mapper import Mapper

RECIPE = "torchtune recipes/lora_finetune_single_device.py"
# torchtune model builders -> the Hub checkpoint they load (torchtune/models/<family>/_model_builders.py).
BUILDERS = {
    "llama3_1_8b": "meta-llama/Llama-3.1-8B", "llama3_8b": "meta-llama/Llama-3.1-8B",
    "llama3_1_70b": "meta-llama/Llama-3.1-70B", "llama3_2_1b": "meta-llama/Llama-3.2-1B", "llama3_2_3b": "meta-llama/Llama-3.2-3B",
    "qwen3_8b": "Qwen/Qwen3-8B", "qwen3_0_6b": "Qwen/Qwen3-0.6B", "gemma2_9b": "google/gemma-2-9b",
    "phi3_mini": "microsoft/Phi-3-mini-4k-instruct", "phi4_mini": "microsoft/Phi-4-mini-instruct",
}
# torchtune module names -> transformers' (torchtune/models/convert_weights.py _FROM_HF)
_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
_OPTIMIZERS = {
    "torch.optim.AdamW": "adamw", "torch.optim.Adam": "adam", "torch.optim.SGD": "sgd",
    "bitsandbytes.optim.PagedAdamW8bit": "paged-adamw-8bit", "bitsandbytes.optim.PagedAdamW": "paged-adamw",
    "bitsandbytes.optim.AdamW8bit": "adamw-8bit", "torchao.optim.AdamW8bit": "torchao-adamw-8bit",
    "torchao.prototype.low_bit_optim.AdamW8bit": "torchao-adamw-8bit",
}
UNMODELLED = (("tensor_parallel_dim", "tensor parallelism"),)
DISTRIBUTED = "torchtune recipes/full_finetune_distributed.py _setup_model"


def _selective(m: Mapper) -> None:
    """ac_mode / ac_option: the distributed recipes apply selective AC only when enable_activation_checkpointing
    is false, and full AC only when ac_mode is unset; with both set they apply neither."""
    mode = m.get("ac_mode")
    if mode is None or str(mode).lower() == "none":
        return
    if m.get("enable_activation_checkpointing") is True:
        m.put("gradient-checkpointing", False, f"enable_activation_checkpointing with ac_mode = {mode}: {DISTRIBUTED} applies neither")
    elif str(mode).lower() == "full":
        m.put("gradient-checkpointing", True, "ac_mode = full")
    elif str(mode).lower() == "selective":
        m.put("gradient-checkpointing", "selective", "ac_mode = selective")
        option = m.get("ac_option")
        if option is None:  # torchtune/training/_activation_checkpointing.py checkpoint_wrapper: int(ac_option)
            raise m.fail("ac_option", "ac_mode = selective needs ac_option: a layer period (2 checkpoints every second layer) or op.")
        m.put("selective-ac", option, "ac_option")
    else:
        raise m.fail("ac_mode", f'"{mode}" is not a torchtune activation checkpointing mode.', hint="Valid: none, full, selective.")


def _component(value: Any) -> str:
    return str(value.get("_component_", "")) if isinstance(value, dict) else ""


def read(m: Mapper, base_dir: Path) -> None:
    model: Dict[str, Any] = m.get("model") or {}
    builder = _component(model).rsplit(".", 1)[-1]
    if m.given("model._component_"):
        m.put("framework", "torchtune", "model._component_")
    else:
        m.assume("framework", "torchtune", "the format: torchtune recipes build every component from _component_")
    base = re.sub(r"^(q?lora)_", "", builder)
    checkpoint_dir = (m.get("checkpointer") or {}).get("checkpoint_dir") if isinstance(m.get("checkpointer"), dict) else None
    if isinstance(checkpoint_dir, str) and (Path(checkpoint_dir) / "config.json").is_file():
        m.put("model", {"config": checkpoint_dir}, "checkpointer.checkpoint_dir")
    elif base in BUILDERS:
        m.put("model", {"id": BUILDERS[base]}, f"model._component_ ({builder})")
    if builder.startswith("qlora_"):
        m.put("mode", "qlora", "model._component_")
        m.put("dtype", "nf4", "model._component_ (torchao NF4)")
    elif builder.startswith("lora_"):
        m.put("mode", "lora", "model._component_")
    elif builder:
        m.put("mode", "train", "model._component_")
    else:
        m.assume("mode", "train", "no model._component_ names a LoRA builder")
    if builder.startswith(("lora_", "qlora_")):
        if "lora_rank" in model:
            m.put("lora-rank", model["lora_rank"], "model.lora_rank")
        targets: List[str] = [_ATTN.get(t, t) for t in model.get("lora_attn_modules") or []]
        if model.get("apply_lora_to_mlp") is True:
            targets += ["gate_proj", "up_proj", "down_proj"]
        if model.get("apply_lora_to_output") is True:
            targets.append("lm_head")  # torchtune's output projection is transformers' lm_head (convert_weights.py)
        if targets:
            m.put("lora-targets", list(dict.fromkeys(targets)), "model.lora_attn_modules / apply_lora_to_mlp / apply_lora_to_output")
        if model.get("lora_dropout") is not None:
            m.put("lora-dropout", model["lora_dropout"], "model.lora_dropout")
        else:
            m.assume("lora-dropout", 0.0, "torchtune/models/llama3/_component_builders.py:173 lora_llama3(): lora_dropout 0.0")
        # torchtune's own DoRALinear (torchtune/modules/peft/dora.py forward; lora_llama3 use_dora=False, :174) keeps what
        # PEFT's does with the adapters in the model dtype: the base output, lora_b's output, the detached norm
        m.dora_and_rslora("use_dora", values=model)  # torchtune has no rsLoRA switch
    # dtype and batch_size are required by the recipes (cfg.dtype, cfg.batch_size): without them the run's own
    # keys (or their defaults) apply, and nothing is credited to the file
    dtype = str(m.get("dtype", "bf16")).lower()
    if "dtype" not in m.values and m.given("dtype"):
        m.put("dtype", "fp32" if dtype in ("fp32", "float32") else "bf16", "dtype")
        if m.values.get("mode") == "train":
            # the recipes build the model in cfg.dtype (recipes/full_finetune_single_device.py:400, full_finetune_distributed.py:611
            # set_default_dtype), with no autocast, and shard it without a MixedPrecisionPolicy
            # (torchtune/training/_distributed.py:661-714 shard_model): the optimizer steps bf16 weights, no fp32 master
            m.put("precision", "pure", "dtype (torchtune @ bd2a0fc7c: the model is built in it and trained so, no fp32 master)")
    if m.given("batch_size"):
        m.put("batch-size", m.get("batch_size"), "batch_size")
    tokenizer = m.get("tokenizer") or {}
    seq = tokenizer.get("max_seq_len") if isinstance(tokenizer, dict) else None
    if isinstance(seq, int):
        m.put("seq-len", seq, "tokenizer.max_seq_len")
    else:
        m.not_modelled("tokenizer.max_seq_len = null", "rows are as long as the longest sample; set seq-len on the run")
    opt = _component(m.get("optimizer"))
    if opt in _OPTIMIZERS:
        m.put("optimizer", _OPTIMIZERS[opt], "optimizer._component_")
        options = m.get("optimizer") or {}
        if options.get("fused") is True:
            m.put("optimizer-impl", "fused", "optimizer.fused")
        elif options.get("foreach") is False:
            m.put("optimizer-impl", "for-loop", "optimizer.foreach")
    elif opt:
        m.not_modelled(f"optimizer._component_ = {opt}", "its states are priced as AdamW's")
    loss = _component(m.get("loss"))
    if loss.endswith("CEWithChunkedOutputLoss"):
        m.put("loss", "chunked", "loss._component_")
    elif loss.endswith("LinearCrossEntropyLoss"):
        m.put("loss", "fused", "loss._component_ (output projection per chunk)")
    elif loss.endswith("CrossEntropyLoss"):
        m.put("loss", "upcast", "loss._component_")
    if "enable_activation_checkpointing" in m.data:
        m.put("gradient-checkpointing", m.get("enable_activation_checkpointing") is True, "enable_activation_checkpointing")
    _selective(m)
    if m.get("compile") is True:
        m.put("compile", True, "compile")
    if m.is_set("context_parallel_dim"):
        m.put("context-parallel", m.get("context_parallel_dim"), "context_parallel_dim")
    if m.get("enable_activation_offloading") is True:
        m.put("activation-offload", True, "enable_activation_offloading")
    if m.get("optimizer_in_bwd") is True:
        m.put("optimizer-in-backward", True, "optimizer_in_bwd")
    fsdp_key = next((k for k in ("fsdp_cpu_offload", "memory_efficient_fsdp_wrap", "fsdp_reshard_after_forward") if k in m.data), None)
    if fsdp_key:
        m.put("fsdp", "full-shard", f"{fsdp_key} (the distributed recipe shards with FSDP2 fully_shard)")
        if m.get("fsdp_cpu_offload") is True:
            m.put("offload", "optimizer+params", "fsdp_cpu_offload")
    for key, why in UNMODELLED:
        if m.is_set(key):
            m.not_modelled(key, why)
