"""The inference prefill's terms: the KV cache, the peak of one layer's temporaries, and the logits.

A forward without grad keeps no activations for backward: its peak is the weights, the cache it fills
and the largest layer's transient (transients.forward_transient) with the logits the model returns.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from ...record import Record
from .activations import FP32
from .transients import forward_transient
from ...model.layers import LayerGroup
from ...model.architecture import Architecture
from ..run import Run


def stage_groups(arch: Architecture, layers: int) -> List[Tuple[int, LayerGroup]]:
    """(layers on the fullest pipeline stage, group) for each group: a group's share of the stage,
    rounded up (the whole model when there is no pipeline)."""
    return [(math.ceil(g.count * layers / arch.num_layers), g) for g in arch.layer_groups()]


class Prefill(Record):
    """An inference prefill's dynamic terms: the KV cache, the transient peak and the logits, with their items."""

    kv_cache: int
    activations: int
    logits: int
    details: Tuple[Tuple[str, int], ...]  # kv_cache.<kind> (when more than one kind) and logits.* items


def prefill_terms(run: Run, arch: Architecture, stage: List[Tuple[int, LayerGroup]], act: int) -> Prefill:
    """KV cache, activations (the prefill's transient peak) and logits of an inference run."""
    b, s, t, flash = run.batch_size, run.seq_len, run.tensor_parallel, run.flash_attention
    vocab_out = arch.num_labels if arch.family.classifier else arch.vocab_size
    # KV cache (K and V per token in HF DynamicCache; MLA's latent; Mamba's fixed state): each
    # attention kind answers for its own layers; tensor parallelism splits the KV heads.
    # The cache covers prompt + new tokens (s); the prefill's transient peak covers the prompt.
    prompt = run.prompt_len or s
    cache: Dict[str, int] = {}
    for n, g in stage:
        key = f"kv_cache.{g.attention.kind}"
        cache[key] = cache.get(key, 0) + n * g.attention.cache_bytes(b, s, act, t)
    kv_cache = sum(cache.values())
    if list(cache) == ["kv_cache.full"]:
        cache = {}  # one kind: the term says it all
    activations = max(forward_transient(arch, g, batch=b, seq=prompt, act=act, flash=flash, tp=t, fa=run.mask_free) for _, g in stage)
    logits_act = FP32 if arch.family.logits_fp32 else act
    logits = _inference_logits(run, b, prompt, vocab_out, logits_act, arch.family.classifier, t)
    return Prefill(kv_cache, activations, sum(logits.values()), tuple(cache.items()) + tuple(logits.items()))


def _inference_logits(run: Run, b: int, prompt: int, vocab: int, act: int, classifier: bool, t: int) -> Dict[str, int]:
    """A scoring forward (logits = "all") returns logits for every prompt position; generation asks
    for the last one only (transformers generate() sets logits_to_keep=1, generation/utils.py:2955)
    and copies it to fp32 before sampling (utils.py:3248). ``act``: the bytes of the logits the
    model returns (Family.logits_fp32)."""
    if run.logits == "all" or classifier:
        return {"logits.all_positions": (b if classifier else b * prompt) * vocab * act // t}
    out = {"logits.last_position": b * vocab * act // t}
    if run.new_tokens:
        out["logits.fp32_scores"] = b * vocab * FP32 // t
    return out


def stage_kv(run: Run, arch: Architecture, batch: int, seq: int, act: int) -> int:
    """KV cache of ``batch`` sequences of ``seq`` tokens, each layer kind answering for its own layers."""
    layers = math.ceil(arch.num_layers / run.pipeline_parallel)
    return sum(math.ceil(g.count * layers / arch.num_layers) * g.attention.cache_bytes(batch, seq, act, run.tensor_parallel)
               for g in arch.layer_groups())
