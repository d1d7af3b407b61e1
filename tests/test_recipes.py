"""Recipes (issue 13): DPO, GRPO, PPO and reward-model runs, each term computed by hand or measured.

tests/data/groundtruth-rl.jsonl holds the dpo and grpo rows of shared/validation/groundtruth-rl.jsonl:
TRL 1.16 DPOTrainer.compute_loss / GRPOTrainer.train() steps on the CPU (torch 2.13, transformers 5.24,
peft 0.21.2), bytes counted with saved-tensor hooks (unique storages, parameters excluded), and the grpo
rows benchmarks/measure_rl.py measured (full and LoRA, beta 0 and 0.04, steps_per_generation 1 and 2;
each row names its command; the script reproduces the shared LoRA row byte for byte).
"""

import json
from pathlib import Path

import pytest

from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.fit.search import ways_out
from pytest_llmmem.recipes.recipes import score_model_params

ROWS = [json.loads(line) for line in (Path(__file__).parent / "data" / "groundtruth-rl.jsonl").read_text().splitlines()]
MiB = 2**20

# The tiny LLaMA of the GRPO row: 17,835,264 params (transformers 5.24 on the meta device).
TINY = {"family": "llama", "hidden-size": 256, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2,
        "intermediate-size": 688, "vocab-size": 32000, "max-position-embeddings": 8192}
# An 8B LLaMA-3 shape: 8,030,261,248 params.
LLAMA3_8B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 8,
             "intermediate-size": 14336, "vocab-size": 128256, "max-position-embeddings": 131072}


def _row_run(row):
    """The estimator's run for one measured row, with the row's own keys."""
    s = row["spec"]
    values = {"family": s["arch"], "hidden-size": s["hidden_size"], "num-layers": s["num_hidden_layers"],
              "num-heads": s["num_attention_heads"], "num-kv-heads": s["num_key_value_heads"],
              "intermediate-size": s["intermediate_size"], "vocab-size": s["vocab_size"],
              "max-position-embeddings": s["max_position_embeddings"], "dtype": "bf16", "precision": "pure",
              "recipe": row["group"], "mode": "train" if row["mode"] == "full" else "lora"}
    if row["mode"] == "lora":
        values.update({"lora-rank": row["lora_r"], "lora-targets": row["lora_targets"].split(",")})
    if row["group"] == "dpo":
        values.update({"batch-size": row["per_device_train_batch_size"], "max-length": row["max_length"],
                       "max-prompt-length": row["max_prompt_length"], "loss-type": row["loss_type"]})
    else:
        values.update({"batch-size": row["per_device_train_batch_size"], "num-generations": row["num_generations"],
                       "max-prompt-length": row["prompt_len"], "max-completion-length": row["max_completion_length"],
                       "beta": row["beta"], "steps-per-generation": row.get("steps_per_generation", 1)})
    return adhoc_run(values)


def _close(estimated, measured, tolerance=0.05):
    return measured == estimated == 0 or abs(estimated - measured) <= tolerance * measured


