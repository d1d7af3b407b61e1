"""``llmmem diff``: compare two JSON reports run by run, in every shape ``llmmem check`` writes.

A report is one project, ``{"version": 1, "file": ..., "runs": [...]}``, or several,
``{"version": 1, "projects": [<one project each>]}``. Runs are matched by project file and name;
when each side holds one project, by name alone (base and head are often written from different
checkouts, so the file may be spelt differently). A report is checked before it is compared: a
malformed one is a ConfigError naming the key, never a KeyError. A run read from a trainer config
(``from = "train.yaml"``) carries its ``settings`` as text; the diff names those whose value moved.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..io import files
from ..errors import ConfigError
from .github import label
from .text import LABELS
from ..untrusted import markdown_code, markdown_text, visible

MAX_REPORT_BYTES = 64 * 2**20  # about 1 KB a run (the example: 3.2 KB for 3), so 10,000 runs are about 11 MB
_HINT = "Write reports with llmmem check --format json (or --json-out PATH)."

Key = Tuple[Optional[str], str]  # (project file, run name)


def read_report(path: str) -> Dict[Key, Mapping[str, Any]]:
    """The runs of the report at ``path``, keyed by (project file, run name), each checked."""
    try:
        document = files.read_json(path, MAX_REPORT_BYTES)
    except FileNotFoundError:
        raise ConfigError("cannot read the JSON report: it does not exist.", path=path, hint=_HINT) from None
    except files.InvalidJSON as err:
        raise ConfigError(f"cannot read the JSON report: it is not valid JSON: {err}.", path=path, hint=_HINT) from None
    except (files.UnreadableFile, OSError) as err:
        raise ConfigError(f"cannot read the JSON report: it {err}.", path=path, hint=_HINT) from None
    if not isinstance(document, dict) or document.get("version") != 1:
        raise ConfigError("is not an llmmem JSON report (version 1).", path=path, hint=_HINT)
    if "projects" in document:
        projects = document["projects"]
        if not isinstance(projects, list):
            raise _bad(path, "projects", f"expected a list of project reports, got {_type(projects)}.")
        for index, project in enumerate(projects):
            if not isinstance(project, dict):
                raise _bad(path, f"projects[{index}]", f"expected a project report (an object), got {_type(project)}.")
        where = [(f"projects[{i}].", p) for i, p in enumerate(projects)]
    elif "runs" in document:
        where = [("", document)]
    else:
        raise _bad(path, "runs", 'has neither "runs" nor "projects".')
    runs: Dict[Key, Mapping[str, Any]] = {}
    for prefix, project in where:
        file = project.get("file")
        if file is not None and not isinstance(file, str):
            raise _bad(path, f"{prefix}file", f"expected a path, got {_type(file)}.")
        if not isinstance(project.get("runs"), list):
            raise _bad(path, f"{prefix}runs", f"expected a list of runs, got {_type(project.get('runs'))}.")
        for index, run in enumerate(project["runs"]):
            key = _checked_run(path, f"{prefix}runs[{index}]", run)
            if (file, key) in runs:
                raise _bad(path, f"{prefix}runs[{index}].name", f'run "{key}" appears twice in {file or "the report"}.')
            runs[(file, key)] = run
    return runs


def _type(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "\u2026"


def _bad(path: str, key: str, message: str) -> ConfigError:
    return ConfigError(message, path=path, key=key, hint=_HINT)


def _is_bytes(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 2**80


def _checked_run(path: str, where: str, run: Any) -> str:
    """The run's name, after checking every field the diff reads."""
    if not isinstance(run, dict):
        raise _bad(path, where, f"expected a run (an object), got {_type(run)}.")
    name = run.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(path, f"{where}.name", f"expected a run name, got {_type(name)}{'' if name is None else ' ' + _shown(name)}.")
    if "total_bytes" not in run:
        raise _bad(path, f"{where}.total_bytes", "missing.")
    if not _is_bytes(run["total_bytes"]):
        raise _bad(path, f"{where}.total_bytes", f"expected a number of bytes, got {_type(run['total_bytes'])} {_shown(run['total_bytes'])}.")
    budget = run.get("budget_bytes")
    if budget is not None and not _is_bytes(budget):
        raise _bad(path, f"{where}.budget_bytes", f"expected a number of bytes or null, got {_type(budget)} {_shown(budget)}.")
    fits = run.get("fits")
    if not (fits is None or isinstance(fits, bool)):
        raise _bad(path, f"{where}.fits", f"expected true, false or null, got {_type(fits)} {_shown(fits)}.")
    breakdown = run.get("breakdown", {})
    if not isinstance(breakdown, dict):
        raise _bad(path, f"{where}.breakdown", f"expected an object of term: bytes, got {_type(breakdown)}.")
    for term, value in breakdown.items():
        if not _is_bytes(value):
            raise _bad(path, f"{where}.breakdown.{term}", f"expected a number of bytes, got {_type(value)} {_shown(value)}.")
    for field in ("settings", "settings_from"):  # a run read from a trainer config (from = "train.yaml")
        table = run.get(field, {})
        if not isinstance(table, dict):
            raise _bad(path, f"{where}.{field}", f"expected an object of setting: text, got {_type(table)}.")
        for key, value in table.items():
            if not isinstance(value, str):
                raise _bad(path, f"{where}.{field}.{key}", f"expected text, got {_type(value)} {_shown(value)}.")
    return name


