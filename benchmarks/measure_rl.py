"""Measure one TRL DPO or GRPO step on the CPU and compare it with the estimate, term by term (issue 13).

DPO (``--recipe dpo``) reproduces the dpo rows of tests/data/groundtruth-rl.jsonl: a 4-layer LLaMA
(h=512, 8 heads, 2 KV heads, f=1376, V=128256) in pure bf16 with random weights, one pair of 128 prompt
+ 128 completion tokens, TRL 1.16 ``DPOTrainer.compute_loss`` (its fused log-prob head), full fine-tuning
with a separate reference model or LoRA r=16 on q/k/v/o (reference = adapters disabled).

GRPO (``--recipe grpo``) runs ``GRPOTrainer.train()`` for one optimizer step (use_vllm=False: in-process
``generate()``) on a 2-layer LLaMA (h=256, 4 heads, 2 KV heads, f=688, V=32000), one 64-token prompt
with 4 completions of 64 tokens per step, full fine-tuning or LoRA r=8 on q/v, ``--beta`` (TRL's default
0.0 loads no reference; beta > 0 loads one under full training) and ``--steps-per-generation`` (one
generate() for that many steps' completions). It records generate()'s logits and KV cache per forward
call, what compute_loss saves, the gradients before and AdamW's states after the optimizer step;
``--row`` prints a groundtruth-rl.jsonl row: it reproduces the shared LoRA beta = 0 row byte for byte,
and the other grpo rows there came from it.

Bytes kept for backward are counted with ``torch.autograd.graph.saved_tensors_hooks``: unique
storages, parameters excluded (the groundtruth's rule). TRL is NOT a dependency of pytest-llmmem;
install it beside the project to run this, e.g.

    pip install --target /tmp/trl-site --no-deps trl==1.16.0 datasets pandas pyarrow dill xxhash \\
        multiprocess requests urllib3 idna charset_normalizer certifi python-dateutil pytz tzdata tqdm filelock
    PYTHONPATH=/tmp/trl-site:. python benchmarks/measure_rl.py [--recipe dpo|grpo] [--mode full|lora|both]

Prints one JSON line per mode: measured, estimated and the relative error of each term.
"""

import argparse
import contextlib
import copy
import json
import shutil
import sys
import tempfile

SPEC = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=1376, vocab_size=128256, max_position_embeddings=8192)
PROMPT, COMPLETION, PAIRS = 128, 128, 1


