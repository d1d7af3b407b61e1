"""Render estimates for people (a table with a bar per term) and for tools (a JSON document).

Pure functions from :class:`Estimate` to text; the front-ends decide where the text goes.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..core.records import Estimate
from ..core.terms.checkpointing import describe as describe_selective
from ..model.architecture import Architecture
from ..units import format_bytes, format_count
from ..untrusted import visible
from ..core.terms.job_phases import JOB_NOTED, LABELS as PHASES
from ..catalog.profiles import describe as describe_knobs

JSON_VERSION = 1
BAR_CELLS = (4, 40)  # fewest and most cells of a breakdown bar, whatever the width

LABELS = {
    "weights": "weights",
    "master_weights": "fp32 master weights",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "optimizer_step": "optimizer step (above backward)",
    "activations": "activations",
    "logits": "logits + loss",
    "kv_cache": "KV cache",
    "reference_model": "reference model",  # recipe terms (recipes.py, issue 13)
    "reward_model": "reward model",
    "value_model": "value model",
    "generation_kv_cache": "generation KV cache",
    "rollout_logits": "PPO rollout logits",
    "vllm_engine_share": "vLLM engine share",
    "overhead": "CUDA context + allocator",
    "forward": "next forward (above the step)",
    "last_step_graph": "last step's graph (held by the loop)",
    "load": "loading (above the step)",  # the whole job's phases (job_phases.py, issue 16)
    "eval": "evaluation (above the step)",
    "save": "checkpoint save (above the step)",
    "load_copies": "load-time copies",
    "eval_logits_kept": "eval logits kept on the GPU",
    "state_dict": "state dict on the GPU",
    "calibration": "measured calibration",
}


def _bar(fraction: float, cells: int, ascii_only: bool) -> str:
    """``cells`` wide, filled in eighths of a cell (U+2589..U+258F), or whole "#" cells in ASCII."""
    fraction = min(1.0, max(0.0, fraction))
    if ascii_only:
        filled = int(round(fraction * cells))
        return "#" * filled + "." * (cells - filled)
    full, part = divmod(int(round(fraction * cells * 8)), 8)
    bar = "\u2588" * full + (chr(0x2590 - part) if part else "")  # U+258F is 1/8 of a cell, U+2589 7/8
    return bar + "\u00b7" * (cells - len(bar))


def describe_run(est: Estimate) -> str:
    """One line saying what was estimated: mode, dtype, shape, budget."""
    run = est.run
    parts = [run.mode, run.dtype.name]
    rs = run.recipe
    if rs.post_training:
        what = rs.name
        if rs.num_generations:  # completions compared within a prompt's group (GRPO)
            what += f", {rs.num_generations} generations of {rs.completion_len}"
        elif rs.generation_batch_size:  # it generates (PPO's rollout)
            what += f", completions of {rs.completion_len}"
        parts[0] = f"{run.mode} ({what})"
    if run.mode == "train":
        parts.append(f"{run.precision} precision")
        if run.vision_tower == "frozen":
            parts.append("vision tower frozen")
    if run.autocast and run.precision != "amp" and run.trains:
        parts.append("autocast")  # the forward under torch.autocast (Run.autocast); amp says it already
    if run.optimizer is not None:
        parts.append(run.optimizer.name)
    if run.adapter is not None:
        parts.append(run.adapter.summary(run.virtual_tokens if run.adapter.prompt else run.lora_rank, run.lora_targets))
    if run.serve is not None:
        parts.append(run.engine)  # its TP=N is said once, with the GPUs below
    elif isinstance(run.model, Architecture):
        shape = f"prompt {run.prompt_len} + {run.new_tokens} new" if run.prompt_len else f"seq {run.seq_len}"
        parts.append(f"batch {run.batch_size} x {shape}" + (f", logits {run.logits}" if not run.trains else ""))
    if run.gradient_checkpointing:
        parts.append(describe_selective(run.selective_ac) if run.selective_ac else "checkpointing")
    if run.gpus > 1:
        layout = [f"{run.gpus} GPUs"]
        layout += [f"ZeRO-{run.zero_stage}"] if run.zero_stage else []
        layout += [f"{'FSDP2' if run.fsdp_version == 2 else 'FSDP'} {run.fsdp}"] if run.fsdp != "none" else []
        layout += [f"TP={run.tensor_parallel}"] if run.tensor_parallel > 1 else []
        layout += [f"PP={run.pipeline_parallel}"] if run.pipeline_parallel > 1 else []
        layout += [f"EP={run.expert_parallel}"] if run.expert_parallel > 1 else []
        layout += [f"CP={run.context_parallel}"] if run.context_parallel > 1 else []
        layout += [f"offload {run.offload}"] if run.offload != "none" else []
        parts.append(" ".join(layout))
    parts.append(f"{format_count(est.params)} params")
    return " | ".join(parts)


def caveats(est: Estimate) -> str:
    """"partial", "approximate", both, or "": what kind of guess the figure is."""
    return ", ".join(kind for kind, reasons in (("partial", est.partial), ("approximate", est.approximate)) if reasons)


def caveat_lines(est: Estimate, indent: str = "  ") -> List[str]:
    """One line per reason the figure is partial or approximate; every front-end shows them."""
    return [f"{indent}partial: {visible(r)}" for r in est.partial] + [f"{indent}approximate: {visible(r)}" for r in est.approximate]


def strict_refusal(est: Estimate) -> Optional[str]:
    """The error for a partial or approximate estimate of a run under ``strict`` (None otherwise)."""
    kind = caveats(est)
    if not est.run.strict or not kind:
        return None
    run = est.run
    where = f"{run.file}:{run.line}: " if run.file and run.line else (f"{run.file}: " if run.file else "")
    article = "an" if kind.startswith("a") else "a"
    return (f'{where}run "{run.name}": strict refuses {article} {kind} estimate ({"; ".join(est.partial + est.approximate)}). '
            + ("Give the model's config or its architecture keys so every term is counted, " if est.partial else
               "Declare a family whose layers llmmem knows (see the README), ")
            + "or drop strict to accept it with a warning.")


def verdict(est: Estimate, units: str = "gib") -> str:
    """'FITS' / 'OVER' with total, budget and share, e.g. '61.20 GiB of 76.00 GiB (80.5 %)'; a
    partial or approximate estimate says so: 'FITS (partial): ...'."""
    total = format_bytes(est.total_bytes, units)
    kind = f" ({caveats(est)})" if caveats(est) else ""
    if est.budget_bytes is None:
        return f"{total} (no budget set){kind}"
    share = f"{100 * est.used_fraction:.1f} %"
    head = "FITS" if est.fits else "OVER"
    over = est.total_bytes > est.budget_bytes
    if est.failures and not over:
        head = "FAILS"
    text = f"{head}{kind}: {total} of {format_bytes(est.budget_bytes, units)} budget ({share})"
    if over:
        text += f", {format_bytes(est.total_bytes - est.budget_bytes, units)} over{_at_phase(est)}"
    elif est.failures:
        text += "; " + "; ".join(est.failures)
    return text


def _at_phase(est: Estimate) -> str:
    """' at evaluation' when a phase other than the training step sets the peak (issue 16)."""
    return f" at {PHASES[est.peak_phase]}" if est.peak_phase in JOB_NOTED else ""


def breakdown_table(est: Estimate, units: str = "gib", ascii_only: bool = False, indent: str = "  ", width: int = 80) -> List[str]:
    """A row per non-zero term: label, size, a proportional bar and the share of the total, in ``width``
    columns. The bar gets a third of the columns the rest leaves: a block character is 3 bytes in
    UTF-8, and tools that count bytes (mawk's length(), Debian's default awk) must see the row fit too."""
    total = est.total_bytes or 1
    terms = [(LABELS.get(k, k), v, format_bytes(v, units)) for k, v in est.breakdown.items() if v]
    if not terms:
        return []
    label_width = max(len(label) for label, _, _ in terms)
    size_width = max(len(size) for _, _, size in terms)
    fixed = len(indent) + label_width + 2 + size_width + 2 + 1 + len("100.0 %")
    cells = max(BAR_CELLS[0], min(BAR_CELLS[1], (width - fixed) // 3))
    return [f"{indent}{label:<{label_width}}  {size:>{size_width}}  {_bar(value / total, cells, ascii_only)} {100 * value / total:5.1f} %"
            for label, value, size in terms]


def render_run(est: Estimate, units: str = "gib", ascii_only: bool = False, width: int = 80,
               ways: Optional[Sequence[Any]] = None) -> str:
    """A run's verdict and everything behind it, in ``width`` columns (report/layout.py); ``ways``: the
    ways out the front-end computed for an over-budget run (fit.search.ways_out), None when it did not."""
    run = est.run
    where = f" (line {run.line})" if run.line else ""
    return _laid_out([f"{run.name}{where}: {verdict(est, units)}"], est, units, ascii_only, width, ways=ways)


def _laid_out(head: List[str], est: Estimate, units: str, ascii_only: bool, width: int, tail: Sequence[str] = (),
              ways: Optional[Sequence[Any]] = None) -> str:
    """``head``, then what was estimated and each term, every line fitted to ``width``."""
    from .layout import fit_lines

    run = est.run
    budget = f" | budget: {run.budget.describe(units)}" if run.budget else ""
    lines = [*head, *caveat_lines(est), f"  {describe_run(est)}{budget}", f"  method: {est.method}"]
    lines += _trainer_lines(est, units)
    lines += _origin_lines(est)
    table = breakdown_table(est, units, ascii_only, width=width)
    lines = fit_lines(lines, width) + table
    rest = _host_line(est, units) + _card_lines(est, units) + _serving_lines(est) + _failure_tail(est, units, ways)
    rest += [f"  note: {visible(note)}" for note in est.notes] + list(tail)
    return "\n".join(lines + fit_lines(rest, width))


def _origin_lines(est: Estimate) -> List[str]:
    """from = "train.yaml": which file (or trainer default) each setting came from."""
    if not est.run.settings_from:
        return []
    # an origin names a file of the pull request: a newline in its name must not make a line of its own
    return ["  settings from:"] + [f"    {key:<22} {visible(origin)}" for key, origin in est.run.settings_from]


def _serving_lines(est: Estimate) -> List[str]:
    """What the engine would print at start-up, and why the run fails whatever the budget."""
    lines = []
    if est.serving is not None:
        from ..serving.serve import describe

        lines += [f"  {line}" for line in describe(est.serving)]
    if not _failures_in_head(est):  # else the verdict line said them already
        lines += [f"  FAILS: {failure}" for failure in est.failures]
    return lines


def _failures_in_head(est: Estimate) -> bool:
    """Whether the first line (verdict or pytest's failure head) names the failures: a run within its
    budget that fails anyway (an engine refusing to start) says why there, and only there."""
    return est.budget_bytes is not None and est.total_bytes <= est.budget_bytes


def _trainer_lines(est: Estimate, units: str) -> List[str]:
    """The trainer profile and every knob that differs from stock transformers, and the peak's phase."""
    if not est.run.trains:
        return []
    lines = [f"  {trainer_text(est)}"]
    if len(est.phases) > 1:
        phases = ", ".join(f"{name} {format_bytes(total, units)}" for name, total in est.phases)
        lines.append(f"  peak phase: {est.peak_phase} ({phases})")
    for part in est.phase_parts:
        if part.name in ("load", "eval", "save") and part.breakdown:
            terms = ", ".join(f"{LABELS.get(k, k)} {format_bytes(v, units)}" for k, v in part.breakdown.items() if v)
            lines.append(f"    {part.name}: {format_bytes(part.total, units)} = {terms}")
    # The two high-water marks PyTorch keeps apart (torch/cuda/memory.py), for a trainer's own log to compare with.
    lines.append(f"  torch peaks: max_memory_allocated {format_bytes(est.allocated_bytes, units)}, "
                 f"max_memory_reserved {format_bytes(est.reserved_bytes, units)}")
    return lines


def trainer_text(est: Estimate) -> str:
    return describe_knobs(est.run.knobs, est.run.knobs_shown)


def _card_lines(est: Estimate, units: str) -> List[str]:
    """A training run near the card: its pool passes what the CUDA runtime gives the card (below nvidia-smi's total).
    PyTorch's allocator releases its cached segments and retries before it raises an OOM, so the verdict then rests
    on the slack a flush cannot release (Estimate.fits_by_flushing; replayed under a cap: docs/trace.md "Under a cap").
    Said whichever way the verdict went."""
    cuda, budget, capacity = est.cuda_total_bytes, est.budget_bytes, est.capacity_bytes
    if not cuda or budget is None or not est.run.trains or est.serving is not None or est.total_bytes <= capacity:
        return []
    gib = lambda n: format_bytes(n, units)  # noqa: E731
    card = f"the {gib(cuda)} the CUDA runtime gives {est.run.budget.gpu}" if capacity == cuda else f"the {gib(capacity)} budget"
    flushed = est.flushed_bytes
    if est.fits_by_flushing:
        return [f"  near the card: the pool ({gib(est.total_bytes)}) is over {card}; the run fits because the caching "
                f"allocator flushes its cache when a cudaMalloc fails: {gib(est.after_flush_bytes)} after the flush "
                f"(without its slack {gib(flushed)}): expect cudaFree stalls"]
    if est.total_bytes <= budget:  # under nvidia-smi's total, over what a process gets (Estimate.over_cuda_total)
        return [f"  near the card: {gib(est.total_bytes)} is within {gib(budget)} but over {card}, the driver keeping the "
                f"rest: the run fits only if a flush of the allocator's cache gives back {gib(est.total_bytes - capacity)} "
                f"(without its slack it holds {gib(flushed)})"]
    if flushed <= capacity:
        return [f"  near the card: over by the caching allocator's slack; without it the run holds {gib(flushed)} of {card}. "
                f"The allocator releases its cached segments and retries before raising an OOM, so the run may still start, "
                f"with cudaFree stalls, if less than {gib(capacity - flushed)} stays cached in half-used segments (counted "
                f"only for one-GPU adapter steps with a fused attention kernel)"]
    return []


def _host_line(est: Estimate, units: str) -> List[str]:
    """Offloaded states live in host memory: a separate figure, per node, with its own budget."""
    if not est.host_bytes:
        return []
    limit = est.run.host_memory_bytes
    verdict = "" if limit is None else f" of {format_bytes(limit, units)} host budget: {'fits' if est.host_fits else 'OVER'}"
    return [f"  host memory per node (offload, paged states): {format_bytes(est.host_bytes, units)}{verdict}"]


def _failure_tail(est: Estimate, units: str, options: Optional[Sequence[Any]]) -> List[str]:
    """The biggest term and the ways out the front-end computed (none given: none shown), for an over-budget run."""
    if est.fits is not False:
        return []
    term = est.biggest_term
    share = 100 * est.breakdown[term] / est.total_bytes
    lines = [f"  biggest term: {LABELS.get(term, term)} ({format_bytes(est.breakdown[term], units)}, {share:.1f} %)"]
    if options is None:
        return lines
    if options:
        lines.append("  ways out:")
        lines += [f"    - {option.text}" for option in options]
    else:
        lines.append("  ways out: none of batch-size, seq-len, checkpointing, flash attention, 8-bit AdamW or a bigger GPU of its kind fits on its own")
    return lines


def render_failure(est: Estimate, units: str = "gib", ascii_only: bool = False, width: int = 80,
                   ways: Optional[Sequence[Any]] = None) -> str:
    """The assertion-style message pytest shows for an over-budget run."""
    run = est.run
    where = f"{run.file}:{run.line}" if run.file and run.line else (run.file or "")
    head = (f'llmmem: run "{run.name}" needs {format_bytes(est.total_bytes, units)} per GPU{_at_phase(est)}; '
            f"the budget is {format_bytes(est.budget_bytes, units)} ({run.budget.describe(units)}): "
            f"{100 * est.used_fraction:.1f} %, {format_bytes(est.total_bytes - est.budget_bytes, units)} over")
    if est.failures and _failures_in_head(est):
        head = f'llmmem: run "{run.name}" fails: ' + "; ".join(est.failures)
    return _laid_out([head], est, units, ascii_only, width, [f"  declared at {where}"] if where else [], ways=ways)


def render_text(path: str, estimates: Sequence[Estimate], units: str = "gib", ascii_only: bool = False, width: int = 80,
                ways: Optional[Mapping[str, Sequence[Any]]] = None) -> str:
    from .layout import fit_lines

    unit_note = "GB = 10^9 bytes" if units == "gb" else "GiB = 1024^3 bytes"
    header = f"llmmem: {visible(path)} ({unit_note})"
    # the unit note is never split across lines: a long path puts it whole on the next line
    blocks = [header] if len(header) <= width else [*fit_lines([f"llmmem: {visible(path)}"], width), f"    ({unit_note})"]
    blocks.append("")
    for est in estimates:
        blocks += [render_run(est, units, ascii_only, width, (ways or {}).get(est.run.name)), ""]
    blocks += fit_lines([summary_line(estimates)], width)
    return "\n".join(blocks)


def render_short(path: str, estimates: Sequence[Estimate], units: str = "gib", ascii_only: bool = False, width: int = 80,
                 ways: Optional[Mapping[str, Sequence[Any]]] = None) -> str:
    """pre-commit output: one line per run, and the full breakdown only for runs over budget."""
    name_width = max(len(e.run.name) for e in estimates)
    lines = [f"llmmem {visible(path)}: {summary_line(estimates)}"]
    for est in estimates:
        if est.budget_bytes is None:
            lines.append(f"  {est.run.name:<{name_width}}  {format_bytes(est.total_bytes, units)} (no budget)")
            continue
        mark = ("ok" if est.fits else "OVER") + (f" ({caveats(est)})" if caveats(est) else "")
        total = format_bytes(est.total_bytes, units).split()[0]
        lines.append(f"  {est.run.name:<{name_width}}  {total:>8} / {format_bytes(est.budget_bytes, units)}  {100 * est.used_fraction:5.1f} %  {mark}")
    for est in estimates:
        if est.fits is not False:
            lines += caveat_lines(est, f"  {est.run.name}: ")
    from .layout import fit_lines

    lines = fit_lines(lines, width)
    for est in estimates:
        if est.fits is False:
            lines += ["", render_run(est, units, ascii_only, width, (ways or {}).get(est.run.name))]
    return "\n".join(lines)


def summary_line(estimates: Sequence[Estimate]) -> str:
    """'2 of 3 runs fit; over budget: x.' A run without a budget was checked against nothing, so it
    is not counted as fitting."""
    budgeted = [e for e in estimates if e.budget_bytes is not None]
    unbudgeted = len(estimates) - len(budgeted)
    if not budgeted:
        return f"{unbudgeted} run{'s' if unbudgeted > 1 else ''} without a budget: nothing to check {'them' if unbudgeted > 1 else 'it'} against."
    failing = [e for e in budgeted if e.fits is False]
    over = [e.run.name for e in failing if not _failures_in_head(e)]
    refused = [e.run.name for e in failing if _failures_in_head(e)]  # within budget, yet the engine refuses
    text = f"{len(budgeted) - len(failing)} of {len(budgeted)} runs fit"
    if unbudgeted:
        text += f" ({unbudgeted} more without a budget)"
    parts = ([f"over budget: {', '.join(over)}"] if over else []) + ([f"fails: {', '.join(refused)}"] if refused else [])
    return f"{text}; {'; '.join(parts)}." if parts else f"{text}."


def as_dict(est: Estimate) -> Dict[str, Any]:
    run = est.run
    return {
        "name": run.name,
        "fits": est.fits,
        "total_bytes": est.total_bytes,  # what nvidia-smi would show; the verdict compares it with the budget
        "reserved_bytes": est.reserved_bytes,  # torch.cuda.max_memory_reserved: the total less the CUDA context
        "allocated_bytes": est.allocated_bytes,  # torch.cuda.max_memory_allocated: less the pool's slack too
        "budget_bytes": est.budget_bytes,
        "params": est.params,
        "trainable_params": est.trainable_params,
        "breakdown": dict(est.breakdown),
        "details": dict(est.details),
        "notes": list(est.notes),
        "method": est.method,
        "mode": run.mode,
        "dtype": run.dtype.name,
        "gpu": run.budget.gpu if run.budget else None,
        "line": run.line,
        "host_bytes": est.host_bytes,
        "host_budget_bytes": run.host_memory_bytes,
        "failures": list(est.failures),
        "serving": _serving_dict(est),
        "framework": run.knobs.framework,
        "knobs": {key: {"value": value, "origin": origin} for key, value, origin in run.knobs_shown},
        "peak_phase": est.peak_phase or None,
        "phases": dict(est.phases),
        # each phase's total and its own breakdown (issue 16); the step's phases repeat the terms above
        "phase_breakdowns": {p.name: {"total_bytes": p.total, "breakdown": dict(p.breakdown), "why": p.why or None}
                             for p in est.phase_parts},
        "partial": bool(est.partial),
        "partial_reasons": list(est.partial),
        "approximate": bool(est.approximate),
        "approximate_reasons": list(est.approximate),
        "strict": run.strict,
        "settings_from": dict(run.settings_from),
        "reads": list(run.reads),
        "settings": dict(run.settings),
    }


def _serving_dict(est: Estimate) -> Optional[Dict[str, Any]]:
    s = est.serving
    if s is None:
        return None
    return {"engine": s.engine, "version": s.version, "starts": s.starts, "refusal": s.refusal or None,
            "total_gpu_bytes": s.total_bytes, "utilization": s.utilization, "kv_cache_bytes": s.kv_pool_bytes,
            "kv_cache_tokens": s.tokens, "gpu_blocks": s.blocks, "max_model_len": s.max_model_len,
            "max_concurrency": round(s.max_concurrency, 4), "max_num_batched_tokens": s.max_num_batched_tokens,
            "max_num_seqs": s.max_num_seqs}


def as_json_document(path: Optional[str], estimates: Sequence[Estimate]) -> Dict[str, Any]:
    return {"version": JSON_VERSION, "file": path, "runs": [as_dict(e) for e in estimates]}
