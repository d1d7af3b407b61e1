"""The allocator term (records.cuda_context_bytes, FRAGMENTATION; compose.training_overhead): the CUDA context by
torch release, and reserved / allocated reported beside the total."""

import json

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.core.compose import training_overhead
from pytest_llmmem.core.records import (CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, FRAGMENTATION, SLACK_CHECKPOINTED,
                                        SLACK_OPTIMIZER_STEP, SLACK_UNCHECKPOINTED, TORCH1_CONTEXT_BYTES)
from pytest_llmmem.core.terms.backward import pool_share
from pytest_llmmem.core.terms.step import step_terms
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


def test_the_step_prices_its_pool_by_what_the_next_step_does_with_its_blocks():
    # SMALL, 4 x 1024 tokens without checkpointing: the backward peaks at its loss instant, every saved activation
    # beside the loss's fp32 log-softmax and two fp32 backward buffers, 4,096 x 32,000 x 12 B = 1,572,864,000 B;
    # asked for at the same sizes every step, they keep 5 % beside them (SLACK_UNCHECKPOINTED), not 30 %
    est = estimate(adhoc_run(SMALL))
    b = est.breakdown
    assert est.peak_phase == "backward" and b["logits"] == 4096 * 32_000 * 12
    assert est.details["overhead.fragmentation"] == round(SLACK_UNCHECKPOINTED * (b["activations"] + b["logits"]))
    # checkpointed, the freed loss blocks are carved by the recomputed layers and the gradients: 30 %
    checkpointed, plain = adhoc_run({**SMALL, "gradient-checkpointing": True}), adhoc_run(SMALL)
    assert pool_share(checkpointed, step_terms(checkpointed)) == SLACK_CHECKPOINTED == 0.30
    assert pool_share(plain, step_terms(plain)) == SLACK_UNCHECKPOINTED == 0.05
    # declared on torch 1.x, the V100 rows' 30 % (they are 18-23 % under nvidia-smi with 5 %)
    old = adhoc_run({**SMALL, "torch-version": "1.13.1"})
    assert pool_share(old, step_terms(old)) == FRAGMENTATION == 0.30


def test_the_optimizer_steps_temporaries_keep_15_percent_on_one_gpu_and_none_sharded():
    # SMALL checkpointed in pure bf16 with foreach AdamW: the step's one temporary list is the 1,204,881,408 B of
    # bf16 parameters (2 B each); its peak is the optimizer step, with 15 % of them beside it. Sharded over two GPUs
    # with FSDP the temporaries halve and no share is counted (nothing measured a sharded step's pool).
    keys = {**SMALL, "gradient-checkpointing": True, "optimizer-impl": "foreach", "precision": "pure", "dtype": "bf16"}
    one, sharded = estimate(adhoc_run(keys)), estimate(adhoc_run({**keys, "fsdp": "full-shard", "gpus": 2}))
    assert one.peak_phase == sharded.peak_phase == "optimizer step"
    assert 2 * sharded.details["optimizer_step.temporaries"] == one.details["optimizer_step.temporaries"] == 2 * one.params
    assert one.details["overhead.fragmentation"] == round(SLACK_OPTIMIZER_STEP * 2 * one.params) == round(0.15 * 2_409_762_816)
    assert sharded.details["overhead.fragmentation"] == 0


def test_a_fused_linear_cross_entropy_leaves_no_loss_block_to_carve_on_one_gpu():
    # checkpointed with Liger's fused linear cross-entropy: no b x s x V block is made, so the step keeps 5 %; under
    # FSDP, or with Unsloth's activation offload (its profile), the checkpointed 30 % stays
    liger = {**SMALL, "gradient-checkpointing": True, "kernels": ["liger-fused-linear-cross-entropy"]}
    for keys, share in ((liger, SLACK_UNCHECKPOINTED), ({**liger, "fsdp": "full-shard", "gpus": 2}, SLACK_CHECKPOINTED),
                        ({**SMALL, "gradient-checkpointing": True, "framework": "unsloth", "mode": "lora"}, SLACK_CHECKPOINTED)):
        run = adhoc_run(keys)
        assert pool_share(run, step_terms(run)) == share, keys


# fms-acceleration's one-GPU Mistral-7B QLoRA (a100_80gb_liger.csv, benchmarks/data/published-fms-acceleration.jsonl):
# the foak row at batch 32 ran on its A100-80GB with 69.26 GiB allocated, 76.38 GiB in nvidia-smi
QLORA_B32 = {"model": "mistralai/Mistral-7B-v0.1", "framework": "transformers", "framework-version": "4.45.2", "batch-size": 32,
             "seq-len": 4096, "gradient-checkpointing": True, "flash-attention": True, "optimizer-impl": "foreach",
             "mode": "qlora", "dtype": "nf4", "double-quant": True, "compute-dtype": "bf16", "kbit-prepare": False,
             "lora-rank": 16, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "lora-dropout": 0.1,
             "adapter-dtype": "fp32", "gpu": "A100-80GB"}


def _card_line(keys):
    from pytest_llmmem.report.text import render_run

    est = estimate(adhoc_run(keys))
    return est, [line for line in render_run(est, width=400).splitlines() if "near the card" in line]


def test_a_pool_over_the_cuda_total_says_the_run_needs_the_allocator_to_flush():
    """The A100-80GB's CUDA total is 79.15 GiB (vLLM's log), under its 80 GiB budget. Between the two (Liger's fused
    loss: 79.90 GiB) the run fits only by flushing; over the budget with the slack-free figure under 79.15 GiB (the foak
    row's b x s x V loss: 97.79 GiB) it is over, and the line says it may still start; far over or well under, no line."""
    cuda = round(79.15 * 2**30)
    for keys, verdict, words in (({**QLORA_B32, "kernels": ["liger-rms-norm", "liger-rope", "liger-fused-linear-cross-entropy"]},
                                  True, "fits only if the caching allocator flushes its cache"),
                                 ({**QLORA_B32, "kernels": ["liger-rms-norm", "liger-rope", "liger-cross-entropy"]},
                                  False, "may still start")):
        est, lines = _card_line(keys)
        assert est.fits is verdict and est.total_bytes > cuda >= est.flushed_bytes
        assert est.flushed_bytes == est.total_bytes - est.details["overhead.fragmentation"]
        assert len(lines) == 1 and words in lines[0] and "79.15 GiB" in lines[0]
    assert not _card_line({**QLORA_B32, "batch-size": 4})[1]  # 16.40 GiB: nowhere near
    assert not _card_line({**QLORA_B32, "batch-size": 64})[1]  # the allocated peak alone is over the card
