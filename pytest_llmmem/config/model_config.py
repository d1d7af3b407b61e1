"""The ``[tool.llmmem.model]`` table: params, a Hugging Face config.json, or the shape keys.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from ..io import files
from ..errors import ConfigError, shown_name
from ..hf.config import from_hf_config, with_overrides
from .keys import ARCH_KEYS, MAX_PARAMS, Context, Table
from ..values import type_name
from ..model.architecture import Architecture, Family, ParamsOnly, validate
from ..catalog.registry import family
from ..units import UnitError, parse_count

if TYPE_CHECKING:  # hub is imported where a Hub id is resolved: start-up stays small
    from ..hf import hub

_ARCH_FIELDS = {
    "hidden-size": "hidden_size", "num-layers": "num_layers", "num-heads": "num_heads",
    "num-kv-heads": "num_kv_heads", "head-dim": "head_dim", "intermediate-size": "intermediate_size",
    "vocab-size": "vocab_size", "max-position-embeddings": "max_positions", "num-experts": "num_experts",
    "experts-per-token": "experts_per_token", "moe-intermediate-size": "moe_intermediate_size",
}
_DROPOUTS = ("attention-dropout", "hidden-dropout")
_REQUIRED_ARCH = ("hidden-size", "num-layers", "num-heads", "vocab-size")


def model_from_table(table: Table, ctx: Context) -> Union[Architecture, ParamsOnly]:
    arch_given = [k for k in ARCH_KEYS if k in table]
    _one_source(table)
    if "params" in table:
        if "config" in table or "id" in table or arch_given:
            other = "config" if "config" in table else "id" if "id" in table else arch_given[0]
            raise table.fail("params", f'give either params or an architecture ("{other}"), not both.',
                             hint="params alone gives weights, gradients and optimizer states; an architecture adds activations and KV cache.")
        return ParamsOnly(_params(table), ctx.path)
    values: Dict[str, Any] = {}
    for key in _ARCH_FIELDS:
        number = table.integer(key, low=_lowest(key))
        if number is not None:
            values[_ARCH_FIELDS[key]] = number
    for key in _DROPOUTS:  # dropout keeps masks for backward
        p = table.probability(key)
        if p is not None:
            values[key.replace("-", "_")] = p
    if "config" in table or "id" in table:
        # family beside config overrides model_type (in-house forks, unknown model types); shape keys
        # override the config's own values, and the layer groups are read again with them.
        fam = table.resolve("family", family) if "family" in table else None
        base = _read_hf_config(table, ctx, fam, values)
        tie = table.boolean("tie-embeddings", base.tie_embeddings)
        act = table.string("hidden-act") or base.hidden_act
        arch = base._replace(tie_embeddings=tie, hidden_act=act)
    else:
        if not arch_given:
            raise ctx.error(
                "no model: give params, config or the architecture keys.",
                table.dotted, table.line_of(None),
                hint='For example params = "7B", config = "model/config.json", or hidden-size, num-layers, num-heads, intermediate-size and vocab-size.',
            )
        fam = table.resolve("family", family, "llama")
        missing = [k for k in _REQUIRED_ARCH + (() if not fam.gated_mlp else ("intermediate-size",)) if k not in table]
        if missing:
            raise ctx.error(
                f"the architecture lacks {', '.join(missing)}.", f"{table.dotted}.{missing[0]}", table.line_of(arch_given[0]),
                hint='Give them, point config at a Hugging Face config.json, or give params = "7B" instead.',
            )
        values.setdefault("intermediate_size", 4 * values["hidden_size"])
        values.setdefault("num_kv_heads", values["num_heads"])
        arch = Architecture(
            family=fam, tie_embeddings=table.boolean("tie-embeddings", fam.tie_default),
            hidden_act=table.string("hidden-act") or "", source=ctx.path, **values,
        )
    if arch.num_experts and not arch.experts_per_token:
        arch = arch._replace(experts_per_token=2)
    try:
        validate(arch, "")
    except ConfigError as err:
        key = err.key or "hidden-size"
        raise table.fail(key, err.message, err.hint) from None
    return arch


def check_values(table: Table, ctx: Context) -> None:
    """Each key of a model table on its own: type, range, and a readable config file. For the
    [tool.llmmem.model] table, which must be checked even when every run brings its own model
    (a typo there would otherwise pass silently); completeness is checked where a run uses it."""
    if "params" in table:
        _params(table)
    values = {_ARCH_FIELDS[key]: table.integer(key, low=_lowest(key)) for key in _ARCH_FIELDS if key in table}
    for key in _DROPOUTS:
        table.probability(key)
    fam = table.resolve("family", family) if "family" in table else None
    table.boolean("tie-embeddings", False)
    table.string("hidden-act")
    _one_source(table)
    if "config" in table or "id" in table:
        _read_hf_config(table, ctx, fam, values)


def _lowest(key: str) -> int:
    return 0 if key in ("head-dim", "num-experts") else 1


def _params(table: Table) -> int:
    try:
        count = parse_count(table.values["params"])
    except UnitError as err:
        raise table.fail("params", f"{err}.") from None
    if count > MAX_PARAMS:
        raise table.fail("params", f"{count:,} parameters is more than 10^15; expected e.g. \"7B\".")
    return count


def _one_source(table: Table) -> None:
    """config (a file) and id (a Hub id) name the same thing two ways: one of them."""
    if "config" in table and "id" in table:
        raise table.fail("id", "give either config (a config.json) or id (a Hugging Face Hub id), not both.")
    for key in ("revision", "allow-network"):
        if key in table and "id" not in table:
            raise table.fail(key, "only applies with id = \"org/name\" (a Hugging Face Hub id).")


def _read_hf_config(table: Table, ctx: Context, fam: Optional[Family], overrides: Dict[str, Any]) -> Architecture:
    """The config.json's Architecture, read and resolved once per parse for each distinct use."""
    found = _hub_config(table, ctx) if "id" in table else None
    raw = str(found.config_path) if found else table.string("config")
    key = (raw, fam.name if fam else None, tuple(sorted(overrides.items())))
    if key not in ctx.hf_configs:
        arch = _read_hf_config_once(table, raw, ctx, fam, overrides, "id" if found else "config")
        ctx.hf_configs[key] = _cross_checked(arch, found) if found else arch
    return ctx.hf_configs[key]


