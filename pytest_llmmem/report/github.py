"""GitHub Actions output: workflow-command annotations and the job-summary markdown.

Pure functions over the JSON report dicts (``report.as_dict``), so the CLI, the pytest plugin and
``llmmem diff`` (report_diff.py) share them; the callers write to stdout, $GITHUB_STEP_SUMMARY and $GITHUB_OUTPUT.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from .text import LABELS
from ..units import format_bytes
from ..untrusted import markdown_code, markdown_text, mermaid_label, output_entry

MAX_ANNOTATIONS = 10
WARN_FRACTION = 0.9  # a run above 90 % of its budget gets a warning annotation


def escape_data(text: str) -> str:
    """Message escaping as @actions/core's command.ts ``escapeData`` does it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Property escaping as @actions/core's ``escapeProperty``: data escapes plus ':' and ','."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workspace_path(path: str, workspace: Optional[str]) -> str:
    """A file path as annotations need it: relative to $GITHUB_WORKSPACE when inside it."""
    if not workspace:
        return path
    absolute = os.path.abspath(path)
    root = os.path.abspath(workspace)
    return os.path.relpath(absolute, root) if absolute.startswith(root + os.sep) else path


def _used(run: Mapping[str, Any]) -> Optional[float]:
    budget = run.get("budget_bytes")
    return run["total_bytes"] / budget if budget else None


def annotations(file: str, runs: Sequence[Mapping[str, Any]], workspace: Optional[str] = None) -> List[str]:
    """``::error`` for each run over budget, ``::warning`` above 90 %; see :func:`capped`."""
    path = escape_property(workspace_path(file, workspace))
    lines = []
    for run in runs:
        used = _used(run)
        kind, reasons = _caveats(run)
        if kind and run.get("strict"):
            level, text = "error", f"{run['name']}: strict refuses {'an' if kind[0] == 'a' else 'a'} {kind} estimate: {reasons}."
        elif used is None:
            continue
        elif run["fits"] is False and run.get("failures") and run["total_bytes"] <= run["budget_bytes"]:
            level, text = "error", f"{run['name']} fails: {'; '.join(run['failures'])}"  # within budget: the engine refuses
        elif run["fits"] is False:
            level, text = "error", (f"{run['name']} needs {format_bytes(run['total_bytes'])} per GPU, over its "
                                    f"{format_bytes(run['budget_bytes'])} budget ({100 * used:.1f} %); biggest term: {_biggest(run)}."
                                    + (f" The estimate is {kind}: {reasons}." if kind else ""))
        elif _near_limit(run):
            level, text = "warning", _near_limit(run) + (f", and the estimate is {kind}: {reasons}." if kind else ".")
        elif kind:
            level, text = "warning", (f"{run['name']} fits ({format_bytes(run['total_bytes'])} of {format_bytes(run['budget_bytes'])}, "
                                      f"{100 * used:.1f} %), but the estimate is {kind}: {reasons}.")
        else:
            continue
        where = f"file={path}" + (f",line={run['line']}" if run.get("line") else "")
        lines.append(f"::{level} {where},title={escape_property('llmmem: ' + run['name'])}::{escape_data(text)}")
    return lines


def _near_limit(run: Mapping[str, Any]) -> str:
    """Why a fitting run is close to failing, without the full stop ('' if it is not). A serving engine takes its
    gpu-memory-utilization share of the GPU by design (vLLM's default 0.9 is 90 % of every budget), so
    its warning is about what can fail: a KV cache that holds fewer than two max-model-len requests
    (vLLM refuses below one), or weights, activations and buffers near the whole share."""
    s = run.get("serving")
    if not s:
        used = _used(run) or 0.0
        if used <= WARN_FRACTION:
            return ""
        return f"{run['name']} uses {100 * used:.1f} % of its {format_bytes(run['budget_bytes'])} budget ({format_bytes(run['total_bytes'])})"
    share = s["total_gpu_bytes"] * s["utilization"]
    rest = share - s["kv_cache_bytes"]
    if s["max_concurrency"] < 2:
        return (f"{run['name']}: the KV cache holds {s['kv_cache_tokens']:,} tokens, {s['max_concurrency']:.2f}x max-model-len "
                f"{s['max_model_len']:,}; a second long request waits, and below 1x {s['engine']} refuses to start")
    if share and rest > WARN_FRACTION * share:
        return (f"{run['name']}: weights, activations and buffers take {100 * rest / share:.1f} % of {s['engine']}'s "
                f"{format_bytes(round(share))} share, leaving {format_bytes(s['kv_cache_bytes'])} for the KV cache")
    return ""