def _tokenizer(size: int = 1000):
    """An offline word-level tokenizer of ``size`` words (the trainers need a processing class; nothing
    is downloaded). GRPO decodes what the model samples, so its tokenizer spans the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _saved_bytes(fn, params):
    """Run ``fn`` and return (its result, bytes of the unique non-parameter storages autograd saved)."""
    import torch

    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _stable_fingerprints() -> None:
    """datasets hashes each table with dill to name its cache files; on some pyarrow builds that pickling
    fails (MonthDayNano). A random fingerprint is what datasets itself falls back to for unhashable
    transforms; it changes no tensor of the step."""
    import uuid

    import datasets.fingerprint

    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: uuid.uuid4().hex)


def measure(mode: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    _stable_fingerprints()
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", **SPEC)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    peft_config, ref = None, None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    else:
        ref = copy.deepcopy(model)  # what TRL loads from the same checkpoint
    words = " ".join(f"t{i % 900 + 2}" for i in range(PROMPT))
    data = Dataset.from_dict({"prompt": [words], "chosen": [words], "rejected": [words]})
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=PAIRS, max_length=PROMPT + COMPLETION,
                         report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                             processing_class=_tokenizer(), peft_config=peft_config)
        policy = trainer.model
        ids = torch.randint(2, 900, (2 * PAIRS, PROMPT + COMPLETION))
        completion = torch.zeros_like(ids)
        completion[:, PROMPT:] = 1
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
        params = list(policy.parameters()) + (list(trainer.ref_model.parameters()) if trainer.ref_model is not None else [])
        loss, saved = _saved_bytes(lambda: trainer.compute_loss(policy, inputs), params)
        loss.backward()
        grads = sum(p.grad.numel() * p.grad.element_size() for p in policy.parameters() if p.grad is not None)
        ref_bytes = sum(p.numel() * p.element_size() for p in trainer.ref_model.parameters()) if trainer.ref_model is not None else 0
        weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    return {"mode": mode, "weights": weights, "reference_model": ref_bytes, "gradients": grads, "saved_bytes": saved}


def estimated(mode: str) -> dict:
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    keys = {"family": "llama", "hidden-size": 512, "num-layers": 4, "num-heads": 8, "num-kv-heads": 2,
            "intermediate-size": 1376, "vocab-size": 128256, "max-position-embeddings": 8192, "dtype": "bf16",
            "precision": "pure", "recipe": "dpo", "batch-size": PAIRS, "max-length": PROMPT + COMPLETION,
            "max-prompt-length": PROMPT, "mode": "train" if mode == "full" else "lora"}
    if mode == "lora":
        keys.update({"lora-rank": 16, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    est = estimate(adhoc_run(keys))
    b, d = est.full_terms, est.details  # each term at its full size: the breakdown is the backward's peak instant
    return {"weights": b["weights"], "reference_model": b["reference_model"], "gradients": b["gradients"],
            "saved_bytes": b["activations"] + d["logits.fused_head_input"] + d["logits.per_token"]}


# The GRPO rows: a 2-layer LLaMA (h=256, 4 heads, 2 KV heads, f=688, V=32000), one prompt of 64 tokens
# per optimizer step with num_generations = 4 completions of 64 tokens (per_device_train_batch_size = 4).
GRPO_SPEC = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=688, vocab_size=32000, max_position_embeddings=8192)
GRPO_PROMPT, GRPO_COMPLETION, GRPO_GENERATIONS = 64, 64, 4


def _cache_bytes(cache) -> int:
    """Unique storages the cache's layers hold (transformers 5.24 DynamicCache: layers[i].keys / .values)."""
    import torch

    held = [v for layer in cache.layers for v in vars(layer).values() if torch.is_tensor(v) and v.dim() > 0]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}.values())