def _row_id(row):
    if row["group"] == "dpo":
        return f"dpo-{row['mode']}"
    return f"grpo-{row['mode']}-beta{row['beta']}-spg{row.get('steps_per_generation', 1)}"


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_per_term_agreement_with_trl(row):
    """Every term within 5 % of the TRL measurement; the model states exactly."""
    est = estimate(_row_run(row))
    b, d = est.full_terms, est.details
    assert b["weights"] == row["policy_param_bytes"]
    assert b["reference_model"] == row["ref_model_param_bytes"]
    assert b["gradients"] == row["grad_bytes"]
    assert b["optimizer_states"] == row["opt_state_bytes"]
    # What autograd keeps: the backbone's activations plus the fused head's saved copy and per-token tensors.
    saved = b["activations"] + d["logits.fused_head_input"] + d["logits.per_token"]
    assert _close(saved, row["saved_bytes"]), (saved, row["saved_bytes"])
    # The whole residual is a CPU artefact: without Triton TRL's fused head scores every position, not only the
    # completion (trl/trainer/utils.py:1641-1646 "On Triton devices, only the valid positions are scored"), so the
    # CPU also keeps the prompt positions' hidden states (h x 2 B), int64 targets and fp32 log-Z / entropy (16 B).
    if row["group"] == "dpo":
        rows, seq, completion = row["forward_rows"], row["seq"], row["completion_len"]
    else:
        rows, seq, completion = row["per_device_train_batch_size"], row["prompt_len"] + row["max_completion_length"], row["max_completion_length"]
    cpu_only = (rows * (seq - 1) - rows * completion) * (row["spec"]["hidden_size"] * 2 + 16)
    assert _close(saved + cpu_only, row["saved_bytes"], 0.001), (saved + cpu_only, row["saved_bytes"])
    if row["group"] == "grpo":
        rows = row["per_device_train_batch_size"] * row.get("steps_per_generation", 1)  # completions one generate() holds
        assert d["generation.kv_cache"] == row["gen_kv_bytes_final"] == 2 * 2 * rows * 2 * 127 * 64 * 2  # layers x K,V x rows x KV heads x 127 x d x 2 B
        assert d["generation.logits"] == row["gen_max_logits_bytes"] == rows * 32000 * 2  # last position, bf16


def test_groundtruth_covers_grpo_full_and_lora_with_and_without_a_reference():
    """Issue 13's acceptance: GRPO measured under full training and LoRA, at TRL's default beta = 0 and
    with beta > 0 (a separate reference model under full training, adapters disabled under LoRA)."""
    grpo = {(r["mode"], r["beta"] > 0) for r in ROWS if r["group"] == "grpo"}
    assert grpo >= {("full", False), ("full", True), ("lora", False), ("lora", True)}
    # the reference TRL loads beside a full-training policy: the tiny LLaMA's 17,835,264 params in bf16
    assert {r["ref_model_param_bytes"] for r in ROWS if r["group"] == "grpo" and r["mode"] == "full" and r["beta"] > 0} == {17_835_264 * 2}
    assert {r.get("steps_per_generation", 1) for r in ROWS if r["group"] == "grpo"} == {1, 2}


def test_dpo_reference_model_is_a_frozen_copy_and_rows_double():
    """DPO full: reference = the policy's bf16 weights (8,030,261,248 x 2 B); chosen + rejected = 2 rows."""
    run = adhoc_run(dict(LLAMA3_8B, recipe="dpo", **{"batch-size": 2, "max-length": 1024, "max-prompt-length": 512}))
    est = estimate(run)
    assert est.breakdown["reference_model"] == 8_030_261_248 * 2
    # Fused head input: 4 rows x 512 completion positions x 4096 hidden x 2 B = 16 MiB.
    assert est.details["logits.fused_head_input"] == 4 * 512 * 4096 * 2 == 16 * MiB
    # No b*s*V logits. Backward buffers: fp32 grad_hidden (2048 positions x 4096 x 4 B), one bf16 tile of
    # 2048 x 32768, and the head's fp32 grad_weight (128256 x 4096 x 4 B). Per token: int64 target and fp32
    # log-Z and entropy (2048 x 16 B) and two bool masks over 4 rows x 1023 positions.
    assert est.details["logits.fused_backward_buffers"] == 2048 * 4096 * 4 + 2048 * 32768 * 2 + 128256 * 4096 * 4
    assert est.details["logits.per_token"] == 2048 * 16 + 2 * 4 * 1023
    # The backward returns bf16 copies of both sums while they live: 2048 x 4096 x 2 B and 128256 x 4096 x 2 B.
    assert est.details["logits.fused_backward_casts"] == 2048 * 4096 * 2 + 128256 * 4096 * 2
    assert est.full("logits") == (16 * MiB + 2048 * 16 + 2 * 4 * 1023 + 2048 * 4096 * 4 + 2048 * 32768 * 2 + 128256 * 4096 * 4
                                  + 2048 * 4096 * 2 + 128256 * 4096 * 2)
    assert "2 rows of 1024 tokens" not in " ".join(est.notes)
    assert "4 rows of 1024 tokens" in " ".join(est.notes)


