"""Reading a Hugging Face ``config.json`` into an :class:`Architecture` as a list of layer groups.

The ``model_type`` picks the family (``family = "..."`` beside ``config =`` overrides it); the
family's ``reader`` turns the family's own key names into layer groups: ``decoder`` for
LLaMA-style stacks (with ``layer_types`` or the family's sliding pattern, q/k norms and MoE
layers by traits), ``mla`` (DeepSeek), ``falcon``, ``mamba``, ``jamba`` and ``gemma3`` (a text
config beside a SigLIP vision tower). Defaults for keys a config leaves out are the family's
config-class defaults in transformers 5.24 (``configuration_<name>.py``). Every value is checked
(:mod:`keys` value checks): a NaN, 256.5 layers or ``"false"`` as a boolean names its key.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError
from .readers import HF_KEYS as _HF_KEYS
from .readers import READERS, Keys, common_fields
from ..model.architecture import Architecture, Family, validate
from ..catalog.registry import default_catalog

_REQUIRED = ("hidden_size", "num_layers", "num_heads", "vocab_size")
_GENERIC = "llama"


def _family_of(cfg: Mapping[str, Any], override: Optional[Family], source: str) -> Tuple[Family, Tuple[str, ...]]:
    """The family the config describes, and why the reading is approximate (an unknown model_type)."""
    if override is not None:
        return override, ()
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip():
        raise ConfigError(
            'has no "model_type"; cannot tell which architecture family it describes.',
            path=source, key="model_type",
            hint='Add the model_type of its transformers class, or write family = "llama" (or another family) beside config.',
        )
    catalog = default_catalog()
    if catalog.has_family(model_type):
        return catalog.family(model_type), ()
    missing = [name for name in _REQUIRED + ("intermediate_size",) if not any(k in cfg for k in _HF_KEYS[name])]
    if missing:
        raise ConfigError(
            f'model_type "{model_type}" is not a known family, and the config lacks {", ".join(_HF_KEYS[m][0] for m in missing)} '
            "to count it as a LLaMA-style decoder.",
            path=source, key="model_type",
            hint=f'Write family = "<name>" beside config if it is a fork of a known family; known: {", ".join(sorted(catalog.families.names))}.',
        )
    reason = f'model_type "{model_type}" is not a known family; counted as a LLaMA-style decoder'
    return catalog.family(_GENERIC), (reason,)


def from_hf_config(cfg: Mapping[str, Any], source: str = "config.json", family: Optional[Family] = None) -> Architecture:
    """Build an :class:`Architecture` from a ``config.json`` mapping; errors name the key."""
    fam, approximate = _family_of(cfg, family, source)
    keys = Keys(cfg, source)
    arch = READERS[fam.reader](keys, fam, common_fields(keys, fam))
    arch = arch._replace(approximate=arch.approximate + approximate, source=source, config=dict(cfg))
    validate(arch, source)
    return arch


def with_overrides(cfg: Mapping[str, Any], values: Mapping[str, Any]) -> Dict[str, Any]:
    """``cfg`` with :class:`Architecture` field values written under the key spelling the config uses
    (a depth cut for llmmem measure, or shape keys given beside ``config`` in the TOML)."""
    out = dict(cfg)
    nested = "text_config" in out and isinstance(out["text_config"], dict)
    target = dict(out["text_config"]) if nested else out
    for field_name, value in values.items():
        spellings = _HF_KEYS.get(field_name) or _EXTRA_KEYS.get(field_name, (field_name,))
        key = next((k for k in spellings if k in target), spellings[0])
        target[key] = value
    if "num_layers" in values and isinstance(target.get("layer_types"), list):
        target["layer_types"] = target["layer_types"][: values["num_layers"]]
        if len(target["layer_types"]) < values["num_layers"]:
            del target["layer_types"]  # deeper than the list: the family's pattern continues it
    if nested:
        out["text_config"] = target
    return out


def with_depth(arch: Architecture, layers: int) -> Architecture:
    """``arch`` cut (or grown) to ``layers`` decoder layers, its layer kinds following the same pattern."""
    if not arch.config:
        return arch._replace(num_layers=layers)
    cut = from_hf_config(with_overrides(arch.config, {"num_layers": layers}), arch.source, arch.family)
    return cut._replace(tie_embeddings=arch.tie_embeddings, hidden_act=arch.hidden_act, approximate=arch.approximate)


_EXTRA_KEYS = {
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts"), "experts_per_token": ("num_experts_per_tok",),
    "moe_intermediate_size": ("moe_intermediate_size",), "attention_dropout": ("attention_dropout", "attn_pdrop"),
    "hidden_dropout": ("hidden_dropout", "resid_pdrop"),
}
