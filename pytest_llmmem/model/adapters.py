"""Adapters: a PEFT method as a kind, beside the layer kinds (DESIGN.md section 3).

A run's ``mode`` is "train" (every weight trains), "inference", or the name of an adapter. Each
:class:`Adapter` answers the questions the estimate asks of a PEFT method, so no other module asks
which method it is:

- which modules it touches (``touches``: PEFT's target_modules over the model's linears, with
  PEFT's rules for routed experts; adapted_linears below);
- the parameters it adds (``tensors``: the trainable tensors it adds to one adapted matrix, as the
  optimizer sees them; their sum is the parameter count);
- what each adapted module keeps for backward (``saved``);
- whether the frozen base stays quantized (``quantized_base``: the run's dtype must be 4-bit, and is
  by default) and what merging it back costs (``merge``).

LoRA and QLoRA are two entries (:data:`LORA`, :data:`QLORA`), registered through the
``llmmem_register_adapters`` hook like the built-in families; a plugin adds its own the same way.
Issue 26's methods fit these fields: dropout adds its output and mask to ``saved``; head and
embedding targets widen ``touches``; DoRA adds the magnitude vector to ``tensors`` and its norm to
``saved``; IA3 is a vector in ``tensors``; LoHa and LoKr are other factorisations in ``tensors``.
VeRA's shared frozen projections, ``modules_to_save`` (full copies with states) and prompt or prefix
tuning (virtual tokens that lengthen every sequence) need a field of their own when they come.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import Callable, List, NamedTuple, Optional, Tuple

from ..errors import ConfigError
from .architecture import Architecture
from .layers import Linear, peft_target_problem


DROPOUT_MASK_BYTES = 1  # CUDA native_dropout keeps a bool mask (the CPU keeps its scaled noise in the input's dtype)


# LoRA's linears: which a PEFT config adapts (the ``touches`` of LORA and QLORA below; formerly model/lora.py,
# merged here because adapters was its one user inside model/ and a module costs ``llmmem check`` its import).
def adapted_linears(arch: Architecture, targets: Tuple[str, ...], linears: Optional[List[Linear]] = None) -> Tuple[Linear, ...]:
    """The layer linears a LoRA config adapts; "all-linear" is every one (PEFT leaves the head out).

    PEFT 0.21.2 wraps nn.Linear modules only, so 3D routed experts (``wrap == "none"``) never get an
    adapter. Where it converts v4 expert names (Family.peft_experts; peft/utils/transformers_weight_conversion.py
    _convert_peft_config_moe), a target naming a routed expert moves from target_modules to
    target_parameters: the expert parameter is adapted and the nn.Linears of that name (dense layers,
    shared experts) are not; gate_proj + up_proj become one gate_up_proj adapter of rank 2r, and one
    without the other is PEFT's ValueError. Decided model-wide, as PEFT does, whichever group is asked.
    """
    every = arch.linears()
    pool = every if linears is None else linears
    wanted = {lin.name for lin in every} if "all-linear" in targets else set(targets)  # ["all-linear", "lm_head"]: and the head

    def named(lin: Linear) -> bool:
        return lin.name in wanted or lin.name.split(".")[-1] in wanted

    experts = {lin.name for lin in every if lin.wrap == "param" and named(lin)}
    problem = peft_target_problem(arch.family.name, every, targets)[0]
    if problem:  # config.py reports it with the file and line; this guards direct API callers
        raise ConfigError(f"lora-targets: {problem}")
    out: List[Linear] = []
    for lin in pool:
        if lin.wrap == "none" or not named(lin) or (lin.wrap == "module" and lin.name.split(".")[-1] in experts):
            continue
        if lin.wrap == "param" and lin.role == "up" and any(l.role == "gate" for l in pool if l.wrap == "param"):
            continue  # folded into the gate_up adapter below
        if lin.wrap == "param" and lin.role == "gate":
            lin = lin._replace(role="gate_up", name="gate_up_proj", d_out=2 * lin.d_out, rank_scale=2)
        out.append(lin)
    return tuple(out)


# Modules outside the decoder layers that target_modules may name (PEFT wraps nn.Linear and nn.Embedding;
# "all-linear" leaves the output head out: peft/tuners/tuners_utils.py _maybe_include_all_linear_layers).
OUTER_TARGETS = ("lm_head", "embed_tokens")


def outer_targets(arch: Architecture, targets: Tuple[str, ...]) -> Tuple[Linear, ...]:
    """The head and the input embedding when ``targets`` names them, as matrices an adapter sees: lm_head
    (hidden -> vocab, a LoRA Linear) and embed_tokens (vocab -> hidden: PEFT's Embedding trains
    lora_embedding_A, r x vocab, and lora_embedding_B, hidden x r; peft/tuners/lora/layer.py Embedding)."""
    out: List[Linear] = []
    if "lm_head" in targets and not arch.family.classifier:
        out.append(Linear("head", "lm_head", arch.hidden_size, arch.vocab_size, False))
    if "embed_tokens" in targets:
        out.append(Linear("embed", "embed_tokens", arch.vocab_size, arch.hidden_size, False))
    return tuple(out)


def lora_matrix_params(d_in: int, d_out: int, rank: int) -> int:
    """LoRA trains A (r x d_in) and B (d_out x r): r * (d_in + d_out) params (Hu et al. 2021, LoRA, eq. 3)."""
    return rank * (d_in + d_out)


class Saved(NamedTuple):
    """What one adapted module keeps for backward beyond what its frozen base keeps."""

    keeps_input: bool  # the module's input stays alive for the adapter (the base alone, frozen, keeps none)
    per_token: int  # bytes per token the adapter keeps of its own
    mask_per_token: int = 0  # of its own, what only a module whose input needs a gradient keeps (dropout's mask)
    dropout_per_token: int = 0  # of per_token, the dropout's output: kept once where modules share one dropout (litgpt's qkv)


def rank_on_targets(rank: int, targets: Tuple[str, ...]) -> str:
    """'r=16 on q_proj, v_proj': how a report names a rank-r adapter's settings."""
    return f"r={rank} on {', '.join(targets)}"


