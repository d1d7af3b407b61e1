"""from = "train.yaml" on a run: read the trainer's config (readers/) and lay the run's own keys over it.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Set, Tuple

from ..errors import ConfigError
from .keys import RUN_KEYS, TABLE, Context, Table, canonical
from ..io import files


def merged_run(raw: Dict[str, Any], index: int, ctx: Context) -> Tuple[Dict[str, Any], Any, Set[str]]:
    """(the run's keys over the trainer config's, the Reading, the keys the run itself set)."""
    from .readers import formats

    name_hint = raw.get("name") if isinstance(raw.get("name"), str) else None
    table = Table(raw, RUN_KEYS, ctx, f"{TABLE}.runs[{index}]", lambda key: ctx.locator.run_line(index, name_hint, key))
    source = table.string("from")
    fmt = table.choice("format", ctx.catalog.names("readers", table.values.get("format")), "") if "format" in table else None
    path = files.resolve(source if Path(source).is_absolute() else ctx.base_dir / source)
    try:
        recipe = raw.get("recipe") if isinstance(raw.get("recipe"), str) else ""
        # the run's own ZeRO / FSDP keys: they decide, as the file's do, whether the trainer keeps an fp32 copy
        engine = {canonical(str(k)): v for k, v in raw.items() if canonical(str(k)) in ("zero-stage", "fsdp")}
        reading = formats.read(path, fmt or None, ctx.base_dir, recipe.lower(), shown_path(source, ctx.path), engine=engine)
    except ConfigError as err:
        if err.path:  # a value in the trainer config (or the JSON it follows): its file, key and line
            raise
        raise table.fail("from", err.message.replace(f'"{path}"', f'"{source}"'), err.hint) from None
    merged: Dict[str, Any] = dict(reading.values)
    own = {canonical(str(key)) for key in raw} - {"from", "format"}
    merged.update({canonical(str(key)): value for key, value in raw.items()})
    merged.setdefault("name", Path(source).stem)
    return merged, reading, own


def shown_path(source: str, pyproject: str) -> str:
    """The trainer config as messages name it: beside the pyproject as the messages show that."""
    if os.path.isabs(source):
        return source
    return os.path.normpath(os.path.join(os.path.dirname(pyproject), source))


def yaml_error(err: ConfigError, reading: Any, own: Set[str], dotted: str) -> ConfigError:
    """An error about a value the trainer config gave names that file, its key and line
    (train.yaml:3: base_model: ...), not the pyproject key it became; a default the reader
    assumed says so. Anything the run itself set is left as it is."""
    key = err.key or ""
    ours = key[len(dotted) + 1:].split(".")[0] if key.startswith(dotted + ".") else key.rsplit(".", 1)[-1]
    if ours in own:
        return err
    if ours in reading.places:
        where, line, theirs = reading.places[ours]
        return ConfigError(err.message, path=where, key=theirs, line=line, hint=err.hint)
    if ours in reading.origins:
        return ConfigError(f"{err.message} (read from {reading.origins[ours]})", path=err.path, key=err.key, line=err.line,
                           hint=err.hint)
    return err


def shown_settings(merged: Dict[str, Any], keys: Iterable[str], base_dir: Path) -> Tuple[Tuple[str, str], ...]:
    """(key, value as text) for each setting a run took from a trainer config (or overrode on it), so
    ``llmmem diff`` can say which one changed between two revisions. A model folder is shown relative
    to the project, so a base checkout in another directory does not read as a change."""
    shown = []
    for key in sorted(keys):
        if key in merged:
            shown.append((key, _text(merged[key], base_dir)))
    return tuple(shown)


def _text(value: Any, base_dir: Path) -> str:
    if isinstance(value, dict):  # a model table: {"id": "org/name"} or {"config": "/abs/folder"}
        if isinstance(value.get("config"), str) and os.path.isabs(value["config"]):
            try:
                return os.path.relpath(value["config"], base_dir)
            except ValueError:  # another drive on Windows
                return value["config"]
        if len(value) == 1:
            return _text(next(iter(value.values())), base_dir)
        return ", ".join(f"{k}={_text(v, base_dir)}" for k, v in sorted(value.items()))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(item, base_dir) for item in value)
    return str(value)
