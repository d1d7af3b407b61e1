"""Trainer profiles and their knobs: table, config contract, hand-computed terms, output, fit."""

import json

import pytest

from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.catalog.profiles import KNOBS, LOSSES, OPTIMIZER_IMPLS, PROFILES, Knobs
from pytest_llmmem.core.terms.trainer_terms import Tensors, bnb_state_bytes, four_bit_bytes, loss_terms
from pytest_llmmem.catalog.registry import default_catalog
from pytest_llmmem.report.layout import unfit

LLAMA31_8B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 8,
              "intermediate-size": 14336, "vocab-size": 128256}
QWEN3_8B = {"family": "llama", "hidden-size": 4096, "num-layers": 36, "num-heads": 32, "num-kv-heads": 8, "head-dim": 128,
            "intermediate-size": 12288, "vocab-size": 151936}


# --- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_departure_from_stock_names_its_source(name):
    profile, stock = PROFILES[name], PROFILES["transformers"]
    assert profile.loss in LOSSES and profile.optimizer_impl in OPTIMIZER_IMPLS
    for field, key in (("loss", "loss"), ("activation_offload", "activation-offload"), ("optimizer_impl", "optimizer-impl"),
                       ("double_quant", "double-quant"), ("adapter_dtype", "adapter-dtype"),
                       ("gradient_checkpointing", "gradient-checkpointing")):
        if getattr(profile, field) != getattr(stock, field) or name == "transformers":
            assert key in profile.sources, f"{name}.{key} differs from stock transformers but cites no source"
            assert "/" in profile.sources[key] or "Trainer" in profile.sources[key]  # a path in the trainer's repo
    assert set(profile.sources) <= set(KNOBS)


# --- the config contract ------------------------------------------------------------------------

PROJECT = """
[tool.llmmem]
gpu = "RTX-4090"
framework = "torchtune"

[tool.llmmem.model]
family = "llama"
hidden-size = 4096
num-layers = 32
num-heads = 32
num-kv-heads = 8
intermediate-size = 14336
vocab-size = 128256

[[tool.llmmem.runs]]
name = "qlora"
mode = "qlora"
batch-size = 2
seq-len = 2048
gradient-checkpointing = true
{extra}
"""


def _run(extra=""):
    text = PROJECT.replace("{extra}", extra)
    if "[tool.llmmem.runs.model]" in extra:  # the offload case: checkpointing off in the run
        text = text.replace("gradient-checkpointing = true", "gradient-checkpointing = false")
    return parse(text).runs[0]


def test_project_framework_sets_profile_defaults():
    run = _run()
    k = run.knobs
    assert (k.framework, k.loss, k.loss_chunks, k.optimizer_impl, k.nf4_layout, k.double_quant) == (
        "torchtune", "chunked", 8, "fused", "torchao", True)
    assert run.adapter_dtype.name == "bf16"  # torchtune: LoRA in the base compute dtype
    shown = dict((key, (value, origin)) for key, value, origin in run.knobs_shown)
    assert shown["loss"] == ("chunked", "profile") and shown["adapter-dtype"] == ("bf16", "profile")


def test_run_keys_win_over_the_profile():
    run = _run('loss = "fused"\nactivation-offload = true\nframework = "unsloth"\nadapter-dtype = "bf16"')
    k = run.knobs
    assert (k.framework, k.loss, k.activation_offload, k.double_quant, k.nf4_layout) == ("unsloth", "fused", True, True, "bitsandbytes")
    shown = {key: origin for key, _, origin in run.knobs_shown}
    assert shown["loss"] == "set" and shown["activation-offload"] == "set" and shown["adapter-dtype"] == "set"


def test_litgpt_chunks_by_128_tokens():
    run = _run('framework = "litgpt"')
    assert run.knobs.loss_chunks == 16  # 2048 / 128 (litgpt/finetune/lora.py: lm_head_chunk_size=128)
    assert run.knobs.chunk_upcast is False and run.knobs.keeps_logits is True


def test_stock_transformers_shows_no_knobs():
    run = parse(PROJECT.replace('framework = "torchtune"\n', "").replace("{extra}", "")).runs[0]
    # the run is qlora on nf4: BitsAndBytesConfig's plain NF4, PEFT's fp32 adapters, nothing to show
    assert run.knobs == Knobs(framework="transformers") and run.knobs_shown == ()
    assert run.adapter_dtype.name == "fp32"


@pytest.mark.parametrize("extra, message", [
    ('framework = "torchtun"', '"torchtun" is not valid. Did you mean "torchtune"?'),
    ('loss = "chunked"\nloss-chunks = 0', "0 is out of range; expected 1 to 65,536."),
    ('framework = "transformers"\nloss-chunks = 4', 'only applies to loss = "chunked"; this run\'s loss is "upcast".'),
    ('framework = "transformers"\nactivation-offload = true\n[tool.llmmem.runs.model]\nnum-layers = 2', "needs gradient-checkpointing = true"),
    ('optimizer-impl = "forach"', '"forach" is not valid. Did you mean "foreach"?'),
    ("double-quant = false", "always double-quantises its scalers"),
    ('torch-version = "two"', '"two" is not a torch release; expected a string such as "2.0.1"'),
    ("torch-version = 2.0", 'is not a torch release; expected a string such as "2.0.1"'),
    ('framework-version = "new"', '"new" is not a release number; expected a string such as "2025.3.19" (the torchtune release'),
])
def test_bad_knobs_are_one_paragraph(extra, message):
    with pytest.raises(ConfigError) as info:
        _run(extra)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- hand-computed terms ------------------------------------------------------------------------


