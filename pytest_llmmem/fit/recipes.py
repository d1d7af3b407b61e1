"""`llmmem fit` for a post-training recipe: the trainer switches that drop a model or a share.

Each is a change TRL supports (recipes.py prices the run it gives): a LoRA policy, beta = 0, precomputed
reference log-probs, a separate vLLM server, a shared value head, fewer generations per prompt.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import List, Tuple

from ..core.run import Run


def recipe_changes(run: Run) -> List[Tuple[str, object, str, Run]]:
    """Recipe-level changes ``llmmem fit`` tries: (key, value, text, changed run). Each is a change the
    trainer supports and that drops a model or a share: a LoRA policy (TRL then needs no reference
    copy), beta = 0 (GRPO loads no reference), precomputed reference log-probs (DPO), a separate vLLM
    server instead of a colocated engine, and fewer generations per prompt (same prompts per step)."""
    rs = run.recipe
    out: List[Tuple[str, object, str, Run]] = []
    if rs.name == "sft":
        return out
    if run.mode == "train":
        if rs.name in ("dpo", "grpo", "ppo"):
            why = "fits with a LoRA policy (mode = \"lora\"; TRL then disables the adapters for the reference)"
            out.append(("mode", "lora", why, run._replace(mode="lora", recipe=rs._replace(reference=False))))
        else:
            out.append(("mode", "lora", 'fits with LoRA (mode = "lora")', run._replace(mode="lora")))
    if rs.name == "ppo" and rs.value_head == "separate":
        out.append(("value-head", "shared", 'fits with value-head = "shared" (a value head on the policy instead of a separate critic)',
                    run._replace(recipe=rs._replace(value_head="shared"))))
    if rs.name == "grpo" and rs.beta:
        out.append(("beta", 0.0, "fits with beta = 0 (no KL term: no reference model)", run._replace(recipe=rs._replace(beta=0.0, reference=False))))
    if rs.name == "dpo" and rs.reference and not rs.precompute_ref_log_probs:
        out.append(("precompute-ref-log-probs", True, "fits with precompute-ref-log-probs = true (no reference model during training)",
                    run._replace(recipe=rs._replace(precompute_ref_log_probs=True, reference=False))))
    if rs.name in ("grpo", "ppo") and rs.generation == "vllm-colocate":
        out.append(("generation", "vllm-server", 'fits with generation = "vllm-server" (vLLM on its own GPUs: no engine share here)',
                    run._replace(recipe=rs._replace(generation="vllm-server", vllm_gpu_memory_utilization=0.0))))
    if rs.name == "grpo" and rs.num_generations > 2:
        prompts = max(1, run.batch_size // rs.num_generations)
        steps = max(1, rs.generation_batch_size // run.batch_size)
        for gens in range(rs.num_generations - 1, 1, -1):
            changed = run._replace(batch_size=prompts * gens, recipe=rs._replace(num_generations=gens, generation_batch_size=prompts * gens * steps))
            out.append(("num-generations", gens, f"fits with num-generations = {gens} and batch-size = {prompts * gens} (the same {prompts} prompt(s) per step)", changed))
    return out
