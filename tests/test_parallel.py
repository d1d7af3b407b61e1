"""Per-GPU figures under ZeRO, FSDP, tensor/pipeline/expert parallelism and offload, by hand."""

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

P = 7 * 10**9  # params known by count only: model states and nothing else, so every figure is exact
LLAMA2_7B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "intermediate-size": 11008, "vocab-size": 32000}
P7B = 6_738_415_616
EMBED = 32000 * 4096  # 131,072,000: Llama-2-7B's largest single module


def states(**keys):
    b = estimate(adhoc_run({"mode": "train", "dtype": "bf16", "optimizer": "adamw", "gpu": "H100-80GB", **keys})).full_terms
    return b["weights"], b["master_weights"], b["gradients"], b["optimizer_states"]


def test_zero_stages_on_8_gpus():
    # DDP: 2 + 4 + 2 (+2 bucket copy) + 8 = 18 B/param on every GPU.
    assert states(params="7B", gpus=8) == (2 * P, 4 * P, 2 * P + 2 * P, 8 * P)
    # ZeRO-1: optimizer states and master shard over 8; full bf16 grads plus an fp32 grad partition.
    assert states(params="7B", gpus=8, zero_stage=1) == (2 * P, 4 * P // 8, 2 * P + 4 * P // 8, 8 * P // 8)
    # ZeRO-2: the bf16 gradient partition plus one 5e8-element reduce bucket (1e9 B) plus the fp32 partition.
    assert states(params="7B", gpus=8, zero_stage=2) == (2 * P, 4 * P // 8, 2 * P // 8 + 10**9 + 4 * P // 8, 8 * P // 8)
    # ZeRO-3: bf16 weight shard, fp32 grad partition, master and states: 18 B/param / 8.
    assert states(params="7B", gpus=8, zero_stage=3) == (2 * P // 8, 4 * P // 8, 4 * P // 8, 8 * P // 8)


def test_zero_totals_match_deepspeed_estimators():
    # estimate_zero2_model_states_mem_needs (stages 1 and 2): 4 * P + 16 * P / N
    assert sum(states(params="7B", gpus=8, zero_stage=1)) == 4 * P + 16 * P // 8 == 42 * 10**9
    # estimate_zero3_model_states_mem_needs: 4 * largest_layer_params + 18 * P / N
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "train", "dtype": "bf16", "gpu": "H100-80GB", "gpus": 8, "zero-stage": 3}))
    b = est.full_terms
    assert b["weights"] + b["master_weights"] + b["gradients"] + b["optimizer_states"] == 4 * EMBED + 18 * P7B // 8
    # The ZeRO paper's 16 B/param (2 + 2 + 12) is the DDP figure less DDP's bucket copy and the fp32 partition.
    assert sum(states(params="7B")) == 16 * P


def test_zero3_with_optimizer_offload_gpu_and_host():
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "train", "dtype": "bf16", "gpu": "A100-40GB", "gpus": 8, "zero-stage": 3,
                              "offload": "optimizer", "host-memory": "256 GiB", "seq-len": 2048, "gradient-checkpointing": True}))
    b = est.full_terms
    # GPU keeps the bf16 weight shard and the gathered largest layer (params + grads): DeepSpeed's
    # offload estimate "largest_layer_memory + 2 * P / N".
    assert b["weights"] + b["gradients"] == 2 * P7B // 8 + 4 * EMBED
    assert b["master_weights"] == b["optimizer_states"] == 0
    # Host: master 4 + states 8 + fp32 grads 4 = 16 B/param / 8 per GPU, x 8 GPUs on the node, x 1.5 pinned buffers.
    assert est.host_bytes == round(16 * P7B / 8 * 8 * 1.5) == 161_721_974_784
    assert est.host_fits and est.fits
    over = estimate(est.run._replace(host_memory_bytes=100 * 2**30))
    assert over.host_fits is False and over.fits is False


def test_offload_params_leaves_the_gathered_layer():
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "train", "dtype": "bf16", "gpu": "H100-80GB", "gpus": 8, "zero-stage": 3,
                              "offload": "optimizer+params"}))
    b = est.full_terms
    assert b["weights"] + b["gradients"] == 4 * EMBED  # DeepSpeed: largest_layer_memory only
    assert est.host_bytes == round(18 * P7B / 8 * 8 * 1.5)  # + the 2 B/param weight shard


