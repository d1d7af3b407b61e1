"""Every built-in PEFT method, in the order the docs table lists them: the LoRA-like ones (:mod:`adapters`),
the LyCORIS ones (:mod:`lycoris`) and the prompt-learning ones (:mod:`prompts`), each module an entry point of its own.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Optional

from ..errors import ConfigError
from .adapters import IA3, LORA, QLORA, VERA, Adapter
from .lycoris import LOHA, LOKR
from .prompts import P_TUNING, PREFIX_TUNING, PROMPT_TUNING

BUILTIN = (LORA, QLORA, VERA, IA3, LOHA, LOKR, PROMPT_TUNING, PREFIX_TUNING, P_TUNING)


def builtin_adapter(name: str) -> Optional[Adapter]:
    """A built-in adapter by its mode name (for runs built without a catalog); None for train / inference."""
    if name in ("train", "inference"):
        return None
    for adapter in BUILTIN:
        if name == adapter.name or name in adapter.aliases:
            return adapter
    raise ConfigError(f'mode "{name}" names no built-in adapter; a plugin\'s adapter reaches a run through the config\'s catalog.')
