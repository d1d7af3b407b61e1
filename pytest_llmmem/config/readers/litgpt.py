"""litgpt fine-tuning configs (``litgpt finetune_lora --config x.yaml``, config_hub/finetune/):
checkpoint_dir, precision, quantize, train.micro_batch_size / max_seq_length, lora_* flags.
Defaults cite litgpt/finetune/lora.py (setup()) and litgpt/args.py (TrainArgs).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path

from .mapper import Mapper, model_table

LORA = "litgpt/finetune/lora.py setup()"
# litgpt LoRA switches -> the transformers module names our architectures use.
_SWITCHES = (("lora_query", ("q_proj",)), ("lora_key", ("k_proj",)), ("lora_value", ("v_proj",)),
             ("lora_projection", ("o_proj",)), ("lora_mlp", ("gate_proj", "up_proj", "down_proj")))
_OPTIMIZERS = {"adamw": "adamw", "adam": "adam", "sgd": "sgd"}


def read(m: Mapper, base_dir: Path) -> None:
    m.put("framework", "litgpt", "(litgpt config)")
    checkpoint = m.get("checkpoint_dir")
    if isinstance(checkpoint, str) and checkpoint:
        parts = Path(checkpoint).parts  # checkpoints/<org>/<name>, as litgpt download writes them
        name = "/".join(parts[-2:]) if len(parts) >= 2 else checkpoint
        local = model_table(checkpoint, m, base_dir)
        m.put("model", local if "config" in local else {"id": name}, "checkpoint_dir")
    quantize = str(m.get("quantize", "") or "").lower()
    lora = any(k in m.data for k in ("lora_r", "lora_query", "lora_value")) or quantize.startswith("bnb.nf4")
    if lora:
        m.put("mode", "qlora" if quantize.startswith(("bnb.nf4", "bnb.fp4")) else "lora",
              next(k for k in ("lora_r", "lora_query", "lora_value", "quantize") if m.given(k)))
        if "lora_r" in m.data:
            m.put("lora-rank", m.get("lora_r"), "lora_r")
        else:
            m.assume("lora-rank", 8, f"{LORA}: lora_r 8")
        targets = [name for key, names in _SWITCHES if m.get(key, key in ("lora_query", "lora_value")) is True for name in names]
        every = len(targets) == 7  # all five switches: every linear of the block (names differ per family)
        switches = [key for key, _ in _SWITCHES if m.given(key)]
        head = m.get("lora_head") is True  # litgpt/lora.py GPT: lm_head becomes a LoRALinear
        if head:
            switches.append("lora_head")
        if switches:
            chosen = ["all-linear"] if every else targets
            m.put("lora-targets", chosen + ["lm_head"] if head else ("all-linear" if every else targets), " / ".join(switches))
        else:
            m.assume("lora-targets", targets, f"{LORA}: lora_query and lora_value True, the others False")
        if "lora_dropout" in m.data:
            m.put("lora-dropout", m.get("lora_dropout"), "lora_dropout")
        else:
            m.assume("lora-dropout", 0.05, "litgpt/finetune/lora.py:58 setup(): lora_dropout 0.05")
    else:
        m.assume("mode", "train", "no lora_* keys (litgpt finetune_full)")
    if quantize.startswith("bnb.nf4"):
        m.put("dtype", "nf4", "quantize")
        m.put("double-quant", quantize.endswith("-dq"), "quantize")
    elif quantize.startswith("bnb.fp4"):
        m.put("dtype", "int4", "quantize")
    elif quantize == "bnb.int8":
        m.put("dtype", "int8", "quantize")
    precision = str(m.get("precision", "") or "")
    if "dtype" not in m.values:
        if precision.startswith("bf16"):
            m.put("dtype", "bf16", "precision")
        elif precision.startswith("16"):
            m.put("dtype", "fp16", "precision")
        elif precision.startswith("32"):
            m.put("dtype", "fp32", "precision")
        else:
            m.assume("dtype", "bf16", f"{LORA}: precision None -> bf16-true where supported (litgpt/utils.py get_default_supported_precision)")
    if precision.endswith("-true") or not precision:  # Fabric "bf16-true": weights and compute in bf16
        m.values["precision"] = "pure"
    elif precision.endswith("-mixed"):
        m.values["precision"] = "mixed"
    train = m.get("train") or {}
    if isinstance(train, dict):
        if train.get("micro_batch_size") is not None:
            m.put("batch-size", train["micro_batch_size"], "train.micro_batch_size")
        if train.get("max_seq_length") is not None:
            m.put("seq-len", train["max_seq_length"], "train.max_seq_length")
        else:
            m.not_modelled("train.max_seq_length = null", "rows are as long as the longest sample, up to the model's block size; set seq-len on the run")
    devices = m.get("devices")
    if isinstance(devices, int) and devices > 1:
        m.put("gpus", devices, "devices")
        m.put("fsdp", "full-shard", "devices > 1 (litgpt shards with FSDPStrategy, litgpt/finetune/lora.py)")
    optimizer = m.get("optimizer")
    name = optimizer.get("class_path", "") if isinstance(optimizer, dict) else str(optimizer or "")
    short = name.rsplit(".", 1)[-1].lower()
    if short in _OPTIMIZERS:
        m.put("optimizer", _OPTIMIZERS[short], "optimizer")
    elif short:
        m.not_modelled(f"optimizer = {name}", "its states are priced as AdamW's")
    else:
        m.assume("optimizer", "adamw", f'{LORA}: optimizer "AdamW"')