def measure_grpo(mode: str, beta: float, steps_per_generation: int) -> dict:
    """One ``GRPOTrainer.train()`` step (max_steps = 1, use_vllm = False): generate()'s logits and KV cache
    per forward call, what ``compute_loss`` saves for backward, the gradients before the optimizer step
    and AdamW's states after it (TrainerCallback on_pre_optimizer_step / on_optimizer_step)."""
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback
    from transformers.generation.utils import GenerationMixin
    from trl import GRPOConfig, GRPOTrainer

    _stable_fingerprints()
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", **GRPO_SPEC)
    checkpoint = tempfile.mkdtemp(prefix="measure-grpo-")
    # GRPOTrainer builds its reference model from the policy's checkpoint path (grpo_trainer.py:1003
    # create_model_from_path), so the random policy is saved once and loaded from there.
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, attn_implementation="sdpa")
    base = model
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    gen = {"calls": 0, "logits": [], "kv": [], "seq": 0, "prefill_shape": None}
    state = {"generating": False}
    original_generate = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        state["generating"] = True
        try:
            return original_generate(self, *args, **kwargs)
        finally:
            state["generating"] = False

    def on_forward(module, args, kwargs, out):
        if not state["generating"]:
            return
        gen["calls"] += 1
        if gen["prefill_shape"] is None:
            gen["prefill_shape"] = list(kwargs["input_ids"].shape)
        gen["logits"].append(out.logits.untyped_storage().nbytes())
        gen["kv"].append(_cache_bytes(out.past_key_values))
        gen["seq"] = out.past_key_values.get_seq_length()

    base.register_forward_hook(on_forward, with_kwargs=True)
    got = {}

    class Probe(TrainerCallback):
        def on_pre_optimizer_step(self, args, st, control, model=None, **kwargs):
            got["grad_bytes"] = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)

        def on_optimizer_step(self, args, st, control, optimizer=None, **kwargs):
            got["opt_state_bytes"] = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                                         for t in s.values() if torch.is_tensor(t) and t.dim() > 0)

    def reward_length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    # one prompt per optimisation step (its num_generations completions fill the batch); a few steps' worth
    words = [" ".join(f"t{(i * 7 + j) % 30000 + 2}" for j in range(GRPO_PROMPT)) for i in range(4 * steps_per_generation)]
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=GRPO_GENERATIONS, num_generations=GRPO_GENERATIONS,
                          max_completion_length=GRPO_COMPLETION, beta=beta, steps_per_generation=steps_per_generation,
                          max_steps=1, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                          gradient_checkpointing=False, use_vllm=False, seed=0)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_length, args=args, processing_class=_tokenizer(32000),
                              train_dataset=Dataset.from_dict({"prompt": words}), peft_config=peft_config,
                              callbacks=[Probe()])
        policy = trainer.model
        params = list(policy.parameters()) + (list(trainer.ref_model.parameters()) if trainer.ref_model is not None else [])
        compute_loss = trainer.compute_loss

        def measured_loss(model, inputs, *a, **kw):
            got["train_forward_input_shape"] = [inputs["prompt_ids"].size(0), inputs["prompt_ids"].size(1) + inputs["completion_ids"].size(1)]
            loss, got["saved_bytes"] = _saved_bytes(lambda: compute_loss(model, inputs, *a, **kw), params)
            return loss

        trainer.compute_loss = measured_loss
        GenerationMixin.generate = generate
        try:
            trainer.train()
        finally:
            GenerationMixin.generate = original_generate
        weights = sum(p.numel() * p.element_size() for p in policy.parameters())
        ref_bytes = sum(p.numel() * p.element_size() for p in trainer.ref_model.parameters()) if trainer.ref_model is not None else 0
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return {"mode": mode, "beta": beta, "steps_per_generation": steps_per_generation, "weights": weights,
            "reference_model": ref_bytes, "trainable": trainable, "gradients": got["grad_bytes"],
            "optimizer_states": got["opt_state_bytes"], "saved_bytes": got["saved_bytes"],
            "train_forward_input_shape": got["train_forward_input_shape"], "gen_forward_calls": gen["calls"],
            "gen_prefill_input_shape": gen["prefill_shape"], "gen_max_logits_bytes": max(gen["logits"]),
            "gen_kv_bytes_after_prefill": gen["kv"][0], "gen_kv_bytes_final": gen["kv"][-1], "gen_kv_seq_final": gen["seq"]}


def estimated_grpo(mode: str, beta: float, steps_per_generation: int) -> dict:
    """The estimate's figures for the same GRPO step, named as ``measure_grpo`` names them."""
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    keys = {"family": "llama", "hidden-size": 256, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2,
            "intermediate-size": 688, "vocab-size": 32000, "max-position-embeddings": 8192, "dtype": "bf16",
            "precision": "pure", "recipe": "grpo", "batch-size": GRPO_GENERATIONS, "num-generations": GRPO_GENERATIONS,
            "max-prompt-length": GRPO_PROMPT, "max-completion-length": GRPO_COMPLETION, "beta": beta,
            "steps-per-generation": steps_per_generation, "mode": "train" if mode == "full" else "lora"}
    if mode == "lora":
        keys.update({"lora-rank": 8, "lora-targets": ["q_proj", "v_proj"]})
    est = estimate(adhoc_run(keys))
    b, d = est.full_terms, est.details  # each term at its full size: the breakdown is the backward's peak instant
    return {"weights": b["weights"], "reference_model": b["reference_model"], "gradients": b["gradients"],
            "optimizer_states": b["optimizer_states"],
            "saved_bytes": b["activations"] + d["logits.fused_head_input"] + d["logits.per_token"],
            "gen_max_logits_bytes": d["generation.logits"], "gen_kv_bytes_final": d["generation.kv_cache"]}


