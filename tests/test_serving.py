"""Inference as generate() and serving engines run it (issue 12): last-position logits for generation,
KV over prompt + new tokens, and vLLM / SGLang start-up with their verdicts. Figures are computed by
hand in the comments and checked against the engines' published start-up logs."""

import json
from pathlib import Path

import pytest

from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.serving.engines import largest_max_model_len
from pytest_llmmem.serving.serve import KVKind
from pytest_llmmem.fit.serving import answers
from pytest_llmmem.serving.vllm_engine import _pool

GiB = 2**30
ROOT = Path(__file__).resolve().parents[1]
# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json, shape keys).
LLAMA31_8B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 8,
              "intermediate-size": 14336, "vocab-size": 128256, "max-position-embeddings": 131072}
V0_3090 = {**LLAMA31_8B, "mode": "inference", "engine": "vllm", "engine-version": "0.6.4", "gpu": "RTX-3090"}


# --- generate() and scoring forwards --------------------------------------------------------------

def test_generation_keeps_only_the_last_positions_logits():
    run = adhoc_run({**LLAMA31_8B, "mode": "inference", "prompt-len": 8192, "new-tokens": 256, "batch-size": 2})
    est = estimate(run)
    # logits_to_keep=1: 2 rows x 128,256 in bf16, plus generate()'s fp32 copy of them.
    assert est.details["logits.last_position"] == 2 * 128256 * 2
    assert est.details["logits.fp32_scores"] == 2 * 128256 * 4
    assert est.breakdown["logits"] == 2 * 128256 * 6
    # The cache holds prompt + new tokens: 2 (K,V) x 32 layers x 8 heads x 128 x 8448 tokens x 2 seqs x 2 B.
    assert est.breakdown["kv_cache"] == 2 * 32 * 8 * 128 * 8448 * 2 * 2
    # The prefill's transient covers the prompt only: residual + norm out (2 T h) beside the gated MLP's 3 T f.
    T = 2 * 8192
    assert est.breakdown["activations"] == 2 * T * 4096 * 2 + 3 * T * 14336 * 2


def test_scoring_forward_keeps_every_positions_logits():
    run = adhoc_run({**LLAMA31_8B, "mode": "inference", "seq-len": 4096, "logits": "all"})
    assert estimate(run).breakdown["logits"] == 4096 * 128256 * 2  # every position, bf16
    last = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "seq-len": 4096}))
    assert last.breakdown["logits"] == 128256 * 2  # a plain forward with logits_to_keep=1: no fp32 copy


def test_issue_12_long_context_no_longer_counts_31_gib_of_logits():
    # The issue's new user: Llama-3.1-8B bf16 at 131,072 tokens on an H100 was OVER with 31 GiB of logits.
    est = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "seq-len": 131072, "gpu": "H100-80GB"}))
    assert est.breakdown["logits"] == 128256 * 2
    assert est.fits


def test_seq_len_must_be_prompt_plus_new_tokens():
    with pytest.raises(ConfigError, match="seq-len 4096 is not prompt-len 4000 \\+ new-tokens 200 = 4200"):
        adhoc_run({**LLAMA31_8B, "mode": "inference", "seq-len": 4096, "prompt-len": 4000, "new-tokens": 200})
    run = adhoc_run({**LLAMA31_8B, "mode": "inference", "seq-len": 4096, "new-tokens": 96})
    assert (run.prompt_len, run.new_tokens, run.seq_len) == (4000, 96, 4096)


H100_PEAKS = ROOT / "benchmarks" / "data" / "gpu-peaks-h100.jsonl"


@pytest.mark.skipif(not H100_PEAKS.exists(), reason="H100 measurements not in this checkout")
def test_prefill_peak_matches_the_h100_measurement_with_last_position_logits(tmp_path):
    rows = [json.loads(line) for line in H100_PEAKS.read_text().splitlines()]
    row = next(r for r in rows if r["scenario"]["name"] == "Llama-3.1-8B" and r["scenario"].get("logits") == "last")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(row["config"]))
    est = estimate(adhoc_run({"config": str(config), "mode": "inference", "seq-len": row["scenario"]["seq"]}))
    tensors = est.total_bytes - est.breakdown["overhead"]  # max_memory_allocated counts tensors only
    # Measured 18,145,224,192 B (torch.cuda.max_memory_allocated, transformers 5.17, SDPA); estimate 17,973,381,632 B.
    assert abs(tensors / row["phases"]["prefill"]["max_allocated"] - 1) < 0.02


