"""method = "trace": the real step on fake tensors, checked against figures computed by hand.

Needs torch and transformers (the measure extra); skipped cleanly without them.
"""

import pytest

from pytest_llmmem.config.load import adhoc_run

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# Every tensor of this shape is a multiple of the allocator's 512-byte block, so no rounding enters the sums.
TINY = {"family": "llama", "hidden-size": 256, "num-layers": 2, "num-heads": 4, "num-kv-heads": 4,
        "intermediate-size": 512, "vocab-size": 1024, "tie-embeddings": False, "gpu-memory": "80 GiB"}
# embed + head 2 x 1024 x 256; a layer: q k v o 4 x 256^2, gate up down 3 x 256 x 512, 2 norms of 256; the final norm
TINY_PARAMS = 2 * 1024 * 256 + 2 * (4 * 256 ** 2 + 3 * 256 * 512 + 2 * 256) + 256
TINY_TENSORS = 2 + 2 * 9 + 1
ROTARY_BUFFERS = 2 * 512  # LlamaRotaryEmbedding's inv_freq and original_inv_freq: 32 fp32 each, a 512-byte block each


def _phase(est, name):
    return next(p for p in est.phase_parts if p.name == name)


def test_optimizer_step_holds_weights_gradients_and_states_exactly():
    from pytest_llmmem.trace.estimate import traced

    est = traced(adhoc_run({**TINY, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 2, "seq-len": 64}))
    assert TINY_PARAMS == 1_836_288
    step = _phase(est, "optimizer step").breakdown
    assert step["weights"] == 2 * TINY_PARAMS + ROTARY_BUFFERS
    assert step["gradients"] == 2 * TINY_PARAMS
    # fused AdamW: exp_avg and exp_avg_sq in bf16 and a scalar step tensor (one 512-byte block) per parameter
    assert step["optimizer_states"] == 2 * 2 * TINY_PARAMS + TINY_TENSORS * 512
    assert "optimizer_step" not in step  # the fused kernel updates in place: no temporaries
    assert est.method == "trace" and est.peak_phase in ("backward", "optimizer step")


def test_foreach_adamw_allocates_one_state_list_at_the_step():
    from pytest_llmmem.trace.estimate import traced

    run = adhoc_run({**TINY, "mode": "train", "dtype": "bf16", "precision": "pure", "seq-len": 32, "optimizer-impl": "foreach"})
    step = _phase(traced(run), "optimizer step").breakdown
    # torch/optim/adam.py _multi_tensor_adam: torch._foreach_sqrt(exp_avg_sqs) is one bf16 list the size of the
    # parameters, alive at once (the analytic's foreach temporary)
    assert step["optimizer_step"] >= 2 * TINY_PARAMS


