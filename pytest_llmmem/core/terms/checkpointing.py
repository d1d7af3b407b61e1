"""Selective activation checkpointing (torchtitan, torchtune) and context parallelism: what each keeps
for backward (the keys: config/checkpoint_keys.py).

``gradient-checkpointing = "selective"`` with ``selective-ac = "op"`` or a layer period N (torchtitan's
``activation_checkpoint.mode = "selective"`` and ``selective_ac_option``; torchtune's ``ac_mode`` and
``ac_option``). ``context-parallel = C`` shards every activation's sequence over C GPUs (torchtitan's
``parallelism.context_parallel_degree``); the weights are not split by it, but FSDP shards them over the
data-parallel and context-parallel ranks together (torchtitan's ``dp_shard_cp`` mesh), which ``gpus``
already counts.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from ...model.architecture import Architecture
from ...model.layers import Attention, Dense, LayerGroup

# torchtitan/config/job_config.py ActivationCheckpoint.selective_ac_option = "2": every second layer.
DEFAULT_SELECTIVE = "2"
LSE = 4  # SDPA's logsumexp: one fp32 per head and token (aten._scaled_dot_product_flash_attention's second output)


def describe(selective: str) -> str:
    """How a selective policy is shown in a report."""
    return "selective op checkpointing" if selective == "op" else f"checkpointing every {selective} layers (selective)" \
        if selective != "1" else "checkpointing"


# Under torch.compile the policy's tags go to the min-cut partitioner (torch/_functorch/partitioners.py
# min_cut_rematerialization_partition: a MUST_SAVE node is banned from recompute, an edge source -> node), which
# saves only what the backward graph reads; eager SAC stores every MUST_SAVE output in its cache whether or not a
# backward formula reads it (torch/utils/checkpoint.py _CachingTorchDispatchMode). The projections back into the
# residual stream (o_proj, down_proj) feed only the residual add, whose backward reads nothing: compiled, a kept
# one of them is not saved (measured: benchmarks/data/compile-cpu.jsonl torchtitan-sac-layer).
RESIDUAL_PROJECTIONS = ("o", "down")


def op_saved_per_token(arch: Architecture, group: LayerGroup, act: int, tp: int, compiled: bool = False) -> int:
    """Bytes per token one layer keeps under torchtitan's op-level SAC (compiled: RESIDUAL_PROJECTIONS).

    torchtitan/models/llama3/infra/parallelize.py _op_sac_save_list with its policy in
    torchtitan/distributed/activation_checkpoint.py _apply_op_sac (v0.1-0.2): MUST_SAVE the output of every
    aten.mm except every second one of a layer, of SDPA (output and logsumexp), of max and reduce-scatter;
    everything else is recomputed. The checkpoint wrapper keeps the layer's input too. The mm count runs in
    module order (wq, wk, wv, wo, w1, w3, w2), so wq, wv, w1 and w2 are kept, wk, wo and w3 recomputed.
    """
    h = arch.hidden_size
    mms = [lin for lin in group.linears(arch.family, h) if lin.count == 1]
    kept = sum(lin.d_out for lin in mms[0::2]  # the 1st, 3rd, 5th ... mm of the layer
               if not (compiled and lin.role in RESIDUAL_PROJECTIONS))
    attn = group.attention
    sdpa = attn.heads * attn.head_dim * act + attn.heads * LSE if isinstance(attn, Attention) else 0
    return h * act + (kept * act + sdpa) // tp


def selective_saved(arch: Architecture, stage: List[Tuple[int, LayerGroup]], selective: str, *, tokens: int, act: int,
                    tp: int, full_layer: Callable[[int, LayerGroup], int], compiled: bool = False) -> Dict[str, int]:
    """Activations kept through backward under a selective policy, as details items.

    ``full_layer(i, group)`` is what layer ``i`` keeps without checkpointing (activations.layer_saved).
    Layer period N: torchtitan's _apply_layer_sac wraps the layers whose running count is a multiple of N,
    so floor(L/N) keep only their input and the rest keep everything.
    """
    h = arch.hidden_size
    out = {"activations.layer_inputs": 0, "activations.unwrapped_layers": 0, "activations.selective_saved": 0}
    index = 0
    for n, group in stage:
        for _ in range(n):
            index += 1
            if selective == "op":
                out["activations.selective_saved"] += tokens * op_saved_per_token(arch, group, act, tp, compiled)
            elif index % int(selective) == 0:
                out["activations.layer_inputs"] += tokens * h * act
            else:
                out["activations.unwrapped_layers"] += full_layer(index, group)
    return {k: v for k, v in out.items() if v}


def selective_approximate(arch: Architecture, selective: str) -> Tuple[str, ...]:
    """Why an op-level selective estimate is not exact for this model's layer kinds."""
    if selective != "op":
        return ()
    kinds = {type(g.attention).__name__ for g in arch.layer_groups() if not isinstance(g.attention, Attention)}
    kinds |= {type(g.mlp).__name__ for g in arch.layer_groups() if not isinstance(g.mlp, Dense)}
    if not kinds:
        return ()
    return (f"selective op checkpointing of {', '.join(sorted(kinds))} layers: counted as keeping every second dense "
            "matmul output and the SDPA outputs (torchtitan's save list); expert matmuls and state-space kernels are "
            "not aten.mm and their outputs are recomputed or saved by rules not modelled",)


# What torch.compile changes in a layer is Inductor's choice (fusions, what its min-cut partitioner saves or
# recomputes). Each RMSNorm is counted fused, as the partitioner keeps it (step.trainable_for), and under op-level
# SAC the residual projections' outputs are not saved (RESIDUAL_PROJECTIONS); the rest of the layer is counted as
# eager, with the measured bound beside it. A compiled loss is modelled (trainer_terms.compiled_loss_terms,
# torchtune's compile_loss).
COMPILE_APPROXIMATE = (
    "torch.compile: each RMSNorm is counted fused (Inductor keeps its input and rstd), under op-level selective "
    "checkpointing the o/down projections' outputs unsaved (its partitioner saves only what backward reads), and the "
    "rest of each layer as eager; Inductor fuses more and its partitioner recomputes some, so a compiled layer keeps up "
    "to 8 % less than counted: a torchtune Llama 3.2 3B layer keeps 98.4 KB per token compiled on the CPU against "
    "106.6 KB counted (benchmarks/data/compile-cpu.jsonl)"
)


def context_parallel_kv(arch: Architecture, *, batch: int, seq: int, act: int, tp: int) -> int:
    """The whole sequence's K and V of one layer, all-gathered for ring attention.

    torch/distributed/tensor/experimental/_context_parallel/_attention.py: _cp_options.rotate_method
    defaults to _RotateMethod.ALL_GATHER, whose _AllGatherRotater gathers every rank's K/V shard at once.
    """
    widest = max((g.attention.kv_heads * g.attention.head_dim for g in arch.layer_groups() if isinstance(g.attention, Attention)), default=0)
    return 2 * batch * seq * widest * act // tp
