"""transformers 4.46-4.48's ForCausalLMLoss on a shifted fp32 copy of the logits (framework-version under the
transformers profile): the forward's last instant holds the copies beside every saved activation.

At 4.48.1, loss/loss_utils.py:36-39 computes on logits.float()[..., :-1, :].contiguous(), so at its cross_entropy
the 16-bit logits (2 B a logit element), the fp32 upcast (4) and the fp32 shifted copy (4) are alive with what the
loss keeps: the fp32 log-softmax (4), or for an in-place kernel (Liger cross_entropy, fms-acceleration's fast_loss)
the shifted copy itself. 4.49.0 pads the labels instead and makes no copy.
"""

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate

# Mistral-7B-v0.1 QLoRA, one 1,024-token row, checkpointed: 1,024 x 32,000 = 32,768,000 logit elements.
RUN = {"name": "shifted", "id": "mistralai/Mistral-7B-v0.1", "mode": "qlora", "dtype": "nf4", "lora-rank": 16,
       "batch-size": 1, "seq-len": 1024, "gradient-checkpointing": True}
ELEMS = 1024 * 32_000


def _allocated_peak(extra):
    est = estimate(adhoc_run({**RUN, **extra}))
    return est, max(p.total - p.breakdown.get("overhead", 0) for p in est.phase_parts)


@pytest.mark.parametrize("kernels, copies, over", [
    # upcast: copies 4 + 4 B; the forward's end holds 2 + 4 + 4 + 4 = 14 B against the backward start's
    # log-softmax and two fp32 gradients, 12 B: 2 B a logit element more
    ([], 8 * ELEMS, 2 * ELEMS),
    # in place: the upcast dies (4 B), the shifted copy is the kernel's kept buffer; the forward's end holds
    # 2 + 4 + 4 = 10 B against the backward start's kept fp32 buffer and its 16-bit cast, 6 B: 4 B more
    (["liger-cross-entropy"], 4 * ELEMS, 4 * ELEMS),
])
def test_the_forward_end_holds_the_shifted_copy(kernels, copies, over):
    extra = {"kernels": kernels} if kernels else {}
    est, shifted = _allocated_peak({**extra, "framework-version": "4.48.1"})
    assert est.details["logits.loss_forward_copies"] == copies
    _, current = _allocated_peak(extra)
    assert shifted - current == over


def test_later_releases_make_no_copy():
    _, current = _allocated_peak({})
    for version in ("4.49.0", "5.24.0"):
        est, peak = _allocated_peak({"framework-version": version})
        assert "logits.loss_forward_copies" not in est.details and peak == current, version


@pytest.mark.parametrize("kernels, over", [
    # before 4.46 the model returns fp32 logits (4.45.2 modeling_llama.py:1214 lm_head(...).float()) and the loss
    # shifts a copy: at the loss 4 + 4 + 4 = 12 B upcast, the backward start's 12 too: no change;
    ([], 0),
    # in place the fp32 logits (4) and the kernel's shifted copy (4) are alive, 8 B against a current release's 6:
    # 2 B a logit element more
    (["liger-cross-entropy"], 2 * ELEMS),
])
def test_before_4_46_the_model_returns_fp32_logits(kernels, over):
    extra = {"kernels": kernels} if kernels else {}
    est, old = _allocated_peak({**extra, "framework-version": "4.45.2"})
    _, current = _allocated_peak(extra)
    assert est.run.knobs.returns_fp32_logits
    assert old - current == over


def test_4_45_has_no_per_layer_rotary_caveat():
    # fsdp-qlora's transformers 4.40 keeps cos/sin caches in every attention layer (an approximate caveat); 4.45.2's
    # rotary embeddings register only inv_freq (models/llama/modeling_llama.py:178), so a 4.45 run carries no such caveat
    est, _ = _allocated_peak({"framework-version": "4.45.2"})
    assert est.run.knobs.returns_fp32_logits
    assert not any("cos/sin caches" in reason for reason in est.approximate)
