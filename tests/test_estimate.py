"""Seed numbers (rule-of-thumb) and hand-computed detailed breakdowns."""

import json
from pathlib import Path

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.core.records import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, FRAGMENTATION
from pytest_llmmem.estimator import estimate
from pytest_llmmem.model.adapters import lora_matrix_params
from pytest_llmmem.units import GiB

LLAMA2_7B_KEYS = {
    "family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "intermediate-size": 11008, "vocab-size": 32000,
}
P7B = 6_738_415_616  # Llama-2-7B exact count


def rule(params, dtype, mode="inference", **kw):
    run = adhoc_run({"params": params, "dtype": dtype, "mode": mode, "method": "rule-of-thumb", **kw})
    return estimate(run).total_bytes


# --- the seed's worked numbers, exactly ------------------------------------------------------


@pytest.mark.parametrize("dtype, gb", [("fp32", 28), ("bf16", 14), ("fp16", 14), ("int8", 7)])
def test_seed_7b_inference(dtype, gb):
    # 7e9 params x 4 / 2 / 1 bytes
    assert rule("7B", dtype) == gb * 10**9


@pytest.mark.parametrize("dtype, gb", [("fp32", 52), ("bf16", 26), ("int8", 13), ("int4", 6.5)])
def test_seed_13b_inference(dtype, gb):
    # 13e9 params x 4 / 2 / 1 / 0.5 bytes
    assert rule("13B", dtype) == gb * 10**9


@pytest.mark.parametrize("dtype, gb", [("fp32", 112), ("bf16", 56)])
def test_seed_7b_training_is_4x_inference(dtype, gb):
    # weights + gradients + 2 AdamW states, all in the same dtype = 4 x inference
    assert rule("7B", dtype, mode="train", optimizer="adamw") == gb * 10**9
    assert rule("7B", dtype, mode="train", optimizer="adamw") == 4 * rule("7B", dtype)


def test_seed_sgd_keeps_one_state():
    # seed: "AdamW keeps 2 states per param, SGD 1" -> 7e9 x 2 bytes x (1 + 1 + 1)
    assert rule("7B", "bf16", mode="train", optimizer="sgd-momentum") == 42 * 10**9


def test_seed_in_gib():
    # 14e9 bytes / 1024^3 = 13.04 GiB
    assert f"{rule('7B', 'bf16') / GiB:.2f}" == "13.04"


def test_seed_lora_matrix():
    # a 1024 x 512 matrix at r = 8 trains 1024*8 + 512*8 = 12,288 params
    assert lora_matrix_params(1024, 512, 8) == 1024 * 8 + 512 * 8 == 12_288


# --- detailed: hand-computed breakdowns --------------------------------------------------------


def test_llama7b_full_training_mixed_precision():
    run = adhoc_run({**LLAMA2_7B_KEYS, "mode": "train", "dtype": "bf16", "optimizer": "adamw", "batch-size": 1,
                     "seq-len": 2048, "gradient-checkpointing": True})
    est = estimate(run)
    b = est.full_terms
    assert est.params == P7B
    assert b["weights"] == P7B * 2  # bf16
    assert b["master_weights"] == P7B * 4  # fp32 copy
    assert b["gradients"] == P7B * 2  # bf16 grads
    assert b["optimizer_states"] == P7B * 8  # 2 fp32 AdamW states
    # 16 bytes/param of model states, the ZeRO paper's figure: 107,814,649,856 B
    assert b["weights"] + b["master_weights"] + b["gradients"] + b["optimizer_states"] == 16 * P7B
    T, h, f, V = 2048, 4096, 11008, 32000
    layer_inputs = 32 * T * h * 2  # checkpoints: 536,870,912
    norm = T * h * 4 + T * h * 2 + T * 4  # fp32 upcast + normalised bf16 + rsqrt: 50,339,840
    attention = norm + T * h * 2 + T * 3 * h * 2 + T * h * 2 + 32 * T * 4  # + q/k/v input, q,k,v, out, lse = 134,488,064
    mlp = norm + T * h * 2 + 3 * T * f * 2 + T * f * 2  # + gate/up input, gate,up,act, down input = 247,472,128
    head = 2 * T * 8 + norm + T * h * 2  # ids + labels, final norm, lm_head input = 67,149,824
    rotary = 2 * T * 128 * 2  # cos and sin (1, seq, head_dim) in bf16, kept while a layer is recomputed: 1,048,576
    assert b["activations"] == layer_inputs + attention + mlp + rotary + head == 987_029_504
    # bf16 logits, fp32 log-softmax, and two fp32 gradients at the start of backward (nll_loss's and
    # log_softmax_backward's): the term's full size over the step
    assert b["logits"] == T * V * (2 + 4 + 8) == 917_504_000
    # The peak is the optimizer step (job_phases.step_gradients): the bf16 gradients cast onto the fp32 masters,
    # 4 B/param, the head's V x h bf16 gradient still being cast; no activations or loss buffers there, so no
    # fragmentation. The backward peaks at its end (core/terms/backward.py: 13.5 GB of gradients against 0.45 GB
    # of saved activations and 0.79 GB of loss buffers at its start): every bf16 gradient and the (T, h) bf16
    # gradient flowing into the embedding.
    assert est.peak_phase == "optimizer step"
    assert est.breakdown["gradients"] == P7B * 4 + V * h * 2
    assert est.breakdown["activations"] == est.breakdown["logits"] == 0
    assert est.details["backward.activations.embedding_grad_input"] == T * h * 2
    assert b["overhead"] == CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES
    assert b["kv_cache"] == 0


