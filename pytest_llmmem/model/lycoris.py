"""LoHa and LoKr (PEFT's LyCORIS methods) as adapter entries beside model/adapters.py.

Both rebuild the full weight delta, d_out x d_in in the adapter dtype, in every forward and apply it with
``F.linear(x, delta)`` (peft/tuners/loha/layer.py and peft/tuners/lokr/layer.py, ``Linear._get_delta_activations``),
so what they keep for backward scales with the weight, not with r: F.linear keeps the delta where the module's
input needs a gradient, and the input cast to the adapter dtype (the input itself when the dtypes agree) for the
delta's gradient. Measured on the CPU: tests/data/adapters/loha*.json, lokr*.json (benchmarks/measure_adapters.py).

The run keys they share with LoRA mean what PEFT's fields mean: ``lora-rank`` is r (default 8, LoHaConfig and
LoKrConfig), ``lora-targets`` is target_modules (PEFT's LoHa and LoKr defaults are LoRA's:
peft/utils/constants.py TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING = ..LORA...copy()). They have no
lora_dropout: ``rank-dropout`` zeroes rows of the rebuilt delta (one d_out vector kept per module) and
``module-dropout`` skips a module's adapter for a step, which the peak does not see (the step that skips none
is the largest). LoKr's ``decompose-both`` and ``decompose-factor`` choose its factor shapes (lokr_shapes).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, Tuple

from .adapters import Adapter, Saved, adapted_linears, rank_on_targets
from .layers import Linear

FP32 = 4
# Measured with bitsandbytes 0.50.2's CPU backend and peft 0.21.2: both take the packed Params4bit's shape, (n / 2, 1),
# for the base weight's (peft/tuners/lokr/layer.py get_delta_weight ``weight.reshape(base_layer.weight.shape)``)
PACKED_4BIT = "it shapes its delta by the base weight's, and a packed 4-bit weight's shape is (elements / 2, 1) (F.linear or the reshape raises)"
SCALE_TENSOR_BYTES = 4  # LoHa's torch.tensor(self.scaling): an fp32 scalar HadaWeight saves (peft/tuners/loha/layer.py get_delta_weight)
LYCORIS_KEYS = ("lora-rank", "lora-targets", "adapter-dtype", "modules-to-save", "rank-dropout", "module-dropout")


def _summary(label: str, options: Tuple[Tuple[str, Any], ...], rank: int, targets: Tuple[str, ...]) -> str:
    """'LoKr r=8 on q_proj, v_proj (decompose-both)': the method, its rank and targets, the options set."""
    shown = ", ".join(key if value is True else f"{key} {value}" for key, value in options)
    return f"{label} {rank_on_targets(rank, targets)}" + (f" ({shown})" if shown else "")


def _cast_input(width: int, adapter_bytes: int, act: int) -> Tuple[bool, int]:
    """``_cast_input_dtype(input, delta.dtype)`` (peft/tuners/tuners_utils.py): a new tensor in the adapter dtype, kept
    by F.linear for the delta's gradient; the input itself (kept, no new bytes) when the dtypes agree."""
    same = adapter_bytes == act
    return same, 0 if same else width * adapter_bytes


# --- LoHa: delta = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r (Hyeon-Woo et al. 2022, FedPara; PEFT LoHaConfig) ---------


def loha_tensors(lin: Linear, rank: int) -> Tuple[int, ...]:
    """hada_w1_a and hada_w2_a (d_out x r), hada_w1_b and hada_w2_b (r x d_in) per adapted linear
    (peft/tuners/loha/layer.py LoHaLayer.create_adapter_parameters, the Linear branch)."""
    return (lin.d_out * rank, rank * lin.d_in, lin.d_out * rank, rank * lin.d_in)


def loha_saved_on(lin: Linear, rank: int, adapter_bytes: int, act: int, dropout: bool = False, rank_dropout: bool = False) -> Saved:
    """HadaWeight.forward saves its four factors (parameters: nothing new) and the fp32 scale tensor; F.linear keeps
    the cast input and, where the input needs a gradient, the rebuilt delta (d_in x d_out, adapter dtype; each of
    ``count`` experts its own); rank-dropout's in-place ``weight *= drop`` keeps drop (d_out, the delta's dtype)."""
    same, cast = _cast_input(lin.d_in, adapter_bytes, act)
    return Saved(same, cast, per_output_fixed=adapter_bytes * lin.count if rank_dropout else 0,
                 per_weight_grad=adapter_bytes * lin.count, fixed=SCALE_TENSOR_BYTES * lin.count)


