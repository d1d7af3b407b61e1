"""transformers ``TrainingArguments`` keys, shared by axolotl, LLaMA-Factory and TRL (all three
hand these to ``transformers.Trainer``). Defaults cite transformers 5.24 training_args.py.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ...io import files
from ...errors import shown, shown_name
from ...record import Record
from .mapper import Mapper, outside

# OptimizerNames (transformers/training_args.py, enum OptimizerNames) -> (our optimizer, optimizer-impl).
OPTIMIZERS: Dict[str, Tuple[str, Optional[str]]] = {
    "adamw_torch": ("adamw", "foreach"), "adamw_torch_fused": ("adamw", "fused"), "adamw_hf": ("adamw", "for-loop"),
    "adamw_torch_xla": ("adamw", None), "adamw_apex_fused": ("adamw", "fused"),
    "adamw_bnb_8bit": ("adamw-8bit", None), "adamw_8bit": ("adamw-8bit", None), "bnb_8bit": ("adamw-8bit", None),
    "paged_adamw_8bit": ("paged-adamw-8bit", None), "paged_adamw_32bit": ("paged-adamw", None), "paged_adamw": ("paged-adamw", None),
    "adafactor": ("adafactor", None), "sgd": ("sgd", None), "lion_32bit": ("lion", None), "lion_8bit": ("lion", None),
    "adamw": ("adamw", None),  # axolotl's and TRL CLI's spelling
}
DEFAULT_OPTIM = 'transformers/training_args.py:806-811: optim "adamw_torch", "adamw_torch_fused" for torch >= 2.8'


def optimizer(m: Mapper, key: str = "optim") -> None:
    name = m.get(key)
    if name is None:
        m.assume("optimizer", "adamw", DEFAULT_OPTIM)
        return
    found = OPTIMIZERS.get(str(name).lower())
    if found is None:
        m.not_modelled(f"{key} = {shown_name(str(name), 40)}", "its states are priced as AdamW's")
        m.assume("optimizer", "adamw", f"{name} is not modelled")
        return
    m.put("optimizer", found[0], key)
    if found[1]:
        m.put("optimizer-impl", found[1], key)


# What the HF Trainer keeps at the optimizer step. TrainingArguments bf16 / fp16 become accelerate's mixed_precision
# (transformers/trainer.py:744 _build_accelerator_args), which only wraps the forward in torch.autocast
# (accelerate/accelerator.py:1791-1799, accelerate 1.16): there is no fp32 master copy, the optimizer steps each
# parameter in the dtype it was loaded (or cast) in, and torch's AdamW keeps its states in that dtype
# (torch/optim/adam.py:178-182 _init_group, which AdamW inherits: torch.zeros_like(p)). A 16-bit model is "pure"
# 16-bit training; an fp32 model under bf16 / fp16 is "amp". Only DeepSpeed (its ZeRO and BF16 optimizers' fp32
# partitions beside the 16-bit module) and FSDP (accelerate upcasts every trainable 16-bit parameter to fp32 shards
# when mixed_precision is set: accelerator.py:1970-2009 FSDP1, utils/fsdp_utils.py:803-806 FSDP2; MixedPrecision
# computes in 16 bit) keep the fp32 copy the estimate calls "mixed".


class Stored(Record):
    """The dtype the trained parameters (a LoRA run: the frozen base) are kept in, and what says so."""

    dtype: str  # bf16 | fp16 | fp32
    key: str  # the file's key that sets it, "" for the trainer's default
    why: str  # the source line of that default, or what the key does


def engine_of(m: Mapper) -> str:
    """DeepSpeed or FSDP, where the run hands its weights to one (read after deepspeed() and fsdp()); the run's own
    zero-stage / fsdp keys override the file's, as they override every key read."""
    zero, fsdp = m.declared("zero-stage"), m.declared("fsdp")
    on_run = " (zero-stage on the run)" if m.engine.get("zero-stage") else " (fsdp on the run)" if m.engine.get("fsdp") not in (None, "none") else ""
    if (isinstance(zero, int) and zero > 0) or ("zero-stage" not in m.engine and m.get("deepspeed") is not None):
        return "DeepSpeed" + on_run
    return "FSDP" + on_run if fsdp not in (None, "", "none", False) else ""


