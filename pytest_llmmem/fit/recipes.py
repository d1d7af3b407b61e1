"""`llmmem fit` for a post-training recipe: the trainer switches that drop a model or a share.

Each is a change TRL supports (recipes.py prices the run it gives): a LoRA policy, beta = 0, precomputed
reference log-probs, a separate vLLM server, a shared value head, fewer generations per prompt. A recipe's
entry names the keys fit may change (``Recipe.ways_out``); each switch here says when it applies.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from ..catalog.entries import Recipe
from ..catalog.registry import default_catalog
from ..core.run import Run

Change = Tuple[str, object, str, Run]  # (key, value, text, changed run)


def _lora_policy(run: Run, recipe: Recipe) -> List[Change]:
    if run.mode != "train":
        return []
    if "reference" in recipe.models:
        why = "fits with a LoRA policy (mode = \"lora\"; TRL then disables the adapters for the reference)"
        return [("mode", "lora", why, run._replace(mode="lora", recipe=run.recipe._replace(reference=False)))]
    return [("mode", "lora", 'fits with LoRA (mode = "lora")', run._replace(mode="lora"))]


def _shared_value_head(run: Run, recipe: Recipe) -> List[Change]:
    rs = run.recipe
    if "value" not in recipe.models or rs.value_head != "separate":
        return []
    return [("value-head", "shared", 'fits with value-head = "shared" (a value head on the policy instead of a separate critic)',
             run._replace(recipe=rs._replace(value_head="shared")))]


def _beta_zero(run: Run, recipe: Recipe) -> List[Change]:
    rs = run.recipe
    if not (recipe.beta_gates_reference and rs.beta):
        return []
    return [("beta", 0.0, "fits with beta = 0 (no KL term: no reference model)", run._replace(recipe=rs._replace(beta=0.0, reference=False)))]


def _precomputed_reference(run: Run, recipe: Recipe) -> List[Change]:
    rs = run.recipe
    if not rs.reference or rs.precompute_ref_log_probs:
        return []
    return [("precompute-ref-log-probs", True, "fits with precompute-ref-log-probs = true (no reference model during training)",
             run._replace(recipe=rs._replace(precompute_ref_log_probs=True, reference=False)))]


def _vllm_server(run: Run, recipe: Recipe) -> List[Change]:
    rs = run.recipe
    if rs.generation != "vllm-colocate":
        return []
    return [("generation", "vllm-server", 'fits with generation = "vllm-server" (vLLM on its own GPUs: no engine share here)',
             run._replace(recipe=rs._replace(generation="vllm-server", vllm_gpu_memory_utilization=0.0)))]


def _fewer_generations(run: Run, recipe: Recipe) -> List[Change]:
    rs = run.recipe
    out: List[Change] = []
    if rs.num_generations <= 2:
        return out
    prompts = max(1, run.batch_size // rs.num_generations)
    steps = max(1, rs.generation_batch_size // run.batch_size)
    for gens in range(rs.num_generations - 1, 1, -1):
        changed = run._replace(batch_size=prompts * gens, recipe=rs._replace(num_generations=gens, generation_batch_size=prompts * gens * steps))
        out.append(("num-generations", gens, f"fits with num-generations = {gens} and batch-size = {prompts * gens} (the same {prompts} prompt(s) per step)", changed))
    return out


# The switches by the key each changes, in the order fit offers them.
SWITCHES: Dict[str, Callable[[Run, Recipe], List[Change]]] = {
    "mode": _lora_policy,
    "value-head": _shared_value_head,
    "beta": _beta_zero,
    "precompute-ref-log-probs": _precomputed_reference,
    "generation": _vllm_server,
    "num-generations": _fewer_generations,
}


def recipe_changes(run: Run) -> List[Change]:
    """Recipe-level changes ``llmmem fit`` tries: (key, value, text, changed run). Each is a change the
    trainer supports and that drops a model or a share: a LoRA policy (TRL then needs no reference
    copy), beta = 0 (GRPO loads no reference), precomputed reference log-probs (DPO), a separate vLLM
    server instead of a colocated engine, and fewer generations per prompt (same prompts per step);
    only those the run's recipe names in ``ways_out``."""
    if not run.recipe.post_training:
        return []
    recipe = default_catalog().recipe(run.recipe.name)
    return [change for key, switch in SWITCHES.items() if key in recipe.ways_out for change in switch(run, recipe)]