def test_four_bit_layouts():
    # bitsandbytes: 4 bits + fp32 absmax per 64 = 0.5625; double quant: uint8 absmax per 64 + fp32 per 256 blocks
    assert four_bit_bytes("bitsandbytes", False) == 0.5625
    assert four_bit_bytes("bitsandbytes", True) == 0.5 + 1 / 64 + 4 / 16384  # 0.515869
    # torchao NF4: int8 scaler per 64 + a bf16 factor per 256 scalers
    assert four_bit_bytes("torchao", True) == 0.5 + 1 / 64 + 2 / 16384  # 0.515747


# groundtruth-rl.jsonl group "loss" (torch 2.13 CPU, torchtune 0.6.1 / litgpt-style / HF, bf16,
# 1 x 2048 tokens, vocab 128256): head + loss saved bytes by dtype, and the logits tensor.
E = 2048 * 128256


def test_upcast_matches_hf_measurement():
    t = loss_terms(Knobs(), rows=2048, vocab=128256, hidden=256, act=2, tp=1, head_trains=False)
    assert t["log_softmax"] == 1_050_673_152  # measured fp32 saved: 1,050,673,156 (+ a 4-byte loss)
    assert t["logits"] == 525_336_576  # measured logits_bytes
    assert t["fp32_transient"] == E * 8
    # H100 (benchmarks/data/trainer-gpu-h100.jsonl, 2 x 2048 tokens): the head + loss peaked 7,388,267,520 B
    # above its inputs, 14.06 B per logit element; the term is 14
    assert abs(7_388_267_520 / (2 * E * (2 + 4 + 8)) - 1) < 0.005


def test_chunked_torchtune_and_litgpt():
    tt = loss_terms(Knobs(loss="chunked", loss_chunks=8, keeps_logits=False), rows=2048, vocab=128256, hidden=256, act=2, tp=1,
                    head_trains=False)
    assert tt["log_softmax"] == E * 4  # measured torchtune fp32 saved: 1,050,673,184 (every chunk's fp32 log-softmax)
    assert tt["logits"] == E * 2 // 8  # LinearCrossEntropyLoss: only one chunk's 16-bit logits at a time
    assert tt["chunk_transient"] == E // 8 * (4 + 2)
    lit = loss_terms(Knobs(loss="chunked", loss_chunks=16, chunk_upcast=False, keeps_logits=True), rows=2048, vocab=128256,
                     hidden=256, act=2, tp=1, head_trains=False)
    # measured bf16 saved 526,128,672 = the hidden input (1,048,576) + the shifted (2047-row) bf16 log-softmax
    assert lit["log_softmax"] == E * 2 and abs((526_128_672 - 1_048_576) / (E * 2) - 1) < 0.001
    assert lit["logits"] == E * 2 and lit["chunk_transient"] == E * 2 // 16