def weights_and_compute(m: Mapper, stored: Stored, autocast: Optional[Stored]) -> None:
    """dtype and precision of the run from what the trainer stores and what it autocasts to (None: no autocast).
    An adapter run takes the base's storage dtype; its adapters' dtype is the reader's to say. A 16-bit model under
    the trainer's autocast without DeepSpeed or FSDP (which cast the adapters to 16 bit themselves) is autocast = true:
    accelerate wraps its forward in torch.autocast, a 16-bit model included (accelerate 1.0.1 accelerator.py:1413-1424;
    accelerate 1.16 accelerator.py:1791-1799), so PEFT's fp32 adapters compute in 16 bit (adapters.lora_autocast_saved)."""
    if autocast and stored.dtype in ("bf16", "fp16") and not engine_of(m) and m.values.get("mode") != "inference":
        _say(m, "autocast", True, autocast, f": the {stored.dtype} model's forward under {autocast.dtype} torch.autocast")
    if m.values.get("mode") != "train":
        _say(m, "dtype", stored.dtype, stored, "")
        if stored.dtype == "fp32" and autocast:
            m.not_modelled(f"{stored.key or 'the default dtype'} = fp32 under {autocast.dtype} autocast",
                           f"an fp32 base whose {autocast.dtype} autocast activations are priced in fp32, an upper bound")
        return
    engine = engine_of(m)
    if autocast and engine:
        _say(m, "dtype", autocast.dtype, autocast, "")
        _say(m, "precision", "mixed", autocast, f": under {engine}, fp32 partitions or shards beside {autocast.dtype} compute")
    elif autocast and stored.dtype == "fp32":
        _say(m, "dtype", autocast.dtype, autocast, "")
        _say(m, "precision", "amp", stored, f": fp32 weights, gradients and states under {autocast.dtype} autocast")
    else:
        _say(m, "dtype", stored.dtype, stored, "")
        _say(m, "precision", "pure", stored, ": one dtype throughout, no fp32 master copy")


def _say(m: Mapper, ours: str, value: str, said: Stored, more: str) -> None:
    """Put what the file's key says, or assume the trainer's default, with its source and ``more``."""
    if said.key:
        m.put(ours, value, f"{said.key} ({said.why}{more})")
    else:
        m.assume(ours, value, f"{said.why}{more}")


def checkpointing(m: Mapper, key: str = "gradient_checkpointing") -> None:
    value = m.get(key)
    if value is None:
        m.assume("gradient-checkpointing", False, "transformers/training_args.py: gradient_checkpointing=False")
    else:
        m.put("gradient-checkpointing", value is True or str(value).lower() == "true", key)


def reentrant(m: Mapper, key: str = "gradient_checkpointing_kwargs") -> bool:
    """gradient_checkpointing_kwargs.use_reentrant (TrainingArguments, passed to model.gradient_checkpointing_enable:
    transformers 4.48.1 trainer.py _inner_training_loop) as checkpoint-reentrant; False where the file does not say it
    (transformers' own default is reentrant before 5: 4.48.1 modeling_utils.py:2539)."""
    kwargs = m.get(key)
    if isinstance(kwargs, str):  # the command line's JSON string (TrainingArguments parses it, training_args.py)
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            raise m.fail(key, f"expected a table such as {{use_reentrant: false}}, got {shown(kwargs)}.") from None
    if kwargs is None or (isinstance(kwargs, dict) and "use_reentrant" not in kwargs):
        return False
    if not isinstance(kwargs, dict):
        raise m.fail(key, f"expected a table such as {{use_reentrant: false}}, got {shown(kwargs)}.")
    value = kwargs["use_reentrant"]
    if not isinstance(value, bool):
        raise m.fail(f"{key}.use_reentrant", f"expected true or false, got {shown(value)}.",
                     hint="torch.utils.checkpoint's use_reentrant; the reshard hook's hold under FSDP needs true (docs/multi-gpu.md).")
    m.put("checkpoint-reentrant", value, f"{key}.use_reentrant")
    return True


