"""Conformance of each adapter method and option with what PEFT really builds and keeps (issue 26).

Each ``tests/data/adapters/<name>.json`` names the family case it builds on (tests/data/families), the
``peft.LoraConfig`` arguments, the run keys that say the same, and per scenario the trainable parameters
``peft.get_peft_model`` built and one CPU step's terms (``benchmarks/measure_adapters.py`` records them).
The estimate must match: trainable parameters exactly, every term within 1 %. Saved activations are
compared as CUDA keeps them: the CPU's dropout keeps a scaled noise tensor in the input's dtype where
CUDA's native_dropout keeps a one-byte bool mask, so the recorded noise bytes count one byte per element.
Storages saved by a graph the forward itself dropped (``freed_in_forward``: DoRA's weight norm) are transient and
not counted as saved; buffers a method adds (``adapter_buffers``: VeRA's projections) are weights.
"""

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate

from .test_conformance import DATA as FAMILIES, cut_config, estimated_terms

DATA = Path(__file__).parent / "data" / "adapters"
CASES = sorted(DATA.glob("*.json"))


def _rows():
    for path in CASES:
        for index, row in enumerate(json.loads(path.read_text(encoding="utf-8"))["scenarios"]):
            yield pytest.param(path.stem, index, id=f"{path.stem}-{row['dtype']}")


def _estimate(case: Dict[str, Any], row: Dict[str, Any], tmp_path: Path):
    family = json.loads((FAMILIES / f"{case['family_case']}.json").read_text(encoding="utf-8"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cut_config(family)), encoding="utf-8")
    values = {"config": str(path), "mode": case["method"], "dtype": row["dtype"], "batch-size": row["batch"],
              "seq-len": row["seq"], "flash-attention": family.get("attn", "sdpa") == "sdpa", "optimizer": "adamw"}
    values.update(case["run_keys"])
    return estimate(adhoc_run(values))


@pytest.mark.parametrize("stem,index", list(_rows()))
def test_each_term_matches_the_measured_adapter_step(stem, index, tmp_path):
    case = json.loads((DATA / f"{stem}.json").read_text(encoding="utf-8"))
    row = case["scenarios"][index]
    est = _estimate(case, row, tmp_path)
    assert est.trainable_params == row["trainable"]  # peft.get_peft_model on the cut model
    measured = dict(row["terms"])
    measured["weights"] += measured.pop("adapter_weights")  # the estimate's weights hold the adapters
    measured["weights"] += measured.pop("adapter_buffers", 0)  # and the frozen tensors a method adds (VeRA's projections)
    noise = row["cpu_dropout_noise"]
    measured["saved_activations"] += noise["elements"] - noise["bytes"]  # CUDA: a 1-byte mask per element
    # saved by a graph the forward itself dropped (DoRA's weight norm): transient, not kept for backward
    measured["saved_activations"] -= row.get("freed_in_forward", {}).get("bytes", 0)
    estimated = estimated_terms(est, "lora")
    errors = {term: f"estimated {estimated[term]:,} vs measured {value:,} ({(estimated[term] - value) / value:+.2%})"
              for term, value in measured.items() if abs(estimated[term] - value) > 0.01 * value}
    assert not errors, f"{stem} {row['dtype']}: {errors}"


def test_dropout_adds_its_output_and_mask_per_adapted_module(tmp_path):
    """By hand, llama cut to 2 layers (h 4096, ffn 14336), bf16, fp32 adapters, 2 x 64 tokens, r8 on all seven:
    without dropout each module keeps its fp32 input cast; with it the dropout output instead (same bytes) and
    a 1-byte mask where the input needs a gradient: every module but layer 0's q/k/v, 6 x 4096 + 2 x 14336 +
    3 x 4096 = 65,536 elements per token, 128 tokens -> 8,388,608 bytes (the recorded noise elements)."""
    case = json.loads((DATA / "lora-dropout.json").read_text(encoding="utf-8"))
    row = case["scenarios"][0]
    with_dropout = estimated_terms(_estimate(case, row, tmp_path), "lora")["saved_activations"]
    case["run_keys"] = dict(case["run_keys"], **{"lora-dropout": 0.0})
    without = estimated_terms(_estimate(case, row, tmp_path), "lora")["saved_activations"]
    assert with_dropout - without == 128 * (6 * 4096 + 2 * 14336 + 3 * 4096) == row["cpu_dropout_noise"]["elements"]
