"""litgpt fine-tuning configs (``litgpt finetune_lora --config x.yaml``, config_hub/finetune/):
checkpoint_dir, precision, quantize, train.micro_batch_size / max_seq_length, lora_* flags.
Defaults cite litgpt/finetune/lora.py (setup()) and litgpt/args.py (TrainArgs).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path

from . import hf_args
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
    _precision(m)  # after devices: FSDP keeps bf16-mixed's fp32 parameters as shards
    optimizer = m.get("optimizer")
    name = optimizer.get("class_path", "") if isinstance(optimizer, dict) else str(optimizer or "")
    short = name.rsplit(".", 1)[-1].lower()
    if short in _OPTIMIZERS:
        m.put("optimizer", _OPTIMIZERS[short], "optimizer")
    elif short:
        m.not_modelled(f"optimizer = {name}", "its states are priced as AdamW's")
    else:
        m.assume("optimizer", "adamw", f'{LORA}: optimizer "AdamW"')


FABRIC = "lightning/fabric/plugins/precision"  # pytorch-lightning @ 7f0c3436cd
_HALF = {"bf16": "bf16", "16": "fp16", "32": "fp32"}
_LEGACY = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}  # Fabric's short spellings (fabric/connector.py:569-575)


def _precision(m: Mapper) -> None:
    """Fabric's precision: "X-true" converts the model to X (half.py:42-43 HalfPrecision.convert_module): pure X;
    "X-mixed" keeps fp32 parameters under torch.autocast (amp.py:63-64 MixedPrecision.forward_context): amp on one
    device, fp32 shards with X compute under FSDP (fsdp.py:74-79, 94-97). Unset, litgpt picks "bf16-mixed" for
    training (litgpt/utils.py:363-380 get_default_supported_precision(training=True); finetune/lora.py:131, full.py:97)."""
    if "dtype" in m.values:  # bnb quantisation: litgpt requires a "-true" precision with it (finetune/lora.py:142-143)
        return
    given = str(m.get("precision", "") or "")
    precision = _LEGACY.get(given, given)
    if not precision:
        precision, key, why = "bf16-mixed", "", "litgpt/utils.py:377 get_default_supported_precision(training=True): bf16-mixed"
    else:
        key, why = "precision", f"Fabric {precision}"
    half, _, kind = precision.partition("-")
    if half not in _HALF or kind not in ("true", "mixed"):
        m.not_modelled(f"precision = {given}", "priced as bf16-true")
        half, kind, why = "bf16", "true", "priced as bf16-true"
    if kind == "true":
        stored, autocast = hf_args.Stored(_HALF[half], key, f"{why}: {FABRIC}/half.py:42-43 the model converted"), None
    else:
        stored = hf_args.Stored("fp32", key, f"{why}: {FABRIC}/amp.py:30-64 fp32 parameters")
        autocast = hf_args.Stored(_HALF[half], key, f"{why}: {FABRIC}/amp.py:63-64 torch.autocast")
    hf_args.weights_and_compute(m, stored, autocast)
    if m.values.get("mode") == "lora":  # the LoRA parameters are made with the model, under fabric.init_module (finetune/lora.py:210)
        if key:
            m.put("adapter-dtype", stored.dtype, f"{key} ({why}: the adapters are made in the model's dtype)")
        else:
            m.assume("adapter-dtype", stored.dtype, f"{why}: the adapters are made in the model's dtype (finetune/lora.py:210)")
