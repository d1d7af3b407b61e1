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
VeRA's shared frozen projections have ``shared``; the prompt-learning methods (model/prompts.py: virtual tokens
that lengthen every sequence, or enter every layer's keys and values) ``prompt``, ``kv_prefix`` and ``prompt_saved``.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from ..errors import ConfigError
from ..record import Record
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


class Saved(Record):
    """What one adapted module keeps for backward beyond what its frozen base keeps."""

    keeps_input: bool  # the module's input stays alive for the adapter (the base alone, frozen, keeps none)
    per_token: int  # bytes per token the adapter keeps of its own
    mask_per_token: int = 0  # of its own, what only a module whose input needs a gradient keeps (dropout's mask)
    dropout_per_token: int = 0  # of per_token, the dropout's output: kept once where modules share one dropout (litgpt's qkv)
    per_output: int = 0  # bytes per token per output feature (DoRA: the base's and the adapter's outputs)
    per_output_fixed: int = 0  # bytes per output feature, once per module (DoRA: the weight norm, the magnitude's scale)
    per_output_fixed_grad: int = 0  # the same, only where the module's input needs a gradient
    per_weight_grad: int = 0  # bytes per element of the base weight, only where the input needs a gradient
    fixed_grad: int = 0  # bytes once per module, only where the input needs a gradient (IA3's scaling vector copy)
    fixed: int = 0  # bytes once per module, always (LoHa's scale tensor, LoKr's rebuilt factors: model/lycoris.py)


def module_kept(saved: Saved, d_in: int, d_out: int, tokens: int, input_grad: bool) -> int:
    """Bytes one adapted module (``d_in`` -> ``d_out``) keeps of its own for ``tokens`` tokens (the fields of Saved)."""
    per_token = saved.per_token + (saved.mask_per_token if input_grad else 0) + saved.per_output * d_out
    fixed = d_out * (saved.per_output_fixed + (saved.per_output_fixed_grad if input_grad else 0)) + (saved.fixed_grad if input_grad else 0) + saved.fixed
    return tokens * per_token + fixed + (d_in * d_out * saved.per_weight_grad if input_grad else 0)


def rank_on_targets(rank: int, targets: Tuple[str, ...]) -> str:
    """'r=16 on q_proj, v_proj': how a report names a rank-r adapter's settings."""
    return f"r={rank} on {', '.join(targets)}"


