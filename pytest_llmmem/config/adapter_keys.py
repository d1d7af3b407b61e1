"""The adapter keys of a run: which PEFT method its mode names and what that method reads (lora-targets,
lora-rank, lora-dropout, use-dora, modules-to-save, num-virtual-tokens, the bitsandbytes keys and the
4-bit compute dtype), each
checked against the model and the adapter entry (model/adapters.py). Split from :mod:`load`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ..core.run import MODES
from ..errors import did_you_mean, one_of, shown, shown_name
from ..model.adapters import OUTER_TARGETS, adapted_linears
from ..model.architecture import Architecture
from ..model.layers import peft_target_problem
from ..model.prompts import ENCODER_KINDS, PromptEncoder
from ..values import release, type_name
from .keys import Context, Table


# bitsandbytes up to 0.43.1 kept each 4-bit linear's input in MatMul4Bit's ctx.tensors (autograd/_functions.py:523
# at 0.43.1, "ctx.tensors = (A, B)"); #1270 (commit 9e753741, "fix QLoRA mem bug: delete useless buffered
# activation") dropped it, first released in 0.43.2.
BNB_INPUT_FIX = (0, 43, 2)


def _bnb_keeps_inputs(table: Table) -> bool:
    """bitsandbytes-version: does this bitsandbytes keep each 4-bit linear's input (before 0.43.2)?"""
    version = table.string("bitsandbytes-version")
    if version is None:
        return False
    parts = release(version)
    if parts is None:
        raise table.fail("bitsandbytes-version", f'"{version}" is not a bitsandbytes release number.',
                         hint='Write it as pip shows it, e.g. "0.42.0" or "0.45.5" (pip show bitsandbytes).')
    return (parts + (0, 0))[:3] < BNB_INPUT_FIX


# compute-dtype: the 16-bit or fp32 format a 4-bit base computes in, bytes per element. qlora.py sets bitsandbytes'
# bnb_4bit_compute_dtype and transformers' torch_dtype from the same flags (qlora.py:262 and :278 at 073a485:
# fp16 / bf16 / else float32), so the embeddings, head and norms are stored in it too and every activation has it.
COMPUTE_DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}
# torch's spellings, as a script passes them (torch.bfloat16, bnb_4bit_compute_dtype="float32")
COMPUTE_SPELLINGS = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def compute_dtype(table: Table, dtype: Any) -> Any:
    """The run's 4-bit dtype computing in ``compute-dtype`` (bnb_4bit_compute_dtype with torch_dtype the same):
    Linear4bit dequantises each weight to it (the OOM of a 65B qlora.py run without --bf16 asks for one fp32
    8192 x 22016 weight, 688 MiB), and every activation, the embeddings, head and norms take its size."""
    if "compute-dtype" not in table:
        return dtype
    value = table.string("compute-dtype")
    written = value.strip().lower().replace("torch.", "")
    name = COMPUTE_SPELLINGS.get(written, written)
    if name not in COMPUTE_DTYPES:
        raise table.fail("compute-dtype", f'"{shown_name(value)}" is not valid.{did_you_mean(written, tuple(COMPUTE_DTYPES))}',
                         hint=f"Valid: {one_of(tuple(COMPUTE_DTYPES))} (bnb_4bit_compute_dtype; torch's bfloat16, float16 and float32 too).")
    return dtype._replace(compute_bytes=COMPUTE_DTYPES[name])


def gptq_group_size(table: Table, dtype: Any) -> int:
    """gptq-group-size: the input rows that share one scale and zero in a GPTQ checkpoint (its quantize_config.json
    group_size: 128 is AutoGPTQ's default, -1 one group per column); only a dtype = "gptq" base has them."""
    if "gptq-group-size" not in table:
        return 128
    if dtype.name != "gptq":
        raise table.fail("gptq-group-size", f'only applies to a GPTQ base (dtype = "gptq"); this run\'s dtype is "{dtype.name}".',
                         hint='Use dtype = "gptq" for a GPTQ checkpoint, or remove gptq-group-size.')
    value = table.values["gptq-group-size"]
    if isinstance(value, bool) or not isinstance(value, int) or (value != -1 and value < 1):
        raise table.fail("gptq-group-size", f"expected a positive integer or -1, got {type_name(value)} {shown(value)}.",
                         hint="The checkpoint's quantize_config.json group_size: 128 (AutoGPTQ's default), 32, 64, or -1 (one group per column).")
    return value


