"""Reading a Hugging Face ``config.json`` into an :class:`Architecture`, with each family's own key
names (``n_embd``, ``num_key_value_heads``, ``num_local_experts``, ...).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import Any, Dict, Mapping, Tuple

from .errors import ConfigError, one_of
from .model import FAMILIES, Architecture, family, validate

# Each field: the spellings families use in config.json, first match wins.
_HF_KEYS: Dict[str, Tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "vocab_size": ("vocab_size",),
    "head_dim": ("head_dim",),
    "max_positions": ("n_positions", "max_position_embeddings"),
    "num_experts": ("num_local_experts", "num_experts"),
    "experts_per_token": ("num_experts_per_tok",),
    "moe_intermediate_size": ("moe_intermediate_size",),
    "shared_expert_intermediate_size": ("shared_expert_intermediate_size",),
    "hidden_act": ("hidden_act", "activation_function"),
    "attention_dropout": ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"),
    "hidden_dropout": ("hidden_dropout", "resid_pdrop", "hidden_dropout_prob"),
}
_REQUIRED = ("hidden_size", "num_layers", "num_heads", "vocab_size")


def from_hf_config(cfg: Mapping[str, Any], source: str = "config.json") -> Architecture:
    """Build an :class:`Architecture` from a ``config.json`` mapping; errors name the missing key."""
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(
            'has no "model_type"; cannot tell which architecture family it describes.',
            path=source,
            hint=f"Add one of {one_of(sorted(FAMILIES))}.",
        )
    try:
        fam = family(model_type)
    except ConfigError as err:
        raise ConfigError(err.message, path=source, key="model_type", hint=err.hint) from None
    values: Dict[str, Any] = {}
    for field_name, spellings in _HF_KEYS.items():
        for key in spellings:
            if cfg.get(key) is not None:
                values[field_name] = cfg[key]
                break
    for name in _REQUIRED:
        if name not in values:
            raise ConfigError(
                f'lacks "{_HF_KEYS[name][0]}" (or {", ".join(_HF_KEYS[name][1:]) or "an alias"}), needed for the parameter count.',
                path=source,
            )
    for name, value in values.items():
        if name == "hidden_act":
            if not isinstance(value, str):
                raise ConfigError(f"expected a string, got {value!r}.", path=source, key=_HF_KEYS[name][0])
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"expected a non-negative number, got {value!r}.", path=source, key=_HF_KEYS[name][0])
    h = int(values["hidden_size"])
    if model_type == "gpt_bigcode" and cfg.get("multi_query", True):
        values.setdefault("num_kv_heads", 1)  # GPTBigCode multi-query attention: one K/V head
    if "intermediate_size" not in values:
        values["intermediate_size"] = 4 * h  # GPT-2 n_inner=None means 4 * n_embd
    labels = cfg.get("id2label")
    arch = Architecture(
        family=fam,
        hidden_size=h,
        num_layers=int(values["num_layers"]),
        num_heads=int(values["num_heads"]),
        num_kv_heads=int(values.get("num_kv_heads", values["num_heads"])),
        intermediate_size=int(values["intermediate_size"]),
        vocab_size=int(values["vocab_size"]),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", fam.tie_default)),
        head_dim=int(values.get("head_dim", 0)),
        max_positions=int(values.get("max_positions", 0)) if fam.learned_positions else 0,
        num_experts=int(values.get("num_experts", 0)),
        experts_per_token=int(values.get("experts_per_token", 2 if values.get("num_experts") else 0)),
        moe_intermediate_size=int(values.get("moe_intermediate_size", 0)),
        shared_expert_intermediate_size=int(values.get("shared_expert_intermediate_size", 0)),
        hidden_act=str(values.get("hidden_act", "")),
        attention_dropout=float(values.get("attention_dropout", 0.0)),
        hidden_dropout=float(values.get("hidden_dropout", 0.0)),
        num_labels=len(labels) if isinstance(labels, dict) and labels else int(cfg.get("num_labels", 2)),
        source=source,
    )
    validate(arch, source)
    return arch