class Adapter(Record):
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
    refuses_4bit: str = ""  # why PEFT's method fails over a bitsandbytes 4-bit base, where it does ("": it runs there)
    default_dtype: str = "bf16"  # the base's dtype when the run names none
    keys: Tuple[str, ...] = ("lora-rank", "lora-targets", "adapter-dtype", "lora-dropout", "modules-to-save")  # the run keys that apply to it
    summary: Callable[[int, Tuple[str, ...]], str] = rank_on_targets  # (rank, targets) -> its settings in a report
    aliases: Tuple[str, ...] = ()
    # (one adapted linear, rank, adapter bytes, activation bytes) -> bytes one adapted module holds in flight in
    # its forward beyond what it keeps (DoRA's weight norm); the largest is a forward phase's own item
    forward_transient: Optional[Callable[[Linear, int, int, int], int]] = None
    # (one adapted linear, rank, adapter bytes, activation bytes, tokens) -> bytes one adapted module's own backward
    # holds at its peak, the gradient flowing into it included (LoHa's HadaWeight.backward); the largest is a
    # candidate for the backward's layer transient (core/terms/backward.py)
    backward_transient: Optional[Callable[[Linear, int, int, int, int], int]] = None
    dora: Optional[Callable[["Adapter"], "Adapter"]] = None  # what use-dora = true makes of it (None: not offered)
    # (the adapted linears, rank) -> elements of frozen tensors it adds once for all of them (VeRA's shared projections)
    shared: Optional[Callable[[Tuple[Linear, ...], int], int]] = None
    default_rank: int = 8  # its config's default r, when lora-rank is not set
    rank_source: str = "PEFT's LoraConfig default r"  # where default_rank comes from, for the report's note
    outer: bool = True  # it may adapt lm_head and embed_tokens (PEFT's LoRA Linear and Embedding)
    expert_params: bool = True  # it adapts routed-expert parameters (PEFT's LoRA ParamWrapper)
    # (the model's Family) -> PEFT's default target_modules for it; None: LoRA's (Family.lora_targets)
    default_targets: Optional[Callable[[Any], Tuple[str, ...]]] = None
    # (one adapted linear, rank, adapter bytes, activation bytes, dropout on?) -> what it keeps, where that differs
    # by module (IA3 scales a feedforward module's input and the others' output); None: ``saved`` by input width
    saved_on: Optional[Callable[[Linear, int, int, int, bool], Saved]] = None
    label: str = "LoRA"  # the method's name in a sentence
    # (architecture, virtual tokens, prompts.PromptEncoder or None) -> trainable parameters of the virtual tokens and
    # what makes them (prompt tuning: num-virtual-tokens embeddings; model/prompts.py); None: it has none
    prompt: Optional[Callable[[Any, int, Any], int]] = None
    kv_prefix: bool = False  # its virtual tokens enter every layer's keys and values (prefix tuning), not the sequence
    # (architecture, virtual tokens, PromptEncoder or None, batch, adapter bytes) -> what its prompt encoder keeps for backward
    prompt_saved: Optional[Callable[[Any, int, Any, int, int], int]] = None
    fits: Optional[Callable[[Any], str]] = None  # (architecture) -> why PEFT cannot apply it to that model ("": it can)
    # (itself, the run's method options as {key: value}) -> the entry they make (LoKr's factor shapes; model/lycoris.py)
    configure: Optional[Callable[["Adapter", Any], "Adapter"]] = None
    options: Tuple[Tuple[str, Any], ...] = ()  # the method options that configured it, (run key, value)

    def params(self, arch, rank: int, targets: Tuple[str, ...], trained_only: bool = False, virtual_tokens: int = 0,
               encoder: Any = None) -> int:
        """Trainable parameters it adds to ``arch``, group by group; ``trained_only``: those that get a
        gradient (not a bypassed module's, layers.Linear.wrap); a prompt of ``virtual_tokens`` (made by ``encoder``) where it has one."""
        if self.prompt is not None:
            return self.prompt(arch, virtual_tokens, encoder)
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


def lora_autocast_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """What LoRA keeps over a 16-bit base whose forward runs under torch.autocast (Run.autocast) with adapters in a wider
    dtype (PEFT's fp32). PEFT still casts x to the adapter's dtype and drops it out there (peft 0.13.2
    tuners/lora/layer.py:581-584), but autocast runs lora_A's linear in 16 bit: it keeps its own 16-bit cast of that
    fp32 tensor (``act`` bytes a feature, not ``adapter_bytes``; the fp32 input or dropout output dies once cast) and
    the 16-bit cast of lora_A's weight where its input needs a gradient (r x width); lora_B keeps lora_A's 16-bit
    output (r a token) and its own weight's 16-bit cast (d_out x r), each autocast's cached copy of the fp32
    parameter (aten/src/ATen/autocast_mode.cpp cached_cast). The dropout's mask stays. Without dropout the same:
    lora_A casts the fp32 copy back, a new 16-bit tensor, not the module's input. Measured on the CPU:
    benchmarks/measure_lora_autocast.py (q/k/v/o r16 at h 256, dropout 0.1: 66.594 B x h a token a layer without
    autocast, 58.969 with it; 7.625 = 4 x 2 B x h + the r-wide outputs, less the weight casts, by hand in
    tests/test_adapters.py)."""
    if adapter_bytes <= act:
        return lora_saved(width, rank, adapter_bytes, act, dropout)  # same dtype: autocast casts nothing
    return Saved(False, width * act + rank * act, width * DROPOUT_MASK_BYTES if dropout else 0, width * act if dropout else 0,
                 per_output_fixed=rank * act, fixed_grad=rank * width * act)