def test_fsdp_full_shard():
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "train", "dtype": "bf16", "gpu": "H100-80GB", "gpus": 8, "fsdp": "full-shard"}))
    b = est.full_terms
    unit = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096  # one decoder layer, 202,383,360 params (> the embedding)
    assert b["weights"] == 2 * 2 * unit  # two bf16 units gathered (current + prefetched); the fp32 shard is the master
    assert b["master_weights"] == 4 * P7B // 8
    assert b["gradients"] == 4 * P7B // 8 + 2 * unit  # fp32 grad shard + the current unit's bf16 grads
    assert b["optimizer_states"] == 8 * P7B // 8


def test_fsdp_hybrid_shards_within_a_node():
    full = estimate(adhoc_run({"params": "7B", "mode": "train", "gpu": "H100-80GB", "gpus": 32, "fsdp": "full-shard"}))
    hybrid = estimate(adhoc_run({"params": "7B", "mode": "train", "gpu": "H100-80GB", "gpus": 32, "fsdp": "hybrid-shard"}))
    assert full.breakdown["optimizer_states"] == 8 * P // 32
    assert hybrid.breakdown["optimizer_states"] == 8 * P // 8  # shard group = the 8 GPUs of a node


LLAMA2_13B = {"family": "llama", "hidden-size": 5120, "num-layers": 40, "num-heads": 40, "intermediate-size": 13824, "vocab-size": 32000}


