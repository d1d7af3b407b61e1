"""PPO's rollout (issue 13): TRL PPOTrainer generates local-rollout-forward-batch-size rows at a time and
keeps every generated token's fp32 scores (trl/experimental/ppo/ppo_trainer.py, huggingface/trl f2cd577).
Figures computed by hand on the tiny LLaMA (h 256, 2 layers, 4 heads, 2 KV heads of 64, V 32000)."""

import pytest

from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

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


def test_rollout_terms_match_trls_ppo_trainer():
    """tests/data/ppo-rollout-trl.json: TRL 1.9.0's PPOTrainer on the CPU, two updates (benchmarks/measure_ppo.py).
    Local batch 2 x 4 = 8; generate() on 4 rows at a time, KV after 64 + 16 - 1 positions
    (2 x 2 x 4 x 2 x 79 x 64 x 2 B); scores (8, 16, 32000) fp32, referenced through training and
    still at the next rollout; each reference forward returns 4 x 80 x 32000 bf16 logits and 3 hidden
    states of 4 x 80 x 256 x 2 B."""
    import json
    from pathlib import Path

    row = json.loads((Path(__file__).parent / "data" / "ppo-rollout-trl.json").read_text())
    got, setup = row["measured"], row["setup"]
    est = _ppo(**{"mode": "train", "precision": "pure", "dtype": "bf16", "max-prompt-length": setup["prompt_len"],
                  "max-completion-length": setup["response_length"], "local-rollout-forward-batch-size": setup["local_rollout_forward_batch_size"]})
    d = est.details
    assert [s["shape"] for s in got["scores"]] == [[8, 16, 32000]] * 2 and est.run.recipe.generation_batch_size == 8
    assert {s["bytes"] for s in got["scores"]} == {est.breakdown["rollout_logits"]} == {8 * 16 * 32000 * 4}
    assert {c["rows"] for c in got["generate_calls"]} == {4}
    assert {c["kv_bytes"] for c in got["generate_calls"]} == {d["generation.kv_cache"]} == {2 * 2 * 4 * 2 * 79 * 64 * 2}
    assert all(got["scores_alive_in_training"]) and got["previous_scores_alive_at_rollout"] == [False, True]
    assert set(got["ref_forward_logits"]) == {d["generation.reference_logits"]} == {4 * 80 * 32000 * 2}
    assert set(got["ref_forward_hidden_states"]) == {d["generation.reference_hidden_states"]} == {3 * 4 * 80 * 256 * 2}


def test_measure_ppo_without_trl_is_a_clear_error(monkeypatch, capsys):
    """benchmarks/measure_ppo.py needs TRL 1.9.0's PPOTrainer, not a dependency: without it, one line and exit 2."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("measure_ppo", Path(__file__).parent.parent / "benchmarks" / "measure_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    monkeypatch.setitem(sys.modules, "trl.experimental", None)
    monkeypatch.setitem(sys.modules, "trl.experimental.ppo", None)
    assert module.main([]) == 2
    assert "needs TRL 1.9.0" in capsys.readouterr().err
