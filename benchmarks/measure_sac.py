"""Measure what selective activation checkpointing keeps through the forward, on the CPU, beside the estimate.

    python benchmarks/measure_sac.py [--out benchmarks/data/sac-cpu.jsonl]

A small random Llama (transformers LlamaForCausalLM, fp32, SDPA) runs one forward with labels under
four policies: none, full (every layer), torchtitan's op-level SAC and its layer period 2, applied the way
transformers lets a user (gradient_checkpointing_kwargs carry the checkpoint's context_fn; a layer's
``gradient_checkpointing = False`` leaves it unwrapped). The op policy is torchtitan's: MUST_SAVE every
aten.mm output except every second one of a layer, and SDPA's outputs (on the CPU the op is
``_scaled_dot_product_flash_attention_for_cpu``). What the forward leaves allocated is the net of the
profiler's CPU allocations and frees (torch.profiler, profile_memory=True) over the forward. The estimate
compared is what it keeps through the forward: activations less the backward's recompute, plus the
logits and the loss's saved log-softmax.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llmmem.config.load import adhoc_run  # noqa: E402
from pytest_llmmem.estimator import estimate  # noqa: E402

SHAPE = {"family": "llama", "hidden-size": 256, "num-layers": 4, "num-heads": 4, "intermediate-size": 1024, "vocab-size": 1000}
POLICIES = {"none": {}, "full": {"gradient-checkpointing": True}, "op": {"gradient-checkpointing": "selective", "selective-ac": "op"},
            "layer-2": {"gradient-checkpointing": "selective", "selective-ac": 2}}


def _op_policy(torch):
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save = {torch.ops.aten.mm.default, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}

    def context_fn():
        meta = defaultdict(int)

        def policy(ctx, func, *args, **kwargs):
            key = "recompute" if ctx.is_recompute else "forward"
            if func == torch.ops.aten.mm.default:
                meta[key] += 1
            keep = func in save and not (func == torch.ops.aten.mm.default and meta[key] % 2 == 0)
            return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return context_fn


def measure(policy: str, seq: int) -> dict:
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=1000, max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).train()
    kwargs = {"use_reentrant": False}
    if policy == "op":
        kwargs["context_fn"] = _op_policy(torch)
    if policy != "none":  # transformers 5 renamed gradient_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None)
        enable(activation_checkpointing_kwargs=kwargs) if enable else model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if policy == "layer-2":  # torchtitan _apply_layer_sac: layers whose running count is a multiple of 2
        for i, layer in enumerate(model.model.layers, start=1):
            layer.gradient_checkpointing = i % 2 == 0
    ids = torch.randint(0, 1000, (1, seq))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(ids, labels=ids)
    measured = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_parent is None)
    del out
    est = estimate(adhoc_run({**SHAPE, "mode": "train", "dtype": "fp32", "precision": "pure", "gpu": "H100-80GB",
                              "batch-size": 1, "seq-len": seq, **POLICIES[policy]}))
    d = est.details
    kept = est.breakdown["activations"] - d.get("activations.recomputed_layer", 0) + d["logits.logits"] + d["logits.log_softmax"]
    return {"policy": policy, "seq_len": seq, "measured_bytes": measured, "estimated_bytes": kept,
            "error": round(kept / measured - 1, 4), "torch": torch.__version__, "transformers": transformers.__version__}


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = [measure(policy, seq) for seq in (256, 1024) for policy in POLICIES]
    for r in rows:
        print(f"{r['policy']:<8} seq {r['seq_len']:>5}: measured {r['measured_bytes'] / 2**20:8.2f} MiB  "
              f"estimated {r['estimated_bytes'] / 2**20:8.2f} MiB  {r['error']:+.1%}")
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