def test_flash_attention_saves_the_output_and_an_fp32_logsumexp():
    from pytest_llmmem.trace.attention import cuda_sdpa
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = []
    b, h, s, d = 2, 4, 128, 64
    with FakeTensorMode():
        q, k, v = (torch.empty(b, h, s, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((tuple(t.shape), t.dtype)) or t, lambda t: t):
            cuda_sdpa(torch.nn.Module(), q, k, v, None, scaling=None, is_causal=True)
    assert ((b, h, s), torch.float32) in saved  # 2 x 4 x 128 x 4 B = 4 KiB of log-sum-exp
    assert not any(shape == (b, h, s, s) for shape, _ in saved)  # no probabilities, unlike eager


def test_eager_keeps_the_probabilities_flash_does_not():
    from pytest_llmmem.trace.estimate import traced

    base = {**TINY, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 1, "seq-len": 256}
    flash = _phase(traced(adhoc_run(base)), "backward").breakdown["activations"]
    eager = _phase(traced(adhoc_run({**base, "flash-attention": False})), "backward").breakdown["activations"]
    # eager_attention_forward (modeling_llama.py) keeps softmax's bf16 output per layer: 1 x 4 x 256 x 256 x 2 B = 512 KiB,
    # so two layers hold at least 1 MiB more than flash, which keeps a (1, 4, 256) fp32 log-sum-exp instead
    assert eager - flash >= 2 * 4 * 256 * 256 * 2


def test_checkpointed_trace_runs_flash_without_a_mask_as_a_gpu_does(monkeypatch):
    """Training without a KV cache (checkpointing turns it off, as allocator_replay.py and gpu_peaks.measure do) asks
    transformers whether the positions are packed; on fake tensors it cannot read them and builds a causal mask a GPU
    skips (attention.gpu_mask_decisions). The trace answers as the GPU does: flash with is_causal, no mask."""
    import contextlib

    from pytest_llmmem.trace import attention
    from pytest_llmmem.trace.step import trace_at

    run = adhoc_run({**TINY, "num-kv-heads": 2, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 1,
                     "seq-len": 256, "gradient-checkpointing": True})
    seen = []
    plain_sdpa = attention.cuda_sdpa

    def sdpa_seeing_the_mask(module, query, key, value, mask, *args, **kwargs):
        seen.append(mask)
        return plain_sdpa(module, query, key, value, mask, *args, **kwargs)

    monkeypatch.setattr(attention, "cuda_sdpa", sdpa_seeing_the_mask)
    as_gpu = trace_at(run, run.model, 2).phases["backward"]["activations"]
    assert seen and all(mask is None for mask in seen)
    seen.clear()
    with monkeypatch.context() as undone:
        undone.setattr(attention, "gpu_mask_decisions", contextlib.nullcontext)  # transformers' own choice on fake tensors
        as_fake = trace_at(run, run.model, 2).phases["backward"]["activations"]
    assert seen and all(mask is not None and tuple(mask.shape) == (1, 1, 256, 256) for mask in seen)
    # At the backward peak one layer is recomputed. Given the mask, cuda_sdpa takes the memory-efficient kernel, which saves
    # the additive bf16 mask (1 x 1 x 256 x 256 x 2 B = 131,072) and key and value repeated to the 4 query heads
    # (2 x 1 x 4 x 256 x 64 x 2 B = 262,144) instead of flash's 2 key/value heads (2 x 65,536); checkpointing keeps the
    # bool mask as the layer's input (65,536): 131,072 + 262,144 - 131,072 + 65,536 = 327,680 B the GPU does not hold.
    assert as_fake - as_gpu == 327_680
    from transformers import masking_utils

    assert masking_utils.find_packed_sequence_indices.__name__ == "find_packed_sequence_indices"  # put back after the trace


def test_depth_cut_extrapolates_exactly_for_a_uniform_stack():
    from pytest_llmmem.trace.estimate import extrapolate, trace_depths
    from pytest_llmmem.trace.step import trace_at

    run = adhoc_run({**TINY, "num-layers": 6, "mode": "train", "dtype": "bf16", "precision": "pure", "seq-len": 32})
    assert trace_depths(run.model) == (2, 4)
    cut = extrapolate([trace_at(run, run.model, n).phases for n in (2, 4)], (2, 4), 6)
    whole = trace_at(run, run.model, 6).phases
    for phase in ("backward", "optimizer step"):
        assert cut[phase] == whole[phase], phase  # every layer adds the same tensors


def test_trace_is_reported_like_any_estimate(run_cli, write_pyproject, tmp_path):
    from tests.test_trace_extra import TINY_PYPROJECT

    path = write_pyproject(TINY_PYPROJECT.format(budget="0.5 GiB", method="detailed"))
    code, out, err = run_cli("check", "--method", "trace", path)
    assert code == 1, err  # 0.5 GiB cannot hold the 768 MiB CUDA context the trace adds from the analytic overhead
    assert "method: trace" in out and "traced on fake tensors in" in out and "flash" in out
    assert "peak phase:" in out


def test_what_the_trace_cannot_follow_is_named():
    from pytest_llmmem.errors import ConfigError
    from pytest_llmmem.trace.estimate import traced

    with pytest.raises(ConfigError, match="declares 8 GPUs"):
        traced(adhoc_run({**TINY, "mode": "train", "gpus": 8, "zero-stage": 3}))
    est = traced(adhoc_run({**TINY, "mode": "train", "dtype": "bf16", "seq-len": 32, "loss": "chunked", "framework": "torchtune"}))
    assert any('loss = "chunked"' in reason for reason in est.approximate)


def test_a_gradient_sum_whose_addend_dies_counts_as_in_place():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_llmmem.trace.live import LiveBytes

    tracker = LiveBytes(vocab_size=7)
    with FakeTensorMode(), tracker:
        tracker.start("sum")
        a, b = torch.empty(1024, dtype=torch.bfloat16), torch.empty(1024, dtype=torch.bfloat16)  # 2 KiB each
        a = a + b  # autograd's input buffer: the old addend goes as the sum arrives (in place on a real tensor)
        tracker.start("kept")
        c = a + b  # both addends outlive the sum: three tensors at once
        tracker.stop()
    assert tracker.peaks["sum"] == 2 * 2048
    assert tracker.peaks["kept"] == 3 * 2048
    del c


def test_tied_embeddings_hold_two_head_sized_gradients_at_the_end_of_backward():
    from pytest_llmmem.trace.estimate import traced

    est = traced(adhoc_run({**TINY, "tie-embeddings": True, "mode": "train", "dtype": "bf16", "precision": "pure", "seq-len": 32}))
    backward = _phase(est, "backward").breakdown
    step = _phase(est, "optimizer step").breakdown
    resident = step["weights"] + step["gradients"] + step["optimizer_states"]
    # The head's gradient of the shared 1024 x 256 matrix waits in autograd's input buffer while the embedding's
    # dense gradient (embedding_dense_backward, V x h) is built: one more 1024 x 256 x 2 B = 512 KiB than the
    # gradients themselves, the most this run holds (its saved activations are ~100 KiB)
    extra = 1024 * 256 * 2
    assert resident + extra <= sum(v for k, v in backward.items() if k != "overhead") <= resident + extra + 256 * 1024


@pytest.mark.parametrize("extra", [
    {"mode": "lora", "use-dora": True}, {"mode": "vera", "lora-rank": 16}, {"mode": "ia3"},
    {"mode": "prompt-tuning", "num-virtual-tokens": 16},
    {"mode": "lora", "lora-dropout": 0.05, "lora-targets": "all-linear"},
    {"mode": "lora", "lora-dropout": 0.05, "lora-targets": "all-linear", "autocast": True}, {"mode": "lora", "autocast": True},
    {"mode": "prefix-tuning", "num-virtual-tokens": 16}, {"mode": "prefix-tuning", "num-virtual-tokens": 16, "flash-attention": False},
    {"mode": "prefix-tuning", "num-virtual-tokens": 16, "prefix-projection": True, "encoder-hidden-size": 128, "num-kv-heads": 2},
    {"mode": "p-tuning", "num-virtual-tokens": 16, "encoder-hidden-size": 128},
], ids=["dora", "vera", "ia3", "prompt-tuning", "lora-dropout", "lora-dropout-autocast", "lora-autocast", "prefix-tuning", "prefix-tuning-eager", "prefix-projection-gqa", "p-tuning"])
def test_adapter_methods_trace_as_the_detailed_count_says(extra):
    """The trace builds each through peft (trace/step.py _peft_config): at the backward peak its saved activations
    are the detailed count's, within the allocator's 512-byte blocks (a few small tensors; prompt tuning adds the
    prompt's indices, its -100 labels and the concatenated labels, each rounded up to a block). LoRA's dropout runs
    as CUDA's native_dropout (a bool mask kept, attention.CudaDropout), so the oracle holds the dropout term; eager
    prefix tuning's first layer keeps no K (its q needs no gradient). autocast = true runs the step under torch.autocast
    (trace/step.py), so the 16-bit casts of the fp32 adapters' inputs and weights are traced, not counted by the same rule."""
    from pytest_llmmem.estimator import estimate
    from pytest_llmmem.trace.estimate import traced

    run = adhoc_run({**TINY, "dtype": "bf16", "batch-size": 2, "seq-len": 64, **extra})
    trace, detailed = traced(run), estimate(run)
    saved = sum(v for k, v in detailed.details.items() if k.startswith("activations."))
    assert abs(_phase(trace, "backward").breakdown["activations"] - saved) <= 8 * 512
    assert trace.trainable_params == detailed.trainable_params


def test_autocast_over_a_4_bit_base_is_refused_by_the_trace():
    """PEFT's bitsandbytes LoRA skips its fp32 input cast under autocast (peft tuners/lora/bnb.py requires_conversion); the
    trace builds a QLoRA base in 16 bit with PEFT's plain layer, which casts, so it refuses rather than trace another step."""
    from pytest_llmmem.errors import ConfigError
    from pytest_llmmem.trace.estimate import traced

    run = adhoc_run({**TINY, "mode": "qlora", "batch-size": 2, "seq-len": 64, "autocast": True})
    with pytest.raises(ConfigError, match="autocast = true over a 4-bit base"):
        traced(run)


def test_dora_traces_its_weight_norm_in_the_forward():
    """DoRA on down_proj (512 -> 256, r 8, fp32 over bf16): the weight norm's 3.2 MB in one module's forward sets the
    step's peak, in the trace as in the detailed forward phase (within 0.05 % of the total, 426 KB). The tensors are
    compared: the pool's slack is replayed in the trace and a share of the transients in the detailed count."""
    from pytest_llmmem.estimator import estimate
    from pytest_llmmem.trace.estimate import traced

    run = adhoc_run({**TINY, "mode": "lora", "use-dora": True, "lora-targets": ["q_proj", "v_proj", "down_proj"],
                     "dtype": "bf16", "batch-size": 2, "seq-len": 64})
    trace, detailed = traced(run), estimate(run)
    assert detailed.peak_phase == "adapter forward" and detailed.details["forward.adapter_transient"] == 4 * (512 ** 2 + 512 * 8 + 4 * 512 * 256)
    assert abs(trace.allocated_bytes - detailed.allocated_bytes) <= 0.0005 * detailed.total_bytes
    from pytest_llmmem.errors import ConfigError
    from pytest_llmmem.model.adapters import LORA
    from pytest_llmmem.trace.step import _peft_config

    with pytest.raises(ConfigError, match='mode "toy-lora" is not traced'):  # a plugin's method: refused, not guessed
        _peft_config(None, run._replace(mode="toy-lora", adapter_entry=LORA._replace(name="toy-lora")))


def test_a_traced_runs_pool_slack_is_the_replayed_reserve():
    """overhead.fragmentation of a traced run is the caching allocator's replayed slack (trace/allocator.py), not the
    analytic share of the transients; max_memory_reserved reads the replayed pool plus the cuBLAS workspace."""
    from pytest_llmmem.core.records import CUBLAS_WORKSPACE_BYTES, FRAGMENTATION
    from pytest_llmmem.trace.estimate import traced

    run = adhoc_run({**TINY, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 2, "seq-len": 64})
    est = traced(run)
    assert est.peak_phase == "backward"
    backward = _phase(est, "backward").breakdown
    allocated = sum(v for k, v in backward.items() if k != "overhead")
    # Every tensor of this run is at most 1 MiB (the 1024 x 256 bf16 tables and 2 x 64 x 1024 fp32 logits: 512 KiB
    # each), so the pool is 2 MiB small-pool segments (CUDACachingAllocator.cpp kSmallBuffer): the backward's
    # allocated peak, 15,513,088 B, takes 8 of them, 16 MiB, and the replay leaves no segment beyond that.
    assert allocated == 15_513_088
    assert est.details["overhead.fragmentation"] == 16 * 2**20 - allocated == 1_264_128
    assert est.reserved_bytes == 16 * 2**20 + CUBLAS_WORKSPACE_BYTES
    assert est.allocated_bytes == allocated
    share = round(FRAGMENTATION * (backward["activations"] + backward["logits"]))  # what the analytic term gives
    assert share != est.details["overhead.fragmentation"]
    assert any("replayed through the caching allocator" in note for note in est.notes)

    own = traced(run._replace(overhead_bytes=2**30))  # a run's own overhead replaces context, workspace and slack
    assert own.total_bytes == allocated + 2**30 and "overhead.fragmentation" not in own.details


def test_a_depth_cut_run_holds_the_deepest_cuts_slack():
    """Six layers traced at 2 and 4 (trace_depths): the slack is the 4-layer cut's reserved less allocated, not a
    line through both cuts (trace/estimate.py pool_slack: the H100 rows' pools do not grow by the shallow cuts' step)."""
    from pytest_llmmem.trace.estimate import traced
    from pytest_llmmem.trace.step import trace_at

    run = adhoc_run({**TINY, "num-layers": 6, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 2, "seq-len": 64})
    four = trace_at(run, run.model, 4)
    slack = four.reserved["backward"] - sum(four.phases["backward"].values())
    assert slack == 27_262_976 - 26_022_400  # 13 small segments against the 4-layer backward's allocated peak
    est = traced(run)
    assert est.peak_phase == "backward" and est.details["overhead.fragmentation"] == slack


def test_a_loop_holding_the_output_keeps_the_logits_through_backward():
    from pytest_llmmem.estimator import estimate
    from pytest_llmmem.trace.estimate import traced

    # LoRA, 2 x 64 tokens, vocab 1024: the backward peaks at the loss, where the HF Trainer holds only the loss and a
    # hand-written loop (framework = "pytorch": out = model(...); out.loss.backward()) still holds out.logits, the
    # model's bf16 logits: 2 x 64 x 1024 x 2 B = 262,144 B more, in the trace and in the detailed count alike.
    logits = {}
    for framework in ("transformers", "pytorch"):
        run = adhoc_run({**TINY, "mode": "lora", "dtype": "bf16", "batch-size": 2, "seq-len": 64, "framework": framework})
        logits[framework] = (_phase(traced(run), "backward").breakdown["logits"], _phase(estimate(run), "backward").breakdown["logits"])
    assert [p - t for p, t in zip(logits["pytorch"], logits["transformers"])] == [2 * 64 * 1024 * 2] * 2


def test_an_inference_pool_slack_that_grows_from_cut_to_cut_grows_per_layer():
    """pool_slack on two hand-made cuts of a 32-layer model (2 and 4 layers): a prefill whose slack goes 1 -> 2 MiB
    adds 0.5 MiB a layer, 2 + 28 x 0.5 = 16 MiB at 32 (each layer's weights and cache stay); a shrinking one, and any
    training step (which phase's layout binds its pool changes with depth), hold the deepest cut's."""
    from pytest_llmmem.trace.estimate import pool_slack
    from pytest_llmmem.trace.step import DepthTrace

    mib = 2**20
    def cut(layers, allocated, reserved, phase="prefill"):
        return DepthTrace(layers, {phase: {"weights": allocated}}, "eager", {phase: reserved})

    growing = [cut(2, 10 * mib, 11 * mib), cut(4, 20 * mib, 22 * mib)]
    assert pool_slack(growing, (2, 4), 32, trains=False) == {"prefill": 16 * mib}
    step = [cut(2, 10 * mib, 11 * mib, "backward"), cut(4, 20 * mib, 22 * mib, "backward")]
    assert pool_slack(step, (2, 4), 32, trains=True) == {"backward": 2 * mib}
    shrinking = [cut(2, 10 * mib, 13 * mib), cut(4, 20 * mib, 22 * mib)]
    assert pool_slack(shrinking, (2, 4), 32, trains=False) == {"prefill": 2 * mib}


def test_flash_attention_2_is_refused_by_the_trace():
    """The fake-tensor trace cannot call flash-attn's CUDA kernels, and SDPA in their place keeps other masks: refused."""
    from pytest_llmmem.errors import ConfigError
    from pytest_llmmem.trace.estimate import traced

    run = adhoc_run({**TINY, "mode": "train", "seq-len": 64, "attn-implementation": "flash_attention_2"})
    with pytest.raises(ConfigError, match='attn-implementation = "flash_attention_2" needs the flash-attn CUDA kernels'):
        traced(run)
