"""The longest sequence a checkpoint accepts, read from its config.json the way vLLM derives max_model_len.

vLLM (vllm/config/model.py ``_get_and_verify_max_len``, vllm-project/vllm@0052a5b8) takes the smallest of the
length keys below (``model_max_length`` wins when present), then applies the rope scaling: the factor
multiplies it, except for the types whose max_position_embeddings already counts the scaling (llama3,
longrope, su) and for Gemma 3 (its 128K is already scaled); yarn multiplies original_max_position_embeddings.
A larger ``--max-model-len`` is refused ("User-specified max_model_len ... is greater than the derived").

The training side uses the same length. transformers (modeling_rope_utils.py) agrees per type: llama3 and
longrope keep the pretraining length in original_max_position_embeddings beside the extended
max_position_embeddings (``_compute_llama3_parameters`` / ``_compute_longrope_parameters``); yarn stretches
original_max_position_embeddings (defaulted to max_position_embeddings) by ``factor``
(``_compute_yarn_parameters``); linear divides positions by ``factor`` and dynamic NTK treats
max_position_embeddings as the original length, so both reach factor x max_position_embeddings.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

# vLLM's possible_keys, in its order (OPT, GPT-2, MPT, ChatGLM2, Command-R, Whisper, others).
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
ALREADY_SCALED = ("llama3", "longrope", "su")  # max_position_embeddings is the extended length
VLLM_FALLBACK = 2048  # what vLLM assumes when config.json has no length key (it logs a warning)


def _rope_entries(k: Any) -> List[Tuple[str, Dict[str, Any]]]:
    """(key, parameters) of each rope setting: rope_parameters (transformers 5, flat or per layer type),
    else rope_scaling (the older spelling transformers converts)."""
    for key in ("rope_parameters", "rope_scaling"):
        value = k.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise k.fail(key, f"expected a JSON object (rope_type, factor, ...), got {str(value)[:60]}.")
        if value and all(isinstance(v, dict) or v is None for v in value.values()):  # {"full_attention": {...}, ...}
            return [(f"{key}.{name}", v) for name, v in value.items() if v]
        return [(key, value)]
    return []


def _number(k: Any, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise k.fail(where, f"expected a positive number, got {value!r}.")
    return float(value)


def derive(k: Any, default: int = 0, default_why: str = "") -> Tuple[int, str]:
    """(the longest sequence, how it was derived) from a config's :class:`~hf_readers.Keys`; (0, "") when
    the config has no length key and its family no default (a hand-written config)."""
    found = [(key, k.whole(key, low=1)) for key in LENGTH_KEYS if k.get(key) is not None]
    if any(key == "model_max_length" for key, _ in found):
        key, base = next(item for item in found if item[0] == "model_max_length")
    elif found:
        key, base = min(found, key=lambda item: item[1])
    elif default:
        key, base = "", default
    else:
        return 0, ""
    why = f"{key} {base:,}" if key else default_why
    entries = _rope_entries(k)
    if "gemma3" in str(k.get("model_type") or ""):
        return base, why + " (Gemma 3's length already counts its rope scaling)" if entries else why + ", no rope_scaling"
    factor, scaled_from, kinds = 1.0, base, []
    for where, params in entries:  # vLLM assumes one factor for every layer type: the last one given
        kind = params.get("rope_type", params.get("type", "default"))
        if not isinstance(kind, str):
            raise k.fail(where + ".rope_type", f"expected a string, got {kind!r}.")
        if kind in ALREADY_SCALED:
            why = f"{why} ({kind} rope scaling already counted)"
            continue
        if params.get("factor") is not None:
            factor, kinds = _number(k, where + ".factor", params["factor"]), kinds + [kind]
        original = params.get("original_max_position_embeddings")
        if kind == "yarn" and original is not None:
            if isinstance(original, bool) or not isinstance(original, int) or original < 1:
                raise k.fail(where + ".original_max_position_embeddings", f"expected a whole number of tokens, got {original!r}.")
            scaled_from, why = original, f"original_max_position_embeddings {original:,}"
    if factor != 1.0:
        limit = int(scaled_from * factor)
        return limit, f"{why} x {kinds[-1]} rope_scaling factor {factor:g} = {limit:,}"
    return scaled_from, why if entries else why + ", no rope_scaling"


def rope_scaled(cfg: Any) -> bool:
    """Whether a config.json mapping (or its text_config) sets a rope scaling of a non-default type."""
    if not isinstance(cfg, dict):
        return False
    for scope in (cfg, cfg.get("text_config")):
        for key in ("rope_parameters", "rope_scaling"):
            value = scope.get(key) if isinstance(scope, dict) else None
            if isinstance(value, dict):
                entries = [v for v in value.values() if isinstance(v, dict)] or [value]
                if any(e.get("rope_type", e.get("type", "default")) != "default" for e in entries):
                    return True
    return False