def capped(lines: Sequence[str]) -> List[str]:
    """At most 10 annotations (GitHub shows no more per step), then one line saying how many were left out."""
    if len(lines) <= MAX_ANNOTATIONS:
        return list(lines)
    rest = len(lines) - MAX_ANNOTATIONS
    return list(lines[:MAX_ANNOTATIONS]) + [f"::notice title=llmmem::{rest} more llmmem annotations not shown; see the job summary."]


def _biggest(run: Mapping[str, Any]) -> str:
    term = max(run["breakdown"], key=lambda k: run["breakdown"][k])
    return f"{LABELS.get(term, term)} {format_bytes(run['breakdown'][term])}"


def _caveats(run: Mapping[str, Any]) -> Tuple[str, str]:
    """("partial, approximate", "reason; reason") from a report's run; ("", "") for a full estimate."""
    kinds = [k for k in ("partial", "approximate") if run.get(k)]
    reasons = [r for k in kinds for r in run.get(f"{k}_reasons", [])]
    return ", ".join(kinds), "; ".join(reasons)


def _verdict(run: Mapping[str, Any]) -> str:
    kind, _ = _caveats(run)
    if kind and run.get("strict"):
        return f":x: refused (strict, {kind})"
    if run["fits"] is None:
        return "no budget" + (f" ({kind})" if kind else "")
    if kind:
        return f":warning: fits ({kind})" if run["fits"] else f":x: over ({kind})"
    return ":white_check_mark: fits" if run["fits"] else ":x: over"


def label(term: str) -> str:
    """A term's label in Markdown: ours as written, any other key (a plugin's, a report's) escaped."""
    return LABELS[term] if term in LABELS else markdown_text(term)


