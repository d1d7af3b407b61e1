"""Read ``[tool.llmmem]`` from a pyproject.toml into resolved :class:`Run` objects.

Every key is checked: unknown keys get a "did you mean", wrong types and absurd values name the
key and its line, and nothing a user mistyped is silently replaced by a default. Keys are
kebab-case; the snake_case spelling of any key is accepted too. The key contract lives in
:mod:`keys`, the model table in :mod:`model_config`, the adapter keys in :mod:`adapter_keys`, line
numbers in :mod:`locate`, and finding projects in :mod:`projects`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from ..io import files
from ..io.files import toml
from ..catalog.registry import Catalog, default_catalog
from ..errors import ConfigError, did_you_mean, one_of, shown, shown_name
from ..record import Record
from .keys import ADAPTER_KEYS, ENGINE_ONLY, INFERENCE_ONLY, MODEL_KEYS, RECIPE_KEYS, RUN_KEYS, TABLE, TOP_KEYS, TRAIN_ONLY, Context, Table, canonical
from ..values import type_name
from .adapter_keys import adapter_fields, checked_targets, compute_dtype, configured_adapter, gptq_group_size, read_targets, run_mode
from .checkpoint_keys import checkpoint_setting
from .gpu_keys import budget, parallelism
from .locate import Locator
from ..model.architecture import Architecture
from .model_config import check_values as check_model_values, model_from_table
from ..catalog.profiles import shown as trainer_rows
from ..catalog.trainer_knobs import check_combination as check_trainer, loads_8bit_in_16bit, resolve as resolve_trainer
from ..io.projects import find_pyproject, read_json, read_pyproject
from .phase_keys import job_settings
from ..core.run import ATTN_IMPLEMENTATIONS, METHODS, PRECISIONS, RecipeSettings, VISION_TOWERS, Run

MAX_NAME = 200  # characters in a run name


class Project(Record):
    """A pyproject's ``[tool.llmmem]``: its resolved runs, and what is needed to re-resolve one."""

    path: str
    runs: Tuple[Run, ...]
    table: Mapping[str, Any]
    context: Context

    def run(self, name: str) -> Run:
        for run in self.runs:
            if run.name == name:
                return run
        names = [r.name for r in self.runs]
        raise ConfigError(f'no run named "{shown_name(name)}".{did_you_mean(name, names)}', path=self.path, hint=f"Runs: {one_of(names)}.")

    def with_overrides(self, name: str, /, **overrides: Any) -> Run:
        """Run ``name`` with some keys replaced (snake_case keyword names, ``name=`` renames it),
        checked like the file."""
        self.run(name)
        raw_runs = list(self.table.get("runs", []))
        index = next(i for i, r in enumerate(raw_runs) if isinstance(r, dict) and r.get("name") == name)
        merged = {canonical(k): v for k, v in raw_runs[index].items()}
        # Known keys in either spelling replace the file's; a typo stays as typed for the message.
        merged.update({(canonical(k) if canonical(k) in RUN_KEYS else k): v for k, v in overrides.items()})
        return _run(merged, index, self.table, self.context, require_budget=False)


