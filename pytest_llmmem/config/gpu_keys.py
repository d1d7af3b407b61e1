"""The GPUs a run gets: its per-GPU memory budget and its multi-GPU layout, with the contradictions
DeepSpeed, FSDP and Megatron would reject.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ..errors import shown, shown_name
from .keys import TABLE, Context, Table
from ..model.architecture import Architecture, ParamsOnly
from ..core.run import FSDP_MODES, OFFLOADS, Budget


def parallelism(table: Table, model: Union[Architecture, ParamsOnly]) -> Dict[str, Any]:
    """Multi-GPU keys, with the contradictions DeepSpeed, FSDP and Megatron would reject."""
    gpus = table.integer("gpus", 1)
    tp, pp = table.integer("tensor-parallel", 1), table.integer("pipeline-parallel", 1)
    zero = table.integer("zero-stage", 0, low=0)
    fsdp = table.choice("fsdp", FSDP_MODES, "none")
    # FSDP1 (FullyShardedDataParallel) unless told: accelerate's FullyShardedDataParallelPlugin takes FSDP_VERSION,
    # default "1" (accelerate 1.6.0 utils/dataclasses.py:1675), and fully_shard only where a config says 2.
    fsdp_version = table.integer("fsdp-version", 1)
    if fsdp_version not in (1, 2):
        raise table.fail("fsdp-version", f"{fsdp_version} is not an FSDP version; expected 1 (FullyShardedDataParallel) or 2 (fully_shard).")
    if "fsdp-version" in table and fsdp == "none":
        raise table.fail("fsdp-version", f"only applies with fsdp; this run has fsdp = \"none\".",
                         hint='Set fsdp = "full-shard" (or another strategy) with it, or remove fsdp-version.')
    offload = table.choice("offload", OFFLOADS, "none")
    ep = table.integer("expert-parallel", 1)
    cp = table.integer("context-parallel", 1)
    if zero and fsdp != "none":
        raise table.fail("fsdp", f'fsdp = "{fsdp}" and zero-stage = {zero} both shard the model states; pick one.',
                         hint='FSDP full-shard is ZeRO-3, shard-grad-op is ZeRO-2.')
    if gpus % (tp * pp):
        raise table.fail("gpus", f"{gpus} GPUs cannot be split into tensor-parallel {tp} x pipeline-parallel {pp} groups.",
                         hint=f"gpus must be a multiple of {tp * pp}.")
    if gpus % (tp * pp * cp):
        raise table.fail("context-parallel", f"{gpus} GPUs cannot be split into tensor-parallel {tp} x pipeline-parallel {pp} x "
                         f"context-parallel {cp} groups.", hint=f"gpus must be a multiple of {tp * pp * cp}.")
    if offload != "none" and not zero and fsdp == "none":
        raise table.fail("offload", f'offload = "{offload}" needs ZeRO (zero-stage >= 1) or FSDP.', hint="ZeRO-Offload and FSDP CPU offload both shard first.")
    if offload == "optimizer+params" and zero != 3 and fsdp not in ("full-shard", "hybrid-shard"):
        raise table.fail("offload", 'offloading parameters needs zero-stage = 3 or fsdp = "full-shard".')
    if table.boolean("sequence-parallel", False) and tp == 1:
        raise table.fail("sequence-parallel", "sequence parallelism splits along the tensor-parallel group; tensor-parallel is 1.")
    if isinstance(model, Architecture):
        if model.num_heads % tp or (model.num_kv_heads % tp and tp % model.num_kv_heads):
            raise table.fail("tensor-parallel", f"tensor-parallel {tp} does not divide the {model.num_heads} attention heads "
                             f"({model.num_kv_heads} key/value heads).")
        if pp > model.num_layers:
            raise table.fail("pipeline-parallel", f"{pp} pipeline stages for {model.num_layers} layers.")
        if ep > 1 and (not model.num_experts or model.num_experts % ep):
            raise table.fail("expert-parallel", f"expert-parallel {ep} must divide num-experts ({model.num_experts}).")
    if ep > 1 and (gpus // (tp * pp)) % ep:
        raise table.fail("expert-parallel", f"expert-parallel {ep} must divide the data-parallel size {gpus // (tp * pp)}.")
    return dict(
        gpus=gpus, zero_stage=zero, fsdp=fsdp, fsdp_version=fsdp_version, tensor_parallel=tp, pipeline_parallel=pp,
        sequence_parallel=table.boolean("sequence-parallel", False), expert_parallel=ep, context_parallel=cp, offload=offload,
        micro_batches=table.integer("micro-batches", 1), gpus_per_node=table.integer("gpus-per-node", 8),
    )


def budget(levels: Sequence[Table], ctx: Context, require: bool) -> Optional[Budget]:
    """Run-level keys win over [tool.llmmem]; within a level gpu-memory wins over gpu. Every level's
    gpu, gpu-memory and headroom is checked, used or not: a typo that loses to another key must
    not pass silently (gpu = "A100-80BG" beside gpu-memory, gpu-memory = "eighty" under runs with
    their own gpu)."""
    ceiling, gpu_name, unified, cuda_total = None, None, False, None
    for table in levels:
        memory = table.size("gpu-memory")
        gpu = table.resolve("gpu", ctx.catalog.gpu) if "gpu" in table else None
        if ceiling is None and memory is not None:
            ceiling = memory
        elif ceiling is None and gpu is not None:
            ceiling, gpu_name, unified, cuda_total = gpu.memory_bytes, gpu.name, getattr(gpu, "unified", False), gpu.cuda_total_bytes
    headrooms = [(table, headroom_of(table)) for table in levels if "headroom" in table]
    if ceiling is None:
        if require:
            top = levels[-1]
            raise ctx.error(
                "no memory budget: set gpu or gpu-memory.", f"{top.dotted}.gpu", top.line_of(None),
                hint=f'Add gpu = "A100-80GB" (or gpu-memory = "80 GiB") under [{TABLE}] or in the run.',
            )
        return None
    headroom = 0
    if headrooms:
        table, (size, percent) = headrooms[0]
        headroom = int(ceiling * percent / 100) if percent is not None else size
        if headroom >= ceiling:
            raw = table.values["headroom"]
            raise table.fail("headroom", f"{shown(raw)} leaves nothing of the {ceiling / 2**30:.2f} GiB ceiling.")
    return Budget(ceiling, headroom, gpu_name, unified, cuda_total)


def headroom_of(table: Table) -> Tuple[int, Optional[float]]:
    """(bytes, None) for a size, (0, percent) for "10%"; checked whether or not a ceiling is known."""
    raw = table.values["headroom"]
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            percent = float(raw.strip()[:-1]) if len(raw) <= 64 else float("nan")
        except ValueError:
            percent = float("nan")
        if not 0 <= percent < 100:
            raise table.fail("headroom", f'"{shown_name(raw)}" is not a percentage from 0 to 99.', hint='For example "10%" or "2 GiB".')
        return 0, percent
    return table.size("headroom", allow_zero=True, hint='headroom also takes a share of the ceiling, such as "10%".'), None