def _modules_to_save(table: Table) -> Tuple[str, ...]:
    """modules-to-save: the modules outside the layers PEFT trains in full (lm_head, embed_tokens)."""
    value = table.values.get("modules-to-save", [])
    if not isinstance(value, list) or any(v not in OUTER_TARGETS for v in value):
        raise table.fail("modules-to-save", f"expected a list of {one_of(OUTER_TARGETS)}, got {type_name(value)} {shown(value)}.",
                         hint='For example modules-to-save = ["lm_head", "embed_tokens"] (new tokens: axolotl\'s lora_modules_to_save).')
    return tuple(dict.fromkeys(value))


def _adapter_targets(table: Table, adapter: Any, model: Any, targets: Tuple[str, ...]) -> Tuple[str, ...]:
    """The targets, checked against what the run's adapter can adapt: PEFT's VeRA and IA3 wrap the layers' linears
    only (no Embedding, which is LoRA's), and only LoRA has the routed-expert ParamWrapper."""
    if adapter is None:
        return targets
    outer = [t for t in targets if t in OUTER_TARGETS]
    if outer and not adapter.outer:
        raise table.fail("lora-targets", f'{adapter.label} does not adapt {one_of(outer)} here (only the decoder layers\' linears are modelled for it).',
                         hint="Leave them out of lora-targets, or train them in full: modules-to-save.")
    if not adapter.expert_params and isinstance(model, Architecture) and any(lin.wrap == "param" for lin in adapted_linears(model, targets)):
        raise table.fail("lora-targets", f"PEFT's {adapter.label} does not adapt routed-expert parameters (only LoRA's ParamWrapper does).",
                         hint="Target the attention linears only.")
    return targets


def _virtual_tokens(table: Table, adapter: Any) -> int:
    """num-virtual-tokens: required by a method that prepends a prompt (PEFT's PromptTuningConfig has no default)."""
    if adapter is None or adapter.prompt is None:
        return 0
    if "num-virtual-tokens" not in table:
        raise table.fail("mode", f"{adapter.label} needs num-virtual-tokens (PEFT's num_virtual_tokens has no default).",
                         hint="Add num-virtual-tokens = 20 (the PEFT docs' example), the count your PEFT config sets.")
    return table.integer("num-virtual-tokens")


def _prompt_encoder(table: Table, adapter: Any, model: Any, checkpointing: bool) -> PromptEncoder:
    """What makes a prompt method's virtual tokens (model/prompts.py PromptEncoder, PEFT's defaults where unset), and
    whether PEFT can apply the method to this model at all (Adapter.fits; prefix tuning under checkpointing)."""
    if adapter is None or adapter.prompt is None:
        return PromptEncoder()
    problem = adapter.fits(model) if adapter.fits is not None and isinstance(model, Architecture) else ""
    if problem:
        raise table.fail("mode", problem, hint=f"Use mode = \"prompt-tuning\" or \"lora\" for this model (docs/adapters.md).")
    if adapter.kv_prefix and checkpointing:
        # peft/peft_model.py PeftModel.add_adapter raises "does not work with gradient checkpointing" when the model has it
        # on; turned on later (the HF Trainer's gradient_checkpointing), transformers' GradientCheckpointingLayer drops the
        # cache, prefix included (modeling_layers.py: cache = None), so nothing would train
        raise table.fail("gradient-checkpointing" if "gradient-checkpointing" in table else "mode",
                         f"PEFT's {adapter.label} does not work with gradient checkpointing (the checkpointed layers drop the cache that holds the prefix).",
                         hint="Set gradient-checkpointing = false, or use prompt tuning or LoRA.")
    kind = table.choice("encoder-reparameterization-type", ENCODER_KINDS, "mlp")
    if kind == "lstm":
        raise table.fail("encoder-reparameterization-type", "p-tuning's LSTM encoder is not modelled: what nn.LSTM keeps for backward is "
                         "a kernel workspace of its own (oneDNN on the CPU, cuDNN's reserve space on CUDA).",
                         hint='Use encoder-reparameterization-type = "MLP" (PEFT\'s default and its recommendation).')
    return PromptEncoder(projection=table.boolean("prefix-projection", False), hidden=table.integer("encoder-hidden-size", 0) or 0,
                         kind=kind, layers=table.integer("encoder-num-layers", 2))