def loha_forward_transient(lin: Linear, rank: int, adapter_bytes: int, act: int) -> int:
    """HadaWeight.forward ``((w1a @ w1b) * (w2a @ w2b)) * scale``: the two products and theirs, three d_out x d_in
    tensors in the adapter dtype, alive before the scaled delta (the one F.linear keeps) is made."""
    return 3 * lin.d_in * lin.d_out * adapter_bytes


def _flowing_grads(lin: Linear, adapter_bytes: int, act: int, tokens: int) -> int:
    """The gradients alive beside an adapted module's factor gradients: the one out of its input (tokens x d_in, model
    dtype) waiting for the layer's earlier nodes, and where the adapter dtype differs the base branch's copy of the
    output's gradient in the model dtype (tokens x d_out; the sum of a 16-bit base and an fp32 adapter output is fp32).
    Measured: benchmarks/measure_lycoris_backward.py."""
    return tokens * (lin.d_in + (lin.d_out if adapter_bytes != act else 0)) * act


def loha_backward_transient(lin: Linear, rank: int, adapter_bytes: int, act: int, tokens: int, rank_dropout: bool = False) -> int:
    """HadaWeight.backward (peft/tuners/loha/layer.py) beside the delta's gradient it receives: ``grad_out * scale``,
    (w2_a @ w2_b), ``temp`` and, while the first ``temp`` is still bound, (w1_a @ w1_b) and the second: five
    d_out x d_in tensors in the adapter dtype at its peak (rank-dropout's multiply is done and freed before it).
    Measured on the CPU: benchmarks/measure_lycoris_backward.py."""
    return 5 * lin.d_in * lin.d_out * adapter_bytes + _flowing_grads(lin, adapter_bytes, act, tokens)