def test_llama7b_inference_kv_cache():
    run = adhoc_run({**LLAMA2_7B_KEYS, "mode": "inference", "dtype": "bf16", "batch-size": 8, "seq-len": 4096, "logits": "all"})
    b = estimate(run).full_terms
    assert b["weights"] == P7B * 2
    # 2 (K,V) x 32 layers x 32 heads x 128 dims x 4096 tokens x 8 sequences x 2 bytes = 16 GiB
    assert b["kv_cache"] == 2 * 32 * 32 * 128 * 4096 * 8 * 2 == 16 * GiB
    assert b["logits"] == 8 * 4096 * 32000 * 2  # every position's logits, bf16
    # widest layer temporary: gated MLP act, up and product (3 x T x f x 2) beside residual + norm out
    T = 8 * 4096
    assert b["activations"] == 2 * T * 4096 * 2 + 3 * T * 11008 * 2
    assert b["gradients"] == b["optimizer_states"] == b["master_weights"] == 0


def test_llama7b_qlora():
    run = adhoc_run({**LLAMA2_7B_KEYS, "mode": "qlora", "lora-rank": 8, "batch-size": 1, "seq-len": 512,
                     "gradient-checkpointing": True, "double-quant": True})
    est = estimate(run)
    b = est.full_terms
    linear = 32 * (4 * 4096**2 + 3 * 4096 * 11008)  # 6,476,005,376 quantised weights
    rest = P7B - linear  # embeddings, head, norms stay bf16: 262,410,240
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits + 8-bit absmax/64 + fp32 scale per 256 blocks
    adapters = 32 * 2 * 8 * (4096 + 4096)  # q_proj and v_proj at r = 8: 4,194,304
    assert est.trainable_params == adapters
    assert b["weights"] == round(linear * nf4 + rest * 2) + adapters * 4  # adapters fp32 (PEFT default)
    assert abs(nf4 - 0.516) < 0.001
    assert b["gradients"] == adapters * 4
    assert b["optimizer_states"] == adapters * 8
    assert b["master_weights"] == 0
    # BitsAndBytesConfig's default is no double quantisation: one fp32 absmax per 64 weights
    plain = estimate(run._replace(knobs=run.knobs._replace(double_quant=False))).breakdown
    assert plain["weights"] == round(linear * (0.5 + 4 / 64) + rest * 2) + adapters * 4


def test_params_only_says_what_is_missing():
    est = estimate(adhoc_run({"params": "7B", "mode": "train", "dtype": "bf16"}))
    assert est.full("activations") == 0
    assert any("activations, logits and KV cache not computed" in n and "hidden-size" in n for n in est.notes)
    assert est.breakdown["optimizer_states"] == 7 * 10**9 * 8


def test_amp_keeps_fp32_weights_and_16bit_copies():
    run = adhoc_run({**LLAMA2_7B_KEYS, "mode": "train", "dtype": "fp16", "precision": "amp", "seq-len": 512})
    est = estimate(run)
    linear_and_head = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    assert est.breakdown["weights"] == P7B * 4 + linear_and_head * 2
    assert est.full("gradients") == P7B * 4
    assert est.breakdown["master_weights"] == 0