def _use_dora(table: Table, model: Any, targets: Tuple[str, ...]) -> bool:
    """use-dora: DoRA on the adapted linears (and the head). PEFT refuses it on routed-expert parameters
    (peft/tuners/lora/layer.py ParamWrapper: "does not work with use_dora=True"); its embedding variant
    (DoraEmbeddingLayer) is not modelled, so a DoRA run that adapts embed_tokens is refused rather than guessed."""
    dora = table.boolean("use-dora", False)
    if dora and "embed_tokens" in targets:
        raise table.fail("use-dora", "DoRA on embed_tokens (PEFT's DoraEmbeddingLayer) is not modelled.",
                         hint="Leave embed_tokens out of lora-targets (or train it in full: modules-to-save), or set use-dora = false.")
    if dora and isinstance(model, Architecture) and any(lin.wrap == "param" for lin in adapted_linears(model, targets)):
        raise table.fail("use-dora", "PEFT does not apply DoRA to routed-expert parameters (ParamWrapper raises a ValueError).",
                         hint="Target the attention linears only, or set use-dora = false.")
    return dora


def run_mode(table: Table, ctx: Context) -> Tuple[str, Any]:
    """The run's mode and the adapter it names (None for "train" and "inference"): an adapter a plugin
    registers is a mode like the built-in "lora" and "qlora" (adapters.py)."""
    names = tuple(ctx.catalog.adapters.names)
    if "mode" in table and isinstance(table.values["mode"], str) and table.values["mode"].lower() not in MODES + names \
            and ctx.catalog.load_entry_points():
        names = tuple(ctx.catalog.adapters.names)  # plugins were loaded: one of them may register it
    value = table.values.get("mode")
    if isinstance(value, str) and value.lower() in ("dora", "rslora") and value.lower() not in names:
        key = "use-" + value.lower()
        raise table.fail("mode", f'"{shown_name(value)}" is an option of LoRA (PEFT LoraConfig.use_{value.lower()}), not a mode.',
                         hint=f"Use mode = \"lora\" with {key} = true (valid modes: {one_of(MODES + names)}).")
    if isinstance(value, str) and value.lower() in NOT_MODELLED_METHODS and value.lower() not in names:
        raise table.fail("mode", f'"{shown_name(value)}" ({NOT_MODELLED_METHODS[value.lower()]}) is not modelled yet: its memory is not '
                         "LoRA's, and a LoRA figure would be a wrong one (docs/adapters.md).",
                         hint=f"Valid: {one_of(MODES + names)}; a plugin may register it (llmmem_register_adapters).")
    mode = table.choice("mode", MODES + names, "train")
    return mode, (None if mode in MODES else ctx.catalog.adapter(mode))


# PEFT methods a run may name that no adapter models yet, and what each does that LoRA's count would miss
NOT_MODELLED_METHODS = {
    "adalora": "PEFT AdaLoraConfig: SVD-form adapters (lora_A, lora_E, lora_B) whose ranks a budget schedule prunes, with an "
               "orthogonality penalty on A and B in every step",
    "oft": "PEFT OFTConfig: an orthogonal block-diagonal matrix, the Cayley transform of trained skew-symmetric blocks, built "
           "in every forward",
}