def test_compiled_torchtune_loss_keeps_the_bf16_chunks_not_an_fp32_log_softmax():
    # benchmarks/data/compile-cpu.jsonl (Inductor's partitioner on torch 2.13): a compiled chunk step keeps its
    # 2-byte logits and 16 B per row (int64 label, fp32 max, fp32 log-sum-exp) and writes one 2-byte gradient
    tt = loss_terms(Knobs(loss="chunked", loss_chunks=8, keeps_logits=False, compiled_loss=True), rows=2048, vocab=128256,
                    hidden=256, act=2, tp=1, head_trains=False)
    assert tt == {"logits": E * 2 // 8, "compiled_saved": E * 2 + 2048 * 16, "chunk_transient": E * 2 // 8}
    # nn.CrossEntropyLoss compiled whole on torchtune's fp32 logits: keeps them (4 B), one fp32 gradient (4 B)
    up = loss_terms(Knobs(loss="upcast", compiled_loss=True), rows=2048, vocab=128256, hidden=256, act=2, tp=1, head_trains=False)
    assert up == {"logits": E * 2, "compiled_saved": E * 4 + 2048 * 16, "fp32_transient": E * 4}


def test_a_compiled_chunked_head_peaks_with_its_gradient_summed_over_the_chunks():
    # T = 2 x 64 = 128 rows, V = 32000, h = 64, 8 chunks of 512,000 logits (1,024,000 B in bf16). Compiled, the loss keeps
    # every chunk's bf16 logits and 16 B per row (8,194,048 B) plus one chunk's gradient (1,024,000 B); at the second
    # chunk's head backward one chunk's logits and its gradient are gone: 9,218,048 - 2 x 1,024,000 = 7,170,048 B, beside
    # the head's gradient summed so far and the new one, 2 x 32000 x 64 x 2 B = 8,192,000 B
    # (torch/csrc/autograd/input_buffer.cpp; benchmarks/measure_chunked_head.py)
    keys = {"family": "llama", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "intermediate-size": 160,
            "vocab-size": 32000, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 2, "seq-len": 64,
            "optimizer": "adamw", "framework": "torchtune", "loss-chunks": 8}
    compiled = estimate(adhoc_run({**keys, "compile": True}))
    backward = next(p for p in compiled.phase_parts if p.name == "backward")
    assert "head instant" in backward.why
    assert backward.breakdown["logits"] == 7_170_048 and backward.breakdown["gradients"] == 8_192_000
    assert compiled.details["backward.gradients.head_accumulation"] == 32000 * 64 * 2
    # eager, the fp32 log-softmax of every chunk (16,384,000 B) keeps the loss instant the larger one
    eager = estimate(adhoc_run({**keys, "compile": False}))
    assert "loss instant" in next(p for p in eager.phase_parts if p.name == "backward").why


def test_compile_compiles_the_loss_only_where_the_framework_does():
    # torchtune's recipes call training.compile_loss when compile: True; the HF Trainer's loss stays eager here
    def knobs(framework, compiled):
        return adhoc_run({"name": "r", "family": "llama", "hidden-size": 256, "num-layers": 2, "num-heads": 4,
                          "intermediate-size": 512, "vocab-size": 1000, "mode": "train", "framework": framework,
                          "compile": compiled}).knobs.compiled_loss
    assert knobs("torchtune", True) and not knobs("torchtune", False) and not knobs("transformers", True)


def test_fused_keeps_no_vocab_sized_tensor():
    # Liger: chunk = next_pow2(ceil(2048 / ceil(128256 / 256))) = next_pow2(5) = 8 rows of logits
    t = loss_terms(Knobs(loss="fused"), rows=2048, vocab=128256, hidden=256, act=2, tp=1, head_trains=True)
    assert t == {"fused_chunk_logits": 8 * 128256 * 2, "fused_grad_input": 2048 * 256 * 2,
                 "fused_grad_weight": 128256 * 256 * 2, "fused_loss_per_token": 2048 * 4}


def test_bitsandbytes_small_tensors_keep_fp32_states_and_paging_starts_at_1e5():
    opt8 = default_catalog().optimizer("adamw-8bit")
    paged8 = default_catalog().optimizer("paged-adamw-8bit")
    tensors = Tensors(((2048, 10), (8 * 4096, 4), (4096 * 128, 2)))  # norms, LoRA A at r=8, a 128-row matrix
    eight = 1 + 4 / 256
    # 2048 < 4096: 2 fp32 states; the others 2 x (1 + 4/256)
    assert bnb_state_bytes(opt8, tensors) == (round(2048 * 10 * 8 + (8 * 4096 * 4 + 4096 * 128 * 2) * 2 * eight), 0)
    # paged: only the 524,288-element matrices (>= 1e5) go to unified memory
    assert bnb_state_bytes(paged8, tensors) == (round(2048 * 10 * 8 + 8 * 4096 * 4 * 2 * eight), round(4096 * 128 * 2 * 2 * eight))


def test_torchao_adamw8bit_keeps_small_states_in_the_param_dtype_and_counts_its_compiled_step():
    ao8 = default_catalog().optimizer("torchao-adamw-8bit")
    tensors = Tensors(((2048, 10), (8 * 4096, 4), (4096 * 128, 2)))
    eight = 1 + 4 / 256
    # torchao keeps zeros_like(p) under 4096 elements: 2 bf16 states (2 B each) for the norms, not fp32
    assert bnb_state_bytes(ao8, tensors, 2) == (round(2048 * 10 * 2 * 2 + (8 * 4096 * 4 + 4096 * 128 * 2) * 2 * eight), 0)
    keys = {"family": "llama", "hidden-size": 1024, "num-layers": 2, "num-heads": 8, "intermediate-size": 4096,
            "vocab-size": 32000, "mode": "train", "dtype": "bf16", "precision": "pure", "gpu": "A100-80GB", "batch-size": 1,
            "seq-len": 512, "optimizer": "torchao-adamw-8bit", "optimizer-in-backward": True}
    est = estimate(adhoc_run(keys))
    # the compiled step's exp_avg_f32 and exp_avg_sq_f32 (4 B each) and their block scales (4 B per 256) of the
    # largest parameter, the 32,000 x 1024 embedding (measured: compile-cpu.jsonl torchao-adamw8bit-step, 8.03 B)
    assert est.details["optimizer_step.temporaries"] == round(32000 * 1024 * 2 * (4 + 4 / 256)) == 263_168_000
    assert any(a.startswith("torchao AdamW8bit: its compiled step") for a in est.approximate)
    bnb = estimate(adhoc_run({**keys, "optimizer": "adamw-8bit"}))
    assert "optimizer_step.temporaries" not in bnb.details and not bnb.approximate


def test_paged_adamw_counts_against_host_not_gpu():
    keys = {**LLAMA31_8B, "mode": "lora", "dtype": "bf16", "lora-rank": 32, "batch-size": 1, "seq-len": 512}
    plain = estimate(adhoc_run({**keys, "optimizer": "adamw"}))
    paged = estimate(adhoc_run({**keys, "optimizer": "paged-adamw"}))
    # r=32 A: 32 x 4096 = 131,072 elements >= 1e5 (paged); B of v_proj: 1024 x 32 = 32,768 stays on the GPU
    b_v = 32 * 32 * 1024 * 2 * 4  # v_proj's B in 32 layers: 2 fp32 states
    assert paged.breakdown["optimizer_states"] == b_v
    assert paged.details["host.paged_optimizer_states"] == plain.breakdown["optimizer_states"] - b_v
    assert any("paged" in n for n in paged.notes)


def test_optimizer_in_backward_keeps_only_the_largest_gradient():
    keys = {**LLAMA31_8B, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 1, "seq-len": 1024}
    est = estimate(adhoc_run({**keys, "optimizer-in-backward": True}))
    assert est.full("gradients") == 128256 * 4096 * 2  # the embedding's (and head's) bf16 gradient
    with pytest.raises(ConfigError, match="cannot accumulate gradients"):
        adhoc_run({**keys, "optimizer-in-backward": True, "micro-batches": 4})


def test_activation_offload_moves_all_but_one_layer_input_to_host():
    keys = {**LLAMA31_8B, "mode": "qlora", "batch-size": 2, "seq-len": 2048, "gradient-checkpointing": True}
    base = estimate(adhoc_run(keys))
    off = estimate(adhoc_run({**keys, "activation-offload": True, "host-memory": "64 GiB"}))
    one = 2 * 2048 * 4096 * 2  # one layer's bf16 input
    assert base.details["activations.layer_inputs"] == 32 * one
    assert off.details["activations.layer_inputs"] == one
    assert off.details["host.offloaded_activations"] == 31 * one


@pytest.mark.parametrize("framework, resident", [("torchtune", 5), ("unsloth", 2)])
def test_each_trainer_keeps_its_own_offloaded_inputs_on_the_gpu(framework, resident):
    # torchtune OffloadActivations(max_fwd_stash_size=5): the last 5 layers' inputs stay in its forward stash
    # and backward takes them from there; Unsloth (unsloth_zoo gradient_checkpointing.py) does not offload the
    # last checkpointed layer's input and copies the others back into one GPU buffer: 2 on the GPU.
    keys = {**LLAMA31_8B, "mode": "qlora", "batch-size": 2, "seq-len": 2048, "gradient-checkpointing": True,
            "activation-offload": True, "host-memory": "64 GiB", "framework": framework}
    off = estimate(adhoc_run(keys))
    one = 2 * 2048 * 4096 * 2  # one layer's bf16 input
    assert off.details["activations.layer_inputs"] == resident * one
    assert off.details["host.offloaded_activations"] == (32 - resident) * one
    assert off.host_bytes > 31 * one and off.host_fits


def test_foreach_step_sets_the_peak_like_the_h100_measurement():
    # benchmarks/data/gpu-peaks-h100.jsonl: Qwen3-8B bf16, AdamW foreach, 1 x 1024, checkpointing:
    # optimizer_step max_allocated 81,985,836,544 B. Step = weights + grads + 2 states + one state-sized
    # foreach temporary = 5 x 2 B x 8.19e9 params; max_allocated leaves out the context, cuBLAS workspace and pool slack.
    keys = {**QWEN3_8B, "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 1, "seq-len": 1024,
            "gradient-checkpointing": True}
    est = estimate(adhoc_run({**keys, "optimizer-impl": "foreach"}))
    assert est.peak_phase == "optimizer step"
    assert est.details["optimizer_step.temporaries"] == est.params * 2
    assert abs(est.allocated_bytes / 81_985_836_544 - 1) < 0.01
    fused = estimate(adhoc_run({**keys, "optimizer-impl": "fused"}))
    assert fused.peak_phase == "backward" and fused.breakdown["optimizer_step"] == 0
    # fused peaks at the end of backward: every gradient and the (1024, 4096) bf16 gradient flowing into the
    # embedding, 8,388,608 B, with its 30 % slack in a checkpointed step (2,516,582 B); foreach's step adds its
    # temporary instead, with 15 % slack beside it (core/records.py SLACK_OPTIMIZER_STEP)
    temporary = est.breakdown["optimizer_step"]
    assert est.total_bytes - fused.total_bytes == temporary + round(0.15 * temporary) - 1024 * 4096 * 2 - round(0.3 * 1024 * 4096 * 2)


def test_torch_2_0_foreach_adamw_keeps_two_state_lists():
    # ms-swift issue 411: Mistral-7B (7,241,732,096 params) full fine-tune in pure bf16 on an A100-80GB,
    # 4,096 tokens, torch <= 2.0 (its traceback: adamw.py _multi_tensor_adamw, "denom = torch._foreach_add(
    # exp_avg_sq_sqrt, eps)"), died in the step with 76.61 GiB allocated. Step by hand: weights + gradients
    # 2 x 2 B, AdamW states 2 x 2 B, and two state-sized lists (exp_avg_sq_sqrt and denom) 2 x 2 B: 12 B/param
    # = 80.94 GiB, with the 1.34 GiB context and workspace 82.28 GiB: over 80 GiB. torch >= 2.1 adds eps in
    # place: one list, 68.79 GiB, fits.
    keys = {"id": "mistralai/Mistral-7B-v0.1", "mode": "train", "dtype": "bf16", "precision": "pure", "optimizer-impl": "foreach",
            "batch-size": 1, "seq-len": 4096, "gradient-checkpointing": True, "gpu": "A100-80GB"}
    params = 7_241_732_096
    old = estimate(adhoc_run({**keys, "torch-version": "2.0.1"}))
    new = estimate(adhoc_run({**keys, "torch-version": "2.4.0+cu121"}))
    default = estimate(adhoc_run(keys))
    assert old.params == params
    assert old.details["optimizer_step.temporaries"] == 2 * 2 * params
    assert new.details["optimizer_step.temporaries"] == default.details["optimizer_step.temporaries"] == 2 * params
    assert old.peak_phase == "optimizer step" and not old.fits and default.fits
    assert old.allocated_bytes == 12 * params
    assert ("torch-version", "2.0", "set") in old.run.knobs_shown


# --- measured on the CPU: what each AdamW implementation allocates inside step() -------------------


def _step_peak(impl, dtype):
    """Peak bytes of new tensors alive during AdamW.step() (a second step: states exist), counted by a
    dispatch mode that sees every op's outputs and a finalizer on each (torch.cuda is not needed)."""
    torch = pytest.importorskip("torch")
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Live(TorchDispatchMode):
        def __init__(self, known):
            super().__init__()
            self.known, self.sizes, self.live, self.peak = known, {}, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    key, n = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                    if n and key not in self.known and key not in self.sizes:
                        self.sizes[key] = n
                        self.live += n
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(t, self.free, key)
            return out

        def free(self, key):
            self.live -= self.sizes.pop(key, 0)

    params = [torch.nn.Parameter(torch.ones(shape, dtype=dtype)) for shape in [(1000, 64), (64,), (256, 64), (64,), (1000, 64)]]
    flag = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}, "fused": {"fused": True}}[impl]
    opt = torch.optim.AdamW(params, lr=1e-3, **flag)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    known = {t.untyped_storage().data_ptr() for p in params
             for t in [p, p.grad, *(v for v in opt.state[p].values() if isinstance(v, torch.Tensor))]}
    with Live(known) as live:
        opt.step()
    return live.peak


