"""The methods of one model: a resolved :class:`Run` in, a per-GPU :class:`Estimate` out.

Which runs are recipes or servers is decided above (:mod:`pytest_llmmem.estimator`). Two methods.
``rule-of-thumb`` is the seed's arithmetic and nothing more (inference = params x bytes per dtype,
training = 4 x inference). ``detailed`` counts what sits in GPU memory at the peak of a training step
or an inference prefill: the step's terms (terms/step.py), listed phase by phase (terms/job_phases.py)
and composed once (compose.py); each term names its source where it is priced.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ..model.adapters import lora_saved
from ..model.architecture import Architecture
from ..units import format_bytes
from .compose import compose, run_overhead
from .records import TERMS, Estimate
from .run import Run
from ..catalog.kernels import applied as kernels_applied
from ..catalog.profiles import PROFILES
from .terms.backward import backward_instant, instant_details
from .terms.checkpointing import COMPILE_APPROXIMATE, selective_approximate
from .terms.fsdp_pools import FSDP_WRAP_POOL, reshard_hold_unknown
from .terms.model_ends import rotary_tables
from .terms.job_phases import first_step_unknown, job_note, job_phases, step_phases
from .terms.step import Step, step_terms
from .terms.trainer_terms import optimizer_step


def estimate_model(run: Run) -> Estimate:
    """One model's estimate by its method: an SFT run, or a recipe's policy, reference or critic.
    Which runs are recipes or servers is decided above this module (:func:`pytest_llmmem.estimator.estimate`)."""
    if run.method == "rule-of-thumb":
        from .rule_of_thumb import rule_of_thumb

        return rule_of_thumb(run)
    return detailed(run)


# --- detailed ----------------------------------------------------------------------------------


def detailed(run: Run, step: Optional[Step] = None) -> Estimate:
    """The detailed estimate of an SFT step or an inference prefill: the step's terms (step.py), its
    phases and the whole job's (terms/job_phases.py), composed once (compose.py)."""
    step = step or step_terms(run)
    arch = step.arch
    notes = list(step.notes)
    opt = optimizer_step(run, step.tensors, step.trained, step.gradients, step.optimizer_states)
    phases = job_phases(run, step, opt) if run.trains else step_phases(run, step, opt)
    overhead = run_overhead(run)
    comp = compose(phases, overhead, TERMS, run.calibration)
    if comp.breakdown["optimizer_step"]:
        notes.append(f"peak in the optimizer step: {opt.why} ({format_bytes(opt.temporaries)})")
    peak_phase, totals, parts = "", (), ()
    if run.trains:
        peak_phase, totals, parts = comp.peak, comp.totals, comp.phases
        why = job_note(next(p for p in phases if p.name == comp.peak))
        if why:
            notes.insert(0, why)
    if run.calibration is not None:
        notes.append(f"calibrated: x {run.calibration} from llmmem measure")
    if run.zero_stage == 3 and arch is None:
        notes.append("ZeRO-3's gathered largest layer not counted: it needs the architecture")
    partial, approximate = _caveats(run, arch)
    first_step = first_step_unknown(run, step)
    if first_step:
        approximate += (first_step,)
    if run.trains and overhead.held_pool_binds(next(p for p in phases if p.name == comp.peak)):
        approximate += (FSDP_WRAP_POOL,)
    details = {**dict(step.details), **comp.overhead_details, **dict(opt.details)}
    if run.trains:
        # the breakdown is what is alive at the backward's peak instant; each term's full size stays here
        instant = backward_instant(run, step, opt.gradients)
        details.update(instant_details(instant))
        details.update({"full.gradients": opt.gradients, "full.activations": step.activations, "full.logits": step.logits})
    return Estimate(run, "detailed", comp.breakdown, step.params, step.trainable, tuple(notes), details, step.host, partial,
                    approximate, peak_phase=peak_phase, phases=totals, phase_parts=parts)


