"""The detailed estimate held to the trace on a fixed slice of benchmarks/trace_sweep.py (issue 22).

30 runs over 16 families: full training on 15 (checkpointing on every other family), LoRA on five, a prefill on
ten, all bf16 with AdamW, batch 2 x seq 64. Each phase's ratio detailed / trace (the overhead term left
out of both: it is the analytic one in both) must stay within the sweep's 2 % tolerance, but for the
exceptions listed with the band the full sweep measured and the mechanism not followed yet.
Needs torch, transformers and peft; skipped without them.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("trace_sweep", ROOT / "benchmarks" / "trace_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

TRAIN = ["llama", "qwen3", "qwen3-0.6b", "gemma2", "gemma3_text", "mixtral", "qwen3_moe", "deepseek_v3", "phi3", "falcon-7b",
         "starcoder2", "olmo2", "granite", "cohere", "glm4"]
LORA = ["llama", "qwen3-0.6b", "mixtral", "deepseek_v3", "phi3"]
PREFILL = ["llama", "qwen3", "gemma2", "mixtral", "qwen3_moe", "deepseek_v3", "phi3", "falcon-7b", "smollm3", "glm4"]
ATTN = {"gemma2": "eager"}  # transformers has no SDPA path for Gemma 2's soft-capped attention
SLICE = ([dict(family=f, mode="train", precision="pure", checkpointing=i % 2 == 1) for i, f in enumerate(TRAIN)]
         + [dict(family=f, mode="lora", precision="pure", checkpointing=f == "llama") for f in LORA]
         + [dict(family=f, mode="inference", logits="last", checkpointing=False) for f in PREFILL])
SLICE = [{**s, "attn": ATTN.get(s["family"], "sdpa"), "batch": 2, "seq": 64} for s in SLICE]

# Every phase within the sweep's tolerance (2 %) of the trace, but for these, each with the band the sweep measured
# and the mechanism the analytic core does not follow yet (benchmarks/data/trace-sweep.md).
EXCEPTIONS = {
    # transformers' MoE forward gathers top-k copies of every token before the experts run; the prefill's
    # transient counts one layer's MLP, not the gathered copies: 0.9772 - 0.9806 over the sweep's 8 qwen3_moe prefills
    ("prefill", "qwen3_moe"): (0.972, 0.986),
}


def _band(s, phase):
    return EXCEPTIONS.get((phase, s["family"]), (1 - sweep.TOLERANCE, 1 + sweep.TOLERANCE))


@pytest.mark.parametrize("scenario", SLICE, ids=lambda s: f"{s['family']}-{s['mode']}" + ("-ckpt" if s["checkpointing"] else ""))
def test_detailed_stays_in_the_band_the_sweep_measured(scenario):
    row = sweep.measure_one(scenario)
    assert "error" not in row, row.get("error")
    assert row["phases"], row
    for phase, parts in row["phases"].items():
        low, high = _band(scenario, phase)
        ratio = sweep.ratio(parts)
        assert low <= ratio <= high, (phase, round(ratio, 4), parts)


def test_slice_is_thirty_runs_over_sixteen_families():
    assert len(SLICE) == 30 and len({s["family"] for s in SLICE}) == 16