def step_summary(file: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY: a table of runs, then each run's breakdown as a table and a pie.
    Every name, path, reason, note and setting is the pull request's: escaped (untrusted.markdown_text),
    so it shows as text and fetches no image, makes no link, tag or maths, and ends no cell."""
    out = [f"## llmmem: {markdown_code(file)}", "", "| run | total | budget | used | verdict |", "|---|---:|---:|---:|---|"]
    for run in runs:
        used = _used(run)
        budget = format_bytes(run["budget_bytes"]) if run.get("budget_bytes") else "-"
        out.append(f"| {markdown_text(run['name'])} | {format_bytes(run['total_bytes'])} | {budget} | "
                   f"{'-' if used is None else f'{100 * used:.1f} %'} | {_verdict(run)} |")
    for run in runs:
        total = run["total_bytes"] or 1
        out += ["", f"### {markdown_text(run['name'])}", ""]
        out += [f"> **{k}:** {markdown_text(r)}" for k in ("partial", "approximate") for r in run.get(f"{k}_reasons", [])]
        out += [""] if out[-1] != "" else []
        if run.get("framework") and run.get("mode") != "inference":
            knobs = ", ".join(_knob(k, v) for k, v in run.get("knobs", {}).items())
            out += [f"trainer: **{markdown_text(run['framework'])}**" + (f"; {knobs}" if knobs else ""), ""]
        if run.get("peak_phase") and len(run.get("phases", {})) > 1:
            phases = ", ".join(f"{markdown_text(k)} {format_bytes(v)}" for k, v in run["phases"].items())
            out += [f"peak phase: **{markdown_text(run['peak_phase'])}** ({phases})", ""]
            out += _phase_table(run)
        out += ["| term | size | share |", "|---|---:|---:|"]
        terms = [(k, v) for k, v in run["breakdown"].items() if v]
        out += [f"| {label(k)} | {format_bytes(v)} | {100 * v / total:.1f} % |" for k, v in terms]
        out += _pie(run, terms)
        for note in run.get("notes", []):
            out.append(f"> {markdown_text(note)}")
    return "\n".join(out) + "\n"


def _knob(key: str, knob: Mapping[str, Any]) -> str:
    """`key = value` (origin); the value and the file it came from are the pull request's."""
    setting = f"{key} = {knob['value']}"
    return f"{markdown_code(setting)} ({markdown_text(str(knob['origin']))})"


def _phase_table(run: Mapping[str, Any]) -> List[str]:
    """A small table of the job's phases (issue 16): total, the term that dominates it, and why."""
    parts = run.get("phase_breakdowns") or {}
    if not parts:
        return []
    out = ["| phase | total | largest term | |", "|---|---:|---|---|"]
    for name, part in parts.items():
        terms = part.get("breakdown") or {}
        top = max(terms, key=lambda k: terms[k]) if terms else ""
        mark = "**peak**" if name == run.get("peak_phase") else ""
        largest = f"{label(top)} {format_bytes(terms[top])}" if top else "-"
        why = markdown_text(part.get("why") or "")
        out.append(f"| {markdown_text(name)} {mark} | {format_bytes(part['total_bytes'])} | {largest} | {why} |")
    return out + [""]


def _pie(run: Mapping[str, Any], terms: Sequence[Tuple[str, int]]) -> List[str]:
    """A mermaid pie of the positive terms; a negative one (a measured calibration below 1) is a
    line of its own below it, because mermaid rejects a negative slice. The title is fixed (the run's
    name is the heading above it) and each slice's label keeps only plain characters: mermaid has its
    own syntax, and a quote or a line break in a label would end it."""
    slices = [(k, v) for k, v in terms if v > 0]
    out = ["", "```mermaid", f"pie showData title GiB per GPU (total {run['total_bytes'] / 2**30:.2f})"]
    out += [f'    "{mermaid_label(LABELS.get(k, k))}" : {v / 2**30:.2f}' for k, v in slices]
    out.append("```")
    drawn = format_bytes(sum(v for _, v in slices))
    for k, v in terms:
        if v < 0:
            out.append(f"> {label(k)}: {format_bytes(v)}, a correction not drawn in the pie "
                       f"(its slices add up to {drawn}; total {format_bytes(run['total_bytes'])})")
    return out


def append_summary(documents: Sequence[Mapping[str, Any]], workspace: Optional[str]) -> None:
    """Append each report's markdown to $GITHUB_STEP_SUMMARY, when the runner provides one."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as handle:
        for doc in documents:
            handle.write(step_summary(workspace_path(doc["file"], workspace), doc["runs"]))


def annotation_lines(documents: Sequence[Mapping[str, Any]], workspace: Optional[str]) -> List[str]:
    """Every report's annotations, under one cap across every file checked; the front-end prints them
    (a reader that goes away must not cost the summary or the step outputs)."""
    lines: List[str] = []
    for doc in documents:
        lines += annotations(doc["file"], doc["runs"], workspace)
    return capped(lines)


def write_step_files(documents: Sequence[Mapping[str, Any]], fits: bool, json_path: Optional[str]) -> None:
    """The job summary and the step outputs, where the runner provides their files."""
    append_summary(documents, os.environ.get("GITHUB_WORKSPACE"))
    outputs = os.environ.get("GITHUB_OUTPUT")
    if outputs:
        with open(outputs, "a", encoding="utf-8") as handle:
            handle.write(step_outputs(fits, json_path))


def step_outputs(fits: bool, json_path: Optional[str]) -> str:
    """``fits`` and ``json`` as $GITHUB_OUTPUT entries; a path holding a line break cannot add an output."""
    return output_entry("fits", "true" if fits else "false") + (output_entry("json", str(json_path)) if json_path else "")
