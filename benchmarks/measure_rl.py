"""Measure one TRL DPO step on the CPU and compare it with the estimate, term by term (issue 13).

Reproduces the dpo rows of shared/validation/groundtruth-rl.jsonl: a 4-layer LLaMA (h=512, 8 heads,
2 KV heads, f=1376, V=128256) in pure bf16 with random weights, one pair of 128 prompt + 128
completion tokens, TRL 1.16 ``DPOTrainer.compute_loss`` (its fused log-prob head), full fine-tuning
with a separate reference model or LoRA r=16 on q/k/v/o (reference = adapters disabled).

Bytes kept for backward are counted with ``torch.autograd.graph.saved_tensors_hooks``: unique
storages, parameters excluded (the groundtruth's rule). TRL is NOT a dependency of pytest-llmmem;
install it beside the project to run this, e.g.

    pip install --target /tmp/trl-site --no-deps trl==1.16.0 datasets pandas pyarrow dill xxhash \\
        multiprocess requests urllib3 idna charset_normalizer certifi python-dateutil pytz tzdata tqdm filelock
    PYTHONPATH=/tmp/trl-site:. python benchmarks/measure_rl.py [--mode full|lora]

Prints one JSON line per mode: measured, estimated and the relative error of each term.
"""

import argparse
import copy
import json
import sys
import tempfile

SPEC = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=1376, vocab_size=128256, max_position_embeddings=8192)
PROMPT, COMPLETION, PAIRS = 128, 128, 1


def _tokenizer():
    """An offline word-level tokenizer (DPOTrainer needs a processing class; nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, 1000)}}
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


def measure(mode: str) -> dict:
    import uuid

    import datasets.fingerprint
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    # datasets hashes each table with dill to name its cache files; on some pyarrow builds that pickling
    # fails (MonthDayNano). A random fingerprint is what datasets itself falls back to for unhashable
    # transforms; it changes no tensor of the step.
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: uuid.uuid4().hex)
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
    from pytest_llmmem.config import adhoc_run
    from pytest_llmmem.estimate import estimate

    keys = {"family": "llama", "hidden-size": 512, "num-layers": 4, "num-heads": 8, "num-kv-heads": 2,
            "intermediate-size": 1376, "vocab-size": 128256, "max-position-embeddings": 8192, "dtype": "bf16",
            "precision": "pure", "recipe": "dpo", "batch-size": PAIRS, "max-length": PROMPT + COMPLETION,
            "max-prompt-length": PROMPT, "mode": "train" if mode == "full" else "lora"}
    if mode == "lora":
        keys.update({"lora-rank": 16, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    est = estimate(adhoc_run(keys))
    b, d = est.breakdown, est.details
    return {"weights": b["weights"], "reference_model": b["reference_model"], "gradients": b["gradients"],
            "saved_bytes": b["activations"] + d["logits.fused_head_input"] + d["logits.per_token"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("full", "lora", "both"), default="both")
    args = parser.parse_args(argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        print("measure_rl.py needs TRL 1.16 (not a dependency of pytest-llmmem); see the module docstring.", file=sys.stderr)
        return 2
    for mode in (("full", "lora") if args.mode == "both" else (args.mode,)):
        got, est = measure(mode), estimated(mode)
        error = {k: (round(est[k] / got[k] - 1, 4) if got[k] else (0.0 if est[k] == 0 else None)) for k in est}
        print(json.dumps({"mode": mode, "trl": trl.__version__, "measured": got, "estimated": est, "relative_error": error}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
