"""``method = "trace"``: the run's real training step (or prefill), counted on fake tensors; the dispatch
(estimator.py) calls :func:`traced`.

The model is the family's own transformers class built from the run's config on the meta device;
LoRA is PEFT's; the step, the loss, autograd's saved tensors and the optimizer's temporaries are
PyTorch's own, run under ``FakeTensorMode`` with no memory and no arithmetic (trace/step.py), and
every storage is counted while it lives (trace/live.py). Each phase's peak is the live bytes at its
real peak instant, and its breakdown is what is alive then.

Depth cuts: a deep model is traced at two depths that hold every layer kind (each layer kind's
layers at the same ratio where the pattern repeats) and each term extrapolated linearly to the
declared depth, so an 8B model traces in seconds and a 671B MoE at all.

The pool's slack (reserved beyond allocated, ``overhead.fragmentation``) is the trace's own: every allocation
and free is replayed through PyTorch's caching allocator (trace/allocator.py), and each phase's reserved
peak less its allocated peak, at the deepest cut (:func:`pool_slack`), is what the composer adds (``Phase.cached``).

What the trace adds from the analytic (detailed) estimate, named in the output: the CUDA context and
cuBLAS workspace (``overhead``), the evaluation and save phases, and the parts a trace cannot follow
(4-bit / 8-bit bitsandbytes weights, chunked or fused loss kernels); the last make the estimate
approximate. Needs the ``measure`` extra (torch, transformers; peft for LoRA).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

from ..core.compose import Item, Phase, Shown, compose, run_overhead
from ..core.detailed import detailed
from ..core.records import TERMS, Estimate
from ..core.run import Run
from ..errors import ConfigError
from ..hf.config import with_depth
from ..model.architecture import Architecture

if TYPE_CHECKING:  # step.py imports torch; only its record's name is needed here
    from .step import DepthTrace

TRAINING_PHASES = ("load", "backward", "optimizer step")
INFERENCE_PHASES = ("prefill", "decode")
TRACED_OPTIMIZERS = ("adamw", "adam", "sgd", "sgd-momentum")
# bitsandbytes optimizers update in their own CUDA kernels: traced as torch AdamW, their states from the analytic term
BNB_OPTIMIZERS = ("adamw-8bit", "paged-adamw-8bit", "paged-adamw-32bit", "paged-adamw")
EXTRA = "pip install 'pytest-llmmem[measure]' (torch, transformers and peft; the CPU wheel of torch is enough)"


def require_trace_extra(run: Run) -> None:
    """A one-paragraph error naming the extra when torch, transformers or (for LoRA) peft is missing."""
    needed = ["torch", "transformers"] + (["peft"] if run.adapter is not None else [])
    import importlib.util

    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        where = f"{run.file}:{run.line}: " if run.file and run.line else ""
        raise ConfigError(f'{where}run "{run.name}": method = "trace" runs the model on fake tensors and needs '
                          f'{" and ".join(needed)} ({", ".join(missing)} not installed).', hint=EXTRA + '; or method = "detailed".')


def _refusal(run: Run) -> str:
    """Why the trace cannot run this job at all ('' when it can)."""
    if not isinstance(run.model, Architecture):
        return "it needs the architecture (config or shape keys), not only params"
    if run.model.family.classifier:
        return f"{run.model.family.name} is a classifier; the trace builds causal language models"
    if run.gpus > 1:
        return f"it runs one process; this run declares {run.gpus} GPUs (sharding and parallelism are not traced)"
    if run.recipe.post_training:
        return f'recipe = "{run.recipe.name}" needs the trainer\'s own models and generation, which are not traced'
    if run.serve is not None:
        return f"engine = \"{run.engine}\" is a serving engine's memory pool, not a traced forward"
    if run.trains and run.optimizer is not None and run.optimizer.name not in TRACED_OPTIMIZERS + BNB_OPTIMIZERS:
        return f'it steps torch optimizers ({", ".join(TRACED_OPTIMIZERS)}); "{run.optimizer.name}" is not one'
    if run.autocast and run.adapter is not None and run.adapter.quantized_base:
        return ("autocast = true over a 4-bit base: PEFT's bitsandbytes layers skip their fp32 input cast under autocast "
                "(peft tuners/lora/bnb.py requires_conversion), and the trace builds the base in 16 bit with PEFT's plain layer")
    if run.selective_ac:
        return "selective activation checkpointing (torchtitan's op or layer policies) is not run by the trace"
    if run.knobs.returns_fp32_logits:
        return ("the profile's head is transformers 4.40's (fp32 logits returned, the loss on a shifted copy), which the "
                "installed transformers does not run")
    if run.mask_free:
        return (f'attn-implementation = "{run.attn_implementation}" needs the flash-attn CUDA kernels, which the fake-tensor '
                "trace on the CPU cannot call; SDPA in their place would differ in the masks and in the kernel's saved "
                "tensors, so the detailed estimate prices it (no 4D masks, core/terms/attention_masks.py)")
    if run.knobs.optimizer_in_backward or run.knobs.activation_offload:
        return "optimizer-in-backward and activation-offload are trainer hooks the trace does not run"
    return ""


def traced(run: Run) -> Estimate:
    """The Estimate of ``run`` by tracing it (see the module docstring)."""
    why = _refusal(run)
    if why:
        where = f"{run.file}:{run.line}: " if run.file and run.line else ""
        raise ConfigError(f'{where}run "{run.name}": method = "trace" cannot follow this run: {why}.',
                          hint='Use method = "detailed" for it.')
    require_trace_extra(run)
    from .step import trace_at  # torch is imported only once the extra is known to be installed

    started = time.perf_counter()
    arch = run.model
    cuts = trace_depths(arch)
    traces = [trace_at(run, arch, layers) for layers in cuts]
    phases = extrapolate([t.phases for t in traces], cuts, arch.num_layers)
    slack = pool_slack(traces, cuts, arch.num_layers, run.trains)
    seconds = time.perf_counter() - started
    analytic = detailed(run._replace(method="detailed"))
    depth = f"{cuts[0]} and {cuts[1]} of {arch.num_layers} layers, extrapolated" if len(cuts) > 1 else f"all {arch.num_layers} layers"
    notes = [f"traced on fake tensors in {seconds:.1f} s ({depth}); attention: {traces[0].attention}"]
    return as_estimate(run, analytic, phases, notes, slack)


def trace_depths(arch: Architecture) -> Tuple[int, ...]:
    """The depths to trace: the smallest (at least 2) holding every layer kind, and the next that adds
    a whole repeat of the pattern (twice the first when the kinds repeat from the start, else one
    layer more); the whole model when it is no deeper than that."""
    def kinds(a: Architecture) -> Dict[object, int]:
        counts: Dict[object, int] = {}
        for g in a.layer_groups():
            key = g._replace(count=0)
            counts[key] = counts.get(key, 0) + g.count
        return counts

    full, n = kinds(arch), arch.num_layers
    first = next((d for d in range(min(2, n), n + 1) if set(kinds(with_depth(arch, d))) == set(full)), n)
    if first >= n:
        return (n,)
    once = kinds(with_depth(arch, first))
    second = 2 * first if 2 * first < n and kinds(with_depth(arch, 2 * first)) == {k: 2 * v for k, v in once.items()} else first + 1
    return (n,) if second >= n else (first, second)


def extrapolate(phases: List[Dict[str, Dict[str, int]]], cuts: Tuple[int, ...], layers: int) -> Dict[str, Dict[str, int]]:
    """Each phase's terms at ``layers`` from the traces at ``cuts``: linear in depth, term by term
    (what a layer adds is the same for every repeat of the pattern)."""
    if len(cuts) == 1:
        return phases[0]
    (a, b), (lo, hi) = cuts, phases
    out: Dict[str, Dict[str, int]] = {}
    for phase, parts in lo.items():
        top = hi.get(phase, {})
        out[phase] = {term: max(0, round(v + (layers - a) * (top.get(term, 0) - v) / (b - a)))
                      for term, v in {**{k: 0 for k in top}, **parts}.items()}
    # A shallow cut can peak at the start of backward (the loss) where the whole model peaks at its end (every
    # gradient): the peak is a maximum of instants, each linear in depth, so the end is extrapolated on its own.
    if "backward end" in out and sum(out["backward end"].values()) > sum(out.get("backward", {}).values()):
        out["backward"] = out["backward end"]
    return out


def pool_slack(traces: Sequence[DepthTrace], cuts: Tuple[int, ...], layers: int, trains: bool) -> Dict[str, int]:
    """Each phase's reserved beyond allocated (replayed, trace/allocator.py) at the deepest cut traced, held at the
    declared depth. Training: not extrapolated, as the cached blocks at a step's peak are what the layers' short-lived
    tensors left, which the next layer reuses, and which phase's layout binds the pool (the backward's activations, the
    optimizer step's gradients, states and temporaries) changes with depth, so a line through two shallow cuts
    multiplies segment effects (the H100 rows, benchmarks/trace_reserved.py: Granite-3.3-2B's 40 layers +41 % from 2
    and 4, the held slack -0.2 %). Inference: each layer adds only blocks that stay (weights, its KV cache), so slack
    that grows from the shallow cut to the deep one grows per layer and is extrapolated (Phi-3-mini's prefill at
    8 x 4,096 tokens: -12.9 % held, +0.5 % extrapolated); it never falls below the held one."""
    def slack(trace: DepthTrace, name: str) -> int:
        return max(0, trace.reserved[name] - sum(trace.phases.get(name, {}).values()))

    deepest = traces[-1]
    held = {name: slack(deepest, name) for name in deepest.reserved}
    if trains or len(traces) < 2:
        return held
    (shallow, deep), shallow_trace = cuts, traces[0]
    return {name: max(value, round(value + (layers - deep) * (value - slack(shallow_trace, name)) / (deep - shallow)))
            if name in shallow_trace.reserved else value for name, value in held.items()}


def as_estimate(run: Run, analytic: Estimate, phases: Dict[str, Dict[str, int]], notes: List[str],
                slack: Dict[str, int]) -> Estimate:
    """The traced phases in the Estimate shape, with the analytic parts the trace does not follow; the
    overhead is the phase composer's (core/compose.py), as for every other estimate, with each traced
    phase's pool slack the replayed one (``slack``, :func:`pool_slack`) in place of the analytic share."""
    approximate = list(analytic.approximate)
    substitutes = {}
    if run.dtype.quantized:
        substitutes["weights"] = analytic.breakdown["weights"]
        approximate.append(f"{run.dtype.name} weights: bitsandbytes kernels are not traced (traced in 16 bit); the analytic weights term is used")
    if run.trains and run.optimizer is not None and run.optimizer.name in BNB_OPTIMIZERS:
        substitutes["optimizer_states"] = analytic.breakdown["optimizer_states"]
        approximate.append(f"{run.optimizer.name}: bitsandbytes' optimizer kernels are not traced (torch AdamW was); the analytic optimizer-states term is used")
    if run.trains and run.knobs.loss != "upcast":
        substitutes["logits"] = analytic.breakdown["logits"]
        approximate.append(f"loss = \"{run.knobs.loss}\": that kernel is not traced (HF's cross-entropy was); the analytic logits term is used")
    if run.trains and any(g.attention.kind == "mamba" for g in run.model.layer_groups()):
        approximate.append("Mamba layers: the trace runs transformers' sequential PyTorch scan, not the mamba-ssm CUDA kernels a GPU run uses")
    names = TRAINING_PHASES if run.trains else INFERENCE_PHASES
    traced: List[Phase] = []
    for name in names:
        if name not in phases:
            continue
        terms = {k: v for k, v in phases[name].items() if v}
        for term, value in substitutes.items():
            if term in terms or (term == "logits" and name == "backward"):
                terms[term] = value
        # activations and loss buffers are the short-lived tensors the allocator's pool fragments; the blocks it keeps
        # cached beyond them are the replayed slack (substituted terms keep it: their kernels' own allocations are not seen)
        items = tuple(Item(t, v, transient=t in ("activations", "logits"), shown_if_zero=True) for t, v in terms.items())
        traced.append(Phase(name, items, cached=slack.get(name, 0)))
    overhead = run_overhead(run)
    if overhead.fragmentation is None:
        notes.append("overhead is the run's own figure (it replaces the CUDA context, cuBLAS workspace and the pool's slack)")
    else:
        overhead = overhead._replace(fragmentation=0.0)  # the slack is each phase's ``cached`` bytes, not a share
        notes.append("overhead: the CUDA context and cuBLAS workspace are the analytic terms; the pool's slack (reserved "
                     "beyond allocated) is replayed through the caching allocator (trace/allocator.py)")
    composition = compose(traced, overhead, TERMS) if traced else None
    parts: List[Shown] = list(composition.phases) if composition else []
    for part in analytic.phase_parts:
        if part.name in ("eval", "save"):
            parts.append(part)
            notes.append(f"the {part.name} phase is the analytic one")
    peak = max(parts, key=lambda p: p.total)
    breakdown = dict.fromkeys(TERMS, 0)
    for term, value in peak.breakdown.items():
        breakdown[term] = breakdown.get(term, 0) + value
    details = dict(composition.overhead_details) if composition and peak.name == composition.peak else {}
    if not details:  # an analytic phase (eval, save) or none traced: the analytic overhead's items
        details = {k: v for k, v in analytic.details.items() if k.startswith("overhead.")}
    details.update((f"trace.{p.name}.{k}", v) for p in parts for k, v in p.breakdown.items())
    # the saved set at the end of the measured forward: the analytic activations and loss terms count these
    details.update((f"trace.forward end.{k}", v) for k, v in phases.get("forward end", {}).items() if v)
    return Estimate(run, "trace", breakdown, analytic.params, analytic.trainable_params, tuple(notes), details,
                    analytic.host_bytes, analytic.partial, tuple(approximate), peak_phase=peak.name,
                    phases=tuple((p.name, p.total) for p in parts), phase_parts=tuple(parts))