def deepspeed(m: Mapper, base_dir: Path, key: str = "deepspeed") -> None:
    """Follow the DeepSpeed JSON: ZeRO stage, offload, micro batch (when not "auto")."""
    ref = m.get(key)
    if ref is None:
        return
    if isinstance(ref, dict):  # the DeepSpeed table inline: its keys' lines are the config's own
        ds, where = ref, m.path
        lines = {k[len(key) + 1:]: line for k, line in m.lines.items() if k.startswith(f"{key}.")}
    else:
        where = next((p for p in (m.path.parent / str(ref), base_dir / str(ref)) if files.is_file(p)), None)
        if where is None:
            raise m.fail(key, f'"{shown_name(str(ref), 120)}" does not exist (looked beside {m.path.name} and beside the pyproject.toml).')
        if not files.within(where, m.root):
            raise m.fail(key, outside(str(ref), m.root))
        try:
            ds, lines = files.read_json_lines(where)
        except (files.UnreadableFile, ValueError) as err:
            raise m.fail(key, f'"{shown_name(str(where), 120)}" cannot be read: {err}.') from None
        m.follows.append(str(files.resolve(where)))
    zero = ds.get("zero_optimization") if isinstance(ds, dict) else None
    if isinstance(zero, dict):
        stage = zero.get("stage", 0)  # deepspeed/runtime/zero/config.py: stage default 0
        if isinstance(stage, int) and stage:
            m.put("zero-stage", stage, "zero_optimization.stage", where, lines)
        param = (zero.get("offload_param") or {}).get("device", "none")
        opt = (zero.get("offload_optimizer") or {}).get("device", "none")
        if param in ("cpu", "nvme") and stage == 3:
            m.put("offload", "optimizer+params", "zero_optimization.offload_param", where, lines)
        elif opt in ("cpu", "nvme"):
            m.put("offload", "optimizer", "zero_optimization.offload_optimizer", where, lines)
    micro = ds.get("train_micro_batch_size_per_gpu") if isinstance(ds, dict) else None
    if isinstance(micro, int) and not isinstance(micro, bool):
        m.put("batch-size", micro, "train_micro_batch_size_per_gpu", where, lines)


_FSDP = {"full_shard": "full-shard", "shard_grad_op": "shard-grad-op", "hybrid_shard": "hybrid-shard", "hybrid_shard_zero2": "hybrid-shard"}


def fsdp(m: Mapper, key: str = "fsdp", config_key: str = "fsdp_config") -> None:
    """fsdp = "full_shard auto_wrap" (a string or list, TrainingArguments.fsdp) and fsdp_config's offload."""
    value = m.get(key)
    words = value.split() if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []
    config: Any = m.get(config_key) or {}
    strategy = str(config.get("fsdp_sharding_strategy") or config.get("sharding_strategy") or "").lower() if isinstance(config, dict) else ""
    mode = next((_FSDP[w] for w in words if w in _FSDP), None) or _FSDP.get(strategy)
    if mode is None and isinstance(config, dict) and (config.get("fsdp_version") == 2 or config.get("reshard_after_forward") is not None):
        mode = "full-shard" if config.get("reshard_after_forward", True) else "shard-grad-op"  # FSDP2: fully_shard
    if mode is None:
        return
    m.put("fsdp", mode, key if m.given(key) else config_key)
    # FSDP2 (fully_shard): accelerate's fsdp_config.fsdp_version (accelerate >= 1.6 config files; TRL's fsdp2.yaml),
    # axolotl's top-level fsdp_version (src/axolotl/utils/schemas/fsdp.py FSDPConfig.fsdp_version)
    if m.given("fsdp_version"):
        version, where = m.get("fsdp_version"), "fsdp_version"
    elif isinstance(config, dict) and config.get("fsdp_version") is not None:
        version, where = config["fsdp_version"], f"{config_key}.fsdp_version"
    else:
        version = None
    if version is not None:  # a value other than 1 or 2 is the run key's error, at this line
        m.put("fsdp-version", int(version) if version in ("1", "2") else version, where)
    offload = next((k for k in ("fsdp_offload_params", "offload_params", "cpu_offload")
                    if isinstance(config, dict) and config.get(k) in (True, "true")), None)
    if offload:
        m.put("offload", "optimizer+params", f"{config_key}.{offload}")
