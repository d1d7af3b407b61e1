"""The pools the caching allocator keeps for an FSDP job beyond what its tensors hold (issue 25): the blocks the
wrap leaves cached on the default stream, and the pools of FSDP1's other streams (docs/phases.md).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .activations import FP32
from .step import Step
from .trainer_terms import gptq_bytes

PACKED_4BIT = 0.5  # bytes per 4-bit parameter in a flat parameter (_unit_bytes)


# Why an FSDP step's reserved peak can be the wrap's pool with the gathered units on top (docs/phases.md).
FSDP_WRAP_POOL = ("FSDP: the wrap's cached pool sets the step's reserved peak (no torch.cuda.empty_cache between the wrap and "
                  "the loop), counted as the wrap's largest instant (the shards and one unit flattened twice) and the blocks the "
                  "root's wrap leaves cached (docs/phases.md); the allocator's "
                  "block splitting as unit after unit is flattened can leave more, not modelled: fsdp_qlora's Llama-2 7B QLoRA "
                  "on 2 GPUs reports 3.72 GiB reserved after the wrap (benchmarks_03_2024.md), counted 3.15 GiB")


def largest_fsdp_unit(run, step: Step) -> float:
    """The bytes of the largest FSDP unit's flat parameter, whole (unsharded), in the dtype FSDP stores it."""
    arch = step.arch
    unit = step.local.largest_unit * _unit_bytes(run)
    return max(unit, _root_unit(run, step)) if arch is not None else unit


def _unit_bytes(run) -> float:
    # per parameter of a decoder unit's flat parameter: bitsandbytes packs two 4-bit codes a byte (Params4bit data;
    # the absmax constants sit in quant_state, outside the flat parameter), fp32 under FSDP mixed precision
    if run.dtype.name in ("nf4", "int4"):
        return PACKED_4BIT
    if run.dtype.name == "gptq":  # qweight, scales and qzeros all made parameters (fms-acceleration autogptq_utils.py:68-99)
        return gptq_bytes(run.gptq_group_size)
    return FP32 if run.precision == "mixed" and run.mode == "train" else run.dtype.bytes


def _root_bytes(run) -> float:
    # per parameter of the root unit: never quantised (fsdp_qlora train.py replace_linear skips lm_head;
    # bitsandbytes quantises only nn.Linear in the layers), so 16 bit, fp32 after kbit-prepare
    if run.dtype.quantized:
        return FP32 if run.kbit_prepare else run.dtype.compute_bytes
    return _unit_bytes(run)


def _root_unit(run, step: Step) -> float:
    """The root unit (the embedding, final norm and head: what no nested unit wraps), which outweighs a decoder layer
    where the vocabulary is large: Llama-2-7B's 262.4 M root params against 202 M (x 2 B against x 0.5 B under 4 bit)."""
    arch, params, local = step.arch, step.params, step.local
    return (arch.embedding_params() + arch.head_params()) * (local.params / params if params else 1) * _root_bytes(run)


def wrap_leftovers(run, step: Step) -> int:
    """FSDP init's cached blocks left beside the root's, which the root is wrapped last on (post-order auto-wrap).
    The last decoder unit leaves two blocks cached: its parameters' and its flat copy's (the broadcast bucket and
    FlatParamHandle's cat reuse one). The root then moves its embedding and head tables (T each), copies the head with
    the final norm into a broadcast bucket (torch/distributed/utils.py _sync_params_and_buffers, 250 MiB buckets: the
    embedding fills one alone and is broadcast as a view), flattens both (2T), frees the tables and clones its shard
    into the bucket's block, the smallest that holds it: the caching allocator hands a request the smallest cached
    block at least as large (CUDACachingAllocator.cpp get_free_block). Left cached: the decoder's two blocks, the head's
    and the flat copy's, and the embedding's unless it went into the decoder's flat block (T <= the decoder unit).
    The load phase counts the root twice (4T); this is the rest. Only for an untied head and decoder linears
    smaller than a table (each has its own block then); otherwise 0."""
    arch, local = step.arch, step.local
    if run.fsdp == "none" or arch is None or arch.tie_embeddings or local.largest_unit <= arch.embedding_params():
        return 0  # (largest_unit is the larger of a decoder layer and the embedding: past this it is the layer)
    layer = local.largest_unit * _unit_bytes(run)
    table = arch.vocab_size * arch.hidden_size * _root_bytes(run)
    biggest_linear = max(lin.d_in * lin.d_out for lin in arch.linears()) * _unit_bytes(run)
    if _root_unit(run, step) <= layer or biggest_linear >= table:
        return 0
    return round(2 * layer - (table if table <= layer else 0))


def offloaded_shard_copies(run, step: Step) -> int:
    """Under FSDP1 CPU offload, the GPU copy of a unit's shard that each all-gather reads: pre_unshard copies the
    CPU shard to the GPU inside ``with stream(pre_unshard_stream)`` (_runtime_utils.py _unshard; _flat_param.py
    pre_unshard: flat_param_to(device), "creates a new tensor") and it is freed once the unsharded view replaces it,
    so its blocks stay in that stream's pool, apart from the default and all-gather streams'. Counted as the
    largest unit's shard, the least that pool holds (smaller units' copies can reuse its block)."""
    if run.offload != "optimizer+params" or run.shard_group <= 1:
        return 0
    return round(largest_fsdp_unit(run, step) / run.shard_group)