@pytest.mark.parametrize("keys, why", [
    ({"mode": "lora"}, "LoRA"),
    ({"precompute-ref-log-probs": True}, "precompute"),
    ({"loss-type": "simpo"}, "reference-free"),
])
def test_dpo_no_reference_model(keys, why):
    est = estimate(adhoc_run(dict(LLAMA3_8B, recipe="dpo", **keys)))
    assert est.breakdown["reference_model"] == 0
    assert any(why in note for note in est.notes)


def test_dpo_log_prob_head_logits_counts_the_whole_upcast_logits():
    # log-prob-head = "logits" (LLaMA-Factory's DPO): chosen + rejected = 2 rows of 512 tokens through the
    # whole head, priced as loss = "upcast": bf16 logits 2 B, fp32 log-softmax 4 B and two fp32 transients
    # 8 B per logit element: 2 x 512 x 32,000 x 14 B = 458,752,000 B. TRL's fused head keeps no such tensor.
    keys = {**TINY, "mode": "lora", "dtype": "bf16", "recipe": "dpo", "batch-size": 1, "max-length": 512,
            "kernels": ["liger-cross-entropy"]}  # LLaMA-Factory's Liger patch for DPO: the loss kernel is not on this path
    logits = estimate(adhoc_run({**keys, "log-prob-head": "logits"}))
    fused = estimate(adhoc_run(keys))
    elems = 2 * 512 * 32000
    assert logits.details["logits.logits"] == elems * 2
    assert logits.details["logits.log_softmax"] == elems * 4
    assert logits.details["logits.fp32_transient"] == elems * 8
    assert "logits.logits" not in fused.details and "logits.fused_head_input" in fused.details
    assert logits.total_bytes > fused.total_bytes


def test_log_prob_head_is_a_dpo_key():
    with pytest.raises(ConfigError) as info:
        adhoc_run({**TINY, "mode": "train", "recipe": "grpo", "log-prob-head": "logits", "max-prompt-length": 64})
    assert 'only applies to recipe = "dpo"' in str(info.value)
    with pytest.raises(ConfigError) as info:
        adhoc_run({**TINY, "mode": "train", "recipe": "dpo", "log-prob-head": "logit"})
    assert '"logit" is not valid. Did you mean "logits"?' in str(info.value)


def test_dpo_explicit_reference_under_lora_is_counted():
    """reference-model = true under LoRA: a ref_model passed to DPOTrainer stays in memory."""
    est = estimate(adhoc_run(dict(LLAMA3_8B, recipe="dpo", mode="lora", **{"reference-model": True})))
    assert est.breakdown["reference_model"] == 8_030_261_248 * 2


def test_grpo_beta_default_is_zero_and_beta_loads_a_reference():
    base = dict(TINY, recipe="grpo", **{"batch-size": 4, "num-generations": 4, "max-prompt-length": 64, "max-completion-length": 64})
    assert estimate(adhoc_run(base)).breakdown["reference_model"] == 0  # TRL 1.16 grpo_config.py: beta = 0.0
    with_kl = estimate(adhoc_run(dict(base, beta=0.04)))
    assert with_kl.breakdown["reference_model"] == 17_835_264 * 2
    assert estimate(adhoc_run(dict(base, beta=0.04, mode="lora"))).breakdown["reference_model"] == 0


def test_grpo_generation_phase_is_the_peak_for_a_big_generation_batch():
    """LoRA GRPO with 64 completions of 4096 tokens: the KV cache (not activations) sets the peak.

    KV after the last token: 32 layers x K,V x 64 x 8 heads x (512 + 4096 - 1) x 128 x 2 B."""
    run = adhoc_run(dict(LLAMA3_8B, recipe="grpo", mode="lora", **{
        "batch-size": 8, "num-generations": 8, "generation-batch-size": 64, "max-prompt-length": 512,
        "max-completion-length": 4096, "gradient-checkpointing": True}))
    est = estimate(run)
    kv = 32 * 2 * 64 * 8 * (512 + 4096 - 1) * 128 * 2
    assert est.details["generation.kv_cache"] == kv
    assert est.breakdown["generation_kv_cache"] == kv
    # gradients are freed after each optimizer step: none at the generation peak; the step's own are the adapters'
    # (r 16 on q_proj and v_proj: 32 layers x 16 x (4096 + 4096 + 4096 + 1024) x 2 B)
    assert est.breakdown["gradients"] == 0 and est.full("gradients") == 32 * 16 * (4096 + 4096 + 4096 + 1024) * 2
    # generate's logits: 64 x 128256 x 2 B in bf16, plus the fp32 copy and the sampling softmax (2 x 4 B).
    assert est.breakdown["logits"] == 64 * 128256 * (2 + 8)
    assert any("generation phase" in note for note in est.notes)