def _calibration(table: Table) -> Optional[float]:
    """A measured/estimated factor from `llmmem measure --write`; 0.5 to 2 is the plausible range."""
    if "calibration" not in table:
        return None
    value = table.values["calibration"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value <= 2.0:
        raise table.fail("calibration", f"expected a factor from 0.5 to 2.0, got {type_name(value)} {shown(value)}.",
                         hint="llmmem measure --write stores it; a factor far from 1 means the run was measured wrongly.")
    return float(value)


def _checkpoint_dtype(table: Table, ctx: Context, mode: str, model: Any, model_raw: Any, dtype: Any) -> Tuple[Any, Tuple[Tuple[str, str], ...]]:
    """A model named by Hub id whose config.json declares a quantised checkpoint (quantization_config)
    serves in that format when the run gives no dtype; training modes keep their own defaults (a
    trainer dequantises or quantises on load as its config says)."""
    if "dtype" in table or mode != "inference" or not isinstance(model, Architecture) or not isinstance(model_raw, dict) or "id" not in model_raw:
        return dtype, ()
    from ..hf.hub import checkpoint_format

    try:
        fmt = checkpoint_format(ctx.read_json(Path(model.source)))
    except (OSError, ValueError):
        return dtype, ()
    if not fmt:
        return dtype, ()
    return ctx.catalog.dtype(fmt), (("dtype", f"{Path(model.source).name}: quantization_config ({fmt})"),)


def _model_shorthand(value: Any) -> Any:
    """model = "org/name" is [model] id = "org/name": a Hugging Face Hub id (hub.py)."""
    return {"id": value} if isinstance(value, str) else value


def _top_model_line(ctx: Context) -> Callable[[Optional[str]], Optional[int]]:
    return lambda key: ctx.locator.find(f"{TABLE}.model", 0, key) or ctx.locator.find(TABLE, 0, "model")


def _run(raw: Any, index: int, top_raw: Mapping[str, Any], ctx: Context, require_budget: bool = True) -> Run:
    """One run; with from = "train.yaml" its settings are read from the trainer's config first and the
    run's own keys override them (readers/)."""
    if not (isinstance(raw, dict) and "from" in raw):
        return _run_keys(raw, index, top_raw, ctx, require_budget)
    from .trainer_config import merged_run, shown_settings, yaml_error

    merged, reading, own = merged_run(raw, index, ctx)
    try:
        run = _run_keys(merged, index, top_raw, ctx, require_budget)
    except ConfigError as err:
        raise yaml_error(err, reading, own, f"{TABLE}.runs[{index}]") from None
    origins = dict(run.settings_from)
    origins.update(reading.origins)
    origins.update({key: f"{shown_name(ctx.path, 80)} (the run)" for key in own if key in origins})
    return run._replace(settings_from=tuple(sorted(origins.items())), not_modelled=reading.not_modelled,
                        reads=(reading.path,) + reading.follows, settings=shown_settings(merged, origins, ctx.base_dir))


def _run_keys(raw: Any, index: int, top_raw: Mapping[str, Any], ctx: Context, require_budget: bool = True) -> Run:
    name_hint = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else None
    dotted = f"{TABLE}.runs[{index}]"
    table = Table(raw, RUN_KEYS, ctx, dotted, lambda key: ctx.locator.run_line(index, name_hint, key))
    top = Table(top_raw, TOP_KEYS, ctx, TABLE, lambda key: ctx.locator.find(TABLE, 0, key))
    name = table.string("name")
    if name is None:
        raise ctx.error("this run has no name.", f"{dotted}.name", table.line_of(None), hint='Add name = "sft" (names must be unique).')
    if len(name) > MAX_NAME or not name.isprintable():  # names are printed in reports and annotations
        raise table.fail("name", f"{shown(name)} is not a usable run name: at most {MAX_NAME} characters, no control characters "
                         "(tabs, newlines, escapes).", hint='For example name = "sft-7b".')
    mode, adapter = run_mode(table, ctx)
    line = table.line_of(None)

    for key in TRAIN_ONLY:
        if key in table and mode == "inference":
            raise table.fail(key, f'only applies to training; run "{name}" has mode = "inference".')
    for key in ADAPTER_KEYS:
        if key in table and (adapter is None or key not in adapter.keys):
            users = " or ".join(f'"{a.name}"' for a in ctx.catalog.adapter_entries() if key in a.keys)
            raise table.fail(key, f'only applies to mode = {users}; run "{name}" has mode = "{mode}".')

    dtype = table.resolve("dtype", ctx.catalog.dtype, adapter.default_dtype if adapter else "bf16")
    if adapter is not None and adapter.quantized_base and not (dtype.quantized and dtype.bytes < 1):
        raise table.fail("dtype", f'{mode} needs 4-bit base weights; "{dtype.name}" is not.', hint='Use dtype = "nf4" (or "int4"), or mode = "lora".')
    if adapter is not None and adapter.refuses_4bit and dtype.quantized and dtype.bytes < 1:
        raise table.fail("dtype", f'PEFT\'s {adapter.label} does not run over {dtype.name} base weights: {adapter.refuses_4bit}.',
                         hint='Use dtype = "bf16" (or "fp16") for its base, or mode = "qlora" for a 4-bit one.')
    if mode == "train" and dtype.quantized:
        raise table.fail("dtype", f'full training of {dtype.name} weights is not a supported setup.', hint='Use mode = "qlora" or "lora" for quantised bases.')

    precision = table.choice("precision", PRECISIONS, "mixed" if dtype.bytes < 4 else "pure")
    if precision in ("mixed", "amp") and dtype.bytes >= 4 and mode == "train":
        raise table.fail("precision", f'"{precision}" computes in 16 bit but dtype is "{dtype.name}".',
                         hint='Use dtype = "bf16" or "fp16" with it, or precision = "pure" for fp32 training.')
    autocast = table.boolean("autocast", False)
    if autocast and mode != "inference" and not dtype.quantized and dtype.bytes >= 4:
        raise table.fail("autocast", f'autocast = true runs 16-bit weights under torch.autocast but dtype is "{dtype.name}".',
                         hint='Use precision = "amp" for fp32 weights under autocast, or dtype = "bf16" / "fp16" with autocast = true.')
    optimizer = table.resolve("optimizer", ctx.catalog.optimizer, "adamw") if mode != "inference" else None
    targets = read_targets(table)

    model_raw = _model_shorthand(top_raw.get("model", {}))
    model_raw = dict(model_raw) if isinstance(model_raw, dict) else model_raw
    model_line = _top_model_line(ctx)
    model_dotted = f"{TABLE}.model"
    if "model" in table:
        override = _model_shorthand(table.values["model"])
        if not isinstance(override, dict):
            raise table.fail("model", f"expected a table, got {type_name(override)}.")
        override = {canonical(k): v for k, v in override.items()}
        if "params" in override or "config" in override or "id" in override:
            model_raw = override
        else:
            model_raw = {canonical(k): v for k, v in (model_raw or {}).items()}
            model_raw.update(override)
        # The key's own line ([tool.llmmem.runs.model] or model.id = ...), else the run's model key.
        model_line = lambda key: ctx.locator.find(f"{TABLE}.runs.model", index, key) or table.line_of("model")  # noqa: E731
        model_dotted = f"{dotted}.model"
    if model_raw is None or model_raw == {}:
        raise ctx.error(
            f'run "{name}" has no model.', model_dotted, line,
            hint=f'Add [{TABLE}.model] with params = "7B", config = "path/config.json" or the architecture keys.',
        )
    model = model_from_table(Table(model_raw, MODEL_KEYS, ctx, model_dotted, model_line), ctx)

    targets = checked_targets(table, model, adapter, targets)
    dtype, quant_origin = _checkpoint_dtype(table, ctx, mode, model, model_raw, dtype)
    dtype = compute_dtype(table, dtype)
    # serve_keys and recipe_keys load only for a run that has one of their keys (start-up: llmmem check
    # runs on every commit); without any, the run keeps Run's defaults (transformers, sft) and its seq-len.
    serving: Dict[str, Any] = {}
    seq_len = table.integer("seq-len")
    if any(key in table for key in INFERENCE_ONLY + ENGINE_ONLY):
        from .serve_keys import serving_fields

        serving, seq_len = serving_fields(table, name, mode, model, seq_len)
    context, why = model.context() if isinstance(model, Architecture) else (0, "")
    if seq_len and context and seq_len > context:
        key = "seq-len" if "seq-len" in table else "prompt-len"
        raise table.fail(key, f"{seq_len:,} tokens is past the model's context of {context:,} ({why}).",
                         hint=f"Use a sequence of at most {context:,} tokens, or a checkpoint whose config extends the context (rope_scaling).")
    parallel = parallelism(table, model)
    recipe, implied = RecipeSettings(), {}
    if any(key in table for key in RECIPE_KEYS):
        from .recipe_keys import recipe_settings

        # micro-batches without pipeline stages are gradient accumulation steps (TRL's default steps_per_generation)
        accumulation = parallel["micro_batches"] if parallel["pipeline_parallel"] == 1 else 1
        recipe, implied = recipe_settings(table, mode, name, parallel["gpus"] // (parallel["tensor_parallel"] * parallel["pipeline_parallel"]),
                                          accumulation, adapts=adapter is not None)
    seq_len = implied.get("seq_len", seq_len)
    trainer = resolve_trainer([table, top], mode=mode, dtype=dtype, seq_len=seq_len or 2048, run_name=name)
    if dtype.name == "int8" and loads_8bit_in_16bit(ctx.catalog.profile(trainer.knobs.framework), trainer.knobs.framework_version):
        # the trainer's load ignores load_in_8bit (Profile.ignores_8bit): the base is loaded in 16 bit
        version = ".".join(map(str, trainer.knobs.framework_version))
        dtype = ctx.catalog.dtype("bf16")
        quant_origin += (("dtype", f"{trainer.knobs.framework} {version} loads load_in_8bit in 16 bit (docs/profiles.md): bf16"),)
    checkpointing, selective = checkpoint_setting(table, trainer.gradient_checkpointing and mode != "inference", mode)
    check_trainer(trainer.knobs, table, gradient_checkpointing=checkpointing, micro_batches=parallel["micro_batches"],
                  pipeline_parallel=parallel["pipeline_parallel"])
    adapter_dtype = table.resolve("adapter-dtype", ctx.catalog.dtype, trainer.adapter_dtype)
    job = job_settings([table, top], mode=mode, framework=trainer.knobs.framework, batch_size=implied.get("batch_size") or table.integer("batch-size", 1),
                       fsdp=parallel["fsdp"], zero_stage=parallel["zero_stage"], run_name=name,
                       adapters=tuple(ctx.catalog.adapters.names))
    # The top-level overhead is checked even when the run overrides it (parse() checks the top method).
    overhead, top_overhead = table.size("overhead", allow_zero=True), top.size("overhead", allow_zero=True)
    return Run(
        name=name,
        model=model,
        mode=mode,
        dtype=dtype,
        precision=precision,
        autocast=autocast,
        optimizer=optimizer,
        batch_size=implied.get("batch_size") or table.integer("batch-size", 1),
        seq_len=seq_len or 2048,
        seq_len_given=seq_len is not None,
        gradient_checkpointing=checkpointing,
        selective_ac=selective,
        compiled=table.boolean("compile", False),
        **_attention(table),
        **adapter_fields(table, adapter, model, targets, checkpointing),
        gptq_group_size=gptq_group_size(table, dtype),
        adapter_dtype=adapter_dtype,
        knobs=trainer.knobs,
        knobs_shown=trainer_rows(trainer.knobs, mode=mode, four_bit=dtype.name if dtype.name in ("nf4", "int4") else "", adapter_dtype=adapter_dtype.name,
                                 adapter_given="adapter-dtype" in table, adapts=adapter is not None),
        host_memory_bytes=table.size("host-memory"),
        calibration=_calibration(table),
        **parallel,
        budget=budget([table, top], ctx, require_budget),
        method=(table if "method" in table else top).choice("method", METHODS, "detailed"),
        strict=(table if "strict" in table else top).boolean("strict", False),
        vision_tower=_vision_tower(table, mode, model, name),
        overhead_bytes=overhead if "overhead" in table else top_overhead,
        recipe=recipe,
        job=job,
        file=ctx.path,
        line=line,
        settings_from=quant_origin,
        adapter_entry=configured_adapter(table, adapter),
        **serving,
    )



def _attention(table: Any) -> Dict[str, Any]:
    """flash-attention and attn-implementation: "eager" is flash-attention = false; flash-attention = true alone is
    transformers' default, "sdpa" (transformers 5.25 modeling_utils.py:1856 get_correct_attn_implementation); both must agree."""
    flash = table.boolean("flash-attention", True)
    if "attn-implementation" not in table:
        return {"flash_attention": flash, "attn_implementation": "sdpa" if flash else "eager"}
    kernel = table.choice("attn-implementation", ATTN_IMPLEMENTATIONS, "sdpa")
    if "flash-attention" in table and flash != (kernel != "eager"):
        raise table.fail("attn-implementation", f'"{kernel}" contradicts flash-attention = {str(flash).lower()} in the same run '
                         f'("eager" is flash-attention = false; "sdpa", "flash_attention_2" and "flash_attention_3" are true).',
                         hint="Drop flash-attention, or set the two to agree.")
    return {"flash_attention": kernel != "eager", "attn_implementation": kernel}


# --- entry points --------------------------------------------------------------------------------


def parse(
    text: str,
    *,
    path: str = "pyproject.toml",
    catalog: Optional[Catalog] = None,
    base_dir: Optional[Path] = None,
    read_json: Callable[[Path], Any] = read_json,
    require_budget: bool = True,
) -> Project:
    """Parse pyproject text into a :class:`Project`; the only I/O is ``read_json`` for a model config."""
    try:
        document = toml.loads(text)
    except RecursionError:  # tomllib recurses per nesting level: "x = [[[[...]]]]" 5,000 deep
        raise ConfigError("is not valid TOML here: an array or inline table is nested too deeply to parse.", path=path) from None
    except toml.TOMLDecodeError as err:
        message = str(err)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else None
        raise ConfigError(f"is not valid TOML: {message}.", path=path, line=line) from None
    table = document.get("tool", {}).get("llmmem") if isinstance(document.get("tool"), dict) else None
    if table is None:
        raise ConfigError(f"has no [{TABLE}] table, so there is nothing to check.", path=path,
                          hint=f'Add [{TABLE}] with a gpu, a [{TABLE}.model] and at least one [[{TABLE}.runs]]; see the README.')
    cache: Dict[Path, Any] = {}  # one read of a config.json that many runs share (10,000 runs: one read)

    def read_once(json_path: Path) -> Any:
        if json_path not in cache:
            cache[json_path] = read_json(json_path)
        return cache[json_path]

    ctx = Context(path, Locator(text), catalog or default_catalog(), read_once, base_dir or files.resolve(path).parent)
    top = Table(table, TOP_KEYS, ctx, TABLE, lambda key: ctx.locator.find(TABLE, 0, key))
    if "method" in top:
        top.choice("method", METHODS, "detailed")
    if "model" in top:  # checked even when every run brings its own model
        check_model_values(Table(_model_shorthand(top.values["model"]), MODEL_KEYS, ctx, f"{TABLE}.model", _top_model_line(ctx)), ctx)
    top.boolean("strict", False)  # checked even when every run sets its own
    raw_runs = top.values.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise ctx.error("declares no runs.", f"{TABLE}.runs", ctx.locator.find(TABLE),
                        hint=f'Add at least one [[{TABLE}.runs]] table with a name, e.g. name = "sft".')
    runs: List[Run] = []
    names = set()
    for index, raw in enumerate(raw_runs):
        run = _run(raw, index, top.values, ctx, require_budget)
        if run.name in names:
            raise ctx.error(f'run name "{shown_name(run.name)}" is used twice.', f"{TABLE}.runs[{index}].name", run.line, hint="Names must be unique.")
        names.add(run.name)
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
    text = read_pyproject(target)
    shown = display or (str(path) if path and files.is_file(path) else str(target))
    return parse(text, path=shown, catalog=catalog, base_dir=files.resolve(target).parent, require_budget=require_budget)


def _vision_tower(table: Table, mode: str, model: Any, name: str) -> str:
    """vision-tower: only a full fine-tune of a model with a vision tower has one to train or freeze."""
    value = table.choice("vision-tower", VISION_TOWERS, "trained")
    if "vision-tower" in table:
        if mode != "train":
            raise table.fail("vision-tower", f'only applies to mode = "train" (a full fine-tune); run "{name}" has mode = "{mode}", '
                             "which trains no vision tower weights.", hint="Remove vision-tower from this run.")
        if not (isinstance(model, Architecture) and model.extra_params):
            what = f"this {model.family.name} model" if isinstance(model, Architecture) else "a model given by params only"
            raise table.fail("vision-tower", f"{what} has no vision tower to train or freeze.",
                             hint="Remove vision-tower, or point config at a multimodal config.json (gemma3 with a vision_config).")
    return value


def adhoc_run(values: Mapping[str, Any], *, catalog: Optional[Catalog] = None, path: str = "command line") -> Run:
    """One run from keys given directly (``llmmem estimate``): model keys and run keys together."""
    model = {k: v for k, v in values.items() if k in MODEL_KEYS}
    run = {k: v for k, v in values.items() if k not in MODEL_KEYS}
    run.setdefault("name", "estimate")
    if "from" in run and model:  # given beside from = "train.yaml", the model is the run's own and overrides the file's
        run["model"], model = model, {}
    top = {"model": model, "runs": [run]}
    ctx = Context(path, Locator(""), catalog or default_catalog(), read_json, Path.cwd())
    return _run(run, 0, top, ctx, require_budget=False)


