"""Reading a run's trainer knobs from its config: the profile's defaults, the run's own keys on top, and the
combinations a trainer itself refuses (kept apart from the profiles' table, catalog/profiles.py).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Tuple

from ..errors import did_you_mean, shown as shown_value, shown_name
from ..record import Record
from ..values import release
from .kernels import KERNELS, loss_of
from .profiles import LOSSES, OPTIMIZER_IMPLS, PROFILES, Knobs, Profile, chunks_for

TRAINER_KEYS = ("framework", "loss", "loss-chunks", "kernels", "activation-offload", "optimizer-in-backward", "optimizer-impl", "double-quant",
                "torch-version", "framework-version", "checkpoint-reentrant")
# torch-version is not training-only: it also sets the CUDA context of a serving forward (core/records.py)
_TRAINING_KNOBS = ("loss", "loss-chunks", "kernels", "activation-offload", "optimizer-in-backward", "optimizer-impl", "checkpoint-reentrant")


class Resolved(Record):
    knobs: Knobs
    adapter_dtype: str  # the adapter-dtype default of the profile (the run's key wins)
    gradient_checkpointing: bool  # the gradient-checkpointing default of the profile


def resolve(levels, *, mode: str, dtype, seq_len: int, run_name: str) -> Resolved:
    """The knobs of one run: the first level (run, then project) that sets a key wins, then the profile.

    ``levels`` are keys.Table objects, run first. Contradictions a trainer itself rejects are errors.
    """
    def pick(key: str):
        return next((t for t in levels if key in t), None)

    run_level = levels[0]
    if mode == "inference":
        for key in _TRAINING_KNOBS:
            if key in run_level:
                raise run_level.fail(key, f'only applies to training; run "{run_name}" has mode = "inference".')

    def value(key: str, getter: str, default, *args):
        # every level's value is checked, even one a run overrides; the first level that sets it wins
        found = [getattr(t, getter)(key, *args, default) for t in levels if key in t]
        return found[0] if found else default

    catalog = run_level.ctx.catalog  # the built-in profiles and any a plugin registers
    framework = value("framework", "choice", "transformers", catalog.names("profiles", *(t.values["framework"] for t in levels if "framework" in t)))
    profile = catalog.profile(framework)
    given = tuple(k for k in TRAINER_KEYS[1:] if pick(k) is not None)

    kernels_table = pick("kernels")
    kernels = _kernels(kernels_table) if kernels_table is not None else (profile.kernels if mode != "inference" else ())
    implied = loss_of(kernels)
    loss = value("loss", "choice", implied or profile.loss, LOSSES)
    loss_table = pick("loss")
    if implied and kernels_table is not None and loss_table is not None and loss != implied:
        raise loss_table.fail("loss", f'contradicts kernels = {list(kernels)}, whose loss kernel is loss = "{implied}".',
                              hint=f'Remove loss (the kernels set it), or set loss = "{implied}".')
    chunks_table = pick("loss-chunks")
    if chunks_table is not None and loss != "chunked":
        raise chunks_table.fail("loss-chunks", f'only applies to loss = "chunked"; this run\'s loss is "{loss}".',
                                hint='Set loss = "chunked" with it, or remove loss-chunks.')
    default_chunks = chunks_for(profile, seq_len) if profile.loss == "chunked" else PROFILES["torchtune"].loss_chunks
    chunks = value("loss-chunks", "integer", default_chunks)
    training = mode != "inference"  # a profile's training defaults do not apply to serving
    offload = value("activation-offload", "boolean", profile.activation_offload and training)
    in_backward = value("optimizer-in-backward", "boolean", profile.optimizer_in_backward and training)
    impl = value("optimizer-impl", "choice", profile.optimizer_impl, OPTIMIZER_IMPLS)
    four_bit = getattr(dtype, "name", "") in ("nf4", "int4")
    dq_table = pick("double-quant")
    if dq_table is not None and not four_bit:
        raise dq_table.fail("double-quant", f'only applies to 4-bit weights (dtype = "nf4" or "int4"); this run\'s dtype is "{dtype.name}".')
    double_quant = value("double-quant", "boolean", profile.double_quant)
    if profile.nf4_layout == "torchao" and dq_table is not None and not double_quant:
        raise dq_table.fail("double-quant", "torchtune's NF4 (torchao NF4Tensor) always double-quantises its scalers; false is not an option there.",
                            hint='Remove double-quant, or use framework = "transformers" (bitsandbytes) for plain NF4.')
    version_table = pick("framework-version")
    framework_version = _framework_version(version_table, framework) if version_table is not None else ()
    dated_loss = bool(framework_version and profile.inplace_loss_before) and framework_version < profile.inplace_loss_before
    if dated_loss and loss_table is None and kernels_table is None:
        loss = "inplace"  # the release's own CE kernel over the whole logits, as they come (Profile.inplace_loss_before)
        upcast, keeps = False, False
    elif loss == profile.loss:
        upcast, keeps = profile.chunk_upcast, profile.keeps_logits
    else:  # a loss the profile does not use: chunked as torchtune does it (fp32 chunks, logits not kept)
        upcast, keeps = True, loss in ("upcast", "inplace")
    torch_table = pick("torch-version")
    torch_version = _torch_version(torch_table) if torch_table is not None else ()
    compiled_loss = training and profile.compiles_loss and value("compile", "boolean", False)
    rope_caches = bool(framework_version and profile.rope_caches_before) and framework_version < profile.rope_caches_before
    # use_reentrant of torch.utils.checkpoint; None: the trainer's default (transformers < 5: True, 4.48.1
    # modeling_utils.py:2539 gradient_checkpointing_enable; the readers put axolotl's, LLaMA-Factory's and TRL's own)
    reentrant = value("checkpoint-reentrant", "boolean", None)
    knobs = Knobs(framework, loss, chunks, upcast, keeps, offload, in_backward, impl, double_quant, profile.nf4_layout, given, kernels,
                  torch_version, profile.offload_resident, compiled_loss, framework_version, rope_caches, profile.holds_output,
                  training and (profile.returns_fp32_logits or bool(framework_version and framework_version < profile.fp32_logits_before)),
                  shifted_loss_copy=training and _in_releases(framework_version, profile.shifted_loss_copy),
                  holds_output_to_step=profile.holds_output_to_step, checkpoint_reentrant=reentrant,
                  first_pass_kept=training and offload and _in_releases(framework_version, profile.first_pass_kept))
    compute = "bf16" if getattr(dtype, "quantized", False) or getattr(dtype, "name", "") == "bf16" else getattr(dtype, "name", "bf16")
    return Resolved(knobs, profile.adapter_dtype or compute, profile.gradient_checkpointing)


def _torch_version(table) -> Tuple[int, int]:
    """torch-version = "2.0.1" (or "2.4.0+cu121", as torch.__version__ prints it): (major, minor)."""
    raw = table.values["torch-version"]
    parts = release(raw)
    if parts is None:
        label = f'"{shown_name(raw)}"' if isinstance(raw, str) else shown_value(raw)
        raise table.fail("torch-version", f"{label} is not a torch release; expected a string such as \"2.0.1\" or \"2.4.0+cu121\" "
                         "(torch.__version__). Leave it out for a current release (2.1 or later).",
                         hint='The foreach AdamW step depends on it (torch 2.0 keeps two state-sized lists, 2.1 and later one), '
                              'and the CUDA context and allocator slack (torch 1.x: eager module loading, core/records.py).')
    return parts[0], parts[1]


def _framework_version(table, framework: str) -> Tuple[int, ...]:
    """framework-version = "2025.3.19" (the trainer's own release, as its __version__ prints it)."""
    raw = table.values["framework-version"]
    parts = release(raw)
    if parts is None:
        label = f'"{shown_name(raw)}"' if isinstance(raw, str) else shown_value(raw)
        raise table.fail("framework-version", f"{label} is not a release number; expected a string such as \"2025.3.19\" "
                         f"(the {framework} release, as its __version__ prints it). Leave it out for a current release.",
                         hint="Unsloth releases 2025.3.10 to 2025.9.9 load dtype = \"int8\" (load_in_8bit) in 16 bit (docs/profiles.md).")
    return parts


def _in_releases(version: Tuple[int, ...], releases: Tuple[Tuple[int, ...], ...]) -> bool:
    """Whether a declared release falls in [first, fixed) (no declared release: a current one, outside)."""
    return bool(version and releases) and releases[0] <= version < releases[1]


def loads_8bit_in_16bit(profile: Profile, version: Tuple[int, ...]) -> bool:
    """Whether this release of the trainer loads a load_in_8bit model in 16 bit (Profile.ignores_8bit)."""
    return bool(profile.ignores_8bit and version) and profile.ignores_8bit[0] <= version < profile.ignores_8bit[1]


def _kernels(table) -> Tuple[str, ...]:
    """kernels = ["liger", ...]: names of kernels.KERNELS, in the order given, each once."""
    value = table.values["kernels"]
    value = [value] if isinstance(value, str) else value
    bad = [v for v in value if not isinstance(v, str) or v not in KERNELS] if isinstance(value, list) else [value]
    if bad:
        near = did_you_mean(bad[0], KERNELS) if isinstance(bad[0], str) else ""
        label = f'"{shown_name(bad[0])}"' if isinstance(bad[0], str) else shown_value(bad[0])
        raise table.fail("kernels", f"{label} is not a kernel this estimate knows; expected a list of: {', '.join(KERNELS)}.{near}",
                         hint='For example kernels = ["liger"] (Liger\'s default patch: RoPE, RMSNorm, SwiGLU, fused linear cross-entropy).')
    return tuple(dict.fromkeys(value))


def check_combination(knobs: Knobs, table, *, gradient_checkpointing: bool, micro_batches: int, pipeline_parallel: int) -> None:
    """What the trainers refuse: offload without checkpointing, optimizer-in-backward with accumulation."""
    if knobs.activation_offload and not gradient_checkpointing:
        key = "activation-offload" if "activation-offload" in table else "gradient-checkpointing"
        raise table.fail(key, "activation-offload keeps the checkpointed layer inputs in host memory, so it needs gradient-checkpointing = true.",
                         hint="torchtune raises the same (recipes/lora_finetune_single_device.py:193); set gradient-checkpointing = true.")
    if knobs.optimizer_in_backward and micro_batches > 1 and pipeline_parallel == 1:
        key = "optimizer-in-backward" if "optimizer-in-backward" in table else "micro-batches"
        raise table.fail(key, f"optimizer-in-backward steps and frees each gradient during backward, so it cannot accumulate gradients over micro-batches = {micro_batches}.",
                         hint="torchtune raises the same (recipes/full_finetune_single_device.py:157); use micro-batches = 1.")
