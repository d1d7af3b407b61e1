"""Score whole-run peaks phase by phase (issue 16): shared/validation/measured2.jsonl.

A ``max_memory_allocated`` read at the end of a script is the peak of the WHOLE run: loading,
evaluation and generation included. For each such row this prints every phase the estimate
prices, the phase it says sets the peak, and the error of that peak against the reading.

    python benchmarks/phase_accuracy.py [--validation ../shared/validation]
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_llmmem.config.load import adhoc_run  # noqa: E402
from validation_data import missing  # noqa: E402  (benchmarks/, on sys.path as the script's folder)
from pytest_llmmem.estimator import estimate  # noqa: E402

UNITS = {"GB": 1e9, "MiB": 2**20, "bytes": 1}
# Published configs (shared/validation/archs.jsonl).
LLAMA2_7B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 32,
             "intermediate-size": 11008, "vocab-size": 32000}
MISTRAL_7B_V02 = {"family": "mistral", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 8,
                  "intermediate-size": 14336, "vocab-size": 32000}
MODELS = {"meta-llama/Llama-2-7b-hf": LLAMA2_7B, "unsloth/Mistral-7B-v0.2": MISTRAL_7B_V02}


def _keys(row: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The run keys for a whole-run reading, or None and why it is not scored phase by phase."""
    arch = MODELS.get(row["model"])
    if row["framework"] == "litgpt" and arch is not None:
        # config_hub/finetune/*/(q)lora.yaml: micro batch 2, seq cap 512, r 32 on q and v, bf16-true
        # (adapters bf16), bnb.nf4 for qlora; litgpt's profile prices load (bf16 first), validate and generate_example.
        return {**arch, "mode": row["mode"], "framework": "litgpt", "batch-size": row["batch_size"], "seq-len": row["seq_len"],
                "lora-rank": row["lora_r"], "lora-targets": ["q_proj", "v_proj"],
                # litgpt's pin at the table's commit (5895df10): pyproject.toml "bitsandbytes==0.42.0"
                **({"bitsandbytes-version": "0.42.0"} if row["mode"] == "qlora" else {})}, "seq-len 512 is a cap (Alpaca2k mostly shorter)"
    if row["framework"] == "peft":
        # PEFT method_comparison evaluates by generation only (batch 50, up to 300 new tokens) on prompts of
        # unpublished length; the eval phase here also prices a loss forward over the whole eval batch, so
        # scoring it would measure that mismatch, not the phase. Not scored until a generation-only eval key exists.
        return None, "generation-only eval with unpublished prompt lengths"
    return None, f"{row['framework']} run without evaluation or saving to score"


def score(validation: Path) -> List[Tuple[str, str, Dict[str, float], float, float, str]]:
    """(id, estimated peak phase, phase -> GiB as the reading sees it, estimate GiB, measured GiB, note)."""
    out = []
    for line in (validation / "measured2.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["mode"] == "inference":
            continue
        keys, why = _keys(row)
        if keys is None:
            continue
        est = estimate(adhoc_run(keys))
        # max_memory_allocated / reserved see tensors only: the CUDA context and cuBLAS workspace are out.
        context = est.details.get("overhead.cuda_context", 0) + est.details.get("overhead.cublas_workspace", 0)
        kind = row["measured_kind"]
        phases = {}
        for part in est.phase_parts:
            # allocated: tensors only (as accuracy._comparable); reserved: the pool keeps the fragmentation
            drop = part.breakdown.get("overhead", 0) if kind.startswith("max_memory_allocated") else context
            phases[part.name] = (part.total - drop) / 2**30
        truth = row["measured_value"] * UNITS[row["measured_unit"].split()[0]] / 2**30
        out.append((row["id"], est.peak_phase, phases, max(phases.values()), truth, why))
    return out


def render(rows) -> str:
    lines = ["whole-run peaks phase by phase (measured2.jsonl; GiB as the reading sees it)",
             f"{'case':<16} {'peak phase':<15} {'phases':<70} {'est':>7} {'meas':>7} {'error':>7}"]
    for case, peak, phases, est, truth, why in rows:
        text = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        lines.append(f"{case:<16} {peak:<15} {text:<70} {est:7.2f} {truth:7.2f} {100 * (est / truth - 1):+6.1f}%  {why}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", type=Path, default=ROOT.parent / "shared" / "validation")
    args = parser.parse_args()
    if missing(args.validation, ("measured2.jsonl",), "phase_accuracy.py"):
        return 2
    print(render(score(args.validation)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