# Issue 25: published H100 generate() peaks of Qwen3 at 8k-32k-token prompts were 7-21 % below this estimate
# (Qwen2.5 within 5 %). The prefill terms agree with transformers 5.25's own Qwen3 code on fake tensors (method =
# "trace", 16k prompt: KV identical, the traced transient 0.26 GiB above the detailed one, 0.23 GiB for Qwen2.5:
# benchmarks/data/generate-trace-cpu.jsonl), so the gap is not in the model code this counts; until GPU rows at
# those lengths pin it, such runs are marked.
QWEN3_LONG_GENERATE = ("Qwen3 generate() with a prompt of 8k tokens or more: published GPU peaks were 7-21 % below "
                       "this estimate (Qwen2.5 within 5 %); the cause is not found in transformers' model code")


def _qwen3_long_generate(run: Run, arch: Architecture) -> bool:
    return (run.mode == "inference" and run.engine == "transformers" and bool(run.new_tokens)
            and (run.prompt_len or 0) >= 8192 and arch.family.name in ("qwen3", "qwen3_moe"))


def kernels_approximate(run: Run, arch: Architecture) -> Tuple[str, ...]:
    """Where a declared kernel's saved tensors are not derived here (catalog/kernels.py lists what is)."""
    parts, note = kernels_applied(run.knobs.kernels, arch.family.name)
    out = [note] if note else []
    groups = arch.layer_groups()
    if "glu" in parts and arch.family.glu_saves != 3:
        out.append(f"Liger's GLU kernel on {arch.family.name}'s own gated MLP is not modelled: counted as the family's")
    if "fast-lora" in parts and run.adapter is not None and any(g.mlp.kind == "moe" for g in groups):
        out.append("Unsloth's MoE LoRA kernels are not modelled: the experts are counted as PEFT's")
    return tuple(out)


# torchao's compiled step (catalog/builtin.py torchao-adamw-8bit): its buffers are read from Inductor's CPU code; under
# optimizer-in-backward they are counted at the backward's peak instant, though the largest parameter (a tied embedding)
# may step after the activations are freed.
LOW_BIT_STEP_APPROXIMATE = (
    "{doc}: its compiled step's fp32 buffers ({per:.2f} B per element of the parameter stepped) are read from Inductor's CPU "
    "code (benchmarks/data/compile-cpu.jsonl), CUDA's kernels may fuse otherwise; with the optimizer in backward they are "
    "counted at the backward's peak instant, an upper bound by up to their size where the largest parameter steps after "
    "the activations are freed"
)


def _era_rope_caches(run: Run, arch: Architecture) -> str:
    """The caveat of a profile on transformers 4.37-4.42 (Knobs.returns_fp32_logits): each attention layer's own rotary cache."""
    layers_bytes = arch.num_layers * rotary_tables(arch, seq=arch.context()[0], act=4 if run.dtype.quantized else run.dtype.compute_bytes)
    return ("transformers 4.40's per-layer cos/sin caches are not counted: each attention's rotary_emb registers "
            "_cos_cached and _sin_cached for max_position_embeddings positions (4.40.0 models/llama/modeling_llama.py:112-113, "
            "mistral's :115-116), fp32 where fsdp_qlora builds the QLoRA model from its config (fsdp_qlora train.py:576-577) and FSDP moves "
            f"buffers to the GPU: {format_bytes(layers_bytes)} for this model (counting them puts the Mistral-7B-v0.2 rows "
            "over their 24 GB cards while they ran: docs/profiles.md)")


def _autocast_unpriced(run: Run) -> bool:
    """autocast = true over adapters wider than the compute dtype that lora_autocast_saved does not price: DoRA, VeRA, IA3,
    LoHa, LoKr, and QLoRA (PEFT's bitsandbytes layers skip their fp32 input cast under autocast: peft tuners/lora/bnb.py
    ``requires_conversion = not torch.is_autocast_enabled()``), whose saved set under autocast is not measured here."""
    adapter = run.adapter
    if not (run.autocast and run.precision != "amp" and adapter is not None and adapter.prompt is None and run.adapter_dtype is not None):
        return False
    if run.adapter_dtype.bytes <= run.dtype.compute_bytes:
        return False
    return adapter.saved is not lora_saved or adapter.saved_on is not None or adapter.quantized_base