class Adapter(NamedTuple):
    """A PEFT method as the estimate counts it (see the module docstring)."""

    name: str  # the run's mode that names it
    doc: str
    # (architecture, targets, linears of one layer group or None for all) -> the linears it adapts
    touches: Callable[..., Tuple[Linear, ...]]
    # (one adapted linear, rank) -> numel of each trainable tensor it adds to each of that linear's matrices
    tensors: Callable[[Linear, int], Tuple[int, ...]]
    # (input width, rank, adapter dtype bytes, activation bytes, dropout on?) -> what one adapted module keeps
    saved: Callable[[int, int, int, int, bool], Saved]
    # (elements of the largest adapted matrix, base quantized?, compute bytes, adapter bytes) -> bytes in
    # flight while merging it into the base (merge-adapters = true)
    merge: Callable[[int, bool, int, int], int]
    quantized_base: bool = False  # the frozen base stays quantized (4-bit) under the adapters
    default_dtype: str = "bf16"  # the base's dtype when the run names none
    keys: Tuple[str, ...] = ("lora-rank", "lora-targets", "adapter-dtype", "lora-dropout", "modules-to-save")  # the run keys that apply to it
    summary: Callable[[int, Tuple[str, ...]], str] = rank_on_targets  # (rank, targets) -> its settings in a report
    aliases: Tuple[str, ...] = ()

    def params(self, arch, rank: int, targets: Tuple[str, ...], trained_only: bool = False) -> int:
        """Trainable parameters it adds to ``arch``, group by group; ``trained_only``: those that get a
        gradient (not a bypassed module's, layers.Linear.wrap)."""
        layers = sum(count * sum(lin.count * sum(self.tensors(lin, rank)) for lin in self.touches(arch, targets, lins)
                                 if not (trained_only and lin.wrap == "bypassed"))
                     for count, lins in arch.group_linears())
        return layers + sum(sum(self.tensors(lin, rank)) for lin in outer_targets(arch, targets))


def lora_tensors(lin: Linear, rank: int) -> Tuple[int, ...]:
    """LoRA trains A (r x d_in) and B (d_out x r) per adapted matrix (Hu et al. 2021, LoRA, eq. 3); PEFT's
    fused gate_up_proj adapter has rank 2r (Linear.rank_scale)."""
    r = rank * lin.rank_scale
    return (r * lin.d_in, r * lin.d_out)


def lora_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """PEFT casts the input to the adapter's dtype before lora_A (peft/tuners/lora/layer.py
    ``_cast_input_dtype``): a new tensor when the dtypes differ, the input itself when not; lora_B
    keeps lora_A's output, r wide, in the adapter's dtype, for its weight gradient (Linear.forward:
    lora_B(lora_A(dropout(x))); measured on TRL's DPO LoRA step, shared groundtruth-rl: 16 saved
    (512, 16) fp32 tensors).

    With lora_dropout > 0 each adapted module has its own nn.Dropout (layer.py update_layer): lora_A
    keeps the dropout's output (a new tensor in the adapter's dtype, so the module's input itself is
    no longer kept), and dropout keeps its mask, one byte per element (CUDA native_dropout's bool
    mask, aten/src/ATen/native/cuda/Dropout.cu), where the input needs a gradient (not the first
    layer's q/k/v: activations.Trainable.no_grad_inputs). Measured: tests/data/adapters/lora-dropout.json.
    """
    if dropout:
        return Saved(False, width * adapter_bytes + rank * adapter_bytes, width * DROPOUT_MASK_BYTES, width * adapter_bytes)
    same = adapter_bytes == act
    return Saved(same, (0 if same else width * adapter_bytes) + rank * adapter_bytes)


def lora_merge(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """PEFT merge_and_unload, one adapted linear at a time: B @ A and its scaled copy in the adapter
    dtype (peft/tuners/lora/layer.py:1044 get_delta_weight); a quantized base is dequantised, cast to
    the adapter dtype and summed before requantising (peft/tuners/lora/bnb.py:110-113)."""
    return round(numel * (compute_bytes + 3 * adapter_bytes if quantized else 2 * adapter_bytes))


LORA = Adapter("lora", "LoRA (PEFT LoraConfig): low-rank A and B beside each targeted linear, the base frozen in its dtype",
               adapted_linears, lora_tensors, lora_saved, lora_merge)
# QLoRA (Dettmers et al. 2023): LoRA on a base that stays 4-bit (bitsandbytes Linear4bit), NF4 unless a dtype is named.
QLORA = LORA._replace(name="qlora", doc="QLoRA: LoRA over a 4-bit (NF4) frozen base", quantized_base=True, default_dtype="nf4",
                      keys=LORA.keys + ("bitsandbytes-version", "kbit-prepare"))
BUILTIN = (LORA, QLORA)


def builtin_adapter(name: str) -> Optional[Adapter]:
    """A built-in adapter by its mode name (for runs built without a catalog); None for train / inference."""
    if name in ("train", "inference"):
        return None
    for adapter in BUILTIN:
        if name == adapter.name or name in adapter.aliases:
            return adapter
    raise ConfigError(f'mode "{name}" names no built-in adapter; a plugin\'s adapter reaches a run through the config\'s catalog.')
