"""Measure the peak GPU memory of transformers ``generate()``: prompt + new tokens, last-position logits.

    python benchmarks/gpu_generate.py --out generate.jsonl [--device cuda]

The model is built from a published ``config.json`` (taken from benchmarks/data/gpu-peaks-h100.jsonl)
with random bf16 weights straight on the GPU; ``generate()`` runs greedy with min_new_tokens =
max_new_tokens so every new token is produced. The peak is ``torch.cuda.max_memory_allocated`` over
the whole call (reset after loading), so it covers the prefill (KV of the prompt, the prefill's
transients, the last position's logits and their fp32 copy) and the decode steps (KV growing to
prompt + new tokens). One JSON line per scenario, with versions.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS: List[Dict[str, Any]] = [
    {"name": "Llama-3.1-8B", "batch": 1, "prompt": 8192, "new": 256},
    {"name": "Llama-3.1-8B", "batch": 4, "prompt": 2048, "new": 512},
    {"name": "Qwen3-8B", "batch": 2, "prompt": 4096, "new": 256},
]


def measure(cfg: Dict[str, Any], scenario: Dict[str, Any], device: str) -> Dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    b, prompt, new = scenario["batch"], scenario["prompt"], scenario["new"]
    ids = torch.randint(0, cfg["vocab_size"], (b, prompt), device=device)
    torch.cuda.synchronize()
    after_load = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    torch.cuda.synchronize()
    return {
        "scenario": scenario, "config": cfg, "after_load_allocated": after_load,
        "max_allocated": torch.cuda.max_memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved(),
        "generated": int(out.shape[1] - prompt), "seconds": round(time.time() - start, 1),
        "gpu": torch.cuda.get_device_name(), "total_bytes": torch.cuda.mem_get_info()[1],
        "torch": torch.__version__, "transformers": transformers.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    configs = {}
    for line in (ROOT / "benchmarks" / "data" / "gpu-peaks-h100.jsonl").read_text().splitlines():
        row = json.loads(line)
        configs.setdefault(row["scenario"]["name"], row["config"])
    import gc

    import torch

    with open(args.out, "w") as handle:
        for scenario in SCENARIOS:
            try:
                result = measure(configs[scenario["name"]], scenario, args.device)
            except Exception as err:  # an OOM or a version mismatch is reported, not hidden
                result = {"scenario": scenario, "error": f"{type(err).__name__}: {err}"[:400]}
            print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)
            handle.write(json.dumps(result) + "\n")
            gc.collect()
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