def _caveats(run: Run, arch: Optional[Architecture]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Why the estimate leaves terms out (partial) or is not exact (approximate)."""
    if arch is None:
        missing = "activations, logits and KV cache" if run.trains or run.mode == "inference" else "activations"
        partial = [f"the model is given by params only: {missing} are not counted"]
        if run.adapter is not None:
            partial.append("LoRA adapters need the architecture: their weights, gradients and optimizer states are not counted")
        return tuple(partial) + run.not_modelled, ()
    approximate, not_modelled = list(arch.approximate), run.not_modelled
    if run.mode == "train" and arch.extra_params and run.vision_tower == "trained":
        not_modelled += ('image inputs: the vision tower\'s activations are not counted (vision-tower = "trained"); '
                         'for text-only training or a frozen tower declare vision-tower = "frozen"',)
    if run.selective_ac:
        approximate.extend(selective_approximate(arch, run.selective_ac))
    if run.compiled and run.trains:
        approximate.append(COMPILE_APPROXIMATE)
    if run.trains and run.optimizer is not None and run.optimizer.step_bytes_per_element:
        approximate.append(LOW_BIT_STEP_APPROXIMATE.format(doc=run.optimizer.doc, per=run.optimizer.step_bytes_per_element))
    if _autocast_unpriced(run):
        approximate.append(f"autocast = true with {run.adapter.label}{' over a 4-bit base' if run.adapter.quantized_base else ''}: "
                           f"its {run.adapter_dtype.name} adapters' 16-bit casts under torch.autocast are not modelled (only plain "
                           "LoRA over a 16-bit base's are, adapters.lora_autocast_saved); its saved tensors are priced as without autocast")
    if _qwen3_long_generate(run, arch):
        approximate.append(QWEN3_LONG_GENERATE)
    if run.trains and run.knobs.kernels:
        approximate.extend(kernels_approximate(run, arch))
    held = reshard_hold_unknown(run, arch) if run.trains else ""
    if held:
        approximate.append(held)
    if run.trains and run.knobs.returns_fp32_logits and not (run.knobs.framework == "transformers" and run.knobs.framework_version >= (4, 45)):
        # transformers 4.45 returns fp32 logits too (Profile.fp32_logits_before), but its rotary embeddings keep no cos/sin
        # caches (4.45.2 models/llama/modeling_llama.py:178 registers only inv_freq)
        approximate.append(_era_rope_caches(run, arch))
    eight_bit = PROFILES.get(run.knobs.framework)
    if run.dtype.name == "int8" and eight_bit is not None and eight_bit.ignores_8bit and not run.knobs.framework_version:
        first, fixed = (".".join(map(str, v)) for v in eight_bit.ignores_8bit)
        approximate.append(f"{run.knobs.framework} releases {first} up to {fixed} (not included) load dtype = \"int8\" (load_in_8bit) in 16 bit, "
                           f"twice these weights (docs/profiles.md): counted as a current release; set framework-version to count an older one")
    if run.trains and run.knobs.loss == "inplace" and not run.knobs.chunk_upcast:
        approximate.append("a release's own CE kernel over the whole logits (framework-version): counted with the HF Trainer's "
                           "fp16 / bf16 on (accelerate's fp32 copy of the returned logits); the forward casts them to "
                           "config.torch_dtype (unsloth/models/llama.py CausalLM_fast_forward), counted as the compute dtype: a "
                           "float32 checkpoint would keep 4 B logits, not 2")
    if run.trains and any(g.attention.kind == "mamba" for g in arch.layer_groups()):
        approximate.append("Mamba layers' training activations depend on the mamba-ssm CUDA kernels and are estimated, not measured")
    return not_modelled, tuple(approximate)