@pytest.mark.parametrize("dtype_name, size", [("float32", 4), ("bfloat16", 2)])
def test_adamw_step_temporaries_measured_on_cpu(dtype_name, size):
    torch = pytest.importorskip("torch")
    from pytest_llmmem.core.terms.trainer_terms import step_temporaries

    dtype = getattr(torch, dtype_name)
    numel, largest = 2 * 64000 + 16384 + 2 * 64, 64000
    adamw = default_catalog().optimizer("adamw")
    for impl in ("foreach", "for-loop", "fused"):
        predicted, _ = step_temporaries(Knobs(optimizer_impl=impl), adamw, numel * size, largest * size)
        measured = _step_peak(impl, dtype)
        if impl == "foreach":
            assert measured == predicted == numel * size  # torch._foreach_sqrt over every exp_avg_sq
        elif impl == "for-loop":
            # sqrt and the divide of the largest parameter, plus the previous (64-element) parameter's denom
            assert predicted == 2 * largest * size and measured == (2 * largest + 64) * size
        else:
            assert measured == predicted == 0


# --- output and ways out --------------------------------------------------------------------------


def test_cli_flags_text_and_json(run_cli):
    args = ["estimate", "--family", "llama", "--hidden-size", "4096", "--num-layers", "32", "--num-heads", "32",
            "--num-kv-heads", "8", "--intermediate-size", "14336", "--vocab-size", "128256", "--mode", "qlora",
            "--batch-size", "2", "--seq-len", "2048", "--gradient-checkpointing", "--gpu", "RTX-4090",
            "--framework", "torchtune", "--activation-offload", "--loss-chunks", "16"]
    code, out, _ = run_cli(*args)
    out = unfit(out)
    assert code == 0
    assert ("trainer: torchtune | loss = chunked (profile), loss-chunks = 16 (set), activation-offload = true (set), "
            "double-quant = true (profile), nf4-layout = torchao (profile), adapter-dtype = bf16 (profile)") in out
    code, out, _ = run_cli(*args, "--format", "json")
    doc = json.loads(out)["runs"][0]
    assert doc["framework"] == "torchtune"
    assert doc["knobs"]["activation-offload"] == {"value": "true", "origin": "set"}
    assert doc["peak_phase"] == "backward" and set(doc["phases"]) == {"load", "backward", "optimizer step", "save"}


