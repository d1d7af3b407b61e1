"""The ``llmmem`` sub-commands besides ``check``: estimate, catalog, diff, fit and measure.

Split from :mod:`cli` so that ``llmmem check``, which pre-commit runs on every commit, neither
loads these nor builds their flags (benchmarks/cli_startup.py).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

from .output import EXIT_ERROR, EXIT_OK, EXIT_OVER, common_arguments, emit, refused, say, selected_runs, with_strict

# Ad-hoc estimate flags: (flag, kind). Each maps to the config key of the same name.
_VALUE_FLAGS = {
    "model": str, "revision": str, "params": str, "config": str, "family": str, "hidden-size": int, "num-layers": int, "num-heads": int,
    "num-kv-heads": int, "head-dim": int, "intermediate-size": int, "vocab-size": int,
    "max-position-embeddings": int, "num-experts": int, "experts-per-token": int, "moe-intermediate-size": int,
    "hidden-act": str, "mode": str, "dtype": str, "precision": str, "optimizer": str, "batch-size": int,
    "seq-len": int, "lora-rank": int, "adapter-dtype": str, "lora-dropout": float, "bitsandbytes-version": str, "compute-dtype": str, "gptq-group-size": int,
    "num-virtual-tokens": int, "rank-dropout": float, "module-dropout": float, "decompose-factor": int,
    "encoder-hidden-size": int, "encoder-reparameterization-type": str, "encoder-num-layers": int, "gpus": int, "gpu": str,
    "gpu-memory": str,
    "headroom": str, "method": str, "overhead": str, "zero-stage": int, "fsdp": str, "fsdp-version": int, "tensor-parallel": int,
    "pipeline-parallel": int, "expert-parallel": int, "offload": str, "micro-batches": int, "gpus-per-node": int,
    "host-memory": str, "framework": str, "loss": str, "loss-chunks": int, "optimizer-impl": str, "torch-version": str, "framework-version": str,
    # inference and serving (issue 12)
    "prompt-len": int, "new-tokens": int, "logits": str, "engine": str, "gpu-memory-utilization": float,
    "max-model-len": int, "max-num-seqs": int, "max-num-batched-tokens": int, "kv-cache-dtype": str,
    "block-size": int, "quantization": str, "min-concurrency": float, "engine-version": str,
    # recipes (issue 13)
    "recipe": str, "beta": float, "loss-type": str, "max-length": int, "max-prompt-length": int,
    "num-generations": int, "max-completion-length": int, "generation": str, "vllm-gpu-memory-utilization": float,
    "generation-batch-size": int, "steps-per-generation": int,
    "local-rollout-forward-batch-size": int, "value-head": str, "log-prob-head": str,
    # the whole job's phases (issue 16)
    "eval-batch-size": int, "eval-samples": int, "eval-accumulation-steps": int, "eval-generate-tokens": int, "save": str,
    "vision-tower": str,
    # selective activation checkpointing and context parallelism (torchtitan, issue 25)
    "selective-ac": lambda text: int(text) if text.isdigit() else text, "context-parallel": int,
    "kernels": lambda text: [name.strip() for name in text.split(",") if name.strip()],  # --kernels liger,liger-cross-entropy
    # a trainer's own config (config/readers/), as from = "train.yaml"; the run's name and a measured calibration
    "attn-implementation": str, "from": str, "from-format": str, "name": str, "calibration": float, "attention-dropout": float, "hidden-dropout": float,
}
# Flags spelled apart from their key: --format is the output's (text, json, github).
_FLAG_KEYS = {"from-format": "format"}
_SWITCHES = ("gradient-checkpointing", "flash-attention", "tie-embeddings", "sequence-parallel",
             "activation-offload", "optimizer-in-backward", "double-quant", "enforce-eager",
             "reference-model", "precompute-ref-log-probs", "allow-network", "eval", "offload-to-cpu", "merge-adapters",
             "gather-16bit-weights-on-save", "compile", "kbit-prepare", "use-dora", "use-rslora", "decompose-both",
             "prefix-projection", "checkpoint-reentrant", "autocast")


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    """``command``'s own flags on its sub-parser ``p``."""
    if command == "fit":
        p.add_argument("path", nargs="?", default=None, help="a pyproject.toml, or a folder holding one (default: .)")
        p.add_argument("--run", action="append", metavar="NAME", help="solve only this run (repeatable; default: every run)")
        p.add_argument("--units", choices=("gib", "gb"), default="gib")
    elif command == "measure":
        p.add_argument("path", nargs="?", default=None, help="a pyproject.toml, or a folder holding one (default: .)")
        p.add_argument("--run", action="append", metavar="NAME", help="measure only this run (repeatable)")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        p.add_argument("--layers", type=int, metavar="N", help="build only N layers (default: 2 on the CPU, all on a GPU)")
        p.add_argument("--write", action="store_true", help="store measured/estimated as calibration = X in each measured run")
    elif command == "diff":
        p.add_argument("base", help="the JSON report before the change (llmmem check --format json)")
        p.add_argument("head", help="the JSON report after the change")
        p.add_argument("--format", choices=("text", "markdown"), default="text")
    elif command == "estimate":
        for flag, kind in _VALUE_FLAGS.items():
            p.add_argument(f"--{flag}", type=kind, metavar=flag.split("-")[-1].upper())
        p.add_argument("--lora-targets", metavar="NAMES", help='comma-separated module names, or "all-linear"')
        p.add_argument("--modules-to-save", metavar="NAMES", help="comma-separated: lm_head, embed_tokens (trained in full)")
        for flag in _SWITCHES:
            if flag == "gradient-checkpointing":  # also takes its value: --gradient-checkpointing selective
                p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), nargs="?", const=True, default=None, metavar="full|selective")
            else:
                p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action="store_true", default=None)
            p.add_argument(f"--no-{flag}", dest=flag.replace("-", "_"), action="store_false")
        common_arguments(p)
    elif command == "catalog":
        p.add_argument("what", nargs="?", choices=("gpus", "dtypes", "optimizers", "models", "show"), default=None)
        p.add_argument("model_id", nargs="?", metavar="ID", help="with show: a bundled model id (catalog models lists them)")
        p.add_argument("--urls", action="store_true", help="with models: each source as its whole https link")