def loha_merge(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """merge_and_unload adds get_delta_weight to the base weight in place (peft/tuners/lycoris_utils.py merge): the
    rebuild's three products of the largest adapted matrix in flight (loha_forward_transient)."""
    return 3 * numel * adapter_bytes


# --- LoKr: delta = kron(w1, w2) * alpha / r (Yeh et al. 2024, LyCORIS; PEFT LoKrConfig) --------------------------------


def kron_factors(dim: int, factor: int = -1) -> Tuple[int, int]:
    """How LoKr splits a dimension into two factors (peft/tuners/lokr/layer.py factorization): ``factor`` itself
    when it divides ``dim`` (in that order); else the divisor pair nearest the square root whose smaller side is at
    most ``factor`` (any size for -1), smaller first. Checked equal to PEFT 0.21.2's for every dim below 3000 and
    factor -1, 1..69 (tests/test_lycoris.py re-checks where peft is installed)."""
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    limit = dim if factor == -1 else factor
    small = max((m for m in range(1, math.isqrt(dim) + 1) if dim % m == 0 and m <= limit), default=1)
    return small, dim // small


def lokr_shapes(lin: Linear, rank: int, decompose_both: bool = False, factor: int = -1) -> Tuple[Tuple[int, int], Tuple[int, int], bool, bool]:
    """w1 (a x c) and w2 (b x d) with d_out = a * b, d_in = c * d, and whether each is one full matrix (else r-rank
    factors): w1 is full unless decompose_both and r < max(a, c) / 2, w2 unless r < max(b, d) / 2
    (peft/tuners/lokr/layer.py LoKrLayer.update_layer, the nn.Linear branch)."""
    a, b = kron_factors(lin.d_out, factor)
    c, d = kron_factors(lin.d_in, factor)
    return (a, c), (b, d), not (decompose_both and rank < max(a, c) / 2), not rank < max(b, d) / 2


def lokr_tensors(lin: Linear, rank: int, decompose_both: bool = False, factor: int = -1) -> Tuple[int, ...]:
    """lokr_w1 (a x c) or lokr_w1_a (a x r) and lokr_w1_b (r x c); lokr_w2 (b x d) or lokr_w2_a and lokr_w2_b
    (LoKrLayer.create_adapter_parameters)."""
    (a, c), (b, d), full1, full2 = lokr_shapes(lin, rank, decompose_both, factor)
    one = (a * c,) if full1 else (a * rank, rank * c)
    two = (b * d,) if full2 else (b * rank, rank * d)
    return one + two


def lokr_saved_on(lin: Linear, rank: int, adapter_bytes: int, act: int, dropout: bool = False, rank_dropout: bool = False,
                  decompose_both: bool = False, factor: int = -1) -> Saved:
    """make_kron's torch.kron multiplies views of w1 and w2 and keeps both: a factor made of r-rank halves
    (w1_a @ w1_b, w2_a @ w2_b) is a new tensor kept per module, a full one is the parameter; F.linear keeps the cast
    input and, where the input needs a gradient, the delta; rank-dropout keeps drop (d_out, ``.float()``: fp32)."""
    (a, c), (b, d), full1, full2 = lokr_shapes(lin, rank, decompose_both, factor)
    same, cast = _cast_input(lin.d_in, adapter_bytes, act)
    factors = (0 if full1 else a * c) + (0 if full2 else b * d)
    return Saved(same, cast, per_output_fixed=FP32 * lin.count if rank_dropout else 0,
                 per_weight_grad=adapter_bytes * lin.count, fixed=factors * adapter_bytes * lin.count)


def lokr_forward_transient(lin: Linear, rank: int, adapter_bytes: int, act: int) -> int:
    """make_kron ``torch.kron(w1, w2) * scale``: the Kronecker product, d_out x d_in in the adapter dtype, alive while
    its scaled copy (the delta F.linear keeps) is made."""
    return lin.d_in * lin.d_out * adapter_bytes


def lokr_backward_transient(lin: Linear, rank: int, adapter_bytes: int, act: int, tokens: int, rank_dropout: bool = False) -> int:
    """The Kronecker product's backward: the delta's gradient, its scaled copy and the full-size product with the other
    factor that each factor's gradient is summed from, three d_out x d_in tensors in the adapter dtype; with
    rank-dropout, autograd's copy for the in-place multiply on the reshaped view (CopySlices) one more.
    Measured on the CPU: benchmarks/measure_lycoris_backward.py."""
    return (4 if rank_dropout else 3) * lin.d_in * lin.d_out * adapter_bytes + _flowing_grads(lin, adapter_bytes, act, tokens)


def lokr_merge(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """merge_and_unload: get_delta_weight's product and its scaled copy of the largest adapted matrix in flight."""
    return 2 * numel * adapter_bytes


def _with_options(adapter: Adapter, options: Dict[str, Any], **fields: Any) -> Adapter:
    """The entry with ``fields`` replaced and the options (``options``: the keys as written, defaults left out) in its summary."""
    shown = tuple(sorted(options.items()))
    return adapter._replace(options=shown, summary=partial(_summary, adapter.label, shown), **fields)


def configured_loha(adapter: Adapter, options: Dict[str, Any]) -> Adapter:
    """The entry a run's rank-dropout and module-dropout make of LoHa."""
    rank_dropout = options.get("rank-dropout", 0.0) > 0
    return _with_options(adapter, options, saved_on=partial(loha_saved_on, rank_dropout=rank_dropout))


def configured_lokr(adapter: Adapter, options: Dict[str, Any]) -> Adapter:
    """The entry a run's rank-dropout, module-dropout, decompose-both and decompose-factor make of LoKr."""
    rank_dropout = options.get("rank-dropout", 0.0) > 0
    shape = dict(decompose_both=bool(options.get("decompose-both", False)), factor=int(options.get("decompose-factor", -1)))
    return _with_options(adapter, options, tensors=partial(lokr_tensors, **shape),
                         saved_on=partial(lokr_saved_on, rank_dropout=rank_dropout, **shape),
                         backward_transient=partial(lokr_backward_transient, rank_dropout=rank_dropout))


def _no_width_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """The cast input by width alone; what a module keeps is ``saved_on`` (it needs the module's shape)."""
    return Saved(*_cast_input(width, adapter_bytes, act))


LOHA = Adapter("loha", "LoHa (PEFT LoHaConfig): the weight delta as the Hadamard product of two rank-r products, rebuilt in full "
               "in every forward", adapted_linears, loha_tensors, _no_width_saved, loha_merge, keys=LYCORIS_KEYS,
               summary=partial(_summary, "LoHa", ()), forward_transient=loha_forward_transient, rank_source="PEFT's LoHaConfig default r",
               outer=False, expert_params=False, saved_on=loha_saved_on, label="LoHa", configure=configured_loha,
               backward_transient=loha_backward_transient, refuses_4bit=PACKED_4BIT)
LOKR = Adapter("lokr", "LoKr (PEFT LoKrConfig): the weight delta as the Kronecker product of two small factors, rebuilt in full "
               "in every forward", adapted_linears, lokr_tensors, _no_width_saved, lokr_merge,
               keys=LYCORIS_KEYS + ("decompose-both", "decompose-factor"), summary=partial(_summary, "LoKr", ()),
               forward_transient=lokr_forward_transient, rank_source="PEFT's LoKrConfig default r", outer=False, expert_params=False,
               saved_on=lokr_saved_on, label="LoKr", configure=configured_lokr, backward_transient=lokr_backward_transient,
               refuses_4bit=PACKED_4BIT)
LYCORIS = (LOHA, LOKR)
