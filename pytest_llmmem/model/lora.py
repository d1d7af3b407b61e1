"""LoRA: which linears a PEFT config adapts (the ``touches`` of adapters.LORA and adapters.QLORA).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import List, Optional, Tuple

from ..errors import ConfigError
from .layers import peft_target_problem
from .architecture import Architecture, Linear


def adapted_linears(arch: Architecture, targets: Tuple[str, ...], linears: Optional[List[Linear]] = None) -> Tuple[Linear, ...]:
    """The layer linears a LoRA config adapts; "all-linear" is every one (PEFT leaves the head out).

    PEFT 0.21.2 wraps nn.Linear modules only, so 3D routed experts (``wrap == "none"``) never get an
    adapter. Where it converts v4 expert names (Family.peft_experts; peft/utils/transformers_weight_conversion.py
    _convert_peft_config_moe), a target naming a routed expert moves from target_modules to
    target_parameters: the expert parameter is adapted and the nn.Linears of that name (dense layers,
    shared experts) are not; gate_proj + up_proj become one gate_up_proj adapter of rank 2r, and one
    without the other is PEFT's ValueError. Decided model-wide, as PEFT does, whichever group is asked.
    """
    every = arch.linears()
    pool = every if linears is None else linears
    wanted = {lin.name for lin in every} if "all-linear" in targets else set(targets)  # ["all-linear", "lm_head"]: and the head

    def named(lin: Linear) -> bool:
        return lin.name in wanted or lin.name.split(".")[-1] in wanted

    experts = {lin.name for lin in every if lin.wrap == "param" and named(lin)}
    problem = peft_target_problem(arch.family.name, every, targets)[0]
    if problem:  # config.py reports it with the file and line; this guards direct API callers
        raise ConfigError(f"lora-targets: {problem}")
    out: List[Linear] = []
    for lin in pool:
        if lin.wrap == "none" or not named(lin) or (lin.wrap == "module" and lin.name.split(".")[-1] in experts):
            continue
        if lin.wrap == "param" and lin.role == "up" and any(l.role == "gate" for l in pool if l.wrap == "param"):
            continue  # folded into the gate_up adapter below
        if lin.wrap == "param" and lin.role == "gate":
            lin = lin._replace(role="gate_up", name="gate_up_proj", d_out=2 * lin.d_out, rank_scale=2)
        out.append(lin)
    return tuple(out)


# Modules outside the decoder layers that target_modules may name (PEFT wraps nn.Linear and nn.Embedding;
# "all-linear" leaves the output head out: peft/tuners/tuners_utils.py _maybe_include_all_linear_layers).
OUTER_TARGETS = ("lm_head", "embed_tokens")


def outer_targets(arch: Architecture, targets: Tuple[str, ...]) -> Tuple[Linear, ...]:
    """The head and the input embedding when ``targets`` names them, as matrices an adapter sees: lm_head
    (hidden -> vocab, a LoRA Linear) and embed_tokens (vocab -> hidden: PEFT's Embedding trains
    lora_embedding_A, r x vocab, and lora_embedding_B, hidden x r; peft/tuners/lora/layer.py Embedding)."""
    out: List[Linear] = []
    if "lm_head" in targets and not arch.family.classifier:
        out.append(Linear("head", "lm_head", arch.hidden_size, arch.vocab_size, False))
    if "embed_tokens" in targets:
        out.append(Linear("embed", "embed_tokens", arch.vocab_size, arch.hidden_size, False))
    return tuple(out)


def lora_matrix_params(d_in: int, d_out: int, rank: int) -> int:
    """LoRA trains A (r x d_in) and B (d_out x r): r * (d_in + d_out) params (Hu et al. 2021, LoRA, eq. 3)."""
    return rank * (d_in + d_out)
