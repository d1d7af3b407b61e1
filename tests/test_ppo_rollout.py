"""PPO's rollout (issue 13): TRL PPOTrainer generates local-rollout-forward-batch-size rows at a time and
keeps every generated token's fp32 scores (trl/experimental/ppo/ppo_trainer.py, huggingface/trl f2cd577).
Figures computed by hand on the tiny LLaMA (h 256, 2 layers, 4 heads, 2 KV heads of 64, V 32000)."""

import pytest

from pytest_llmmem.config import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimate import estimate

TINY = {"family": "llama", "hidden-size": 256, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2,
        "intermediate-size": 688, "vocab-size": 32000, "max-position-embeddings": 8192}


def _ppo(**keys):
    base = {"recipe": "ppo", "mode": "lora", "batch-size": 2, "micro-batches": 4, "max-prompt-length": 64, "max-completion-length": 64}
    return estimate(adhoc_run(dict(TINY, **dict(base, **keys))))


def test_rollout_covers_the_local_batch_and_keeps_its_scores():
    """Local batch = 2 x 4 accumulation steps = 8 rollouts (ppo_trainer.py:463). Their fp32 scores,
    8 x 64 x 32000 x 4 B = 65,536,000 B, stay referenced through the update: their own term."""
    est = _ppo(**{"local-rollout-forward-batch-size": 4})
    assert est.run.recipe.generation_batch_size == 8
    assert est.breakdown["rollout_logits"] == 8 * 64 * 32000 * 4 == 65_536_000
    # Chunks of 4: KV after the last token = 2 layers x K,V x 4 x 2 heads x 127 x 64 x 2 B.
    assert est.details["generation.kv_cache"] == 2 * 2 * 4 * 2 * 127 * 64 * 2 == 520_192
    # The pad sets the rollout's peak: the chunk list and its padded copy (2 x 65,536,000) beside the
    # previous update's scores (the term above); generate() of the last chunk adds less: its KV cache
    # + this update's scores + the chunk's stacked copy (520,192 + 65,536,000 + 32,768,000).
    assert est.details["generation.logits"] == 2 * 65_536_000
    assert est.details["generation.kv_cache_at_peak"] == 0


def test_a_whole_batch_chunk_peaks_in_generate():
    """Default chunk 64 (ppo_config.py:141-144) > 8 rows: one generate() of 8 rows. Its KV cache
    (2 x 2 x 8 x 2 x 127 x 64 x 2 B = 1,040,384 B) beside both score copies tops the pad by the KV cache."""
    est = _ppo()
    assert est.details["generation.kv_cache"] == 1_040_384
    assert est.details["generation.kv_cache_at_peak"] == 1_040_384
    assert est.details["generation.logits"] == 2 * 65_536_000


def test_long_prompts_peak_in_the_reference_forward():
    """2048-token prompts, 16-token responses: a chunk's reference forward returns every position's
    logits, 8 x 2064 x 32000 x 2 B = 1,056,768,000 B, and (output_hidden_states=True) 3 hidden states of
    8 x 2064 x 256 x 2 B; that tops generate() and the pad (2 x 8 x 16 x 32000 x 4 B)."""
    est = _ppo(**{"max-prompt-length": 2048, "max-completion-length": 16})
    assert est.details["generation.logits"] == 8 * 2064 * 32000 * 2
    assert est.details["generation.transient"] > 3 * 8 * 2064 * 256 * 2
    smaller = _ppo(**{"max-prompt-length": 2048, "max-completion-length": 16, "local-rollout-forward-batch-size": 2})
    assert smaller.details["generation.logits"] == 2 * 2064 * 32000 * 2  # the chunk bounds it
    assert smaller.breakdown["rollout_logits"] == est.breakdown["rollout_logits"] == 8 * 16 * 32000 * 4


def test_rollout_chunk_only_on_ppo():
    text = ('[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\nparams = "8B"\n[[tool.llmmem.runs]]\nname = "g"\n'
            'recipe = "grpo"\nlocal-rollout-forward-batch-size = 8\n')
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert 'only applies to recipe = "ppo"' in str(info.value)


def test_grpo_and_dpo_carry_no_rollout_logits():
    grpo = estimate(adhoc_run(dict(TINY, recipe="grpo", **{"batch-size": 4, "num-generations": 4, "max-prompt-length": 64, "max-completion-length": 64})))
    assert grpo.breakdown["rollout_logits"] == 0
    assert "generation.rollout_scores" not in grpo.details