def test_steps_per_generation_scales_the_generation_batch():
    """TRL generates for steps_per_generation optimisation steps in one generate() call (grpo_trainer.py:1538-1546),
    defaulting to gradient_accumulation_steps (grpo_config.py:1098-1100; micro-batches here). Tiny LLaMA,
    4 completions per step x 4 steps = 16 rows: KV after the last token = 2 layers x K,V x 16 x 2 KV heads
    x (64 + 64 - 1) x 64 x 2 B = 2,080,768 B; last-position logits 16 x 32000 x 2 B = 1,024,000 B."""
    base = dict(TINY, recipe="grpo", **{"batch-size": 4, "num-generations": 4, "max-prompt-length": 64, "max-completion-length": 64})
    one = estimate(adhoc_run(base))
    assert one.details["generation.kv_cache"] == 2 * 2 * 4 * 2 * 127 * 64 * 2
    for keys in ({"steps-per-generation": 4}, {"generation-batch-size": 16}, {"micro-batches": 4}):
        est = estimate(adhoc_run(dict(base, **keys)))
        assert est.run.recipe.generation_batch_size == 16
        assert est.details["generation.kv_cache"] == 2_080_768
        assert est.details["generation.logits"] == 1_024_000
        assert est.full("activations") == one.full("activations")  # the training step is batch-size rows
    # micro-batches are pipeline micro-batches under pipeline parallelism, not TRL's accumulation
    piped = estimate(adhoc_run(dict(base, gpus=2, **{"pipeline-parallel": 2, "micro-batches": 4})))
    assert piped.run.recipe.generation_batch_size == 4
    # an explicit steps-per-generation wins over the accumulation default
    assert estimate(adhoc_run(dict(base, **{"micro-batches": 4, "steps-per-generation": 2}))).run.recipe.generation_batch_size == 8


@pytest.mark.parametrize("keys, message", [
    ({"recipe": "dpo"}, 'only applies to recipe = "grpo"'),
    ({"recipe": "ppo"}, 'only applies to recipe = "grpo"'),
    ({"recipe": "grpo", "generation-batch-size": 16}, "both set the generation batch"),
])
def test_steps_per_generation_contradictions(keys, message):
    text = ('[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\nparams = "8B"\n[[tool.llmmem.runs]]\nname = "g"\n'
            'steps-per-generation = 2\n' + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items()))
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert message in str(info.value)


def test_vllm_colocate_share_and_server():
    """Colocated vLLM takes 0.3 (TRL's default) of the H100's 85,017,493,504 bytes as CUDA reports them
    (torch.cuda.mem_get_info on an H100 80GB HBM3; the catalog's GPU.cuda_total_bytes); a server takes nothing here."""
    keys = dict(TINY, recipe="grpo", gpu="H100-80GB", **{"batch-size": 8, "max-prompt-length": 64, "max-completion-length": 64})
    colocate = estimate(adhoc_run(dict(keys, generation="vllm-colocate")))
    assert colocate.breakdown["vllm_engine_share"] == round(0.3 * 85_017_493_504)
    assert colocate.breakdown["generation_kv_cache"] == 0
    half = estimate(adhoc_run(dict(keys, generation="vllm-colocate", **{"vllm-gpu-memory-utilization": 0.5})))
    assert half.breakdown["vllm_engine_share"] == round(0.5 * 85_017_493_504)
    server = estimate(adhoc_run(dict(keys, generation="vllm-server")))
    assert server.breakdown["vllm_engine_share"] == 0 and "generation.kv_cache" not in server.details