def test_ddp_duplicates_gradients_in_buckets():
    one = estimate(adhoc_run({"params": "1B", "mode": "train", "dtype": "bf16"}))
    eight = estimate(adhoc_run({"params": "1B", "mode": "train", "dtype": "bf16", "gpus": 8}))
    assert eight.full("gradients") == 2 * one.full("gradients") == 4 * 10**9


def test_adafactor_factored_states():
    # gpt2-style tiny model: per layer matrices c_attn 64x192, c_proj 64x64, c_fc 64x256, mlp.c_proj 256x64
    keys = {"family": "gpt2", "hidden-size": 64, "num-layers": 1, "num-heads": 4, "vocab-size": 100, "max-position-embeddings": 16}
    est = estimate(adhoc_run({**keys, "mode": "train", "dtype": "fp32", "optimizer": "adafactor", "seq-len": 8}))
    matrices = (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)  # row + column vectors
    vectors = 192 + 64 + 256 + 64 + 2 * 64 * 3  # biases, then 2 LayerNorms + final LayerNorm (weight + bias)
    embedding = 100 + 64  # wte factored, tied head
    assert est.breakdown["optimizer_states"] == (matrices + vectors + embedding) * 4


# --- detailed vs the shared ground truth ---------------------------------------------------------

GROUNDTRUTH = Path(__file__).resolve().parents[2] / "shared" / "validation" / "groundtruth.jsonl"


@pytest.mark.skipif(not GROUNDTRUTH.exists(), reason="../shared/validation not beside this checkout")
def test_saved_activations_match_pytorch_groundtruth_for_full_training():
    """Activations + log-softmax vs the bytes autograd saved on real HF models (PyTorch 2.13, CPU)."""
    for line in GROUNDTRUTH.read_text().splitlines():
        case = json.loads(line)
        if case["mode"] != "train":
            continue
        spec = dict(case["spec"])
        arch = spec.pop("arch")
        keys = {"family": arch, "hidden-size": spec.get("hidden_size", spec.get("n_embd")),
                "num-layers": spec.get("num_hidden_layers", spec.get("n_layer")),
                "num-heads": spec.get("num_attention_heads", spec.get("n_head")), "vocab-size": spec["vocab_size"]}
        if arch == "gpt2":
            keys["max-position-embeddings"] = spec["n_positions"]
        else:
            keys.update({"num-kv-heads": spec["num_key_value_heads"], "intermediate-size": spec["intermediate_size"]})
        run = adhoc_run({**keys, "mode": "train", "dtype": case["dtype"], "precision": "pure", "optimizer": case["optimizer"],
                         "batch-size": case["batch"], "seq-len": case["seq"], "gradient-checkpointing": bool(case["grad_ckpt"]),
                         "flash-attention": case["attn"] == "sdpa"})
        est = estimate(run)
        saved = est.full("activations") + est.details["logits.log_softmax"]
        if case["grad_ckpt"]:
            saved -= est.details["activations.recomputed_layer"]  # the shared data excludes the backward recompute
        assert abs(saved / case["saved_bytes"] - 1) < 0.01, case
        assert est.details["logits.logits"] == case["logits_bytes"]
        assert est.full("gradients") == case["grad_bytes"]
        assert est.breakdown["optimizer_states"] == case["opt_state_bytes"]
        assert est.breakdown["weights"] == case["param_bytes"]


def test_lora_b_keeps_lora_a_output():
    """lora_B's weight gradient needs lora_A's output: tokens x r in the adapter dtype per adapted linear.

    Hand count: 2 layers x 2 adapted linears (q_proj, v_proj) x 1024 tokens x (16 - 8) ranks x 4 B (fp32
    adapters, PEFT's default) = 131,072 B more activations at r=16 than at r=8; measured on TRL's DPO LoRA
    step and the shared ground-truth LoRA rows, which now match to 0.00 %.
    """
    shape = {"hidden-size": 256, "num-layers": 2, "num-heads": 4, "intermediate-size": 512, "vocab-size": 1000,
             "mode": "lora", "dtype": "bf16", "batch-size": 1, "seq-len": 1024, "lora-targets": ["q_proj", "v_proj"]}
    r8 = estimate(adhoc_run({**shape, "lora-rank": 8}))
    r16 = estimate(adhoc_run({**shape, "lora-rank": 16}))
    assert r16.full("activations") - r8.full("activations") == 2 * 2 * 1024 * 8 * 4