def lora_merge(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """PEFT merge_and_unload, one adapted linear at a time: B @ A and its scaled copy in the adapter
    dtype (peft/tuners/lora/layer.py:1044 get_delta_weight); a quantized base is dequantised, cast to
    the adapter dtype and summed before requantising (peft/tuners/lora/bnb.py:110-113)."""
    return round(numel * (compute_bytes + 3 * adapter_bytes if quantized else 2 * adapter_bytes))


def dora_tensors(lin: Linear, rank: int) -> Tuple[int, ...]:
    """DoRA (Liu et al. 2024, eq. 5) trains LoRA's A and B and a magnitude vector, one per output feature
    (peft/tuners/lora/dora.py DoraLinearLayer.update_layer: nn.Parameter of the weight norm, d_out)."""
    return lora_tensors(lin, rank) + (lin.d_out,)


def dora_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """What DoRA keeps beyond LoRA (peft/tuners/lora/dora.py DoraLinearLayer.forward, variants.py DoraLinearVariant):
    ``(m / ||W + sBA||_c - 1) * base_result + m / ||..||_c * lora_B(lora_A(x)) * s`` keeps, for the magnitude's
    gradient, the base output (the frozen linear's own, in the model dtype; with dropout F.linear of the dropped input
    and W cast to the adapter dtype, in that dtype) and lora_B's output (adapter dtype), d_out per token each; per
    module the detached norm and m / norm (d_out each, adapter dtype), and m / norm - 1 where the base output needs a
    gradient. With dropout F.linear keeps W cast to the adapter dtype for the input's gradient (none when the
    dtypes agree: then W is the frozen parameter itself). Measured: tests/data/adapters/dora*.json."""
    lora = lora_saved(width, rank, adapter_bytes, act, dropout)
    base_output = adapter_bytes if dropout else act
    return lora._replace(per_output=base_output + adapter_bytes, per_output_fixed=2 * adapter_bytes,
                         per_output_fixed_grad=adapter_bytes, per_weight_grad=adapter_bytes if dropout and adapter_bytes != act else 0)


def dora_forward_transient(lin: Linear, rank: int, adapter_bytes: int, act: int) -> int:
    """DoRA's weight norm, built in every forward (peft/tuners/lora/dora.py get_lora_weight, get_weight_norm):
    an identity d_in x d_in pushed through lora_A (d_in x r) and lora_B (B A, d_in x d_out), W cast to the
    adapter dtype (W itself when the dtypes agree), s * B A and W + s * B A, all in the adapter dtype, alive
    together while the norm is taken; the identity and lora_A's output are saved by a graph the forward drops
    (measured: tests/data/adapters/dora.json freed_in_forward)."""
    d_in, d_out = lin.d_in, lin.d_out
    return adapter_bytes * (d_in * d_in + d_in * rank + d_in * d_out * (3 + (adapter_bytes != act)))


def with_dora(adapter: Adapter) -> Adapter:
    """use-dora = true (PEFT LoraConfig.use_dora): the magnitude vectors, DoRA's saved tensors and its weight norm."""
    return adapter._replace(tensors=dora_tensors, saved=dora_saved, forward_transient=dora_forward_transient,
                            summary=dora_summary, dora=None)


def dora_summary(rank: int, targets: Tuple[str, ...]) -> str:
    """'DoRA r=16 on q_proj, v_proj'."""
    return "DoRA " + rank_on_targets(rank, targets)


def qdora_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """DoRA over a 4-bit base keeps what DoRA keeps (peft/tuners/lora/bnb.py Linear4bit.forward hands the base output to
    DoraLinearVariant.forward); with dropout F.linear of the dropped input keeps the dequantised W (dequantize_module_weight,
    cast to the adapter dtype) whatever the dtypes: it is never the frozen parameter (read from the source; the fp32-adapter
    cases are measured: tests/data/adapters/qdora.json, qdora-dropout.json)."""
    dora = dora_saved(width, rank, adapter_bytes, act, dropout)
    return dora._replace(per_weight_grad=adapter_bytes) if dropout else dora


def qdora_forward_transient(lin: Linear, rank: int, adapter_bytes: int, act: int) -> int:
    """DoRA's weight norm over a 4-bit base: W is dequantised in every forward (peft/tuners/lora/dora.py
    DoraLinearLayer.forward: dequantize_module_weight, then .to(x.dtype)), a new d_out x d_in tensor even where the
    dtypes agree; otherwise as dora_forward_transient (the compute-dtype copy dies at the cast, before the norm's peak)."""
    return adapter_bytes * (lin.d_in * lin.d_in + lin.d_in * rank + 4 * lin.d_in * lin.d_out)


def with_qdora(adapter: Adapter) -> Adapter:
    """use-dora = true on QLoRA (QDoRA): DoRA's magnitude vectors and saved tensors over the 4-bit base."""
    return with_dora(adapter)._replace(saved=qdora_saved, forward_transient=qdora_forward_transient)


LORA_KEYS = ("lora-rank", "lora-targets", "adapter-dtype", "lora-dropout", "modules-to-save", "use-dora", "use-rslora")
LORA = Adapter("lora", "LoRA (PEFT LoraConfig): low-rank A and B beside each targeted linear, the base frozen in its dtype",
               adapted_linears, lora_tensors, lora_saved, lora_merge, keys=LORA_KEYS, dora=with_dora)
# QLoRA (Dettmers et al. 2023): LoRA on a base that stays 4-bit (bitsandbytes Linear4bit), NF4 unless a dtype is named.
# use-dora on it is QDoRA (with_qdora: the 4-bit weight dequantised for DoRA's norm in every forward).
QLORA = LORA._replace(name="qlora", doc="QLoRA: LoRA over a 4-bit (NF4) frozen base", quantized_base=True, default_dtype="nf4",
                      keys=LORA_KEYS + ("bitsandbytes-version", "kbit-prepare", "compute-dtype", "gptq-group-size"), dora=with_qdora)

def vera_tensors(lin: Linear, rank: int) -> Tuple[int, ...]:
    """VeRA (Kopiczko et al. 2024, eq. 1) trains two scaling vectors per adapted module, lambda_d (r) and lambda_b
    (d_out) (peft/tuners/vera/layer.py VeraLayer.update_layer); A and B are frozen and shared (vera_shared)."""
    return (rank, lin.d_out)


def vera_shared(linears: Tuple[Linear, ...], rank: int) -> int:
    """VeRA's shared frozen projections: vera_A (r x the largest d_in) and vera_B (the largest d_out x r), one pair
    for every adapted module, each slicing what it needs (peft/tuners/vera/model.py _find_dim, _init_vera_A_vera_B:
    buffers, fp32 from _kaiming_init)."""
    if not linears:
        return 0
    return rank * max(lin.d_in for lin in linears) + max(lin.d_out for lin in linears) * rank


def vera_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """``result + lambda_b * F.linear(lambda_d * F.linear(x, A), B)`` (peft/tuners/vera/layer.py Linear.forward, x cast
    to the adapter dtype): with A and B frozen, the linears keep A and B (the shared buffers, weights) and not x;
    lambda_d's multiply keeps F.linear(x, A), r wide, and lambda_b's keeps F.linear(.., B), d_out wide, both in the
    adapter dtype. Measured: tests/data/adapters/vera.json."""
    return Saved(False, rank * adapter_bytes, per_output=adapter_bytes)


def vera_default_targets(family: Any) -> Tuple[str, ...]:
    """peft/utils/constants.py TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING: LoRA's, but q and v only for phi."""
    return ("q_proj", "v_proj") if family.name == "phi" else family.lora_targets


def vera_summary(rank: int, targets: Tuple[str, ...]) -> str:
    """'VeRA r=256 on q_proj, v_proj'."""
    return "VeRA " + rank_on_targets(rank, targets)


VERA = Adapter("vera", "VeRA (PEFT VeraConfig): trained vectors lambda_d (r) and lambda_b (d_out) per targeted linear over shared frozen "
               "random projections A and B", adapted_linears, vera_tensors, vera_saved, lora_merge,
               keys=("lora-rank", "lora-targets", "adapter-dtype", "modules-to-save"), summary=vera_summary,
               shared=vera_shared, default_rank=256, rank_source="PEFT's VeraConfig default r", outer=False, expert_params=False,
               default_targets=vera_default_targets, label="VeRA")
# peft/utils/constants.py TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING for the families modelled here; the
# feedforward modules (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING) are each family's MLP down projection
IA3_TARGETS = {"llama": ("k_proj", "v_proj", "down_proj"), "mistral": ("k_proj", "v_proj", "down_proj"),
               "qwen2": ("q_proj", "v_proj", "down_proj"), "qwen3": ("q_proj", "v_proj", "down_proj"),
               "gemma": ("q_proj", "v_proj", "down_proj"), "gemma2": ("q_proj", "v_proj", "down_proj"),
               "gemma3_text": ("q_proj", "v_proj", "down_proj"), "phi": ("q_proj", "v_proj", "fc2"),
               "falcon": ("query_key_value", "dense_4h_to_h")}
IA3_FEEDFORWARD = "down"  # the role of the modules IA3 scales at the input (PEFT's feedforward_modules)


def ia3_default_targets(family: Any) -> Tuple[str, ...]:
    """PEFT's IA3 defaults for the family (IA3_TARGETS); none for a family not listed there."""
    return IA3_TARGETS.get(family.name, ())


def ia3_tensors(lin: Linear, rank: int) -> Tuple[int, ...]:
    """IA3 (Liu et al. 2022, eq. 1) trains one vector per adapted module: d_in on a feedforward module (the input is
    scaled), d_out on the others (peft/tuners/ia3/layer.py IA3Layer.update_layer: (1, in) or (out, 1))."""
    return (lin.d_in if lin.role == IA3_FEEDFORWARD else lin.d_out,)


def ia3_saved_on(lin: Linear, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """peft/tuners/ia3/layer.py Linear.forward. A feedforward module computes base(x.to(l.dtype) * l): the multiply
    keeps the cast input (the input itself when the dtypes agree) and, where the input needs a gradient, l's flattened
    copy (d_in, adapter dtype). The others compute base(x) * l: the multiply keeps the base output (d_out, model dtype)
    and, where it needs a gradient, l's copy (d_out). The frozen linear keeps nothing. Measured: tests/data/adapters/ia3.json."""
    if lin.role == IA3_FEEDFORWARD:
        same = adapter_bytes == act
        return Saved(same, 0 if same else lin.d_in * adapter_bytes, fixed_grad=lin.d_in * adapter_bytes)
    return Saved(False, 0, per_output=act, per_output_fixed_grad=adapter_bytes)


def ia3_merge(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """IA3's merge multiplies the weight by its vector (peft/tuners/ia3/layer.py Linear.merge: torch.mul), one
    product the size of the weight in the promoted (adapter) dtype; a 4-bit base is not merged here."""
    return round(numel * max(compute_bytes, adapter_bytes))


def ia3_summary(rank: int, targets: Tuple[str, ...]) -> str:
    """'IA3 on k_proj, v_proj, down_proj' (no rank)."""
    return f"IA3 on {', '.join(targets)}"


IA3 = Adapter("ia3", "IA3 (PEFT IA3Config): one trained vector per targeted linear, scaling its output (its input on the MLP's "
              "down projection)", adapted_linears, ia3_tensors, lambda width, rank, ab, act, dropout=False: Saved(False, 0),
              ia3_merge, keys=("lora-targets", "adapter-dtype", "modules-to-save"), summary=ia3_summary, rank_source="",
              outer=False, expert_params=False, default_targets=ia3_default_targets, saved_on=ia3_saved_on, label="IA3")