def test_vllm_colocate_without_a_gpu_is_partial():
    est = estimate(adhoc_run(dict(TINY, recipe="grpo", generation="vllm-colocate", **{"batch-size": 8, "max-prompt-length": 64, "max-completion-length": 64})))
    assert any("vLLM" in reason for reason in est.partial)


def test_score_model_params_match_transformers():
    """LlamaForSequenceClassification(num_labels=1) of the tiny shape: 9,643,520 params on the meta device
    = 17,835,264 - 32000 x 256 (LM head) + 256 (score)."""
    run = adhoc_run(dict(TINY))
    assert score_model_params(run.model) == 9_643_520


def test_ppo_holds_four_models():
    """PPO full, bf16 pure AdamW: reference = 17,835,264 x 2 B; reward = 9,643,520 x 2 B; the value model
    trains: weights + grads + 2 AdamW states, all bf16, = 9,643,520 x 8 B, plus its activations."""
    run = adhoc_run(dict(TINY, recipe="ppo", precision="pure", dtype="bf16", **{"batch-size": 2, "max-prompt-length": 64, "max-completion-length": 64}))
    est = estimate(run)
    assert est.breakdown["reference_model"] == 17_835_264 * 2
    assert est.breakdown["reward_model"] == 9_643_520 * 2
    assert est.details["value_model.model_states"] == 9_643_520 * 8
    assert est.details["value_model.values"] == 2 * 128 * 2
    shared = estimate(adhoc_run(dict(TINY, recipe="ppo", precision="pure", **{"value-head": "shared", "batch-size": 2, "max-prompt-length": 64})))
    assert shared.breakdown["value_model"] == (256 + 1) * 4 * 4  # fp32 v_head: weight, grad, 2 AdamW states


def test_reward_model_training_doubles_rows_and_scores_one_value():
    """Reward training: 2 x 3 rows of 512 tokens; scores (6, 512, 1) bf16 + pooled (6,) fp32; no b*s*V logits."""
    est = estimate(adhoc_run(dict(TINY, recipe="reward", **{"batch-size": 3, "max-length": 512})))
    assert est.details["logits.scores"] == 6 * 512 * 2 + 6 * 4
    assert est.full("logits") == 6 * 512 * 2 + 6 * 4
    sft = estimate(adhoc_run(dict(TINY, **{"batch-size": 6, "seq-len": 512})))
    assert est.full("activations") == sft.full("activations")


def test_fit_names_the_recipe_changes():
    """An 8B GRPO run with a KL reference and a colocated engine on one H100: LoRA, beta = 0 and a
    separate server each help; fewer generations is offered at the largest count that fits."""
    run = adhoc_run(dict(LLAMA3_8B, recipe="grpo", beta=0.04, gpu="H100-80GB", generation="vllm-colocate", **{
        "batch-size": 8, "num-generations": 8, "max-prompt-length": 512, "max-completion-length": 1024,
        "gradient-checkpointing": True, "optimizer": "adamw-8bit"}))
    assert estimate(run).fits is False
    keys = {w.key for w in ways_out(run)}
    assert "mode" in keys
    assert "beta" not in keys or estimate(run._replace(recipe=run.recipe._replace(beta=0.0, reference=False))).fits
    lora = adhoc_run(dict(LLAMA3_8B, recipe="grpo", mode="lora", gpu="H100-80GB", generation="vllm-colocate", **{
        "vllm-gpu-memory-utilization": 0.9, "batch-size": 8, "num-generations": 8, "max-prompt-length": 512,
        "max-completion-length": 1024, "gradient-checkpointing": True}))
    assert estimate(lora).fits is False
    assert "generation" in {w.key for w in ways_out(lora)}
    many = adhoc_run(dict(LLAMA3_8B, recipe="grpo", mode="lora", gpu="H100-80GB", **{
        "batch-size": 64, "num-generations": 64, "max-prompt-length": 512, "max-completion-length": 8192,
        "gradient-checkpointing": True}))
    fewer = [w for w in ways_out(many) if w.key == "num-generations"]
    assert len(fewer) == 1 and fewer[0].estimate.fits
    # The most generations that fit: one more does not.
    more = fewer[0].value + 1
    assert not estimate(many._replace(batch_size=more, recipe=many.recipe._replace(num_generations=more, generation_batch_size=more))).fits


