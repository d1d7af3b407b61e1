"""Checks of one value each, shared by the TOML keys (:mod:`pytest_llmmem.config.keys`) and a
model's config.json (:mod:`pytest_llmmem.hf.readers`): each returns the value or raises ValueError
with what was wrong, and the caller names the key. Below both, so config.json reading needs no TOML contract.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Tuple

from .errors import shown

# Largest values taken as meant; anything past these is a typo or a unit slip.
_LIMITS = {
    "batch-size": 1_000_000, "seq-len": 100_000_000, "gpus": 1_000_000, "lora-rank": 65_536, "num-virtual-tokens": 1_000_000,
    "tensor-parallel": 4096, "pipeline-parallel": 4096, "expert-parallel": 100_000, "micro-batches": 1_000_000,
    "gpus-per-node": 1024, "zero-stage": 3, "context-parallel": 4096,
    "hidden-size": 1_000_000, "num-layers": 10_000, "num-heads": 100_000, "num-kv-heads": 100_000,
    "head-dim": 100_000, "intermediate-size": 10_000_000, "vocab-size": 100_000_000,
    "max-position-embeddings": 100_000_000, "num-experts": 100_000, "experts-per-token": 100_000,
    "moe-intermediate-size": 10_000_000,
    "prompt-len": 100_000_000, "new-tokens": 100_000_000, "max-model-len": 100_000_000, "max-num-seqs": 1_000_000,
    "max-num-batched-tokens": 100_000_000, "block-size": 4096,
    "loss-chunks": 65_536,
    "max-length": 100_000_000, "max-prompt-length": 100_000_000, "max-completion-length": 100_000_000,
    "num-generations": 65_536, "generation-batch-size": 1_000_000, "steps-per-generation": 1_000_000,
    "local-rollout-forward-batch-size": 1_000_000,
    "eval-batch-size": 1_000_000, "eval-samples": 1_000_000_000, "eval-accumulation-steps": 1_000_000,
    "eval-generate-tokens": 100_000_000,
}


# --- value checks ------------------------------------------------------------------------------
# One check per kind of value, shared by the TOML keys (Table below) and config.json (hf_config):
# each returns the value or raises ValueError with what was wrong, and the caller names the key.


def whole_number(value: Any, low: int, high: int) -> int:
    """An int in [low, high]; an integral float (256.0) is taken, 256.5, NaN, inf and bools are not."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= 2**53:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {_got(value)}.")
    if not low <= value <= high:
        raise ValueError(f"{_short(value)} is out of range; expected {low} to {high:,}.")
    return value


def probability(value: Any) -> float:
    """A probability in [0, 1): dropout p = 1 would drop everything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"expected a probability from 0 up to (not including) 1, got {_got(value)}.")
    return float(value)


def boolean(value: Any) -> bool:
    """true or false only: the string "false" is not read as true."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_got(value)}.")
    return value


# A release as its package prints it (PEP 440's public form, https://peps.python.org/pep-0440/): "2.4.0+cu121",
# "0.11.0rc1", "0.6.3.post1", "0.9.2.dev12+g1a2b3c", an optional leading "v"; at least major.minor.
_RELEASE = re.compile(r"v?(\d{1,6}(?:\.\d{1,6}){1,5})(?:(?:a|b|rc)\d{1,6})?(?:\.post\d{1,6})?(?:\.dev\d{1,6})?(?:\+[A-Za-z0-9.]{1,64})?")


def release(value: Any) -> Optional[Tuple[int, ...]]:
    """The numeric release of a version string (torch, bitsandbytes, vLLM), or None when it is not one.
    Pre-release, post-release and local parts are read past: each caller compares major.minor(.micro) only."""
    if not isinstance(value, str):
        return None
    match = _RELEASE.fullmatch(value.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _got(value: Any) -> str:
    """How a wrong value is shown: its kind and (short) repr, or null."""
    return "null" if value is None else f"{type_name(value)} {_short(value)}"


def _short(value: Any) -> str:
    """repr, cut short (a 400-digit number must not fill the terminal): errors.shown."""
    return shown(value)


def limit(key: str) -> int:
    """The largest value taken as meant for a TOML key (or its config.json equivalent)."""
    return _LIMITS.get(key, 10**12)


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table", type(None): "null"}.get(
        type(value), type(value).__name__
    )