def run(args: argparse.Namespace) -> int:
    """Run the parsed sub-command; its exit code."""
    return {"estimate": _estimate, "catalog": _catalog, "diff": _diff, "fit": _fit, "measure": _measure}[args.command](args)


def _fit(args: argparse.Namespace) -> int:
    from ..fit import search as fit
    from ..config.load import load
    from ..estimator import estimate
    from ..report.text import verdict
    from ..units import format_bytes

    from ..model.architecture import Architecture

    project = load(args.path)
    runs = selected_runs(project, args.run)
    say = _fitted_say()  # every line of the answer wrapped to the terminal (report/layout.py)
    all_fit = True
    for run in runs:
        est = estimate(run)
        all_fit &= est.fits is not False
        say(f"{run.name} ({project.path}:{run.line}): {verdict(est, args.units)}")
        if run.budget is None:
            say("  no budget: nothing to solve")
            continue
        if run.serve is not None:  # a server's questions: max-model-len, concurrency, tensor-parallel, fp8
            from ..fit.serving import answers

            say("\n".join(f"  {line}" for line in answers(run, args.units)))
            continue
        if isinstance(run.model, Architecture):  # batch and sequence only move activations, logits and KV cache
            batch = fit.largest_fitting(run, "batch_size", 1 << 20)
            seq = fit.largest_fitting(run, "seq_len", 1 << 24)
            say(f"  largest batch-size that fits: {f'{batch} (at seq-len {run.seq_len})' if batch else 'none (batch-size 1 is over)'}")
            say(f"  longest seq-len that fits:    {f'{seq} (at batch-size {run.batch_size})' if seq else 'none (seq-len 1 is over)'}")
        else:
            say("  largest batch-size that fits: n/a (batch and sequence need the architecture: give config or the shape)")
        if run.mode == "train" and (run.zero_stage or run.fsdp != "none"):
            gpus = fit.fewest_gpus(run)
            say(f"  fewest GPUs that fit:         {gpus if gpus else f'none up to {fit.MAX_GPUS}'} (with this sharding)")
        elif run.mode == "train":
            zero3 = fit.fewest_gpus(run._replace(zero_stage=3))
            say("  fewest GPUs that fit:         more GPUs do not help as declared (nothing is sharded); "
                  f"with zero-stage = 3: {zero3 if zero3 else f'none up to {fit.MAX_GPUS}'}")
        for toggle in fit.toggles(run):
            if toggle.estimate is None:
                say(f"  {toggle.setting}: n/a ({toggle.reason})")
            else:
                total = format_bytes(toggle.estimate.total_bytes, args.units)
                say(f"  {toggle.setting}: {total}, {'fits' if toggle.estimate.fits else 'still over'}")
    return EXIT_OK if all_fit else EXIT_OVER


def _measure(args: argparse.Namespace) -> int:
    import gc

    # main() pauses the collector for a check's ~65 ms; a measured step builds autograd graphs and module
    # hooks in reference cycles that only the collector frees, so each run's leftovers would stay resident.
    gc.enable()
    from ..config.load import load
    from .measure import calibration_of, measure, render, write_calibration

    project = load(args.path)
    runs = selected_runs(project, args.run)
    for run in runs:
        result = measure(run._replace(calibration=None), device=args.device, max_layers=args.layers)
        say(render(result))
        if args.write:
            value = calibration_of(result)
            write_calibration(run.file, run, value)
            say(f"  wrote calibration = {value} to {run.file} (run {run.name})")
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from ..report.diff import diff, read_report, render_diff

    rows, regressed = diff(read_report(args.base), read_report(args.head))
    text = render_diff(rows, markdown=args.format == "markdown")
    (say if args.format == "markdown" else _fitted_say())(text)  # a markdown table row must stay one line
    return EXIT_OVER if regressed else EXIT_OK