# --- vLLM start-up ---------------------------------------------------------------------------------

def test_vllm_v0_start_up_matches_issue_10517_at_20k():
    est = estimate(adhoc_run({**V0_3090, "max-model-len": 20000}))
    s = est.serving
    # 0.9 x 23.58 GiB = 22,786,948,989 B; weights 8,030,261,248 x 2 + rotary cache 131,072 x 128 x 2 = 16,094,076,928;
    # profile forward 20,000 tokens x (3 x 14,336 + 3 x 4,096) x 2 = 2,211,840,000; non-torch 0.35 GiB = 375,809,638.
    assert s.kv_pool_bytes == 22786948989 - 16094076928 - 2211840000 - 375809638 == 4105222423
    # a block: 16 tokens x 32 layers x 2 x 8 x 128 x 2 B = 2 MiB -> 1957 blocks (the log: 1952), 31,312 tokens (31,232).
    assert (s.blocks, s.tokens) == (1957, 31312)
    assert abs(s.tokens / 31232 - 1) < 0.01
    assert s.starts and est.fits
    assert round(s.max_concurrency, 2) == 1.57  # the log: 1.56x


T4_LLAMA32_3B = {"config": str(ROOT / "pytest_llmmem" / "models" / "meta-llama--Llama-3.2-3B-Instruct" / "config.json"),
                 "mode": "inference", "dtype": "fp16", "engine": "vllm", "engine-version": "0.8.2", "gpu": "T4",
                 "gpu-memory-utilization": 0.8938626454842437, "max-model-len": 2048, "max-num-seqs": 192,
                 "max-num-batched-tokens": 2048}


def test_vllm_08_falls_back_to_v0_below_compute_capability_8_like_the_t4_log():
    """vLLM 0.8.2 on a T4 (cc 7.5) runs V0 (serving-logs.jsonl vllm-cookbook-t4-llama32-3b-v0-fallback):
    13.18 GiB usable, weights 6.02, non-torch 0.05, activation peak 0.90, KV 6.22 GiB, 3637 blocks."""
    s = estimate(adhoc_run(T4_LLAMA32_3B)).serving
    assert s.version == "0.8 (V0 engine)"
    # total 14.74 GiB = 15,826,954,486 B (the log); x 0.8938626454842437 = 14,147,123,407 (ceil).
    assert s.total_bytes == 15826954486
    # weights 3,212,749,824 params x 2 B (tied embeddings; llama3 rope: no cos/sin cache counted) = 6,425,499,648;
    # V0 sampler: 192 rows x 128,256 x 38 B + 2048 x 3072 x 2 B = 948,338,688 (the log: 0.90 GiB = 966 MB);
    # V0 non-torch 0.07 GiB = 75,161,928.
    assert s.kv_pool_bytes == 14147123407 - 6425499648 - 948338688 - 75161928 == 6698123143
    # a block: 16 x 28 layers x 2 x 8 x 128 x 2 B = 1,835,008 B -> 3650 blocks, 58,400 tokens (the log: 3637, 58,192).
    assert (s.blocks, s.tokens) == (3650, 58400)
    assert s.starts and abs(s.tokens / 58192 - 1) < 0.01


def test_vllm_08_09_fp8_kv_cache_falls_back_to_v0_off_hopper():
    # _is_v1_supported_oracle: an fp8 KV cache stays on V1 only where FlashAttention 3 takes fp8 (Hopper).
    fp8 = {**T4_LLAMA32_3B, "kv-cache-dtype": "fp8"}
    assert estimate(adhoc_run({**fp8, "gpu": "A100-80GB"})).serving.version == "0.8 (V0 engine)"
    assert estimate(adhoc_run({**fp8, "gpu": "H100-80GB"})).serving.version == "0.8"
    assert estimate(adhoc_run({**fp8, "gpu": "A100-80GB", "engine-version": "0.10.1"})).serving.version == "0.10"


def test_v1_is_kept_at_compute_capability_8_and_from_vllm_011():
    # An A100 (cc 8.0) stays on V1 at 0.8.2; 0.11 removed V0, so a T4 runs V1 there.
    assert estimate(adhoc_run({**T4_LLAMA32_3B, "gpu": "A100-80GB"})).serving.version == "0.8"
    assert estimate(adhoc_run({**T4_LLAMA32_3B, "engine-version": "0.10.1"})).serving.version == "0.10 (V0 engine)"
    assert estimate(adhoc_run({**T4_LLAMA32_3B, "engine-version": "0.11.0"})).serving.version == "0.11"