def test_job_summary_names_the_trainer(run_cli):
    from pytest_llmmem.report.github import step_summary
    from pytest_llmmem.report.text import as_dict

    est = estimate(adhoc_run({**QWEN3_8B, "mode": "train", "dtype": "bf16", "precision": "pure", "seq-len": 1024,
                              "gradient-checkpointing": True, "optimizer-impl": "foreach", "framework": "litgpt", "gpu": "H100-80GB"}))
    text = step_summary("pyproject.toml", [as_dict(est)])
    assert "trainer: **litgpt**; `loss = chunked` (profile), `loss-chunks = 8` (profile), `optimizer-impl = foreach` (set)" in text
    assert "peak phase: **optimizer step**" in text


def test_fit_offers_the_fused_loss():
    from pytest_llmmem.fit.search import ways_out

    # Llama-3.1-8B LoRA bf16 at 1 x 4096 with checkpointing on a 24 GB card: HF's upcast loss is
    # 4096 x 128256 x (2 + 4 + 4) B = 4.9 GiB (+ 30 % allocator slack); the fused loss keeps a few MiB of it.
    run = adhoc_run({**LLAMA31_8B, "mode": "lora", "dtype": "bf16", "batch-size": 1, "seq-len": 4096,
                     "gradient-checkpointing": True, "gpu": "RTX-4090"})
    assert estimate(run).fits is False
    texts = [w.text for w in ways_out(run)]
    assert any(t.startswith('fits with loss = "fused" (Liger / Cut Cross-Entropy') for t in texts), texts


@pytest.mark.parametrize("keys", [
    {**LLAMA31_8B, "lora-targets": "all-linear"},
    {"family": "qwen2_moe", "hidden-size": 2048, "num-layers": 24, "num-heads": 16, "num-kv-heads": 16, "intermediate-size": 5632,
     "moe-intermediate-size": 1408, "num-experts": 60, "experts-per-token": 4, "vocab-size": 151936, "lora-targets": "all-linear"},
])
def test_tensor_inventory_adds_up_to_the_counts(keys):
    from pytest_llmmem.core.terms.trainer_terms import trainable_tensors

    lora = adhoc_run({**keys, "mode": "lora", "dtype": "bf16"})
    est = estimate(lora)
    assert trainable_tensors(lora, lora.model, est.params).total == est.trainable_params  # every A and B, group by group
    full = adhoc_run({k: v for k, v in {**keys, "mode": "train", "dtype": "bf16"}.items() if k != "lora-targets"})
    tensors = trainable_tensors(full, full.model, est.params)
    # matrices exactly; norm weights and biases rounded up to whole hidden-size vectors
    assert 0 <= tensors.total - est.params < full.model.hidden_size


def test_unsloth_profile_checkpoints_offloads_and_fuses():
    run = _run('framework = "unsloth"')
    k = run.knobs
    assert (k.loss, k.activation_offload, k.double_quant, run.adapter_dtype.name) == ("fused", True, True, "fp32")
    est = estimate(run)
    # no batch x seq x vocab tensor: Liger-style chunk of 2 x 2048 / ceil(128256 / 4096) = 128 rows of logits
    assert est.details["logits.fused_chunk_logits"] == 128 * 128256 * 2
    assert "logits.log_softmax" not in est.details