def _estimate(args: argparse.Namespace) -> int:
    from ..config.load import adhoc_run
    from ..errors import ConfigError
    from ..estimator import estimate

    values: Dict[str, Any] = {}
    for flag in list(_VALUE_FLAGS) + list(_SWITCHES):
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            values[_FLAG_KEYS.get(flag, flag)] = value
    if "model" in values:  # --model org/name: a Hugging Face Hub id (hub.py)
        values["id"] = values.pop("model")
    if args.modules_to_save:
        values["modules-to-save"] = [t.strip() for t in args.modules_to_save.split(",") if t.strip()]
    if args.lora_targets:
        values["lora-targets"] = "all-linear" if args.lora_targets == "all-linear" else [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    try:
        run = adhoc_run(values)
    except ConfigError as err:
        raise _as_flag_error(err) from None
    results = [("command line", [estimate(with_strict(run, args))])]
    code = emit(results, args)
    return EXIT_ERROR if refused(results) else code


def _as_flag_error(err: Any) -> Any:
    """A ConfigError about tool.llmmem.runs[0].dtype, as `estimate` users wrote it: --dtype."""
    from ..errors import ConfigError

    leaf = (err.key or "").rsplit(".", 1)[-1]
    leaf = "model" if leaf == "id" else leaf  # --model is the table's id
    known = leaf in _VALUE_FLAGS or leaf in _SWITCHES or leaf in ("lora-targets", "modules-to-save")
    message = err.message.replace('run "estimate" has mode = ', "--mode is ")
    hint = (err.hint or "").replace("the folder of the pyproject.toml", "the current folder") or None
    return ConfigError(message, path=err.path, key=f"--{leaf}" if known else err.key, hint=hint)


def _fitted_say() -> Any:
    """cli.say, with each line wrapped to the terminal's width (80 columns unless COLUMNS is wider)."""
    from ..report.layout import fit_text, terminal_width

    width = terminal_width()
    return lambda text: say(fit_text(text, width))


def _catalog(args: argparse.Namespace) -> int:
    from ..catalog.registry import default_catalog
    from ..units import format_bytes

    say = _fitted_say()
    if args.what == "show" or args.model_id:
        return _show_model(args.model_id if args.what == "show" else args.what, say)
    cat = default_catalog()
    cat.load_entry_points()
    if args.what in (None, "gpus"):
        say("GPUs (memory as the driver reports it):")
        for name in cat.gpus.names:
            say(f"  {name:<12} {format_bytes(cat.gpu(name).memory_bytes)}")
    if args.what in (None, "dtypes"):
        say("dtypes (bytes per parameter, detailed method):")
        for name in cat.dtypes.names:
            d = cat.dtype(name)
            say(f"  {name:<6} {d.bytes:.4g}  {d.doc}")
    if args.what in (None, "optimizers"):
        say("optimizers (full-size states per trainable parameter):")
        for name in cat.optimizers.names:
            o = cat.optimizer(name)
            say(f"  {name:<13} {o.states:g}  {o.doc}")
    if args.what in (None, "models"):
        from ..hf.hub import catalog_lines

        say("\n".join(catalog_lines(args.urls)))
    return EXIT_OK


def _show_model(model_id: Optional[str], say: Any) -> int:
    """``llmmem catalog show ID``: one bundled config, the whole link of the file it was copied from, its
    count and context as the estimator reads them, and the notes on what was copied."""
    from ..errors import ConfigError, did_you_mean, shown_name
    from ..hf import hub
    from ..hf.config import from_hf_config
    from ..io import files

    index = hub.bundled_index()
    if not model_id or model_id not in index:
        asked = f'"{shown_name(model_id, 120)}" is not a bundled model id.{did_you_mean(model_id, index)}' if model_id else "catalog show needs a model id."
        raise ConfigError(f"{asked} llmmem catalog models lists the {len(index)} bundled ids.")
    entry = index[model_id]
    path = hub.BUNDLED / entry["folder"] / "config.json"
    arch = from_hf_config(files.read_json(path), source=model_id)
    context, _ = arch.context()
    lines = [f"{model_id}: family {entry['family']}, {arch.param_count():,} parameters, "
             + (f"context {context:,} tokens" if context else "no context limit in its config.json"),
             # package-relative, on its own line: a site-packages prefix would push it past 80 columns
             "  bundled file (in the installed package):",
             f"    {path.relative_to(hub.BUNDLED.parent.parent).as_posix()}",
             f"  Hub revision: {entry.get('revision') or 'not stated by its source'}",
             "  copied from:", f"    {hub.source_url(entry.get('taken_from') or 'no source recorded')}"]
    if entry.get("checked_against"):
        lines += ["  the same values in:", f"    {hub.source_url(entry['checked_against'])}"]
    if entry.get("same_as"):
        lines.append(f"  the same config.json as {entry['same_as']}")
    for key, where in sorted(entry.get("added", {}).items()):
        lines += [f"  {key} added (its source lacks it), from:", f"    {hub.source_url(where)}"]
    lines.append(f"  notes: {entry.get('source', '')}")
    say("\n".join(lines))
    return EXIT_OK
