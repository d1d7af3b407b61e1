"""The backward's peak instant (core/terms/backward.py), held to the bytes the trace measured on fake tensors.

Each case is a run of benchmarks/trace_sweep.py (a tests/data/families config cut to two layers, bf16, AdamW fused,
HF's upcast loss); the trace's figure is its row in benchmarks/data/trace-sweep.jsonl, the overhead term left out
of both. Each test failed before the analytic backward was composed at one instant: it added every gradient to
every saved activation and to all 14 B per logit element.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from pytest_llmmem.estimator import estimate

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("trace_sweep", ROOT / "benchmarks" / "trace_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def _backward(tmp_path, family, mode, batch, seq, checkpointing=False):
    fam = sweep.family_config(sweep.FAMILIES / f"{family}.json")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fam["config"]))
    run = sweep._run(dict(family=family, mode=mode, precision="pure", checkpointing=checkpointing, attn="sdpa",
                          batch=batch, seq=seq), str(path), fam["lora_targets"])
    est = estimate(run)
    part = next(p for p in est.phase_parts if p.name == "backward")
    return est, {k: v for k, v in part.breakdown.items() if k != "overhead"}


def test_lora_backward_peaks_at_the_loss_with_12_bytes_per_logit(tmp_path):
    # Llama-3.1-8B shapes, 2 layers, vocab 32000, 1 x 128 tokens. At the start of backward every saved activation
    # is alive with the fp32 log-softmax and nll_loss's and log_softmax_backward's fp32 gradients: 12 B per logit
    # element; HF's bf16 logits died with the model's output. No adapter gradient exists yet.
    est, parts = _backward(tmp_path, "llama", "lora", 1, 128)
    assert parts["logits"] == 128 * 32000 * (4 + 4 + 4) == 49_152_000  # the trace: 49,152,000
    assert parts.get("gradients", 0) == 0 and est.full("gradients") == 5_242_880
    assert parts["activations"] == est.full("activations") == 75_657_216  # the trace: 75,659,264
    assert sum(parts.values()) == pytest.approx(1_537_299_456, rel=1e-4)  # the trace's backward peak


def test_full_training_backward_peaks_with_every_gradient(tmp_path):
    # Same model, full training: 1.4 GB of gradients outweigh 55.7 MB of saved activations and 49 MB of loss buffers,
    # so the peak is the end: every gradient and the (128, 4096) bf16 gradient flowing into the embedding.
    est, parts = _backward(tmp_path, "llama", "train", 1, 128)
    assert parts["gradients"] == est.full("gradients") == 1_396_744_192
    assert parts["activations"] == 128 * 4096 * 2 == 1_048_576  # the trace: 1,050,624 activations
    assert parts.get("logits", 0) == 0
    assert sum(parts.values()) == pytest.approx(5_588_039_168, rel=1e-4)  # the trace's backward peak


def test_tied_head_gradient_waits_beside_the_embeddings(tmp_path):
    # Qwen3-0.6B (tied, vocab 151936, hidden 1024), 2 x 64 tokens: at the end the head's V x h bf16 gradient waits
    # in autograd's input buffer while the embedding builds its own: one more 151936 x 1024 x 2 B = 311,164,928.
    est, parts = _backward(tmp_path, "qwen3-0.6b", "train", 2, 64)
    assert est.details["backward.gradients.tied_head_waiting"] == 151936 * 1024 * 2 == 311_164_928
    assert parts["gradients"] == est.full("gradients") + 311_164_928
    assert sum(parts.values()) == pytest.approx(1_807_809_536, rel=1e-4)  # the trace's backward peak


def test_lora_on_expert_parameters_makes_the_merged_weights_gradient(tmp_path):
    # Mixtral shapes, 2 layers, LoRA on the experts' gate_up (2, 4096, 28672) and down (2, 14336, 4096): the down
    # projection's backward makes its merged weight's bf16 gradient, 2 x 14336 x 4096 x 2 B = 234,881,024, beside
    # every saved activation, plus the (128, 4096) gradient flowing in (the trace: 241 MB above the saved set).
    est, parts = _backward(tmp_path, "mixtral", "lora", 1, 128)
    assert est.details["backward.activations.backward_transient"] == 234_881_024 + 128 * 4096 * 2
    assert sum(parts.values()) == pytest.approx(3_892_298_240, rel=0.003)  # the trace's peak; 0.19 % under


def test_checkpointed_backward_peaks_in_a_recomputed_layer(tmp_path):
    # Llama LoRA with checkpointing: one layer recomputed (37.9 MB saved) and its backward's temporaries, three
    # (128, 14336) and one (128, 4096) bf16 gradients = 12,058,624, beside the layer inputs and half the adapter
    # gradients (the upper layer's); the trace: 54.2 MB of activations and 2,621,440 B of gradients.
    est, parts = _backward(tmp_path, "llama", "lora", 1, 128, checkpointing=True)
    assert est.details["backward.activations.backward_transient"] == 128 * (3 * 14336 + 4096) * 2 == 12_058_624
    assert parts["gradients"] == 2_621_440
    assert sum(parts.values()) == pytest.approx(1_469_272_064, rel=0.003)  # the trace's peak; 0.22 % under


def _step_gradients(tmp_path, family):
    fam = sweep.family_config(sweep.FAMILIES / f"{family}.json")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fam["config"]))
    run = sweep._run(dict(family=family, mode="train", precision="mixed", checkpointing=False, attn="sdpa", batch=2, seq=64),
                     str(path), fam["lora_targets"])
    est = estimate(run)
    return est, next(p for p in est.phase_parts if p.name == "optimizer step").breakdown["gradients"]


def test_mixed_precision_steps_on_fp32_gradients(tmp_path):
    # precision = "mixed": each bf16 gradient is cast onto its fp32 master before the step and freed, so the step
    # holds 4 B per parameter; the cast ends on the untied head, whose bf16 gradient is still alive:
    # Llama shapes, 698,372,096 params: 4 x 698,372,096 + 32000 x 4096 x 2 = 3,055,632,384 B (the trace: 3,055,632,384).
    est, grads = _step_gradients(tmp_path, "llama")
    assert est.full("gradients") == 698_372_096 * 2
    assert grads == 698_372_096 * 4 + 32000 * 4096 * 2 == 3_055_632_384


def test_mixed_precision_cast_peaks_at_a_tied_embedding(tmp_path):
    # Qwen3-0.6B (tied, 187,045,376 params): the cast starts with the 151936 x 1024 embedding, whose fp32 copy
    # sits beside every bf16 gradient: 2 x 187,045,376 + 4 x 151936 x 1024 = 996,420,608 B, more than the
    # 4 x 187,045,376 at the end (the trace: 996,421,632).
    est, grads = _step_gradients(tmp_path, "qwen3-0.6b")
    assert grads == 187_045_376 * 2 + 151936 * 1024 * 4 == 996_420_608


def test_accumulated_gradients_are_alive_at_every_instant(tmp_path):
    # The LoRA case above with gradient accumulation over 4 micro-batches: from the second micro-batch on the
    # adapters' 5,242,880 B of fp32 gradients (q/v, r 8, 2 layers of Llama-3.1-8B's shapes) exist before backward
    # starts, so the loss instant holds them beside the saved activations and loss buffers: 1,537,299,456 +
    # 5,242,880 B. Pipeline micro-batches (pipeline-parallel > 1) accumulate too but are priced by their stages.
    est, parts = _backward(tmp_path, "llama", "lora", 1, 128)
    accumulating = estimate(est.run._replace(micro_batches=4))
    part = next(p for p in accumulating.phase_parts if p.name == "backward")
    after = {k: v for k, v in part.breakdown.items() if k != "overhead"}
    assert after["gradients"] == est.full("gradients") == 5_242_880
    assert after["logits"] == parts["logits"] and after["activations"] == parts["activations"]
    assert sum(after.values()) == sum(parts.values()) + 5_242_880


def test_a_loop_holding_the_output_keeps_its_logits_through_backward(tmp_path):
    # benchmarks/data/gpu-peaks-h100-families.jsonl's Qwen3-0.6B row: 8 x 2048 = 16,384 tokens, vocab 151,936, checkpointing,
    # pure bf16, measured by gpu_peaks.measure's loop (out = model(...); out.loss.backward(); del out). At the loss instant the
    # fp32 log-softmax and nll_loss's and log_softmax_backward's fp32 gradients are alive, 12 B per logit element, and that
    # loop's `out` keeps the model's bf16 logits, 2 B more (framework = "pytorch"): 16,384 x 151,936 x 14 = 34,850,471,936 B,
    # the trace's 32.457 GiB (benchmarks/allocator_replay.py --only Qwen/Qwen3-0.6B); the HF Trainer drops them (12 B).
    from pytest_llmmem.config.load import adhoc_run

    path = tmp_path / "config.json"
    rows = (json.loads(line) for line in open(ROOT / "benchmarks" / "data" / "gpu-peaks-h100-families.jsonl"))
    path.write_text(json.dumps(next(r for r in rows if r["scenario"]["name"] == "Qwen/Qwen3-0.6B")["config"]))  # all 28 layers
    logits = 16384 * 151936
    for framework, per_element in (("transformers", 12), ("pytorch", 14)):
        est = estimate(adhoc_run({"config": str(path), "mode": "train", "dtype": "bf16", "batch-size": 8, "seq-len": 2048,
                                  "precision": "pure", "optimizer-impl": "foreach", "gradient-checkpointing": True,
                                  "framework": framework, "gpu-memory": "10000 GiB"}))
        part = next(p for p in est.phase_parts if p.name == "backward")
        assert part.breakdown["logits"] == logits * per_element
    assert est.details["backward.logits.held_output"] == logits * 2 == 4_978_638_848
    # the H100 measured this first step (no AdamW states yet) at 37,151,146,496 B allocated: weights, the saved layer
    # inputs and these logits, within 0.1 %
    allocated = part.total - part.breakdown["overhead"] - part.breakdown["optimizer_states"]
    assert allocated == pytest.approx(37_151_146_496, rel=1e-3)


def test_fsdp_qlora_loop_holds_fp32_logits_and_the_head_blocks_take_no_pool_share():
    # framework = "fsdp-qlora" (Answer.AI train.py @ 23fafdfb on transformers 4.40): the model returns fp32 logits and the loop
    # holds them to the optimizer step. Llama-2-7B's bundled config, 1 x 512 tokens, vocab 32,000: E = 16,384,000 logit
    # elements. At the loss instant: the held fp32 logits 4 B, log_softmax 4 B, nll_loss's and log_softmax_backward's fp32
    # gradients 8 B = 16 B per element (benchmarks/measure_fsdp_qlora_head.py: 15.98-15.99 measured), and the lm_head's 16-bit
    # output's cached segment 2 B: 18 x 16,384,000 = 294,912,000 B under logits; the transformers profile's 12 B.
    from pytest_llmmem.config.load import adhoc_run

    keys = {"model": "meta-llama/Llama-2-7b-hf", "mode": "qlora", "dtype": "nf4", "lora-rank": 64, "batch-size": 1,
            "seq-len": 512, "gradient-checkpointing": True, "gpu-memory": "10000 GiB"}
    elems = 512 * 32000
    parts, slack = {}, {}
    for framework in ("transformers", "fsdp-qlora"):
        est = estimate(adhoc_run({**keys, "framework": framework}))
        parts[framework] = next(p for p in est.phase_parts if p.name == "backward").breakdown
        slack[framework] = est.details["overhead.fragmentation"]
    # the same instant's other short-lived bytes: the pool's share (records.FRAGMENTATION, 30 %) of the 12 B goes
    assert slack["transformers"] - slack["fsdp-qlora"] == pytest.approx(0.3 * 12 * elems, abs=2)
    assert parts["transformers"]["logits"] == 12 * elems
    assert parts["fsdp-qlora"]["logits"] == 18 * elems == 294_912_000
    assert est.details["backward.logits.held_output"] == 4 * elems
    assert est.details["backward.logits.lm_head_output_cached"] == 2 * elems
    # the full term: the fp32 logits 4, the 16-bit output 2, the shifted copy 4, log_softmax 4, two fp32 gradients 8
    assert est.full("logits") == 22 * elems


def test_fsdp_qlora_holds_its_output_through_the_optimizer_step():
    # fsdp_qlora's train.py sets output = None (:894) after optimizer.step() (:878): the fp32 logits, 4 B x 1 x 512 x 32,000 =
    # 65,536,000 B, are in the optimizer step's items; the pytorch loop's `del out` comes before its step
    from pytest_llmmem.config.load import adhoc_run

    keys = {"model": "meta-llama/Llama-2-7b-hf", "mode": "lora", "dtype": "bf16", "batch-size": 1, "seq-len": 512,
            "gpu-memory": "10000 GiB"}
    for framework, held in (("fsdp-qlora", 4 * 512 * 32000), ("pytorch", 0)):
        est = estimate(adhoc_run({**keys, "framework": framework}))
        step = next(p for p in est.phase_parts if p.name == "optimizer step")
        assert step.breakdown.get("logits", 0) == held
