"""The prompt-learning methods: PEFT's prompt tuning, as :class:`adapters.Adapter` entries.

They adapt no linear: PEFT freezes the whole model and trains what it prepends to every sequence.
Split from :mod:`adapters`, which holds the adapter kind and the methods that adapt linears.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import Any, Tuple

from .adapters import Adapter, Saved
from .layers import Linear


def prompt_embedding(arch: Any, virtual_tokens: int) -> int:
    """Prompt tuning (Lester et al. 2021) trains one embedding per virtual token, hidden wide (peft/tuners/prompt_tuning/
    model.py PromptEmbedding: nn.Embedding(num_virtual_tokens * num_transformer_submodules, token_dim), one
    submodule for a causal LM)."""
    return virtual_tokens * arch.hidden_size


def no_linears(arch: Any, targets: Tuple[str, ...], linears: Any = None) -> Tuple[Linear, ...]:
    """A method that adapts no linear (prompt tuning: the frozen model runs on a longer sequence)."""
    return ()


def nothing_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """No adapted module, so nothing of its own kept (prompt tuning's prompt is the first layer's input)."""
    return Saved(False, 0)


def nothing_merged(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """Prompt tuning has no weight to merge into (PEFT's merge_and_unload is LoRA-like tuners' only): nothing in flight."""
    return 0


def prompt_summary(virtual_tokens: int, targets: Tuple[str, ...]) -> str:
    """'prompt tuning, 20 virtual tokens'."""
    return f"prompt tuning, {virtual_tokens} virtual tokens"


PROMPT_TUNING = Adapter(
    "prompt-tuning", "prompt tuning (PEFT PromptTuningConfig): num-virtual-tokens trained embeddings prepended to every "
    "sequence, the whole model frozen", no_linears, lambda lin, rank: (), nothing_saved, nothing_merged,
    keys=("num-virtual-tokens", "adapter-dtype"), summary=prompt_summary, rank_source="", outer=False, expert_params=False,
    label="prompt tuning", prompt=prompt_embedding)