def test_torchtune_linear_ce_keeps_no_logits_measured_on_cpu():
    """torchtune LinearCrossEntropyLoss's forward (cross_entropy_loss.py:90-180: mask, 8 chunks, head per
    chunk, .float(), cross_entropy) re-run on the CPU: what autograd saves is every chunk's fp32
    log-softmax and no 16-bit logits; HF's upcast saves the same fp32 log-softmax."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rows, h, v = 512, 64, 32000
    torch.manual_seed(0)
    weight = torch.randn(v, h, dtype=torch.bfloat16)  # frozen head (LoRA): not counted below
    hidden = torch.randn(rows, h, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, v, (rows,))

    def saved(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        skip = {weight.untyped_storage().data_ptr(), hidden.untyped_storage().data_ptr()}
        return {k: n for k, (n, _) in seen.items() if k not in skip}, seen

    def torchtune():
        idx = torch.where(target != -100)[0]
        hs, ts = hidden.index_select(0, idx), target.index_select(0, idx)
        total = torch.zeros(())
        for hc, tc in zip(hs.tensor_split(8, 0), ts.tensor_split(8, 0)):
            total = total + F.cross_entropy((hc @ weight.t()).float(), tc, reduction="sum")
        return total

    tt, tt_all = saved(torchtune)
    fp32 = sum(n for k, n in tt.items() if tt_all[k][1] == torch.float32)
    bf16 = sum(n for k, n in tt.items() if tt_all[k][1] == torch.bfloat16)
    terms = loss_terms(Knobs(loss="chunked", loss_chunks=8, keeps_logits=False), rows=rows, vocab=v, hidden=h, act=2, tp=1,
                       head_trains=False)
    assert abs(fp32 - terms["log_softmax"]) <= 64  # 65,536,000 B of fp32 log-softmax (+ 4-byte chunk losses)
    assert bf16 == 0  # no 16-bit logits saved (the frozen head's matmul keeps only its weight, not counted)
    hf, hf_all = saved(lambda: F.cross_entropy((hidden @ weight.t()).float(), target))
    assert abs(sum(n for k, n in hf.items() if hf_all[k][1] == torch.float32) - terms["log_softmax"]) <= 64


def test_a_profile_leaves_serving_runs_alone():
    run = adhoc_run({**LLAMA31_8B, "mode": "inference", "dtype": "bf16", "framework": "unsloth", "seq-len": 1024})
    assert not run.knobs.activation_offload and not run.gradient_checkpointing
    assert run.knobs_shown == ()
    # torchao's layout is NF4 only: an int4 (bitsandbytes FP4) run does not show it
    qlora = adhoc_run({**LLAMA31_8B, "mode": "qlora", "dtype": "int4", "framework": "torchtune"})
    assert "nf4-layout" not in {k for k, _, _ in qlora.knobs_shown}


def test_h100_measurements_agree_with_the_terms():
    """benchmarks/data/trainer-gpu-h100.jsonl (benchmarks/trainer_gpu_check.py on an H100, torch 2.11):
    the AdamW step's peak above weights + grads + states, and the head + loss peak over forward and backward."""
    from pathlib import Path

    from pytest_llmmem.core.terms.trainer_terms import step_temporaries

    rows = {r["what"]: r for r in map(json.loads, (Path(__file__).parents[1] / "benchmarks/data/trainer-gpu-h100.jsonl").read_text().splitlines())}
    step, adamw = rows["adamw_step"], default_catalog().optimizer("adamw")
    for impl, tolerance in (("foreach", 0.001), ("for-loop", 0.005)):
        predicted, _ = step_temporaries(Knobs(optimizer_impl=impl), adamw, step["numel"] * 2, step["largest"] * 2)
        assert abs(step[impl] / predicted - 1) < tolerance, impl
    assert step["fused"] == 0
    loss, rows_, vocab = rows["loss"], 2 * 2048, 128256
    for name, knobs in (("upcast", Knobs()), ("chunked-torchtune", Knobs(loss="chunked", loss_chunks=8, keeps_logits=False)),
                        ("chunked-litgpt", Knobs(loss="chunked", loss_chunks=16, chunk_upcast=False, keeps_logits=True))):
        predicted = sum(loss_terms(knobs, rows=rows_, vocab=vocab, hidden=4096, act=2, tp=1, head_trains=False).values())
        # the term is at most 5 % under the GPU's peak: upcast 0.4 %, torchtune 2.6 %, litgpt 4.3 % (the hidden
        # states' gradient and the per-chunk backward buffers are not in the loss term)
        assert 0 <= loss[name] / predicted - 1 < 0.05, name


def test_unsloth_between_2025_3_10_and_2025_9_9_loads_int8_in_16_bit():
    # unsloth/models/vision.py FastBaseModel.from_pretrained passed the 8-bit BitsAndBytesConfig only `if load_in_4bit:`
    # from 2025.3.10 to 2025.9.9 (Profile.ignores_8bit): such a release's int8 run is the bf16 run, byte for byte, and
    # says where its dtype came from; 2025.9.10 (the fix) and other trainers keep int8 weights.
    keys = {"family": "llama", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "intermediate-size": 160,
            "vocab-size": 512, "mode": "lora", "batch-size": 1, "seq-len": 16, "lora-targets": ["all-linear"], "framework": "unsloth"}
    old = estimate(adhoc_run({**keys, "dtype": "int8", "framework-version": "2025.3.19"}))
    bf16 = estimate(adhoc_run({**keys, "dtype": "bf16"}))
    fixed = estimate(adhoc_run({**keys, "dtype": "int8", "framework-version": "2025.9.10"}))
    current = estimate(adhoc_run({**keys, "dtype": "int8"}))
    hf = estimate(adhoc_run({**keys, "dtype": "int8", "framework": "transformers", "framework-version": "2025.3.19"}))
    assert old.run.dtype.name == "bf16" and old.total_bytes == bf16.total_bytes
    assert dict(old.run.settings_from)["dtype"].startswith("unsloth 2025.3.19 loads load_in_8bit in 16 bit")
    assert fixed.run.dtype.name == current.run.dtype.name == hf.run.dtype.name == "int8"
    assert fixed.breakdown["weights"] == current.breakdown["weights"] < old.breakdown["weights"]
    # without a release the estimate is a current one's, marked approximate with the reason
    assert any("load dtype = \"int8\" (load_in_8bit) in 16 bit" in a for a in current.approximate)
    assert not any("load_in_8bit" in a for a in fixed.approximate + hf.approximate)
    assert ("framework-version", "2025.3.19", "set") in old.run.knobs_shown