def test_vllm_refuses_29k_as_in_issue_10517():
    est = estimate(adhoc_run({**V0_3090, "max-model-len": 29000}))
    assert not est.serving.starts and est.fits is False
    assert "max seq len (29000) is larger than the maximum number of tokens that can be stored in KV cache" in est.failures[0]
    # The log: 23,648 tokens; here 23,712.
    assert abs(est.serving.tokens / 23648 - 1) < 0.01


def test_largest_max_model_len_follows_chunked_prefill_like_issue_10517():
    # 20k and 35k/45k start, 29k does not: above 32k vLLM V0 prefills in 512-token chunks and the profile shrinks.
    run = adhoc_run({**V0_3090, "max-model-len": 20000})
    longest = largest_max_model_len(run)
    assert longest > 45000
    assert estimate(adhoc_run({**V0_3090, "max-model-len": longest})).serving.starts
    assert not estimate(adhoc_run({**V0_3090, "max-model-len": longest + 16})).serving.starts


def test_hybrid_sliding_window_pool_matches_the_gpt_oss_120b_log():
    # gpt-oss-120b at TP 4: 18 full + 18 sliding(128) layers, 2 KV heads x 64 x 2 (K,V) x 2 B = 512 B per token per layer.
    kinds = [KVKind("full", 18, 512), KVKind("sliding", 18, 512, 128)]
    page, blocks, tokens, per_request = _pool(kinds, int(45.32 * GiB), 16, 16384, 2048, hybrid=True)
    assert page == 16 * 512
    assert blocks == int(45.32 * GiB) // 8192 // 18 == 330010  # the log: 330,018 (its GiB is rounded)
    assert tokens == blocks // 2 * 16  # two groups share the blocks
    # one request: full cdiv(16384, 16) = 1024 blocks; sliding cdiv(127 + 2048, 16) + 1 = 137
    assert per_request == 1161
    assert round(blocks / per_request, 2) == 284.25  # the log: "Maximum concurrency ... 284.25x"


def test_fp8_kv_cache_halves_the_bytes_per_token():
    base = estimate(adhoc_run({**V0_3090, "max-model-len": 20000})).serving
    fp8 = estimate(adhoc_run({**V0_3090, "max-model-len": 20000, "kv-cache-dtype": "fp8"})).serving
    assert fp8.blocks == base.kv_pool_bytes // (16 * 32 * 2 * 8 * 128 * 1)


def test_min_concurrency_fails_the_run_and_fit_offers_ways_out():
    est = estimate(adhoc_run({**V0_3090, "max-model-len": 20000, "min-concurrency": 2}))
    assert est.fits is False and "min-concurrency 2 not met" in est.failures[0]
    lines = answers(adhoc_run({**V0_3090, "max-model-len": 20000, "min-concurrency": 2}))
    assert any(line.startswith("smallest tensor-parallel that meets min-concurrency: 2") for line in lines)


def test_v1_refuses_a_utilization_above_the_free_memory():
    # H100: 79.18 GiB, 0.61 GiB taken by the CUDA context before vLLM starts; 1.0 asks for all of it.
    est = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "vllm", "gpu": "H100-80GB",
                              "gpu-memory-utilization": 1.0, "max-model-len": 16000}))
    assert "less than desired GPU memory utilization" in est.serving.refusal


def test_v1_defaults_on_h100_match_the_llm_d_llama_log():
    # vLLM 0.11 on an H100: 8192 batched tokens, 1024 sequences; the dummy sampler (1024 x 128,256 x 38 B
    # + 8192 x 4096 x 2 B of hidden states) outweighs the forward. The log: 51.38 GiB available.
    s = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "vllm", "gpu": "H100-80GB", "max-model-len": 16000,
                            "block-size": 128})).serving
    assert (s.max_num_batched_tokens, s.max_num_seqs) == (8192, 1024)
    assert s.activation_bytes == 1024 * 128256 * 38 + 8192 * 4096 * 2
    assert abs(s.kv_pool_bytes / GiB / 51.38 - 1) < 0.01