def _hub_config(table: Table, ctx: Context) -> "hub.Resolved":
    """id (+ revision, allow-network) -> the config.json found for it, once per parse."""
    model_id, revision = table.string("id"), table.string("revision")
    allow = table.boolean("allow-network", False) or bool(getattr(ctx, "allow_network", False))
    key = ("hub", model_id, revision, allow)
    if key not in ctx.hf_configs:
        from ..hf import hub  # only projects that name a Hub id pay for it

        try:
            ctx.hf_configs[key] = hub.resolve(model_id or "", revision, allow)
        except ConfigError as err:
            raise table.fail(err.key or "id", err.message, err.hint) from None
    return ctx.hf_configs[key]


def _cross_checked(arch: Architecture, found: "hub.Resolved") -> Architecture:
    """Compare the count from config.json with the safetensors headers beside it in the cache: a
    16/32-bit checkpoint stores every parameter once, so a gap means the reader misses something."""
    stored = found.stored_params
    if not stored or not set(found.stored_dtypes) <= {"bf16", "fp16", "fp32"}:
        return arch
    counted = arch.param_count()
    if abs(counted - stored) > 0.005 * stored:
        note = (f"{counted:,} parameters counted from config.json, but the checkpoint's safetensors headers in the Hub "
                f"cache hold {stored:,}")
        return arch._replace(approximate=arch.approximate + (note,))
    return arch


def _read_hf_config_once(table: Table, raw: str, ctx: Context, fam: Optional[Family], overrides: Dict[str, Any], key: str = "config") -> Architecture:
    quoted = f'"{shown_name(raw, 120)}"'
    path = files.resolve(raw if Path(raw).is_absolute() else ctx.base_dir / raw)
    if files.is_dir(path):
        path = path / "config.json"
    try:
        data = ctx.read_json(path)
    except FileNotFoundError:
        raise table.fail(key, f"{quoted} does not exist.", hint="The path is relative to the folder of the pyproject.toml (or absolute).") from None
    except (files.InvalidJSON, json.JSONDecodeError) as err:
        raise table.fail(key, f"{quoted} is not valid JSON: {err}.") from None
    except files.UnreadableFile as err:
        raise table.fail(key, f"{quoted} cannot be read: it {err}.") from None
    except (OSError, ValueError, RecursionError) as err:  # a read_json passed to config.parse
        reason = getattr(err, "strerror", None) or str(err)
        raise table.fail(key, f"{quoted} cannot be read: {reason}.") from None
    if not isinstance(data, dict):
        raise table.fail(key, f"{quoted} holds {type_name(data)}, not a JSON object.")
    try:
        return from_hf_config(with_overrides(data, overrides), source=str(path), family=fam)
    except ConfigError as err:
        in_file = _in_config_json(err, path, raw, ctx, overrides)
        if in_file:  # a value the config.json itself holds: that file and line, as a trainer YAML's error
            raise ConfigError(err.message, path=in_file[0], key=err.key, line=in_file[1], hint=err.hint) from None
        detail = f" ({err.key})" if err.key else ""
        raise table.fail(key, f"{quoted}{detail} {err.message}", err.hint) from None


def _in_config_json(err: ConfigError, path: Path, raw: str, ctx: Context, overrides: Dict[str, Any]) -> Optional[Tuple[str, int]]:
    """(config.json as messages show it, the line of err's key) when the failing value is written in that
    file and not set in the pyproject; read again, only for the error (ctx.read_json keeps no lines)."""
    if not err.key or err.key.split(".")[0] in overrides:
        return None
    from ..io.json_lines import line_of  # this error path only

    try:
        _, lines = files.read_json_lines(path)
    except (OSError, ValueError):
        return None
    line = line_of(err.key, lines)
    if not line:
        return None
    shown = str(path) if Path(raw).is_absolute() else os.path.normpath(os.path.join(os.path.dirname(ctx.path), os.path.relpath(path, ctx.base_dir)))
    return shown, line