def test_unsloth_2024_keeps_whole_logits_and_a_rope_cache_per_layer():
    # Unsloth 2024.4 (llama.py @ 0a433c3): the whole logits, kept by Fast_CrossEntropyLoss and overwritten by their gradient
    # (kernels/cross_entropy_loss.py:236, :258): T x V x 2 B = 32 x 512 x 2 = 32,768 B; and each layer's own cos and sin for
    # max(seq-len, max_position_embeddings) = 4,096 positions x head dim 16 in bf16: 2 layers x 2 x 4,096 x 16 x 2 = 524,288 B.
    # 2024.8 has the 32k dynamic cache (no per-layer table counted) and 2024.11.7 Cut Cross-Entropy (the profile's fused loss).
    keys = {"family": "llama", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "intermediate-size": 160,
            "vocab-size": 512, "max-position-embeddings": 4096, "mode": "qlora", "dtype": "nf4", "batch-size": 2, "seq-len": 16,
            "lora-targets": ["q_proj", "v_proj"], "framework": "unsloth"}
    old = estimate(adhoc_run({**keys, "framework-version": "2024.4"}))
    mid = estimate(adhoc_run({**keys, "framework-version": "2024.8"}))
    new = estimate(adhoc_run({**keys, "framework-version": "2024.11.7"}))
    assert old.run.knobs.loss == "inplace" and old.details["logits.inplace_grad"] == 32 * 512 * 2 == 32_768
    assert old.details["weights.rope_caches"] == 2 * 2 * 4096 * 16 * 2 == 524_288
    assert mid.run.knobs.loss == "inplace" and "weights.rope_caches" not in mid.details
    assert new.run.knobs.loss == "fused" and "logits.inplace_grad" not in new.details
    assert old.breakdown["weights"] - mid.breakdown["weights"] == 524_288
    assert any("config.torch_dtype" in a for a in old.approximate) and not any("config.torch_dtype" in a for a in new.approximate)
    # a loss the run declares wins over the release's
    assert estimate(adhoc_run({**keys, "framework-version": "2024.4", "loss": "fused"})).run.knobs.loss == "fused"


def test_unsloth_2024_logits_meet_accelerates_fp32_copy_at_the_end_of_the_forward():
    # Unsloth 2024.4 returns the whole 16-bit logits; the HF Trainer's fp16 / bf16 wraps the forward in accelerate's
    # convert_outputs_to_fp32 (accelerator.py:1356-1365 at 0.30), so while Fast_CrossEntropyLoss still keeps them
    # an fp32 copy exists: T x V = 32 x 32,768 logits, 2 B kept (2,097,152) + 4 B copied (4,194,304) = 6,291,456 B.
    # The copy is one allocation of its own segment: the pool's 30 % slack covers only the instant's short-lived
    # tensors, the kept logits and the saved activations (layer inputs 8,192 + head 4,736 + one dequantised
    # 4-bit weight 160 x 64 x 2 = 20,480): 0.30 x (2,097,152 + 33,408) = 639,168 B.
    keys = {"family": "llama", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "intermediate-size": 160,
            "vocab-size": 32768, "max-position-embeddings": 4096, "mode": "qlora", "dtype": "nf4", "batch-size": 2, "seq-len": 16,
            "lora-targets": ["q_proj", "v_proj"], "lora-rank": 8, "framework": "unsloth"}
    old = estimate(adhoc_run({**keys, "framework-version": "2024.4"}))
    assert old.details["logits.inplace_grad"] == 32 * 32768 * 2 == 2_097_152
    assert old.details["backward.logits.outputs_fp32"] == 32 * 32768 * 4 == 4_194_304
    assert old.breakdown["logits"] == 6_291_456
    assert old.breakdown["activations"] == 8_192 + 4_736 + 20_480 == 33_408
    assert old.details["overhead.fragmentation"] == round(0.30 * (2_097_152 + 33_408)) == 639_168
    # Cut Cross-Entropy (2024.11.7) returns no logits in training: nothing to copy
    new = estimate(adhoc_run({**keys, "framework-version": "2024.11.7"}))
    assert "backward.logits.outputs_fp32" not in new.details and "logits.outputs_fp32" not in new.details


def test_fsdp_qlora_says_what_it_leaves_out_and_the_trace_refuses_it():
    # Llama-2-7B: 32 layers x 2 tables x 4,096 positions x 128 head dims x 4 B (fp32 under QLoRA) = 134,217,728 B = 0.12 GiB
    from pytest_llmmem.trace.estimate import traced

    keys = {"model": "meta-llama/Llama-2-7b-hf", "mode": "qlora", "dtype": "nf4", "batch-size": 1, "seq-len": 512,
            "framework": "fsdp-qlora"}
    est = estimate(adhoc_run(keys))
    rope = [a for a in est.approximate if "cos/sin caches" in a]
    assert len(rope) == 1 and "0.12 GiB for this model" in rope[0]
    assert not any("cos/sin caches" in a for a in estimate(adhoc_run({**keys, "framework": "pytorch"})).approximate)
    with pytest.raises(ConfigError, match="transformers 4.40's"):
        traced(adhoc_run({**keys, "method": "trace"}))


UNSLOTH_TINY = {"family": "llama", "hidden-size": 64, "num-layers": 4, "num-heads": 4, "num-kv-heads": 2, "intermediate-size": 160,
                "vocab-size": 512, "mode": "lora", "dtype": "bf16", "batch-size": 1, "seq-len": 2048, "lora-targets": ["all-linear"],
                "lora-rank": 8, "flash-attention": True, "framework": "unsloth"}