def grpo_row(got: dict, command: str) -> dict:
    """A groundtruth-rl.jsonl ``grpo`` row (the fields of the shared LoRA row, plus steps_per_generation
    and the command that produced it)."""
    import peft
    import torch
    import transformers
    import trl

    spec = dict(arch="llama", **GRPO_SPEC)
    rows = GRPO_GENERATIONS * got["steps_per_generation"]
    row = {"group": "grpo", "spec": spec, "dtype": "bf16", "attn": "sdpa", "prompts_per_step": 1,
           "num_generations": GRPO_GENERATIONS, "prompt_len": GRPO_PROMPT, "max_completion_length": GRPO_COMPLETION,
           "beta": got["beta"], "mode": got["mode"], "grad_ckpt": 0, "use_vllm": False,
           "steps_per_generation": got["steps_per_generation"], "generation_rows": rows,
           "policy_param_bytes": got["weights"], "ref_model_param_bytes": got["reference_model"],
           "trainable": got["trainable"]}
    row.update({k: got[k] for k in ("gen_forward_calls", "gen_prefill_input_shape", "gen_max_logits_bytes",
                                     "gen_kv_bytes_after_prefill", "gen_kv_bytes_final", "gen_kv_seq_final",
                                     "train_forward_input_shape", "saved_bytes")})
    row.update({"grad_bytes": got["gradients"], "opt_state_bytes": got["optimizer_states"], "optimizer": "AdamW"})
    if got["mode"] == "lora":
        row.update({"lora_r": 8, "lora_targets": "q_proj,v_proj"})
    row.update({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "trl": trl.__version__, "per_device_train_batch_size": GRPO_GENERATIONS,
                "source": "benchmarks/measure_rl.py (GRPOTrainer.train(), max_steps=1)", "command": command})
    return row


def _compare(recipe: str, mode: str, got: dict, est: dict) -> dict:
    import trl

    error = {k: (round(est[k] / got[k] - 1, 4) if got[k] else (0.0 if est[k] == 0 else None)) for k in est}
    return {"recipe": recipe, "mode": mode, "trl": trl.__version__, "measured": {k: got[k] for k in est},
            "estimated": est, "relative_error": error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=("dpo", "grpo"), default="dpo")
    parser.add_argument("--mode", choices=("full", "lora", "both"), default="both")
    parser.add_argument("--beta", type=float, default=0.0, help="grpo: KL weight (TRL's default 0.0 loads no reference)")
    parser.add_argument("--steps-per-generation", type=int, default=1, help="grpo: optimisation steps one generate() serves")
    parser.add_argument("--row", action="store_true", help="grpo: print the groundtruth-rl.jsonl row instead of the comparison")
    args = parser.parse_args(argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        print("measure_rl.py needs TRL 1.16 (not a dependency of pytest-llmmem); see the module docstring.", file=sys.stderr)
        return 2
    command = "PYTHONPATH=/tmp/trl-site:. python benchmarks/measure_rl.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for mode in (("full", "lora") if args.mode == "both" else (args.mode,)):
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout keeps the JSON lines
            got = measure(mode) if args.recipe == "dpo" else measure_grpo(mode, args.beta, args.steps_per_generation)
        if args.recipe == "dpo":
            print(json.dumps(_compare("dpo", mode, got, estimated(mode))))
            continue
        if args.row:
            print(json.dumps(grpo_row(got, command.replace("--mode both", f"--mode {mode}"))))
        else:
            print(json.dumps(_compare("grpo", mode, got, estimated_grpo(mode, args.beta, args.steps_per_generation))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
