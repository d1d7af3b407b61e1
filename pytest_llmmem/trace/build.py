"""Building the run's model with transformers and stepping it with torch: shared by ``llmmem measure``
(real tensors, frontends/measure.py) and ``method = "trace"`` (fake tensors, trace/step.py).

Nothing here imports torch at module level: callers pass the ``torch`` and ``transformers`` modules
that :func:`require_torch` imported after checking the extra is installed.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..core.run import Run
from ..errors import ConfigError
from ..model.architecture import Architecture

TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def require_torch(what: str):
    """torch and transformers, or a one-paragraph error naming the extra that brings them."""
    try:
        import torch
        import transformers
    except ImportError as err:
        raise ConfigError(
            f"{what} needs torch and transformers ({err.name} is missing).",
            hint="pip install 'pytest-llmmem[measure]' (on a CPU-only machine the CPU wheel of torch is enough).",
        ) from None
    return torch, transformers


def hf_config(arch: Architecture, seq_len: int) -> Dict[str, Any]:
    """transformers config kwargs for ``arch`` (its own family's key names): the config.json it was
    read from when there is one, else built from the shape."""
    fam = arch.family.name
    if arch.config:
        cfg = {k: v for k, v in arch.config.items() if k != "model_type"}
        if arch.max_context and seq_len > arch.max_context:
            cfg["max_position_embeddings"] = seq_len
        return cfg
    if fam in ("gpt2", "gpt_bigcode"):
        cfg = {"n_embd": arch.hidden_size, "n_layer": arch.num_layers, "n_head": arch.num_heads,
               "n_inner": arch.intermediate_size, "n_positions": max(arch.max_positions, seq_len), "vocab_size": arch.vocab_size,
               "resid_pdrop": arch.hidden_dropout, "embd_pdrop": arch.hidden_dropout, "attn_pdrop": arch.attention_dropout}
        if arch.hidden_act:
            cfg["activation_function"] = arch.hidden_act
        if fam == "gpt_bigcode":
            cfg["multi_query"] = arch.num_kv_heads == 1
        return cfg
    cfg = {"hidden_size": arch.hidden_size, "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_heads,
           "num_key_value_heads": arch.num_kv_heads, "intermediate_size": arch.intermediate_size, "vocab_size": arch.vocab_size,
           "tie_word_embeddings": arch.tie_embeddings, "max_position_embeddings": max(arch.max_positions, seq_len, 2048),
           "attention_dropout": arch.attention_dropout}
    if arch.head_dim:
        cfg["head_dim"] = arch.head_dim
    if arch.hidden_act:
        cfg["hidden_act"] = arch.hidden_act
    if arch.num_experts:
        key = "num_local_experts" if fam == "mixtral" else "num_experts"
        cfg.update({key: arch.num_experts, "num_experts_per_tok": arch.experts_per_token})
        if arch.moe_intermediate_size:
            cfg["moe_intermediate_size"] = arch.moe_intermediate_size
        if arch.shared_expert_intermediate_size:
            cfg["shared_expert_intermediate_size"] = arch.shared_expert_intermediate_size
    return cfg



def causal_lm(transformers, arch: Architecture, seq_len: int, attention: str, dtype):
    """The family's own transformers class built from ``arch``'s config (random weights, no download,
    no remote code); on the meta device when called under ``torch.device("meta")`` (the trace)."""
    config = transformers.AutoConfig.for_model(arch.family.name, **hf_config(arch, seq_len))
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)


def optimizer_for(torch, run: Run, params, impl: Optional[str] = None):
    """The run's torch optimizer; ``impl`` picks AdamW's fused / foreach / for-loop kernels
    (torch/optim/adamw.py: fused=True, foreach=True, or neither; None: torch's own default)."""
    name = run.optimizer.name
    kernels = {} if impl is None else {"fused": {"fused": True}, "foreach": {"foreach": True}}.get(impl, {"foreach": False})
    if name in ("adamw", "adam"):
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=1e-5, **kernels)
    return torch.optim.SGD(params, lr=1e-5, momentum=0.9 if name == "sgd-momentum" else 0.0)


def checkpointing(model) -> None:
    """HF per-layer, non-reentrant checkpointing (renamed activation_checkpointing_enable in transformers 5)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