def test_sglang_pool_is_the_fraction_of_free_memory_left_after_the_weights():
    run = adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "sglang", "gpu": "H100-80GB", "max-model-len": 8192})
    s = estimate(run).serving
    assert s.utilization == 0.88  # SGLang 0.4 default at TP 1
    free = 85017493504 - round(0.61 * GiB)
    rest = free - s.weights_bytes - round(free * 0.12)
    assert s.tokens == rest // (32 * 2 * 8 * 128 * 2)  # page size 1: one token of K and V over all layers


# --- the contract ----------------------------------------------------------------------------------

def test_serving_keys_parse_from_pyproject():
    text = """
[tool.llmmem]
gpu = "A100-80GB"
[tool.llmmem.model]
hidden-size = 4096
num-layers = 32
num-heads = 32
num-kv-heads = 8
intermediate-size = 14336
vocab-size = 128256
max-position-embeddings = 131072
[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
engine = "vllm"
gpu-memory-utilization = 0.85
max-model-len = 32768
max-num-seqs = 128
max-num-batched-tokens = 4096
kv-cache-dtype = "fp8"
block-size = 32
enforce-eager = true
min-concurrency = 4
engine-version = "v0.10.2"
tensor-parallel = 2
gpus = 2
"""
    run = parse(text).runs[0]
    s = run.serve
    assert (s.gpu_memory_utilization, s.max_model_len, s.max_num_seqs, s.max_num_batched_tokens) == (0.85, 32768, 128, 4096)
    assert (s.kv_cache_dtype, s.block_size, s.enforce_eager, s.min_concurrency, s.engine_version) == ("fp8", 32, True, 4.0, "0.10.2")
    est = estimate(run)
    assert est.serving.max_num_batched_tokens == 4096 and est.serving.utilization == 0.85
    # TP 2 splits 8 KV heads to 4; fp8 keeps 1 B: a block is 32 tokens x 32 layers x 2 x 4 x 128 x 1 B.
    assert est.serving.blocks == est.serving.kv_pool_bytes // (32 * 32 * 2 * 4 * 128)


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "0.9", True])
def test_gpu_memory_utilization_must_be_in_zero_one(value):
    with pytest.raises(ConfigError, match="above 0 and at most 1"):
        adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "vllm", "gpu": "H100-80GB", "gpu-memory-utilization": value})


def test_max_model_len_above_the_context_needs_rope_scaling(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    run = adhoc_run({"config": str(path), "mode": "inference", "engine": "vllm", "gpu": "H100-80GB", "max-model-len": 131072})
    assert run.serve.max_model_len == 131072  # config.json readers that know the context check it at the limit
    with pytest.raises(ConfigError, match="more than the model's context"):
        adhoc_run({**LLAMA31_8B, "max-position-embeddings": 8192, "mode": "inference", "engine": "vllm", "max-model-len": 8193})



def test_a_gpu_without_a_measured_cuda_total_is_flagged_approximate():
    est = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "vllm", "gpu": "L40S", "max-model-len": 8192}))
    assert any("the catalog size was used" in reason for reason in est.approximate)
    exact = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "vllm", "gpu": "H100-80GB", "max-model-len": 8192}))
    assert not exact.approximate


def test_serving_takes_the_cuda_total_from_the_gpu_catalog():
    """One table: the catalog's GPU.cuda_total_bytes. The RTX A6000's is what a CUDA OOM on it prints, "47.54 GiB total
    capacity" (artidoro/qlora issue 17), not nvidia-smi's 49,140 MiB = 47.99 GiB, and the estimate is no longer flagged."""
    est = estimate(adhoc_run({**LLAMA31_8B, "mode": "inference", "engine": "vllm", "gpu": "RTX-A6000", "max-model-len": 8192}))
    assert est.serving.total_bytes == round(47.54 * 2**30) and not est.approximate
    assert est.run.budget.bytes == 49140 * 2**20  # the budget stays the card's nvidia-smi total


def test_cli_estimate_takes_the_engine_flags(run_cli):
    shape = ["--family", "llama", "--hidden-size", "4096", "--num-layers", "32", "--num-heads", "32", "--num-kv-heads", "8",
             "--intermediate-size", "14336", "--vocab-size", "128256", "--max-position-embeddings", "131072"]
    code, out, _ = run_cli("estimate", *shape, "--mode", "inference", "--engine", "vllm", "--gpu", "RTX-3090",
                           "--engine-version", "0.6.4", "--max-model-len", "29000", "--format", "json")
    doc = json.loads(out)
    serving = doc["runs"][0]["serving"]
    assert code == 1 and serving["starts"] is False and serving["kv_cache_tokens"] == 23712  # issue 10517 printed 23,648
    code, _, err = run_cli("estimate", *shape, "--mode", "inference", "--engine", "vllm", "--gpu-memory-utilization", "0")
    assert code == 2 and "--gpu-memory-utilization: expected a fraction" in err


