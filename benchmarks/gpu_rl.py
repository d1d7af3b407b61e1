"""Measure the peak GPU memory of TRL GRPO and DPO steps, and score the estimate against it (issue 13).

Each scenario runs in its own process: Qwen3-0.6B's published config (pytest_llmmem/models) with
random weights in bf16 on the GPU, TRL 1.16 with its defaults except where the scenario says, two
optimizer steps; the row records ``torch.cuda.max_memory_allocated`` over the second step (steady
state: AdamW's states exist), generation included. TRL is not a dependency of pytest-llmmem: install
it beside the project (see benchmarks/measure_rl.py).

    PYTHONPATH=/tmp/trl-site:. python benchmarks/gpu_rl.py --out rl.jsonl        # needs a GPU
    python benchmarks/gpu_rl.py --score benchmarks/data/gpu-rl-h100.jsonl          # offline
"""

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "pytest_llmmem", "models", "Qwen--Qwen3-0.6B", "config.json")

# GRPO: 8 completions of one 128-token prompt per step (TRL's default max_completion_length 512,
# gradient checkpointing on, beta 0.0: grpo_config.py); DPO: 4 pairs of 512 + 512 tokens, full
# fine-tuning with a reference copy.
SCENARIOS: List[Dict[str, Any]] = [
    {"recipe": "grpo", "batch": 8, "num_generations": 8, "prompt": 128, "completion": 512, "beta": 0.0},
    {"recipe": "grpo", "batch": 8, "num_generations": 8, "prompt": 128, "completion": 512, "beta": 0.04},
    {"recipe": "dpo", "batch": 4, "prompt": 512, "completion": 512, "checkpointing": False},
]


def _tokenizer(size: int):
    """An offline word-level tokenizer over the model's vocabulary (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _stable_fingerprints() -> None:
    """datasets names cache files by hashing with dill, which fails on some pyarrow builds
    (MonthDayNano); a random fingerprint, datasets' own fallback, changes no tensor of the step."""
    import uuid

    import datasets.fingerprint

    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: uuid.uuid4().hex)


def measure(sc: Dict[str, Any], device: str) -> Dict[str, Any]:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

    cuda = device == "cuda"
    _stable_fingerprints()
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**json.load(open(CONFIG)))
    checkpoint = tempfile.mkdtemp(prefix="gpu-rl-")
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(checkpoint)  # TRL loads refs from a path
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, attn_implementation="sdpa")
    vocab = cfg.vocab_size
    peaks: Dict[int, int] = {}

    class Peak(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                peaks[state.global_step] = torch.cuda.max_memory_allocated()

    common = dict(bf16=True, report_to=[], save_strategy="no", logging_steps=1, max_steps=2, seed=0,
                  use_cpu=not cuda, per_device_train_batch_size=sc["batch"])
    words = lambda n, k: " ".join(f"t{(k * 7919 + j * 13) % (vocab - 2) + 2}" for j in range(n))
    with tempfile.TemporaryDirectory() as out:
        if sc["recipe"] == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            args = GRPOConfig(output_dir=out, num_generations=sc["num_generations"], max_completion_length=sc["completion"],
                              beta=sc["beta"], use_vllm=False, **common)
            data = Dataset.from_dict({"prompt": [words(sc["prompt"], k) for k in range(4)]})
            trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
                                  args=args, processing_class=_tokenizer(vocab), train_dataset=data, callbacks=[Peak()])
        else:
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(output_dir=out, max_length=sc["prompt"] + sc["completion"],
                             gradient_checkpointing=sc.get("checkpointing", False), **common)
            data = Dataset.from_dict({"prompt": [words(sc["prompt"], k) for k in range(16)],
                                      "chosen": [words(sc["completion"], k + 100) for k in range(16)],
                                      "rejected": [words(sc["completion"], k + 200) for k in range(16)]})
            trainer = DPOTrainer(model=model, args=args, processing_class=_tokenizer(vocab), train_dataset=data,
                                 callbacks=[Peak()])
        trainer.train()
        info = {"optim": args.optim, "gradient_checkpointing": args.gradient_checkpointing,
                "reference_model": getattr(trainer, "ref_model", None) is not None,
                "steps_per_generation": getattr(args, "steps_per_generation", None)}
    info.update({"params": sum(p.numel() for p in model.parameters()), "peak_by_step": peaks,
                 "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__})
    if cuda:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def estimate_row(row: Dict[str, Any]):
    sys.path.insert(0, ROOT)
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    sc = row["scenario"]
    keys = {"config": CONFIG, "mode": "train", "dtype": "bf16", "precision": "pure", "gpu": "H100-80GB",
            "optimizer-impl": "fused" if "fused" in row["optim"] else "foreach",
            "gradient-checkpointing": bool(row["gradient_checkpointing"]), "recipe": sc["recipe"], "batch-size": sc["batch"]}
    if sc["recipe"] == "grpo":
        keys.update({"num-generations": sc["num_generations"], "max-prompt-length": sc["prompt"],
                     "max-completion-length": sc["completion"], "beta": sc["beta"]})
    else:
        keys.update({"max-length": sc["prompt"] + sc["completion"], "max-prompt-length": sc["prompt"]})
    return estimate(adhoc_run(keys))


def score(path: str) -> int:
    for line in open(path):
        row = json.loads(line)
        sc = row["scenario"]
        if "peak_by_step" not in row:
            print(f"{sc}: not measured ({row.get('error', '?')[:200]})")
            continue
        est = estimate_row(row)
        fragmentation = est.details.get("overhead.fragmentation", 0)
        context = est.breakdown["overhead"] - fragmentation
        phases = dict(est.phases) or {"peak": est.total_bytes}
        allocated = max(total - context - (fragmentation if name != "optimizer step" else 0) for name, total in phases.items())
        measured = row["peak_by_step"]["2"]
        print(f"{sc['recipe']} {json.dumps({k: v for k, v in sc.items() if k != 'recipe'})}: estimate {allocated / 2**30:.2f} GiB, "
              f"measured {measured / 2**30:.2f} GiB ({100 * (allocated / measured - 1):+.1f} %)")
    return 0


def main() -> int:
    if "--score" in sys.argv[1:2]:
        return score(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=int, default=240)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sc = json.loads(args.child)
        start = time.time()
        try:
            result = measure(sc, args.device)
        except Exception as err:  # an OOM is a result; anything else is reported as such
            result = {"error": f"{type(err).__name__}: {str(err)[:400]}", "oom": "out of memory" in str(err).lower()}
        result.update(scenario=sc, seconds=round(time.time() - start, 1))
        print("RESULT " + json.dumps(result))
        return 0
    from child_run import run_child  # benchmarks/ is the script's directory, first on sys.path

    with open(args.out, "w") as sink:
        for sc in SCENARIOS:
            cmd = [sys.executable, __file__, "--out", args.out, "--device", args.device, "--child", json.dumps(sc)]
            result = run_child(cmd, sc, args.timeout)
            sink.write(json.dumps(result, sort_keys=True) + "\n")
            sink.flush()
            print(sc, result.get("peak_by_step") or result.get("error", "")[-300:], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