def configured_adapter(table: Table, adapter: Any) -> Any:
    """The adapter as the run's method options make it (LoHa's and LoKr's rank-dropout, module-dropout, decompose-both,
    decompose-factor: peft/tuners/loha/config.py, lokr/config.py; model/lycoris.py configured), the entry itself when
    it reads none or the run sets none (PEFT's defaults: 0.0, 0.0, False, -1)."""
    if adapter is None or adapter.configure is None:
        return adapter
    options: Dict[str, Any] = {key: table.probability(key) for key in ("rank-dropout", "module-dropout") if table.probability(key)}
    if table.boolean("decompose-both", False):
        options["decompose-both"] = True
    value = table.values.get("decompose-factor", -1)
    if isinstance(value, bool) or not isinstance(value, int) or (value != -1 and not 1 <= value <= 2**31):
        raise table.fail("decompose-factor", f"expected -1 or a positive whole number, got {type_name(value)} {shown(value)}.",
                         hint="-1 (PEFT's default) splits each dimension into the factors nearest its square root; n > 0 splits off n where it divides.")
    if value != -1:
        options["decompose-factor"] = value
    return adapter.configure(adapter, options) if options else adapter


def read_targets(table: Table) -> Tuple[str, ...]:
    """lora-targets as written (a list of module names or "all-linear"); PEFT's default q/v until checked."""
    targets: Tuple[str, ...] = ("q_proj", "v_proj")
    if "lora-targets" in table:
        value = table.values["lora-targets"]
        if value == "all-linear":
            targets = ("all-linear",)
        elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            targets = tuple(value)
        else:
            raise table.fail("lora-targets", f"expected a list of module names or \"all-linear\", got {type_name(value)} {shown(value)}.")
    return targets


def checked_targets(table: Table, model: Any, adapter: Any, targets: Tuple[str, ...]) -> Tuple[str, ...]:
    """The targets held to the model's own module names, or PEFT's default for its family where none are given."""
    if isinstance(model, Architecture) and "lora-targets" in table and targets != ("all-linear",):
        names = model.module_names() + list(OUTER_TARGETS)
        leaves = {n.split(".")[-1] for n in names}
        for target in targets:
            if target != "all-linear" and target not in names and target not in leaves:
                own = model.family.own_spelling(target)
                hint = f' {model.family.name} spells it "{own}".' if own in leaves else did_you_mean(target, names)
                raise table.fail("lora-targets", f'"{shown_name(target)}" is not a linear layer of this {model.family.name} model.{hint}',
                                 hint=f'Valid: {one_of(names)} or "all-linear".')
        problem = peft_target_problem(model.family.name, model.linears(), targets)[0]
        if problem:
            raise table.fail("lora-targets", problem)

    if isinstance(model, Architecture) and adapter is not None and adapter.prompt is None and "lora-targets" not in table:
        # PEFT's default target_modules for the model_type (peft/utils/constants.py
        # TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); PEFT refuses a model_type it lacks. A prompt method has none.
        targets = adapter.default_targets(model.family) if adapter.default_targets else model.family.lora_targets
        if not targets:
            names = model.module_names()
            raise table.fail("mode", f'PEFT has no default {adapter.label} targets for {model.family.name} models; say which linears to adapt.',
                             hint=f'Add lora-targets = [...] from {one_of(names)}, or "all-linear".')
    return targets


def adapter_fields(table: Table, adapter: Any, model: Any, targets: Tuple[str, ...], checkpointing: bool = False) -> Dict[str, Any]:
    """The Run fields the adapter keys set (read in this order, so the first error reported stays the same)."""
    return dict(
        lora_rank=table.integer("lora-rank", adapter.default_rank if adapter else 8),
        lora_rank_given="lora-rank" in table,
        lora_targets=targets,
        lora_dropout=table.probability("lora-dropout") or 0.0,
        bnb_keeps_inputs=_bnb_keeps_inputs(table),
        kbit_prepare=table.boolean("kbit-prepare", False),
        modules_to_save=_modules_to_save(table),
        use_dora=_use_dora(table, model, _adapter_targets(table, adapter, model, targets)),
        use_rslora=table.boolean("use-rslora", False),
        virtual_tokens=_virtual_tokens(table, adapter),
        prompt_encoder=_prompt_encoder(table, adapter, model, checkpointing),
    )
