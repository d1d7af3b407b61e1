"""Ways out that change what an adapter run adapts: no dropout, fewer target modules, a lower rank.

Each is a run change the search prices with ``estimate`` like any other; this module only says which
changes exist for the run's adapter settings. Memory shrinks with each: an adapted module keeps its
dropout's output and mask, its cast input and its r-wide lora_A output (adapters.lora_saved), and
trains A and B with gradients and states; a lower rank shrinks all but the inputs, so it helps most
where the adapters' own states are a large part of the step (a wide rank, a small model).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import List, Tuple

from ..core.run import Run
from ..model.architecture import Architecture
from ..model.adapters import OUTER_TARGETS

# layers.Linear roles of the MLP (dense, routed and shared experts); the rest project attention or state-space inputs
MLP_ROLES = ("gate", "up", "down", "gate_up", "router", "shared_gate", "shared_up", "shared_down", "shared_router")
PEFT_DEFAULT_NOTE = "PEFT's default for the model"


def _layer_targets(run: Run) -> Tuple[str, ...]:
    """The layer linears the run adapts, by their leaf names ("all-linear" spelled out)."""
    arch = run.model
    leaves = []
    for lin in arch.linears():
        leaf = lin.name.split(".")[-1]
        if ("all-linear" in run.lora_targets or lin.name in run.lora_targets or leaf in run.lora_targets) and leaf not in leaves:
            leaves.append(leaf)
    return tuple(leaves)


def narrower_targets(run: Run) -> List[Tuple[Tuple[str, ...], str]]:
    """Narrower lora-targets than the run's, widest first, each with what it leaves out: the head and the
    embedding dropped, then the MLP (attention projections only), then PEFT's default for the model."""
    arch = run.model
    if run.adapter is None or not isinstance(arch, Architecture) or "lora-targets" not in run.adapter.keys:
        return []  # (prompt tuning adapts no linear)
    layers = _layer_targets(run)
    out: List[Tuple[Tuple[str, ...], str]] = []

    def add(targets: Tuple[str, ...], why: str) -> None:
        if targets and len(targets) < len(layers) + sum(t in run.lora_targets for t in OUTER_TARGETS) \
                and all(t != targets for t, _ in out):
            out.append((targets, why))

    if any(t in run.lora_targets for t in OUTER_TARGETS):
        add(layers, "the layer linears only, not the head or the embedding")
    roles = {lin.name.split(".")[-1]: lin.role for lin in arch.linears()}
    attention = tuple(t for t in layers if roles.get(t) not in MLP_ROLES)
    if attention != layers:
        add(attention, "the attention projections only")
    default = tuple(t for t in arch.family.lora_targets if t in layers)
    if default and set(default) < set(layers):
        add(default, PEFT_DEFAULT_NOTE)
    return out


def toml_list(targets: Tuple[str, ...]) -> str:
    """A lora-targets value as the TOML spells it."""
    return "[" + ", ".join(f'"{t}"' for t in targets) + "]"