def test_unsloth_2025_3_to_2025_11_3_keeps_the_first_steps_layer_inputs():
    # unsloth_zoo 2025.1.1 - 2025.11.4 (Profile.first_pass_kept): the first forward offloads nothing (FIRST_PASS counts
    # LAST_GC_INDEX up with CURRENT_GC_INDEX), offloading starts with the second step. By hand, for this 4-layer model:
    # one layer input is 1 x 2048 x 64 x 2 B = 262,144; the later steps keep 2 on the GPU (the last input and the GPU buffer,
    # offload_resident) and 2 in host memory, 524,288 B; the first step keeps all 4. Both backwards peak at the top of the
    # recompute (every kept input, one recomputed layer, its backward temporaries, no gradient yet), so the first step's
    # activations are the later steps' + 524,288. It has no optimizer states yet: AdamW's two fp32 states of the LoRA
    # parameters, r 8 on q, k, v, o (8 x (64+64), 8 x (64+32) twice, 8 x (64+64)) and gate, up, down (8 x (64+160) each)
    # = 8,960 a layer x 4 = 35,840 params x 8 B = 286,720 B. The pool's slack is 30 % of the short-lived bytes
    # (records.FRAGMENTATION, the offloaded step's share): 0.30 x 524,288 = 157,286.4. The first step's total is then the
    # later steps' backward + 524,288 + 157,286.4 - 286,720 = + 394,854.4 B, the run's peak.
    old = estimate(adhoc_run({**UNSLOTH_TINY, "framework-version": "2025.3.19"}))
    parts = {p.name: p for p in old.phase_parts}
    first, later = parts["first step"], parts["backward"]
    assert old.details["host.offloaded_activations"] == 2 * 262_144 == 524_288
    assert first.breakdown["activations"] - later.breakdown["activations"] == 524_288
    assert "optimizer_states" not in first.breakdown and later.breakdown["optimizer_states"] == 35_840 * 8 == 286_720
    assert abs(first.total - later.total - (524_288 + 0.30 * 524_288 - 286_720)) <= 1
    assert old.peak_phase == "first step" and old.total_bytes == first.total
    assert old.notes[0].startswith("peak at the first training step (Unsloth offloads from the second): unsloth 2025.3.19 offloads no "
                                   "checkpointed layer input in the first forward")
    # 2025.11.4 pins unsloth_zoo 2025.11.5, whose first pass offloads every layer; before 2025.3.1 Unsloth's text models
    # offloaded each layer from the first step (Unsloth_Offloaded_Gradient_Checkpointer); neither has the phase, and the
    # later steps are priced the same in all three
    for version in ("2025.11.4", "2025.2.15"):
        est = estimate(adhoc_run({**UNSLOTH_TINY, "framework-version": version}))
        assert "first step" not in dict(est.phases) and est.total_bytes == later.total and not est.approximate
    # without a release: a current one's, marked approximate with what an older one keeps
    current = estimate(adhoc_run(UNSLOTH_TINY))
    assert current.total_bytes == later.total
    assert [a for a in current.approximate if "FIRST_PASS" in a] == [
        "unsloth releases 2025.3.1 up to 2025.11.4 (not included) offload no checkpointed layer input in the first step's forward "
        "(unsloth_zoo FIRST_PASS, docs/profiles.md): that step keeps 0.00 GiB more on the GPU than the later ones; counted as a "
        "current release: set framework-version to count an older one"]
    # the gate is Unsloth's offload: off, or another trainer's, no first-step phase
    for keys in ({"activation-offload": False}, {"framework": "torchtune"}):
        assert "first step" not in dict(estimate(adhoc_run({**UNSLOTH_TINY, "framework-version": "2025.3.19", **keys})).phases)


def test_unsloth_first_step_sets_the_verdict_on_the_cli(run_cli):
    # the budget between the later steps' peak and the first step's (the test above: + 394,854 B): 846,100,000 B
    args = ["estimate", "--family", "llama", "--hidden-size", "64", "--num-layers", "4", "--num-heads", "4", "--num-kv-heads", "2",
            "--intermediate-size", "160", "--vocab-size", "512", "--mode", "lora", "--dtype", "bf16", "--batch-size", "1",
            "--seq-len", "2048", "--lora-rank", "8", "--lora-targets", "all-linear", "--flash-attention", "--framework", "unsloth",
            "--gpu-memory", "846100000 B"]
    code, out, _ = run_cli(*args, "--framework-version", "2025.3.19")
    out = unfit(out)
    assert code == 1 and "over at the first training step (Unsloth offloads from the second)" in out
    assert "peak phase: first step (" in out
    code, out, _ = run_cli(*args, "--framework-version", "2025.11.4")
    assert code == 0 and "FITS" in unfit(out)


def test_an_unsloth_grpo_run_gets_the_first_step_too():
    # GRPO's policy step is an SFT step at the recipe's rows (recipes/recipes.py), so the first step differs from the later
    # ones as in the SFT test above: + 524,288 B of layer inputs (2 x 1 x 2048 x 64 x 2 B here: 2 rows of 1,024 tokens),
    # + 30 % of them as pool slack, - AdamW's 286,720 B of LoRA states = + 394,854.4 B. Before, the recipe's own phases left
    # the first step out while the SFT reading's note said it was the peak.
    grpo = {**UNSLOTH_TINY, "batch-size": 2, "seq-len": 1024, "recipe": "grpo", "num-generations": 2, "gradient-checkpointing": True}
    old = estimate(adhoc_run({**grpo, "framework-version": "2025.3.19"}))
    phases = dict(old.phases)
    assert old.peak_phase == "first step" and abs(phases["first step"] - phases["backward"] - 394_854.4) <= 1
    assert old.notes[0].startswith("peak at the first training step (Unsloth offloads from the second)")
    new = estimate(adhoc_run({**grpo, "framework-version": "2025.11.4"}))
    assert "first step" not in dict(new.phases) and new.total_bytes == phases["backward"]
    assert not any(n.startswith("peak at the first training step") for n in new.notes)
