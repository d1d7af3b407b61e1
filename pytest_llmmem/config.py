"""Read ``[tool.llmmem]`` from a pyproject.toml into resolved :class:`Run` objects.

Every key is checked: unknown keys get a "did you mean", wrong types and absurd values name the
key and its line, and nothing a user mistyped is silently replaced by a default. Keys are
kebab-case; the snake_case spelling of any key is accepted too.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from ._toml import toml
from .catalog import Catalog, default_catalog
from .errors import ConfigError, did_you_mean, one_of
from .model import Architecture, ParamsOnly, family, from_hf_config, validate
from .run import FSDP_MODES, METHODS, MODES, OFFLOADS, PRECISIONS, Budget, Run
from .units import BYTE_UNITS_HELP, UnitError, parse_bytes, parse_count

TABLE = "tool.llmmem"
BUDGET_KEYS = ("gpu", "gpu-memory", "headroom", "method", "overhead")
TOP_KEYS = BUDGET_KEYS + ("model", "runs")
ARCH_KEYS = (
    "family", "hidden-size", "num-layers", "num-heads", "num-kv-heads", "head-dim", "intermediate-size",
    "vocab-size", "tie-embeddings", "max-position-embeddings", "num-experts", "experts-per-token",
    "moe-intermediate-size", "hidden-act", "attention-dropout", "hidden-dropout",
)
MODEL_KEYS = ("params", "config") + ARCH_KEYS
TRAIN_ONLY = ("precision", "optimizer", "gradient-checkpointing", "zero-stage", "fsdp", "offload", "micro-batches")
PARALLEL_KEYS = ("tensor-parallel", "pipeline-parallel", "sequence-parallel", "expert-parallel", "gpus-per-node", "host-memory")
LORA_ONLY = ("lora-rank", "lora-targets", "adapter-dtype")
RUN_KEYS = (
    "name", "mode", "dtype", "batch-size", "seq-len", "flash-attention", "gpus", "model", "calibration",
) + TRAIN_ONLY + PARALLEL_KEYS + LORA_ONLY + BUDGET_KEYS

# Largest values taken as meant; anything past these is a typo or a unit slip.
_LIMITS = {
    "batch-size": 1_000_000, "seq-len": 100_000_000, "gpus": 1_000_000, "lora-rank": 65_536,
    "tensor-parallel": 4096, "pipeline-parallel": 4096, "expert-parallel": 100_000, "micro-batches": 1_000_000,
    "gpus-per-node": 1024, "zero-stage": 3,
    "hidden-size": 1_000_000, "num-layers": 10_000, "num-heads": 100_000, "num-kv-heads": 100_000,
    "head-dim": 100_000, "intermediate-size": 10_000_000, "vocab-size": 100_000_000,
    "max-position-embeddings": 100_000_000, "num-experts": 100_000, "experts-per-token": 100_000,
    "moe-intermediate-size": 10_000_000,
}
MAX_PARAMS = 10**15
MAX_MEMORY = 2**50  # 1 PiB per GPU


def canonical(key: str) -> str:
    return key.replace("_", "-")


# --- where a key is written ------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_\-]+|"[^"]*"|'[^']*')\s*=""")


class Locator:
    """Line numbers of tables and keys in a TOML text (tomllib reports none for valid files)."""

    def __init__(self, text: str) -> None:
        self.keys: Dict[Tuple[str, int, str], int] = {}
        self.tables: Dict[Tuple[str, int], int] = {}
        self.lines = text.splitlines()
        counts: Dict[str, int] = {}
        table, index, depth = "", 0, 0
        for number, line in enumerate(self.lines, start=1):
            header = _HEADER.match(line) if depth == 0 else None
            if header:
                table = re.sub(r"\s|\"|'", "", header.group(2))
                if header.group(1) == "[[":
                    counts[table] = counts.get(table, -1) + 1
                index = counts.get(table, 0) if header.group(1) == "[[" else 0
                self.tables.setdefault((table, index), number)
                continue
            key = _KEY.match(line) if depth == 0 else None
            if key:
                name = canonical(key.group(1).strip("\"'"))
                self.keys.setdefault((table, index, name), number)
            depth = max(0, depth + _bracket_balance(line))

    def find(self, table: str, index: int = 0, key: Optional[str] = None) -> Optional[int]:
        if key is not None:
            line = self.keys.get((table, index, canonical(key)))
            if line:
                return line
        return self.tables.get((table, index))

    def run_line(self, index: int, name: Optional[str], key: Optional[str] = None) -> Optional[int]:
        line = self.find(f"{TABLE}.runs", index, key)
        if line or not name:
            return line
        # Inline tables (runs = [{ name = "x", ... }]): the line that names the run.
        pattern = re.compile(r"""name\s*=\s*["']""" + re.escape(name) + r"""["']""")
        return next((n for n, text in enumerate(self.lines, 1) if pattern.search(text)), None)