def test_pyproject_recipe_keys_and_json_terms(write_pyproject, run_cli):
    path = write_pyproject("""
        [tool.llmmem]
        gpu = "H100-80GB"

        [tool.llmmem.model]
        family = "llama"
        hidden-size = 256
        num-layers = 2
        num-heads = 4
        num-kv-heads = 2
        intermediate-size = 688
        vocab-size = 32000

        [[tool.llmmem.runs]]
        name = "dpo"
        recipe = "dpo"
        max-length = 256
        max-prompt-length = 128
    """)
    code, out, _ = run_cli("check", path, "--format", "json")
    assert code == 0
    report = json.loads(out)
    run = report["runs"][0] if "runs" in report else report["projects"][0]["runs"][0]
    assert run["breakdown"]["reference_model"] == 17_835_264 * 2
    assert set(run["breakdown"]) >= {"reference_model", "reward_model", "value_model", "generation_kv_cache", "vllm_engine_share"}


def test_estimate_flags(run_cli):
    code, out, _ = run_cli("estimate", "--family", "llama", "--hidden-size", "256", "--num-layers", "2", "--num-heads", "4",
                           "--num-kv-heads", "2", "--intermediate-size", "688", "--vocab-size", "32000", "--recipe", "grpo",
                           "--beta", "0.04", "--num-generations", "4", "--batch-size", "4", "--max-prompt-length", "64",
                           "--max-completion-length", "64")
    assert code == 0
    assert "reference model" in out and "grpo, 4 generations of 64" in out


def test_sft_runs_are_unchanged():
    """recipe = "sft" is today's estimate: no recipe terms appear."""
    plain = estimate(adhoc_run(dict(TINY)))
    sft = estimate(adhoc_run(dict(TINY, recipe="sft")))
    assert plain.breakdown == sft.breakdown and "reference_model" not in sft.breakdown


def test_parse_contradiction_messages():
    text = '[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\nparams = "8B"\n[[tool.llmmem.runs]]\nname = "g"\nrecipe = "grpo"\nnum-generations = 1\n'
    with pytest.raises(Exception) as info:
        parse(text)
    assert "at least 2" in str(info.value)


@pytest.mark.parametrize("keys", [
    dict(recipe="grpo", beta=0.04, **{"batch-size": 8, "max-prompt-length": 512, "max-completion-length": 1024}),
    dict(recipe="grpo", mode="lora", **{"batch-size": 8, "generation-batch-size": 64, "max-prompt-length": 512, "max-completion-length": 4096}),
    dict(recipe="ppo", mode="lora", **{"batch-size": 4, "max-prompt-length": 256}),
    dict(recipe="dpo", optimizer="adamw", **{"optimizer-impl": "foreach", "batch-size": 1, "max-length": 512}),
])
def test_breakdown_adds_up_to_the_peak_phase(keys):
    """The terms add up to the largest phase (backward, optimizer step, generation), which is named."""
    est = estimate(adhoc_run(dict(LLAMA3_8B, gpu="H100-80GB", **keys)))
    if est.phases:
        assert est.total_bytes == max(total for _, total in est.phases)
        assert est.peak_phase == max(est.phases, key=lambda p: p[1])[0]


def test_reward_model_trains_a_score_head_not_an_lm_head():
    """Full reward-model training of the tiny shape, bf16 pure AdamW: 9,643,520 params (no 32000 x 256
    LM head) x (2 weights + 2 grads + 4 states) bytes; LoRA drops the head's 8,192,000 x 2 B from the base."""
    full = estimate(adhoc_run(dict(TINY, recipe="reward", precision="pure", **{"batch-size": 1, "max-length": 128})))
    assert full.params == 9_643_520
    assert (full.breakdown["weights"], full.full("gradients"), full.breakdown["optimizer_states"]) == (9_643_520 * 2, 9_643_520 * 2, 9_643_520 * 4)
    lora = estimate(adhoc_run(dict(TINY, recipe="reward", mode="lora", **{"batch-size": 1, "max-length": 128})))
    sft_lora = estimate(adhoc_run(dict(TINY, mode="lora", **{"batch-size": 2, "seq-len": 16})))
    assert sft_lora.breakdown["weights"] - lora.breakdown["weights"] == 32000 * 256 * 2