def test_every_published_start_up_log_meets_the_issue_targets():
    """benchmarks/data/serving-logs.jsonl: the verdict right on every log, KV tokens within 5 % median / 15 % worst."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serving_accuracy import score

    summary = score(ROOT / "benchmarks" / "data" / "serving-logs.jsonl")["summary"]
    # 21 logs; the AWQ Mixtral on vLLM 0.2.7 is marked approximate by the estimate itself and scored apart.
    assert (summary["rows"], summary["scored"], summary["unmodelled"]) == (22, 21, 1)
    assert summary["verdicts_right"] == summary["scored"]
    assert summary["tokens_median_abs"] <= 5 and summary["tokens_worst_abs"] <= 15
    assert summary["memory_median_abs"] <= 5 and summary["memory_worst_abs"] <= 15


def test_the_checkpoint_quantization_is_read_from_config_json(tmp_path):
    # vLLM takes quantization_config.quant_method when --quantization is not given; gpt-oss ships MXFP4 experts.
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "data" / "serving-logs.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["id"] == "vllm-llmd-h100-gptoss20b")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(row["arch"]))
    s = estimate(adhoc_run({"config": str(config), "mode": "inference", "engine": "vllm", "gpu": "H100-80GB",
                            "max-model-len": 16000})).serving
    assert abs(s.weights_bytes / GiB / row["weights_gib"] - 1) < 0.01  # the log: "Model loading took 13.47 GiB"


def test_an_attention_free_model_holds_one_state_per_request(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280,
                                  "state_size": 16, "expand": 2, "conv_kernel": 4}))
    est = estimate(adhoc_run({"config": str(config), "mode": "inference", "engine": "vllm", "gpu": "H100-80GB", "max-model-len": 4096}))
    s = est.serving
    # 24 layers x (d_inner 1536 x (conv 4 + state 16)) x 2 B per sequence, whatever its length
    assert s.page_bytes == 24 * 1536 * 20 * 2
    assert s.blocks == s.kv_pool_bytes // s.page_bytes and s.max_concurrency == s.blocks


GENERATE_H100 = ROOT / "benchmarks" / "data" / "gpu-generate-h100.jsonl"


@pytest.mark.skipif(not GENERATE_H100.exists(), reason="H100 generate() measurements not in this checkout")
def test_generate_peak_matches_the_h100_measurements(tmp_path):
    """generate() on an H100 (prompt + new tokens, greedy): within 1 % of max_memory_allocated on every row
    (Llama-3.1-8B 8192+256: -0.76 %; 4 x 2048+512: +0.55 %; Qwen3-8B 2 x 4096+256: -0.52 %)."""
    for line in GENERATE_H100.read_text().splitlines():
        row = json.loads(line)
        sc = row["scenario"]
        config = tmp_path / "config.json"
        config.write_text(json.dumps(row["config"]))
        est = estimate(adhoc_run({"config": str(config), "mode": "inference", "batch-size": sc["batch"],
                                  "prompt-len": sc["prompt"], "new-tokens": sc["new"]}))
        tensors = est.total_bytes - est.breakdown["overhead"]
        assert abs(tensors / row["max_allocated"] - 1) < 0.01, sc


def _block_fp8_qwen3_30b(tmp_path):
    """Qwen3-30B-A3B's config with a block-fp8 quantization_config (as the -FP8 checkpoint ships it)."""
    config = json.loads((ROOT / "pytest_llmmem" / "models" / "Qwen--Qwen3-30B-A3B" / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": [128, 128]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return {"config": str(path), "mode": "inference", "engine": "vllm", "gpu": "H100-80GB", "tensor-parallel": 4,
            "gpus": 4, "max-model-len": 32768}


def test_block_fp8_moe_counts_its_scales_whole_routers_and_the_fused_moe_buffers(tmp_path):
    s = estimate(adhoc_run(_block_fp8_qwen3_30b(tmp_path))).serving
    items = dict(s.items)
    # Routers: ReplicatedLinear, unquantised: 48 layers x 2048 x 128 x 2 B on every rank.
    assert items["weights.router_replicated"] == 48 * 2048 * 128 * 2 == 25165824
    # One fp32 scale per 128 x 128 block on a TP-4 rank, per layer: q (4096/4 out) 8 x 16 = 128, k and v
    # (512/4 out) 1 x 16 each, o (4096/4 in) 16 x 8 = 128, 128 experts x (gate 2 x 16 + up 2 x 16 + down 16 x 2)
    # = 12,288 -> 12,576 scales x 4 B x 48 layers.
    assert items["weights.fp8_block_scales"] == 12576 * 4 * 48 == 2414592
    # fused_experts_impl at 8192 tokens (the H100 default), f = 768 / 4 = 192, top-8: cache13 + cache2 =
    # 8192 x 8 x (max(384, 2048) + 192) x 2 B, router logits + top-k weights/ids 8192 x (128 x 2 + 8 x 8),
    # fp8 inputs 8192 x (2048 + 4 x 16) + 8192 x 8 x (192 + 4 x 2); beside 3 hidden-size tensors 8192 x 3 x 2048 x 2.
    workspace = 8192 * 8 * 2240 * 2 + 8192 * 320 + 8192 * 2112 + 65536 * 200
    assert items["activations.profile_forward"] == 8192 * 3 * 2048 * 2 + workspace == 427294720
    assert any("block-fp8 MoE at tensor-parallel >= 4" in a for a in s.approximate)


def test_block_fp8_moe_below_tp_4_and_bf16_moe_are_not_marked(tmp_path):
    run = _block_fp8_qwen3_30b(tmp_path)
    assert not any("block-fp8" in a for a in estimate(adhoc_run({**run, "tensor-parallel": 2, "gpus": 2})).serving.approximate)
    bf16 = {**run, "config": str(ROOT / "pytest_llmmem" / "models" / "Qwen--Qwen3-30B-A3B" / "config.json")}
    s = estimate(adhoc_run(bf16)).serving
    assert "weights.fp8_block_scales" not in dict(s.items) and not any("block-fp8" in a for a in s.approximate)


def test_vllm_02_awq_counts_the_split_k_buffers_of_its_moe_loop():
    """vLLM issue 2382: Mixtral-8x7B AWQ on vLLM 0.2.7, TP 2 on A100 80GB, utilization 0.5: 6487 blocks."""
    mixtral = str(ROOT / "pytest_llmmem" / "models" / "mistralai--Mixtral-8x7B-v0.1" / "config.json")
    s = estimate(adhoc_run({"config": mixtral, "mode": "inference", "engine": "vllm", "engine-version": "0.2.7",
                            "gpu": "A100-80GB", "tensor-parallel": 2, "gpus": 2, "quantization": "awq",
                            "gpu-memory-utilization": 0.5})).serving
    # Profile run of max(32768, 2048) tokens; each expert over every token: w3's (8, T, 14336) split-K buffer and its
    # sum beside w1's activated output, 10 x T x 14336, plus 3 hidden-size tensors, fp16.
    assert dict(s.items)["activations.profile_forward"] == 32768 * (10 * 14336 + 3 * 4096) * 2 == 10200547328
    assert s.unmodelled and s.unmodelled[0].startswith("vLLM < 0.3")


def test_vllm_before_0_3_is_marked_approximate_with_the_reason():
    est = estimate(adhoc_run({**V0_3090, "engine-version": "0.2.7", "max-model-len": 4096}))
    assert any(a.startswith("vLLM < 0.3: the 0.2 engine's profile run is modelled only in part") for a in est.approximate)
    assert not any("vLLM < 0.3" in a for a in estimate(adhoc_run({**V0_3090, "max-model-len": 4096})).approximate)


def test_qwen3_generate_at_long_prompts_is_marked_approximate_and_qwen25_is_not():
    qwen3 = {"config": str(ROOT / "pytest_llmmem" / "models" / "Qwen--Qwen3-8B" / "config.json"), "mode": "inference",
             "prompt-len": 8192, "new-tokens": 256}
    assert any(a.startswith("Qwen3 generate() with a prompt of 8k") for a in estimate(adhoc_run(qwen3)).approximate)
    assert not any("Qwen3 generate()" in a for a in estimate(adhoc_run({**qwen3, "prompt-len": 4096})).approximate)
    qwen25 = {**qwen3, "config": str(ROOT / "pytest_llmmem" / "models" / "Qwen--Qwen2.5-7B" / "config.json")}
    assert not any("Qwen3 generate()" in a for a in estimate(adhoc_run(qwen25)).approximate)
