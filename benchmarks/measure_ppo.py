"""Check PPO's rollout terms (issue 13) against TRL's own PPOTrainer on the CPU, two updates.

TRL 1.16 ships no PPOTrainer; the last one is in TRL 1.9.0 (trl/experimental/ppo, the same file as
huggingface/trl f2cd577, which pytest_llmmem/recipes/ppo_rollout.py cites). Tiny LLaMA (h=256, 2 layers,
4 heads, 2 KV heads, V=32000) in bf16, LoRA-free, a reference copy, reward and value models of the same
shape; per_device_train_batch_size 2 x gradient_accumulation_steps 4 = a local batch of 8 prompts of 64
tokens, 16-token responses, local_rollout_forward_batch_size 4.

Recorded: rows and KV cache bytes of every generate() call (after its last token), the padded rollout
scores batch_generation returns (shape, dtype, bytes), whether they are still referenced during the
update's training forwards and when the next rollout starts, and what each no-grad reference forward
returns (logits and hidden states). TRL is NOT a dependency of pytest-llmmem; install it beside:

    pip install --target /tmp/trl19 --no-deps trl==1.9.0   # plus the deps listed in measure_rl.py, e.g. /tmp/trl-site
    PYTHONPATH=/tmp/trl19:/tmp/trl-site:. python benchmarks/measure_ppo.py

Prints one JSON line: measured, estimated, and whether each matches.
"""

import json
import sys
import tempfile
import weakref

SPEC = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=688, vocab_size=32000, max_position_embeddings=8192)
BATCH, ACCUMULATION, CHUNK, PROMPT, RESPONSE = 2, 4, 4, 64, 16


def measure() -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.generation.utils import GenerationMixin
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from measure_rl import _cache_bytes, _stable_fingerprints, _tokenizer

    _stable_fingerprints()
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", **SPEC, num_labels=1, pad_token_id=0)
    policy = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    ref = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    reward = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    value = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    got = {"generate_calls": [], "scores": [], "scores_alive_in_training": [], "previous_scores_alive_at_rollout": [],
           "ref_forward_logits": [], "ref_forward_hidden_states": []}
    state = {"generating": False, "last": None}
    original_generate, original_batch_generation = GenerationMixin.generate, module.batch_generation

    def generate(self, *args, **kwargs):
        state["generating"] = True
        try:
            out = original_generate(self, *args, **kwargs)
        finally:
            state["generating"] = False
        got["generate_calls"].append({"rows": kwargs["input_ids"].size(0), "kv_bytes": _cache_bytes(out.past_key_values)})
        return out

    def batch_generation(*args, **kwargs):
        got["previous_scores_alive_at_rollout"].append(state["last"] is not None and state["last"]() is not None)
        responses, scores = original_batch_generation(*args, **kwargs)
        got["scores"].append({"shape": list(scores.shape), "dtype": str(scores.dtype), "bytes": scores.untyped_storage().nbytes()})
        state["last"] = weakref.ref(scores)
        return responses, scores

    def on_policy_forward(mod, args, kwargs, out):
        if torch.is_grad_enabled() and not state["generating"]:
            got["scores_alive_in_training"].append(state["last"] is not None and state["last"]() is not None)

    def on_ref_forward(mod, args, kwargs, out):
        if not state["generating"]:
            got["ref_forward_logits"].append(out.logits.untyped_storage().nbytes())
            got["ref_forward_hidden_states"].append(sum(h.untyped_storage().nbytes() for h in out.hidden_states))

    policy.register_forward_hook(on_policy_forward, with_kwargs=True)
    ref.register_forward_hook(on_ref_forward, with_kwargs=True)
    words = [" ".join(f"t{(i * 7 + j) % 30000 + 2}" for j in range(PROMPT)) for i in range(2 * BATCH * ACCUMULATION)]
    tok = _tokenizer(32000)
    data = Dataset.from_dict({"input_ids": [tok(w)["input_ids"] for w in words]})
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
                         local_rollout_forward_batch_size=CHUNK, response_length=RESPONSE, total_episodes=2 * BATCH * ACCUMULATION,
                         num_ppo_epochs=1, num_mini_batches=1, num_sample_generations=0, stop_token=None,
                         use_cpu=True, bf16=False, report_to=[], save_strategy="no", seed=0)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=data, value_model=value)
        GenerationMixin.generate, module.batch_generation = generate, batch_generation
        try:
            trainer.train()
        finally:
            GenerationMixin.generate, module.batch_generation = original_generate, original_batch_generation
    return got


def estimated() -> dict:
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    keys = {"family": "llama", "hidden-size": 256, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2,
            "intermediate-size": 688, "vocab-size": 32000, "max-position-embeddings": 8192, "dtype": "bf16",
            "precision": "pure", "recipe": "ppo", "batch-size": BATCH, "micro-batches": ACCUMULATION,
            "max-prompt-length": PROMPT, "max-completion-length": RESPONSE, "local-rollout-forward-batch-size": CHUNK}
    est = estimate(adhoc_run(keys))
    d = est.details
    return {"rollout_rows": est.run.recipe.generation_batch_size, "rollout_scores": est.breakdown["rollout_logits"],
            "kv_cache": d["generation.kv_cache"], "reference_logits": d["generation.reference_logits"],
            "reference_hidden_states": d["generation.reference_hidden_states"]}


def main(argv=None) -> int:
    try:
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except ImportError:
        print("measure_ppo.py needs TRL 1.9.0's PPOTrainer (not a dependency of pytest-llmmem); see the module docstring.", file=sys.stderr)
        return 2
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        got = measure()
    est = estimated()
    checks = {
        "rollout_rows": got["scores"][0]["shape"][0] == est["rollout_rows"],
        "rollout_scores": got["scores"][0]["bytes"] == est["rollout_scores"] and got["scores"][0]["dtype"] == "torch.float32",
        "generate_rows": {c["rows"] for c in got["generate_calls"]} == {CHUNK},
        "kv_cache": max(c["kv_bytes"] for c in got["generate_calls"]) == est["kv_cache"],
        "scores_alive_in_training": all(got["scores_alive_in_training"]) and bool(got["scores_alive_in_training"]),
        "previous_scores_alive_at_next_rollout": got["previous_scores_alive_at_rollout"] == [False, True],
        "reference_logits": set(got["ref_forward_logits"]) == {est["reference_logits"]},
        "reference_hidden_states": set(got["ref_forward_hidden_states"]) == {est["reference_hidden_states"]},
    }
    import torch
    import transformers
    import trl

    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    print(json.dumps({"source": "benchmarks/measure_ppo.py", "command": "PYTHONPATH=/tmp/trl19:/tmp/trl-site:. python benchmarks/measure_ppo.py",
                      **versions, "measured": got, "estimated": est, "matches": checks}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