def diff(base: Mapping[Key, Mapping[str, Any]], head: Mapping[Key, Mapping[str, Any]]) -> Tuple[List[Dict[str, Any]], bool]:
    """Per run, the change in total and in each term; and whether a run stopped fitting (or arrived over)."""
    if len({file for file, _ in base}) == 1 and len({file for file, _ in head}) == 1:
        base = {(None, name): run for (_, name), run in base.items()}  # one project each side: by name
        head = {(None, name): run for (_, name), run in head.items()}
    rows, regressed = [], False
    for key, run in head.items():
        before = base.get(key)
        terms = {}  # a new run has no "before" to move from: its own breakdown is not a change
        if before is not None:
            old_terms, new_terms = before.get("breakdown", {}), run.get("breakdown", {})
            for term in dict.fromkeys(list(old_terms) + list(new_terms)):
                change = new_terms.get(term, 0) - old_terms.get(term, 0)
                if change:
                    terms[term] = change
        broke = run.get("fits") is False and (before is None or before.get("fits") is not False)
        regressed |= broke
        rows.append({"project": key[0], "name": key[1], "before": before["total_bytes"] if before else None,
                     "after": run["total_bytes"], "terms": terms, "fits_before": before.get("fits") if before else None,
                     "fits_after": run.get("fits"), "broke": broke, "settings": _setting_changes(before, run)})
    for key, run in base.items():
        if key not in head:
            rows.append({"project": key[0], "name": key[1], "before": run["total_bytes"], "after": None, "terms": {},
                         "fits_before": run.get("fits"), "fits_after": None, "broke": False, "settings": []})
    return rows, regressed


def _setting_changes(before: Optional[Mapping[str, Any]], after: Mapping[str, Any]) -> List[Tuple[str, Optional[str], Optional[str], str]]:
    """(key, old value, new value, where the new one came from) for each setting of a run read from a
    trainer config whose value moved: a YAML (or the DeepSpeed JSON it names) changed between the revisions.
    A report written before ``settings`` existed compares nothing."""
    if before is None or "settings" not in before or "settings" not in after:
        return []
    old, new = before["settings"], after["settings"]
    origins = {**before.get("settings_from", {}), **after.get("settings_from", {})}
    return [(key, old.get(key), new.get(key), origins.get(key, ""))
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def setting_text(changes: Sequence[Tuple[str, Optional[str], Optional[str], str]], shown: Callable[[str], str] = str) -> str:
    """'batch-size 1 -> 64 (lora.yml: micro_batch_size)', joined with '; '; ``shown`` escapes each value
    and origin (the pull request's) for where the text goes."""
    return "; ".join(f"{shown(key)} {'-' if old is None else shown(old)} -> {'-' if new is None else shown(new)}"
                     + (f" ({shown(origin)})" if origin else "") for key, old, new, origin in changes)


def _gib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}"


def _signed(n: float) -> str:
    return f"{n / 2**30:+.1f}"


def _verdict(row: Mapping[str, Any]) -> str:
    if row["after"] is None:
        return "removed"
    if row["before"] is None:
        return "new, OVER" if row["fits_after"] is False else "new"
    if row["broke"]:
        return "NO LONGER FITS"
    return {True: "fits", False: "over"}.get(row["fits_after"], "")


def render_diff(rows: Sequence[Mapping[str, Any]], markdown: bool = False) -> str:
    """'sft: 61.2 -> 74.9 GiB (+13.7, optimizer states +12.1)' per run, or a markdown table.

    A run of a multi-project report is named with its project: 'sft (a/pyproject.toml)'."""
    lines = []
    if markdown:
        lines += ["| run | before (GiB) | after (GiB) | change | largest changes | verdict |", "|---|---:|---:|---:|---|---|"]
    for row in rows:
        change = "" if row["before"] is None or row["after"] is None else _signed(row["after"] - row["before"])
        big = sorted(row["terms"].items(), key=lambda kv: -abs(kv[1]))[:3]
        big = [(k, v) for k, v in big if abs(v) >= 0.05 * 2**30]
        terms = ", ".join(f"{LABELS.get(k, k)} {_signed(v)}" for k, v in big)
        settings = setting_text(row.get("settings", ()))
        if markdown:  # names, unknown terms, values and origins are the reports' (the pull request's): escaped
            name = markdown_text(row["name"]) + (f" ({markdown_code(row['project'])})" if row["project"] else "")
            terms = ", ".join(f"{label(k)} {_signed(v)}" for k, v in big)
            settings = setting_text(row.get("settings", ()), markdown_text)
            cell = "; ".join(x for x in (terms, "settings: " + settings if settings else "") if x)
            lines.append(f"| {name} | {_gib(row['before'])} | {_gib(row['after'])} | {change} | {cell} | {_verdict(row)} |")
        else:  # names, terms and settings come from the reports: a line break in one must not start a line
            name = row["name"] + (f" ({row['project']})" if row["project"] else "")
            detail = ", ".join(x for x in (change, terms) if x)
            lines.append(visible(f"{name}: {_gib(row['before'])} -> {_gib(row['after'])} GiB" + (f" ({detail})" if detail else "") + f" [{_verdict(row)}]"))
            if settings:  # the trainer config changed: say which setting moved, and in which file
                lines.append(visible(f"  settings changed: {settings}"))
    return "\n".join(lines)
