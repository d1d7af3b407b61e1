"""The allocator term (records.cuda_context_bytes, FRAGMENTATION; compose.training_overhead): the CUDA context by
torch release, and reserved / allocated reported beside the total."""

import json

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.core.compose import training_overhead
from pytest_llmmem.core.records import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, FRAGMENTATION, TORCH1_CONTEXT_BYTES
from pytest_llmmem.estimator import estimate
from pytest_llmmem.report.text import as_dict
from pytest_llmmem.units import MiB

SMALL = {"hidden-size": 2048, "num-layers": 16, "num-heads": 16, "intermediate-size": 8192, "vocab-size": 32000,
         "mode": "train", "batch-size": 4, "seq-len": 1024, "gpu": "H100-80GB"}


def test_the_context_is_the_lazy_loading_figure_and_reads_no_card():
    current, declared = training_overhead(None), training_overhead(None, (2, 4))
    assert current.fixed == declared.fixed == 768 * MiB + CUBLAS_WORKSPACE_BYTES == CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES
    assert current.fragmentation == FRAGMENTATION
    # the same run on two cards: the same estimate (fit.search.smallest_gpu judges one estimate against every card)
    h100, h200 = estimate(adhoc_run(SMALL)), estimate(adhoc_run({**SMALL, "gpu": "H200-141GB"}))
    assert h100.total_bytes == h200.total_bytes


def test_torch_1_keeps_the_eager_loading_context():
    assert training_overhead(None, (1, 12)).fixed == TORCH1_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES
    # declared on a serving run too: 7e9 x 2 B + (1343 + 32) MiB = 15,441,792,000 B; current torch: + 800 MiB
    old = estimate(adhoc_run({"params": "7B", "mode": "inference", "torch-version": "1.13.1"}))
    new = estimate(adhoc_run({"params": "7B", "mode": "inference"}))
    assert old.total_bytes == 14_000_000_000 + (1343 + 32) * MiB == 15_441_792_000
    assert new.total_bytes == 14_000_000_000 + 800 * MiB == 14_838_860_800


def test_reserved_and_allocated_are_reported_apart():
    est = estimate(adhoc_run(SMALL))
    d = est.details
    # reserved (max_memory_reserved) = the total less the context; allocated (max_memory_allocated) less the
    # workspace and the pool's slack too; the verdict compares the total (nvidia-smi's view) with the budget
    assert est.reserved_bytes == est.total_bytes - d["overhead.cuda_context"]
    assert est.allocated_bytes == est.reserved_bytes - d["overhead.cublas_workspace"] - d["overhead.fragmentation"]
    report = json.loads(json.dumps(as_dict(est)))
    assert (report["total_bytes"], report["reserved_bytes"], report["allocated_bytes"]) == (
        est.total_bytes, est.reserved_bytes, est.allocated_bytes)