def _bracket_balance(line: str) -> int:
    """Net open brackets on a line, ignoring strings and comments (multi-line arrays)."""
    balance, quote = 0, ""
    for ch in line:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            balance += 1
        elif ch in "]}":
            balance -= 1
    return balance


# --- value checks ------------------------------------------------------------------------------


class _Context:
    """Where values come from, for error messages, and how to resolve names and files."""

    def __init__(self, path: str, locator: Locator, catalog: Catalog, read_json: Callable[[Path], Any], base_dir: Path) -> None:
        self.path, self.locator, self.catalog, self.read_json, self.base_dir = path, locator, catalog, read_json, base_dir

    def error(self, message: str, key: str, line: Optional[int], hint: Optional[str] = None) -> ConfigError:
        return ConfigError(message, path=self.path, key=key, line=line, hint=hint)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}.get(
        type(value), type(value).__name__
    )


class _Table:
    """One TOML table under check: canonical keys, unknown-key errors, typed getters."""

    def __init__(self, raw: Any, allowed: Sequence[str], ctx: _Context, dotted: str, line_of: Callable[[Optional[str]], Optional[int]]):
        self.ctx, self.dotted, self.line_of = ctx, dotted, line_of
        if not isinstance(raw, dict):
            raise ctx.error(f"expected a table, got {_type_name(raw)}.", dotted, line_of(None))
        self.values: Dict[str, Any] = {}
        for key, value in raw.items():
            name = canonical(str(key))
            if name not in allowed:
                raise ctx.error(
                    f'unknown key "{key}".{did_you_mean(name, allowed)}',
                    f"{dotted}.{key}",
                    line_of(name),
                    hint=f"Valid keys here: {', '.join(allowed)}.",
                )
            if name in self.values:
                raise ctx.error(f'"{key}" is given twice (kebab-case and snake_case).', f"{dotted}.{key}", line_of(name))
            self.values[name] = value

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def fail(self, key: str, message: str, hint: Optional[str] = None) -> ConfigError:
        return self.ctx.error(message, f"{self.dotted}.{key}", self.line_of(key), hint)

    def integer(self, key: str, default: Optional[int] = None, low: int = 1) -> Optional[int]:
        if key not in self.values:
            return default
        value = self.values[key]
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected a whole number, got {_type_name(value)} {value!r}.")
        high = _LIMITS.get(key, 10**12)
        if not low <= value <= high:
            raise self.fail(key, f"{value} is out of range; expected {low} to {high:,}.")
        return value

    def probability(self, key: str) -> Optional[float]:
        if key not in self.values:
            return None
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise self.fail(key, f"expected a probability from 0 up to (not including) 1, got {_type_name(value)} {value!r}.")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_type_name(value)} {value!r}.")
        return value

    def string(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self.values.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.fail(key, f"expected a non-empty string, got {_type_name(value)} {value!r}.")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.string(key, default)
        if value.lower() not in choices:
            raise self.fail(key, f'"{value}" is not valid.{did_you_mean(value, choices)}', hint=f"Valid: {one_of(choices)}.")
        return value.lower()

    def size(self, key: str, allow_zero: bool = False) -> Optional[int]:
        if key not in self.values:
            return None
        try:
            value = parse_bytes(self.values[key], allow_zero=allow_zero)
        except UnitError as err:
            raise self.fail(key, f"{err}.") from None
        if value > MAX_MEMORY:
            raise self.fail(key, f"{self.values[key]!r} is more than 1 PiB per GPU; expected {BYTE_UNITS_HELP}.")
        return value

    def resolve(self, key: str, lookup: Callable[[object], Any], default: Optional[str] = None) -> Any:
        value = self.values.get(key, default)
        if value is None:
            return None
        try:
            return lookup(value)
        except ConfigError as err:
            raise self.fail(key, err.message, err.hint) from None


# --- the model ---------------------------------------------------------------------------------

_ARCH_FIELDS = {
    "hidden-size": "hidden_size", "num-layers": "num_layers", "num-heads": "num_heads",
    "num-kv-heads": "num_kv_heads", "head-dim": "head_dim", "intermediate-size": "intermediate_size",
    "vocab-size": "vocab_size", "max-position-embeddings": "max_positions", "num-experts": "num_experts",
    "experts-per-token": "experts_per_token", "moe-intermediate-size": "moe_intermediate_size",
}
_REQUIRED_ARCH = ("hidden-size", "num-layers", "num-heads", "vocab-size")


def _model(table: _Table, ctx: _Context) -> Union[Architecture, ParamsOnly]:
    arch_given = [k for k in ARCH_KEYS if k in table]
    if "params" in table:
        if "config" in table or arch_given:
            other = "config" if "config" in table else arch_given[0]
            raise table.fail("params", f'give either params or an architecture ("{other}"), not both.',
                             hint="params alone gives weights, gradients and optimizer states; an architecture adds activations and KV cache.")
        try:
            count = parse_count(table.values["params"])
        except UnitError as err:
            raise table.fail("params", f"{err}.") from None
        if count > MAX_PARAMS:
            raise table.fail("params", f"{count:,} parameters is more than 10^15; expected e.g. \"7B\".")
        return ParamsOnly(count, ctx.path)
    values: Dict[str, Any] = {}
    for key in _ARCH_FIELDS:
        number = table.integer(key, low=0 if key in ("head-dim", "num-experts") else 1)
        if number is not None:
            values[_ARCH_FIELDS[key]] = number
    for key in ("attention-dropout", "hidden-dropout"):  # dropout keeps masks for backward
        p = table.probability(key)
        if p is not None:
            values[key.replace("-", "_")] = p
    if "config" in table:
        base = _read_hf_config(table, ctx)
        fam = table.resolve("family", family) if "family" in table else base.family
        tie = table.boolean("tie-embeddings", base.tie_embeddings)
        act = table.string("hidden-act") or base.hidden_act
        arch = base._replace(family=fam, tie_embeddings=tie, hidden_act=act, **values)
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


def _read_hf_config(table: _Table, ctx: _Context) -> Architecture:
    raw = table.string("config")
    path = (ctx.base_dir / raw).resolve() if not Path(raw).is_absolute() else Path(raw)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = ctx.read_json(path)
    except FileNotFoundError:
        raise table.fail("config", f'"{raw}" does not exist.', hint="The path is relative to the folder of the pyproject.toml (or absolute).") from None
    except json.JSONDecodeError as err:
        raise table.fail("config", f'"{raw}" is not valid JSON: {err}.') from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise table.fail("config", f'"{raw}" cannot be read: {reason}.') from None
    if not isinstance(data, dict):
        raise table.fail("config", f'"{raw}" holds {_type_name(data)}, not a JSON object.')
    try:
        return from_hf_config(data, source=str(path))
    except ConfigError as err:
        detail = f" ({err.key})" if err.key else ""
        raise table.fail("config", f'"{raw}"{detail} {err.message}', err.hint) from None


# --- runs ----------------------------------------------------------------------------------------


class Project(NamedTuple):
    """A pyproject's ``[tool.llmmem]``: its resolved runs, and what is needed to re-resolve one."""

    path: str
    runs: Tuple[Run, ...]
    table: Mapping[str, Any]
    context: _Context

    def run(self, name: str) -> Run:
        for run in self.runs:
            if run.name == name:
                return run
        names = [r.name for r in self.runs]
        raise ConfigError(f'no run named "{name}".{did_you_mean(name, names)}', path=self.path, hint=f"Runs: {one_of(names)}.")

    def with_overrides(self, name: str, **overrides: Any) -> Run:
        """Run ``name`` with some keys replaced (snake_case keyword names), checked like the file."""
        self.run(name)
        raw_runs = list(self.table.get("runs", []))
        index = next(i for i, r in enumerate(raw_runs) if isinstance(r, dict) and r.get("name") == name)
        merged = {canonical(k): v for k, v in raw_runs[index].items()}
        # Known keys in either spelling replace the file's; a typo stays as typed for the message.
        merged.update({(canonical(k) if canonical(k) in RUN_KEYS else k): v for k, v in overrides.items()})
        return _run(merged, index, self.table, self.context, require_budget=False)


def _calibration(table: _Table) -> Optional[float]:
    """A measured/estimated factor from `llmmem measure --write`; 0.5 to 2 is the plausible range."""
    if "calibration" not in table:
        return None
    value = table.values["calibration"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value <= 2.0:
        raise table.fail("calibration", f"expected a factor from 0.5 to 2.0, got {_type_name(value)} {value!r}.",
                         hint="llmmem measure --write stores it; a factor far from 1 means the run was measured wrongly.")
    return float(value)


def _parallelism(table: _Table, model: Union[Architecture, ParamsOnly]) -> Dict[str, Any]:
    """Multi-GPU keys, with the contradictions DeepSpeed, FSDP and Megatron would reject."""
    gpus = table.integer("gpus", 1)
    tp, pp = table.integer("tensor-parallel", 1), table.integer("pipeline-parallel", 1)
    zero = table.integer("zero-stage", 0, low=0)
    fsdp = table.choice("fsdp", FSDP_MODES, "none")
    offload = table.choice("offload", OFFLOADS, "none")
    ep = table.integer("expert-parallel", 1)
    if zero and fsdp != "none":
        raise table.fail("fsdp", f'fsdp = "{fsdp}" and zero-stage = {zero} both shard the model states; pick one.',
                         hint='FSDP full-shard is ZeRO-3, shard-grad-op is ZeRO-2.')
    if gpus % (tp * pp):
        raise table.fail("gpus", f"{gpus} GPUs cannot be split into tensor-parallel {tp} x pipeline-parallel {pp} groups.",
                         hint=f"gpus must be a multiple of {tp * pp}.")
    if offload != "none" and not zero and fsdp == "none":
        raise table.fail("offload", f'offload = "{offload}" needs ZeRO (zero-stage >= 1) or FSDP.', hint="ZeRO-Offload and FSDP CPU offload both shard first.")
    if offload == "optimizer+params" and zero != 3 and fsdp not in ("full-shard", "hybrid-shard"):
        raise table.fail("offload", 'offloading parameters needs zero-stage = 3 or fsdp = "full-shard".')
    if table.boolean("sequence-parallel", False) and tp == 1:
        raise table.fail("sequence-parallel", "sequence parallelism splits along the tensor-parallel group; tensor-parallel is 1.")
    if isinstance(model, Architecture):
        if model.num_heads % tp or (model.num_kv_heads % tp and tp % model.num_kv_heads):
            raise table.fail("tensor-parallel", f"tensor-parallel {tp} does not divide the {model.num_heads} attention heads "
                             f"({model.num_kv_heads} key/value heads).")
        if pp > model.num_layers:
            raise table.fail("pipeline-parallel", f"{pp} pipeline stages for {model.num_layers} layers.")
        if ep > 1 and (not model.num_experts or model.num_experts % ep):
            raise table.fail("expert-parallel", f"expert-parallel {ep} must divide num-experts ({model.num_experts}).")
    if ep > 1 and (gpus // (tp * pp)) % ep:
        raise table.fail("expert-parallel", f"expert-parallel {ep} must divide the data-parallel size {gpus // (tp * pp)}.")
    return dict(
        gpus=gpus, zero_stage=zero, fsdp=fsdp, tensor_parallel=tp, pipeline_parallel=pp,
        sequence_parallel=table.boolean("sequence-parallel", False), expert_parallel=ep, offload=offload,
        micro_batches=table.integer("micro-batches", 1), gpus_per_node=table.integer("gpus-per-node", 8),
    )


def _budget(levels: Sequence[_Table], ctx: _Context, require: bool) -> Optional[Budget]:
    """Run-level keys win over [tool.llmmem]; within a level gpu-memory wins over gpu."""
    ceiling, gpu_name = None, None
    for table in levels:
        if "gpu-memory" in table:
            ceiling = table.size("gpu-memory")
            break
        if "gpu" in table:
            gpu = table.resolve("gpu", ctx.catalog.gpu)
            ceiling, gpu_name = gpu.memory_bytes, gpu.name
            break
    headroom_table = next((t for t in levels if "headroom" in t), None)
    if ceiling is None:
        if require:
            top = levels[-1]
            raise ctx.error(
                "no memory budget: set gpu or gpu-memory.", f"{top.dotted}.gpu", top.line_of(None),
                hint=f'Add gpu = "A100-80GB" (or gpu-memory = "80 GiB") under [{TABLE}] or in the run.',
            )
        return None
    headroom = 0
    if headroom_table is not None:
        raw = headroom_table.values["headroom"]
        if isinstance(raw, str) and raw.strip().endswith("%"):
            try:
                percent = float(raw.strip()[:-1])
            except ValueError:
                percent = float("nan")
            if not 0 <= percent < 100:
                raise headroom_table.fail("headroom", f'"{raw}" is not a percentage from 0 to 99.', hint='For example "10%" or "2 GiB".')
            headroom = int(ceiling * percent / 100)
        else:
            headroom = headroom_table.size("headroom", allow_zero=True)
        if headroom >= ceiling:
            raise headroom_table.fail("headroom", f"{raw!r} leaves nothing of the {ceiling / 2**30:.2f} GiB ceiling.")
    return Budget(ceiling, headroom, gpu_name)


def _run(raw: Any, index: int, top_raw: Mapping[str, Any], ctx: _Context, require_budget: bool = True) -> Run:
    name_hint = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else None
    dotted = f"{TABLE}.runs[{index}]"
    table = _Table(raw, RUN_KEYS, ctx, dotted, lambda key: ctx.locator.run_line(index, name_hint, key))
    top = _Table(top_raw, TOP_KEYS, ctx, TABLE, lambda key: ctx.locator.find(TABLE, 0, key))
    name = table.string("name")
    if name is None:
        raise ctx.error("this run has no name.", f"{dotted}.name", table.line_of(None), hint='Add name = "sft" (names must be unique).')
    mode = table.choice("mode", MODES, "train")
    line = table.line_of(None)

    for key in TRAIN_ONLY:
        if key in table and mode == "inference":
            raise table.fail(key, f'only applies to training; run "{name}" has mode = "inference".')
    for key in LORA_ONLY:
        if key in table and mode not in ("lora", "qlora"):
            raise table.fail(key, f'only applies to mode = "lora" or "qlora"; run "{name}" has mode = "{mode}".')

    dtype = table.resolve("dtype", ctx.catalog.dtype, "nf4" if mode == "qlora" else "bf16")
    if mode == "qlora" and not (dtype.quantized and dtype.bytes < 1):
        raise table.fail("dtype", f'qlora needs 4-bit base weights; "{dtype.name}" is not.', hint='Use dtype = "nf4" (or "int4"), or mode = "lora".')
    if mode == "train" and dtype.quantized:
        raise table.fail("dtype", f'full training of {dtype.name} weights is not a supported setup.', hint='Use mode = "qlora" or "lora" for quantised bases.')

    precision = table.choice("precision", PRECISIONS, "mixed" if dtype.bytes < 4 else "pure")
    if precision in ("mixed", "amp") and dtype.bytes >= 4 and mode == "train":
        raise table.fail("precision", f'"{precision}" computes in 16 bit but dtype is "{dtype.name}".',
                         hint='Use dtype = "bf16" or "fp16" with it, or precision = "pure" for fp32 training.')
    optimizer = table.resolve("optimizer", ctx.catalog.optimizer, "adamw") if mode != "inference" else None
    targets: Tuple[str, ...] = ("q_proj", "v_proj")
    if "lora-targets" in table:
        value = table.values["lora-targets"]
        if value == "all-linear":
            targets = ("all-linear",)
        elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            targets = tuple(value)
        else:
            raise table.fail("lora-targets", f"expected a list of module names or \"all-linear\", got {_type_name(value)} {value!r}.")

    model_raw = dict(top_raw.get("model", {})) if isinstance(top_raw.get("model", {}), dict) else top_raw.get("model")
    model_line = lambda key: ctx.locator.find(f"{TABLE}.model", 0, key) or ctx.locator.find(TABLE, 0, "model")  # noqa: E731
    model_dotted = f"{TABLE}.model"
    if "model" in table:
        override = table.values["model"]
        if not isinstance(override, dict):
            raise table.fail("model", f"expected a table, got {_type_name(override)}.")
        override = {canonical(k): v for k, v in override.items()}
        if "params" in override or "config" in override:
            model_raw = override
        else:
            model_raw = {canonical(k): v for k, v in (model_raw or {}).items()}
            model_raw.update(override)
        model_line = lambda key: table.line_of("model")  # noqa: E731
        model_dotted = f"{dotted}.model"
    if model_raw is None or model_raw == {}:
        raise ctx.error(
            f'run "{name}" has no model.', model_dotted, line,
            hint=f'Add [{TABLE}.model] with params = "7B", config = "path/config.json" or the architecture keys.',
        )
    model = _model(_Table(model_raw, MODEL_KEYS, ctx, model_dotted, model_line), ctx)

    if isinstance(model, Architecture) and "lora-targets" in table and targets != ("all-linear",):
        names = model.module_names()
        leaves = {n.split(".")[-1] for n in names}
        for target in targets:
            if target not in names and target not in leaves:
                raise table.fail("lora-targets", f'"{target}" is not a linear layer of this {model.family.name} model.{did_you_mean(target, names)}',
                                 hint=f'Valid: {one_of(names)} or "all-linear".')

    seq_len = table.integer("seq-len")
    parallel = _parallelism(table, model)
    return Run(
        name=name,
        model=model,
        mode=mode,
        dtype=dtype,
        precision=precision,
        optimizer=optimizer,
        batch_size=table.integer("batch-size", 1),
        seq_len=seq_len or 2048,
        seq_len_given=seq_len is not None,
        gradient_checkpointing=table.boolean("gradient-checkpointing", False),
        flash_attention=table.boolean("flash-attention", True),
        lora_rank=table.integer("lora-rank", 8),
        lora_targets=targets,
        adapter_dtype=table.resolve("adapter-dtype", ctx.catalog.dtype, "fp32"),
        host_memory_bytes=table.size("host-memory"),
        calibration=_calibration(table),
        **parallel,
        budget=_budget([table, top], ctx, require_budget),
        method=(table if "method" in table else top).choice("method", METHODS, "detailed"),
        overhead_bytes=(table if "overhead" in table else top).size("overhead", allow_zero=True),
        file=ctx.path,
        line=line,
    )


# --- entry points --------------------------------------------------------------------------------


def find_pyproject(path: Union[str, Path, None] = None) -> Path:
    """PATH itself when it is a file, else PATH/pyproject.toml (default: the current folder)."""
    target = Path(path) if path else Path.cwd()
    if target.is_dir():
        target = target / "pyproject.toml"
    if not target.exists():
        raise ConfigError(f"{target} does not exist.", hint="Pass a pyproject.toml, or a folder that holds one.")
    return target


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def parse(
    text: str,
    *,
    path: str = "pyproject.toml",
    catalog: Optional[Catalog] = None,
    base_dir: Optional[Path] = None,
    read_json: Callable[[Path], Any] = _read_json,
    require_budget: bool = True,
) -> Project:
    """Parse pyproject text into a :class:`Project`; the only I/O is ``read_json`` for a model config."""
    try:
        document = toml.loads(text)
    except toml.TOMLDecodeError as err:
        message = str(err)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else None
        raise ConfigError(f"is not valid TOML: {message}.", path=path, line=line) from None
    table = document.get("tool", {}).get("llmmem") if isinstance(document.get("tool"), dict) else None
    if table is None:
        raise ConfigError(f"has no [{TABLE}] table, so there is nothing to check.", path=path,
                          hint=f'Add [{TABLE}] with a gpu, a [{TABLE}.model] and at least one [[{TABLE}.runs]]; see the README.')
    ctx = _Context(path, Locator(text), catalog or default_catalog(), read_json, base_dir or Path(path).resolve().parent)
    top = _Table(table, TOP_KEYS, ctx, TABLE, lambda key: ctx.locator.find(TABLE, 0, key))
    if "method" in top:
        top.choice("method", METHODS, "detailed")
    raw_runs = top.values.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise ctx.error("declares no runs.", f"{TABLE}.runs", ctx.locator.find(TABLE),
                        hint=f'Add at least one [[{TABLE}.runs]] table with a name, e.g. name = "sft".')
    runs: List[Run] = []
    for index, raw in enumerate(raw_runs):
        run = _run(raw, index, top.values, ctx, require_budget)
        if any(r.name == run.name for r in runs):
            raise ctx.error(f'run name "{run.name}" is used twice.', f"{TABLE}.runs[{index}].name", run.line, hint="Names must be unique.")
        runs.append(run)
    return Project(path, tuple(runs), top.values, ctx)


def load(
    path: Union[str, Path, None] = None,
    *,
    catalog: Optional[Catalog] = None,
    require_budget: bool = True,
    display: Optional[str] = None,
) -> Project:
    """Read and resolve the ``[tool.llmmem]`` table of a pyproject.toml (or a folder holding one).

    ``display`` is how messages name the file (default: as given).
    """
    target = find_pyproject(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot be read: {err}.", path=str(target)) from None
    shown = display or (str(path) if path and Path(path).is_file() else str(target))
    return parse(text, path=shown, catalog=catalog, base_dir=target.resolve().parent, require_budget=require_budget)


def adhoc_run(values: Mapping[str, Any], *, catalog: Optional[Catalog] = None, path: str = "command line") -> Run:
    """One run from keys given directly (``llmmem estimate``): model keys and run keys together."""
    model = {k: v for k, v in values.items() if k in MODEL_KEYS}
    run = {k: v for k, v in values.items() if k not in MODEL_KEYS}
    run.setdefault("name", "estimate")
    top = {"model": model, "runs": [run]}
    ctx = _Context(path, Locator(""), catalog or default_catalog(), _read_json, Path.cwd())
    return _run(run, 0, top, ctx, require_budget=False)



def has_llmmem_table(path: Path) -> bool:
    """Whether a pyproject.toml declares [tool.llmmem] (unreadable or invalid TOML counts as yes,
    so that checking it reports the problem instead of skipping it)."""
    try:
        document = toml.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, toml.TOMLDecodeError):
        return True
    tool = document.get("tool")
    return isinstance(tool, dict) and "llmmem" in tool


def owners_of(changed: Path, stop: Path) -> List[Path]:
    """The pyproject.toml files, in ``changed``'s folder and its parents up to ``stop``, whose
    [tool.llmmem] model (or a run's model) points its ``config`` at ``changed``."""
    target = changed.resolve()
    stop = stop.resolve()
    found = []
    for folder in [target.parent, *target.parent.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                table = toml.loads(candidate.read_text(encoding="utf-8")).get("tool", {}).get("llmmem", {})
            except (OSError, UnicodeDecodeError, toml.TOMLDecodeError, AttributeError):
                table = {}
            models = [table.get("model")] + [r.get("model") for r in table.get("runs", []) if isinstance(r, dict)] if isinstance(table, dict) else []
            for model in models:
                ref = model.get("config") if isinstance(model, dict) else None
                if isinstance(ref, str) and ref:
                    resolved = (folder / ref).resolve()
                    if resolved.is_dir():
                        resolved = resolved / "config.json"
                    if resolved == target:
                        found.append(candidate)
                        break
        if folder == stop or stop not in folder.parents:
            break
    return found
