"""The published-row files (benchmarks/data/published-*.jsonl) and how benchmarks/published_rows.py compares them.

Each row is one published run declared with llmmem keys; these tests hold the files to the format the
scorer's docstring gives and check its comparison rules on hand-made figures, not its aggregate
(which moves whenever another term of the estimate changes).
"""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "benchmarks" / "data").glob("published-*.jsonl"))
EVIDENCE = ("measured", "estimate", "verdict-only")


def _scorer():
    spec = importlib.util.spec_from_file_location("published_rows", ROOT / "benchmarks" / "published_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows():
    return [(path.name, json.loads(line)) for path in FILES for line in path.read_text().splitlines() if line.strip()]


def test_every_row_has_its_source_settings_and_figure():
    rows = _rows()
    assert len(FILES) >= 6 and len(rows) >= 70
    ids = [row["id"] for _, row in rows]
    assert len(ids) == len(set(ids)), "row ids are unique across the files"
    for name, row in rows:
        where = f"{name} {row['id']}"
        assert ("github.com" in row["source"] or "commit" in row["source"]), f"{where}: source names a URL or a commit"
        assert isinstance(row["model"], dict) and row["model"], where
        assert isinstance(row["keys"], dict) and row["keys"], where
        assert "gpu" in row or "gpu-memory" in row["keys"], f"{where}: a GPU or a card size"
        assert isinstance(row["ran"], bool), where
        assert row["published_gib"] > 0, where
        assert row["metric"], where
        assert row.get("evidence", "measured") in EVIDENCE, where
        if row.get("evidence") == "estimate":
            assert row.get("why_estimate"), f"{where}: an estimate row says why it is one"


def test_every_row_is_declarable_and_scores():
    # A row the tool cannot declare would come back as a config error: every row here is declarable.
    scorer = _scorer()
    for name, row in _rows():
        result = scorer.score(row)
        assert "config_error" not in result, f"{name} {row['id']}: {result.get('config_error')}"
        assert result["compared_gib"] > 0
        assert result["verdict_right"] in (True, False)


def test_what_each_metric_compares():
    # A 10-byte estimate with a 1-byte CUDA context and a 2-byte fragmentation item:
    # reserved memory has no context (10 - 1), allocated/active memory no allocator slack either (10 - 1 - 2),
    # nvidia-smi and a card's size hold the whole process (10).
    scorer = _scorer()
    details = {"overhead.cuda_context": 1, "overhead.fragmentation": 2}
    assert scorer.compared_bytes(details, 10, "torch.cuda.max_memory_reserved (no CUDA context)") == 9
    assert scorer.compared_bytes(details, 10, "torch.cuda.max_memory_allocated") == 7
    assert scorer.compared_bytes(details, 10, "torchtune peak_memory_active") == 7
    assert scorer.compared_bytes(details, 10, "nvidia-smi") == 10
    assert scorer.compared_bytes(details, 10, "the card's size: the longest context that fits it") == 10


def test_an_allocated_figure_is_the_largest_phase_allocated():
    # max_memory_allocated is a high-water mark over the step, so it is the largest phase's allocated bytes,
    # which need not be the phase with the largest total. Backward: total 10 with 4 of overhead (context 1,
    # slack 3) = 6 allocated; the optimizer step: total 9 with 1 of overhead (its context) = 8 allocated.
    # The total peaks at backward (whose context and slack the details carry): 10 - 1 - 3 = 6 by the peak
    # phase alone, 8 by the step; with a 0.5 cuBLAS workspace (held in the allocator, counted allocated) 8.5.
    # A reserved figure still follows the peak phase: 10 - 1 = 9.
    scorer = _scorer()

    class Phase:
        def __init__(self, total, overhead):
            self.total, self.breakdown = total, {"overhead": overhead, "activations": total - overhead}

    phases = (Phase(10, 4), Phase(9, 1))
    details = {"overhead.cuda_context": 1, "overhead.fragmentation": 3}
    assert scorer.compared_bytes(details, 10, "torch.cuda.max_memory_allocated", phases) == 8
    assert scorer.compared_bytes({**details, "overhead.cublas_workspace": 0.5}, 10, "max_memory_allocated", phases) == 8.5
    assert scorer.compared_bytes(details, 10, "torch.cuda.max_memory_reserved", phases) == 9


def test_a_second_figure_is_scored_by_its_own_metric():
    # fms-acceleration publishes max_memory_allocated and nvidia-smi for the same run: the row's "also"
    # figure is compared by its own metric (nvidia-smi: the whole estimate), the main one without the
    # context and slack, and the second does not replace the first.
    scorer = _scorer()
    row = {"id": "two-figures", "model": {"id": "Qwen/Qwen3-0.6B"},
           "keys": {"mode": "train", "batch-size": 1, "seq-len": 512}, "gpu": "H100-80GB", "ran": True,
           "published_gib": 5.0, "metric": "max_memory_allocated",
           "also": {"published_gib": 10.0, "metric": "nvidia-smi memory.used"}}
    result = scorer.score(row)
    assert result["also"]["published_gib"] == 10.0
    assert result["also"]["compared_gib"] == result["estimate_gib"]
    assert result["compared_gib"] < result["estimate_gib"]
    assert "also" not in scorer.score({k: v for k, v in row.items() if k != "also"})


@pytest.mark.parametrize("extra, counted, peak", [
    ({}, True, True),
    ({"evidence": "estimate"}, False, True),
    ({"contradictory": "the figure is below the weights"}, False, True),
    ({"evidence": "verdict-only"}, True, False),
    ({"ran": False}, True, False),
])
def test_which_rows_count_toward_the_targets(extra, counted, peak):
    scorer = _scorer()
    row = {"ran": True, **extra}
    assert scorer.counts(row) is counted
    assert scorer.has_peak(row) is peak


def test_summary_takes_peaks_only_from_rows_that_ran_with_a_figure():
    # Two peaks (+5 %, -20 %) and an OOM row whose -50 % is a lower bound: the median of |error| over the
    # two peaks is 12.5 %, the worst under -20 %; the OOM row counts only for its verdict (2 of 3 right).
    scorer = _scorer()
    results = [{"error": 0.05, "peak": True, "verdict_right": True},
               {"error": -0.20, "peak": True, "verdict_right": True},
               {"error": -0.50, "peak": False, "verdict_right": False}]
    line = scorer.summary("rows", results)
    assert "median |error| 12.5%" in line
    assert "worst under -20.0%" in line
    assert "verdicts right 2/3" in line