def test_tensor_and_pipeline_parallel_13b():
    run = adhoc_run({**LLAMA2_13B, "mode": "train", "dtype": "bf16", "gpu": "H100-80GB", "gpus": 4, "tensor-parallel": 2,
                     "pipeline-parallel": 2, "micro-batches": 4, "batch-size": 1, "seq-len": 2048})
    est = estimate(run)
    layer = 4 * 5120**2 + 3 * 5120 * 13824 + 2 * 5120  # 317,204,480
    last_stage = 20 * layer + 5120 + 32000 * 5120  # 20 layers + final norm + untied head = 6,507,934,720
    assert last_stage > 32000 * 5120 + 20 * layer  # the last stage is the fuller one
    assert est.breakdown["weights"] == 2 * (last_stage // 2)  # bf16, split over 2 tensor-parallel ranks
    assert est.full("gradients") == 2 * (last_stage // 2)  # dp = 1: no DDP buckets
    # Activations: the norms and the layer input stay whole on each rank; q/k/v, attention output,
    # log-sum-exp and the MLP intermediates split over t = 2 (Korthikanti et al. 2022).
    T, h, f = 2048, 5120, 13824
    norm = T * h * 4 + T * h * 2 + T * 4
    attention = norm + T * h * 2 + (T * 3 * h * 2 + T * h * 2 + 40 * T * 4) // 2
    mlp = norm + T * h * 2 + (3 * T * f * 2 + T * f * 2) // 2
    in_flight = 2  # 1F1B: the first of 2 stages holds min(2, 4 micro-batches)
    assert est.details["activations.attention"] == attention * 20 * in_flight
    assert est.details["activations.mlp"] == mlp * 20 * in_flight
    assert est.details["logits.logits"] == T * 32000 * 2 // 2  # vocab-parallel logits


def test_sequence_parallel_splits_the_rest():
    keys = {**LLAMA2_13B, "mode": "train", "dtype": "bf16", "gpu": "H100-80GB", "gpus": 2, "tensor-parallel": 2, "seq-len": 2048}
    plain = estimate(adhoc_run(keys)).details
    seq = estimate(adhoc_run({**keys, "sequence-parallel": True})).details
    T, h = 2048, 5120
    shared = T * h * 4 + T * h * 2 + T * 4 + T * h * 2  # norm + layer input, no longer replicated
    assert plain["activations.attention"] - seq["activations.attention"] == 40 * (shared - shared // 2)


def test_moe_expert_parallel():
    mixtral = {"family": "mixtral", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 8,
               "intermediate-size": 14336, "vocab-size": 32000, "num-experts": 8, "experts-per-token": 2}
    est = estimate(adhoc_run({**mixtral, "mode": "inference", "dtype": "bf16", "gpu": "H100-80GB", "gpus": 8, "expert-parallel": 8}))
    experts = 8 * 3 * 4096 * 14336  # 1,409,286,144 expert params per layer, 1 of 8 experts per GPU
    per_layer = 41_943_040 + 4096 * 8 + 2 * 4096 + experts // 8  # attention + router + norms + one expert
    local = 131_072_000 + 32 * per_layer + 4096 + 131_072_000
    assert est.breakdown["weights"] == 2 * local
    # Activations follow experts-per-token, not the number of experts.
    top1 = estimate(adhoc_run({**mixtral, "experts-per-token": 1, "mode": "train", "gpu": "H100-80GB", "seq-len": 512}))
    top2 = estimate(adhoc_run({**mixtral, "mode": "train", "gpu": "H100-80GB", "seq-len": 512}))
    many = estimate(adhoc_run({**mixtral, "num-experts": 64, "mode": "train", "gpu": "H100-80GB", "seq-len": 512}))
    assert top2.full("activations") > top1.full("activations")
    assert many.full("activations") - top2.full("activations") == 32 * 512 * (64 - 8) * 4  # router logits only


@pytest.mark.parametrize("keys, message", [
    ({"zero-stage": 3, "fsdp": "full-shard", "gpus": 8}, "both shard the model states"),
    ({"gpus": 6, "tensor-parallel": 4}, "cannot be split into tensor-parallel 4"),
    ({"offload": "optimizer"}, "needs ZeRO (zero-stage >= 1) or FSDP"),
    ({"offload": "optimizer+params", "zero-stage": 2, "gpus": 2}, "offloading parameters needs zero-stage = 3"),
    ({"sequence-parallel": True}, "tensor-parallel is 1"),
    ({"tensor-parallel": 3, "gpus": 3}, "does not divide the 32 attention heads"),
    ({"pipeline-parallel": 64, "gpus": 64}, "64 pipeline stages for 32 layers"),
    ({"expert-parallel": 2, "gpus": 2}, "must divide num-experts (0)"),
])
def test_contradictions_are_errors(keys, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        adhoc_run({**LLAMA2_7B, "mode": "train", "gpu": "H100-80GB", **keys})


# A small Llama: 4 layers of 16,777,216 linear weights (4 x 1024^2 attention + 3 x 1024 x 4096 MLP) and two
# 1024-wide norms; a 32,000 x 1024 embedding and an untied head of the same size, plus the final norm.
SMALL_LLAMA = {"family": "llama", "hidden-size": 1024, "num-layers": 4, "num-heads": 8, "intermediate-size": 4096, "vocab-size": 32000}
QLORA_FSDP = {**SMALL_LLAMA, "mode": "qlora", "dtype": "nf4", "double-quant": False, "gpu": "RTX-3090", "gpus": 2,
              "fsdp": "full-shard", "lora-targets": ["q_proj", "v_proj"], "lora-rank": 8, "adapter-dtype": "fp32"}
UNIT = 16_777_216 // 2 + 2 * 1024 * 2  # one decoder layer as FSDP gathers it: packed 4-bit weights + bf16 norms
ROOT_UNIT = (2 * 32000 * 1024 + 1024) * 2  # the root unit (embedding, final norm, head) in bf16
CONSTANTS = 4 * 16_777_216 * 4 // 64  # one fp32 absmax per 64 weights (no double quantisation), on both GPUs whole
STORED = 4 * 16_777_216 // 2 + (2 * 32000 * 1024 + 1024 + 4 * 2 * 1024) * 2  # the base FSDP shards, constants apart
ADAPTERS = 4 * 2 * 8 * (1024 + 1024) * 4  # r=8 A and B on q_proj and v_proj of 4 layers, fp32
# FSDP shards the adapters like every other parameter: half of them per GPU, with two units' (layers') adapters
# gathered for compute (ADAPTERS / 4 each) and one unit's unsharded gradient before its reduce-scatter
LAYER_ADAPTERS = ADAPTERS // 4


def test_fsdp_cpu_offload_leaves_the_gathered_units_of_a_qlora_base():
    # CPUOffload(offload_params=True): the shard lives on the CPU; the GPU holds the root unit (not freed after
    # forward), the layer being computed and the prefetched one, and bitsandbytes' quant_state (not a parameter).
    est = estimate(adhoc_run({**QLORA_FSDP, "offload": "optimizer+params"}))
    assert est.details["weights.gathered_for_compute"] == ROOT_UNIT + 2 * UNIT + 2 * LAYER_ADAPTERS == 148_121_600
    assert est.details["weights.quant_constants"] == CONSTANTS == 4_194_304
    assert est.breakdown["weights"] == ROOT_UNIT + 2 * UNIT + 2 * LAYER_ADAPTERS + CONSTANTS
    assert est.full("gradients") == LAYER_ADAPTERS and est.breakdown["optimizer_states"] == 0
    # the host: the base shard, the adapters' shard, their gradients' and AdamW's two states' (half each)
    assert est.details["host.offloaded_per_gpu"] == STORED // 2 + ADAPTERS // 2 + ADAPTERS // 2 + 2 * ADAPTERS // 2


def test_fsdp_without_offload_keeps_the_shard_and_gathers_the_units():
    est = estimate(adhoc_run(QLORA_FSDP))
    # the adapters' shard (ADAPTERS / 2) and two layers' adapters gathered (2 x ADAPTERS / 4)
    assert est.details["weights.adapters"] == ADAPTERS // 2
    assert est.breakdown["weights"] == STORED // 2 + CONSTANTS + ROOT_UNIT + 2 * UNIT + ADAPTERS // 2 + 2 * LAYER_ADAPTERS == 234_900_480
    # AdamW's two fp32 states of half the adapters; the gradient shard plus one unit's unsharded gradient
    assert est.full("optimizer_states") == 2 * ADAPTERS // 2
    assert est.full("gradients") == ADAPTERS // 2 + LAYER_ADAPTERS
    assert "host.offloaded_per_gpu" not in est.details


# Selective checkpointing and context parallelism on SMALL_LLAMA (full bf16 training, 1 x 1,024 tokens).
TRAIN_SMALL = {**SMALL_LLAMA, "mode": "train", "dtype": "bf16", "gpu": "H100-80GB", "batch-size": 1, "seq-len": 1024}


def _details(**keys):
    return estimate(adhoc_run({**TRAIN_SMALL, **keys})).details


def test_selective_op_checkpointing_keeps_every_second_matmul_and_sdpa():
    # torchtitan's op SAC keeps the layer input, wq, wv, w1 (gate) and w2 (down) outputs (the 1st, 3rd, 5th and 7th
    # mm), SDPA's output and its fp32 logsumexp per head: per token 1024*2 + (1024+1024+4096+1024)*2 + 8*128*2 + 8*4.
    per_token = 1024 * 2 + (1024 + 1024 + 4096 + 1024) * 2 + 8 * 128 * 2 + 8 * 4
    d = _details(**{"gradient-checkpointing": "selective", "selective-ac": "op"})
    assert per_token == 18_464
    assert d["activations.selective_saved"] == 4 * 1024 * per_token
    assert "activations.attention" not in d and "activations.layer_inputs" not in d


def test_compiled_op_checkpointing_does_not_save_the_down_projection():
    # Inductor's partitioner saves only what backward reads: the kept w2 (down) output feeds the residual add alone,
    # so compiled the layer keeps 1024 * 2 B less per token than eager (18,464 - 2,048 = 16,416; measured on the CPU:
    # benchmarks/data/compile-cpu.jsonl torchtitan-sac-layer, 7,968 eager and 6,944 compiled at hidden 512).
    d = _details(**{"gradient-checkpointing": "selective", "selective-ac": "op", "compile": True})
    assert d["activations.selective_saved"] == 4 * 1024 * 16_416


def test_selective_layer_period_checkpoints_every_nth_layer():
    # Period 2 over 4 layers: layers 2 and 4 keep their input (1024 tokens x 1024 x 2 B), 1 and 3 keep everything.
    full = _details()
    d = _details(**{"gradient-checkpointing": "selective", "selective-ac": 2})
    assert d["activations.layer_inputs"] == 2 * 1024 * 1024 * 2
    assert d["activations.unwrapped_layers"] == (full["activations.attention"] + full["activations.mlp"]) // 2
    # selective-ac defaults to torchtitan's "2"; a period of 1 is full checkpointing's layer inputs
    assert _details(**{"gradient-checkpointing": "selective"})["activations.layer_inputs"] == 2 * 1024 * 1024 * 2
    assert _details(**{"gradient-checkpointing": "selective", "selective-ac": 1})["activations.layer_inputs"] == \
        _details(**{"gradient-checkpointing": True})["activations.layer_inputs"] == 4 * 1024 * 1024 * 2


def test_context_parallel_shards_the_sequence_and_gathers_one_layers_kv():
    cp = _details(**{"seq-len": 2048, "gpus": 2, "context-parallel": 2, "gradient-checkpointing": True})
    assert cp["activations.layer_inputs"] == 4 * 1024 * 1024 * 2  # 2,048 tokens over 2 ranks: 1,024 each
    # ALL_GATHER rotation: one layer's K and V for the whole 2,048-token sequence, 8 kv heads x 128, bf16
    assert cp["activations.context_parallel_kv"] == 2 * 2048 * 8 * 128 * 2
    # the weights are not split by it: FSDP over the 2 ranks shards them as data parallelism would
    a = estimate(adhoc_run({**TRAIN_SMALL, "seq-len": 2048, "gpus": 2, "context-parallel": 2, "fsdp": "full-shard"})).breakdown
    b = estimate(adhoc_run({**TRAIN_SMALL, "seq-len": 2048, "gpus": 2, "fsdp": "full-shard"})).breakdown
    assert a["master_weights"] == b["master_weights"] and a["optimizer_states"] == b["optimizer_states"]


@pytest.mark.parametrize("keys, message", [
    ({"gradient-checkpointing": "selctive"}, 'expected true, false or "selective", got \'selctive\'. Did you mean "selective"?'),
    ({"gradient-checkpointing": "selective", "selective-ac": "ops"}, 'Did you mean "op"?'),
    ({"gradient-checkpointing": True, "selective-ac": "op"}, 'only applies to gradient-checkpointing = "selective"'),
    ({"gpus": 4, "context-parallel": 3}, "4 GPUs cannot be split into tensor-parallel 1 x pipeline-parallel 1 x context-parallel 3"),
])
def test_selective_and_context_parallel_mistakes_are_errors(keys, message):
    with pytest.raises(ConfigError) as err:
        adhoc_run({**TRAIN_SMALL, **keys})
    assert message in str(err.value)


def test_a_compiled_run_fuses_its_norms_and_is_marked_approximate_with_its_bound():
    # Inductor keeps each RMSNorm's bf16 input and fp32 rstd, not HF's fp32 copy of the input (4 B x T x h), in each
    # of 2 L + 1 = 9 norms (benchmarks/data/compile-cpu.jsonl): 9 x 1024 tokens x 1024 x 4 B = 37,748,736 B fewer saved
    eager = estimate(adhoc_run(TRAIN_SMALL))
    compiled = estimate(adhoc_run({**TRAIN_SMALL, "compile": True}))
    assert eager.full("activations") - compiled.full("activations") == 9 * 1024 * 1024 * 4 == 37_748_736
    assert not eager.approximate
    assert any(a.startswith("torch.compile: each RMSNorm is counted fused") and "up to 8 % less" in a for a in compiled.approximate)
    with pytest.raises(ConfigError, match="expected true or false"):
        adhoc_run({**TRAIN_SMALL, "compile": "max-autotune"})


def test_a_unified_memory_device_marks_every_estimate_approximate():
    # GB10 / DGX Spark: 128 GiB shared with the CPU; what a process gets is what the OS leaves.
    spark = estimate(adhoc_run({**TRAIN_SMALL, "gpu": "dgx-spark"}))
    assert spark.run.budget.ceiling_bytes == 128 * 2**30 and any(a.startswith("unified memory (GB10") for a in spark.approximate)
    assert not estimate(adhoc_run(TRAIN_SMALL)).approximate