def test_measure_rl_without_trl_is_a_clear_error(monkeypatch, capsys):
    """benchmarks/measure_rl.py needs TRL, which is not a dependency: without it, one line and exit 2."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("measure_rl", Path(__file__).parent.parent / "benchmarks" / "measure_rl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    assert module.main(["--mode", "full"]) == 2
    assert "needs TRL 1.16" in capsys.readouterr().err


def test_ppo_reward_and_value_models_of_their_own_size():
    """reward-model / value-model tables: a 1B-param reward model in bf16 = 2e9 B; a critic of the tiny
    shape trained in pure bf16 AdamW: 9,643,520 x 8 B of states."""
    est = estimate(adhoc_run(dict(LLAMA3_8B, recipe="ppo", mode="lora", precision="pure", **{
        "batch-size": 2, "max-prompt-length": 64, "max-completion-length": 64,
        "reward-model": {"params": "1B"}, "value-model": {k: v for k, v in TINY.items()}})))
    assert est.breakdown["reward_model"] == 2_000_000_000
    assert est.details["value_model.model_states"] == 9_643_520 * 8
    assert est.breakdown["reference_model"] == 0  # LoRA policy


def test_measure_refuses_a_recipe_run():
    """llmmem measure steps plain SFT: comparing it with a DPO estimate would store a wrong calibration."""
    from pytest_llmmem.errors import ConfigError
    from pytest_llmmem.frontends.measure import _check_measurable

    with pytest.raises(ConfigError, match="measure runs an SFT step"):
        _check_measurable(adhoc_run(dict(TINY, recipe="dpo")))


def test_llmmem_fit_lists_the_recipe_switches(write_pyproject, run_cli):
    """`llmmem fit` on an over-budget GRPO run names LoRA, beta = 0, a separate server and fewer generations."""
    path = write_pyproject("""
        [tool.llmmem]
        gpu = "H100-80GB"

        [tool.llmmem.model]
        family = "llama"
        hidden-size = 4096
        num-layers = 32
        num-heads = 32
        num-kv-heads = 8
        intermediate-size = 14336
        vocab-size = 128256

        [[tool.llmmem.runs]]
        name = "grpo"
        recipe = "grpo"
        beta = 0.04
        batch-size = 16
        num-generations = 16
        max-prompt-length = 512
        max-completion-length = 2048
        generation = "vllm-colocate"
        gradient-checkpointing = true
    """)
    code, out, _ = run_cli("fit", path)
    assert code == 1  # the run as declared is over budget
    for switch in ('mode = "lora"', "beta = 0.0", 'generation = "vllm-server"', "num-generations = "):
        assert switch in out, switch


def test_a_reward_models_backward_makes_no_lm_head_gradient():
    """The policy's backward is priced at its peak instant (core/terms/backward.py). Full training of the tiny LLaMA
    with tied embeddings ends with every gradient: the SFT step of the same rows also holds the tied head's V x h
    bf16 gradient waiting beside the embedding's (32000 x 256 x 2 B); a reward model's h x 1 score head makes none."""
    keys = dict(TINY, mode="train", dtype="bf16", precision="pure", **{"tie-embeddings": True})
    sft = estimate(adhoc_run(dict(keys, **{"batch-size": 2, "seq-len": 16})))
    reward = estimate(adhoc_run(dict(keys, recipe="reward", **{"batch-size": 1, "max-length": 16})))
    assert sft.details["backward.gradients.tied_head_waiting"] == 32000 * 256 * 2
    assert "backward.gradients.tied_head_waiting" not in reward.details
    # it ends with every gradient made and the (2 rows x 16, 256) bf16 gradient flowing into the embedding
    assert reward.breakdown["gradients"] == reward.full("gradients")
    assert reward.details["backward.activations.embedding_grad_input"] == 2 * 16 * 256 * 2
