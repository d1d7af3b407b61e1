"""``llmmem``: check declared runs against their budget, or estimate one run ad hoc.

Exit codes: 0 every run fits, 1 a run is over budget, 2 a configuration or usage error.
Heavy modules load inside the command that needs them: pre-commit runs this on every commit.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

EXIT_OK, EXIT_OVER, EXIT_ERROR = 0, 1, 2

# Ad-hoc estimate flags: (flag, kind). Each maps to the config key of the same name.
_VALUE_FLAGS = {
    "model": str, "revision": str, "params": str, "config": str, "family": str, "hidden-size": int, "num-layers": int, "num-heads": int,
    "num-kv-heads": int, "head-dim": int, "intermediate-size": int, "vocab-size": int,
    "max-position-embeddings": int, "num-experts": int, "experts-per-token": int, "moe-intermediate-size": int,
    "hidden-act": str, "mode": str, "dtype": str, "precision": str, "optimizer": str, "batch-size": int,
    "seq-len": int, "lora-rank": int, "adapter-dtype": str, "gpus": int, "gpu": str, "gpu-memory": str,
    "headroom": str, "method": str, "overhead": str, "zero-stage": int, "fsdp": str, "tensor-parallel": int,
    "pipeline-parallel": int, "expert-parallel": int, "offload": str, "micro-batches": int, "gpus-per-node": int,
    "host-memory": str, "framework": str, "loss": str, "loss-chunks": int, "optimizer-impl": str,
    # inference and serving (issue 12)
    "prompt-len": int, "new-tokens": int, "logits": str, "engine": str, "gpu-memory-utilization": float,
    "max-model-len": int, "max-num-seqs": int, "max-num-batched-tokens": int, "kv-cache-dtype": str,
    "block-size": int, "quantization": str, "min-concurrency": float, "engine-version": str,
    # recipes (issue 13)
    "recipe": str, "beta": float, "loss-type": str, "max-length": int, "max-prompt-length": int,
    "num-generations": int, "max-completion-length": int, "generation": str, "vllm-gpu-memory-utilization": float,
    "generation-batch-size": int, "value-head": str,
    # the whole job's phases (issue 16)
    "eval-batch-size": int, "eval-samples": int, "eval-accumulation-steps": int, "eval-generate-tokens": int, "save": str,
}
_SWITCHES = ("gradient-checkpointing", "flash-attention", "tie-embeddings", "sequence-parallel",
             "activation-offload", "optimizer-in-backward", "double-quant", "enforce-eager",
             "reference-model", "precompute-ref-log-probs", "allow-network", "eval", "offload-to-cpu", "merge-adapters",
             "gather-16bit-weights-on-save")


def _parser(command: Optional[str]) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s sub-parser gets its flags (the others cost start-up)."""
    parser = argparse.ArgumentParser(
        prog="llmmem",
        description="Estimate the peak per-GPU memory of LLM training and serving runs and enforce a budget.",
        epilog="Exit codes: 0 all runs fit, 1 a run is over budget, 2 configuration or usage error. Sizes print in GiB (1024^3 bytes) unless --units gb.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=("text", "json", "github"), default=None,
                       help="output format (default: text; github when GITHUB_ACTIONS=true: text plus annotations, job summary and step outputs)")
        p.add_argument("--units", choices=("gib", "gb"), default="gib", help="print GiB (1024^3, default) or decimal GB (10^9)")
        p.add_argument("--json-out", metavar="PATH", help="also write the JSON report to PATH")
        p.add_argument("--strict", action="store_true", default=None,
                       help="a partial or approximate estimate is an error (exit 2), as strict = true under [tool.llmmem]")

    check = sub.add_parser("check", help="check the runs declared under [tool.llmmem] in a pyproject.toml")
    est = sub.add_parser("estimate", help="estimate one run from flags, without a pyproject.toml")
    cat = sub.add_parser("catalog", help="list the known GPUs, dtypes and optimizers (built-in and from plugins)")
    diff = sub.add_parser("diff", help="compare two JSON reports (e.g. a PR's base and head) run by run")
    fit = sub.add_parser("fit", help="what would make a run fit: largest batch and sequence, fewest GPUs, switches")
    meas = sub.add_parser("measure", help="run one real step of a run (needs pytest-llmmem[measure]) and compare with the estimate")
    if command == "check":
        check.add_argument("paths", nargs="*", metavar="PATH",
                           help="pyproject.toml files or folders holding one (default: .); a model config.json checks the pyprojects that use it")
        check.add_argument("--run", action="append", metavar="NAME", help="check only this run (repeatable)")
        check.add_argument("--hook", action="store_true",
                           help="pre-commit mode: short output, pyprojects without [tool.llmmem] are skipped, each pyproject checked once")
        common(check)
    elif command == "fit":
        fit.add_argument("path", nargs="?", default=None, help="a pyproject.toml, or a folder holding one (default: .)")
        fit.add_argument("--run", action="append", metavar="NAME", help="solve only this run (repeatable; default: every run)")
        fit.add_argument("--units", choices=("gib", "gb"), default="gib")
    elif command == "measure":
        meas.add_argument("path", nargs="?", default=None, help="a pyproject.toml, or a folder holding one (default: .)")
        meas.add_argument("--run", action="append", metavar="NAME", help="measure only this run (repeatable)")
        meas.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        meas.add_argument("--layers", type=int, metavar="N", help="build only N layers (default: 2 on the CPU, all on a GPU)")
        meas.add_argument("--write", action="store_true", help="store measured/estimated as calibration = X in each measured run")
    elif command == "diff":
        diff.add_argument("base", help="the JSON report before the change (llmmem check --format json)")
        diff.add_argument("head", help="the JSON report after the change")
        diff.add_argument("--format", choices=("text", "markdown"), default="text")
    elif command == "estimate":
        for flag, kind in _VALUE_FLAGS.items():
            est.add_argument(f"--{flag}", type=kind, metavar=flag.split("-")[-1].upper())
        est.add_argument("--lora-targets", metavar="NAMES", help='comma-separated module names, or "all-linear"')
        for flag in _SWITCHES:
            est.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action="store_true", default=None)
            est.add_argument(f"--no-{flag}", dest=flag.replace("-", "_"), action="store_false")
        common(est)
    elif command == "catalog":
        cat.add_argument("what", nargs="?", choices=("gpus", "dtypes", "optimizers", "models"), default=None)
    return parser


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text"


def _emit(results: List[Any], args: argparse.Namespace, hook: bool = False) -> int:
    """Print (path, estimates) pairs in the chosen format; 1 when any run is over budget."""
    import json

    from . import report

    fmt = _output_format(args)
    documents = [report.as_json_document(path, estimates) for path, estimates in results]
    combined = documents[0] if len(documents) == 1 else {"version": report.JSON_VERSION, "projects": documents}
    if fmt == "json":
        print(json.dumps(combined, indent=2))
    else:
        encoding = (getattr(sys.stdout, "encoding", None) or "").lower()
        ascii_only = "utf" not in encoding
        render = report.render_short if hook else report.render_text
        print("\n\n".join(render(path, estimates, args.units, ascii_only) for path, estimates in results))
    json_path = args.json_out
    if fmt == "github" and not json_path and not hook and os.environ.get("RUNNER_TEMP"):
        json_path = os.path.join(os.environ["RUNNER_TEMP"], "llmmem-report.json")  # never into the repository
    if json_path:
        _write_report(json_path, json.dumps(combined, indent=2) + "\n")
    fits = not any(e.fits is False for _, estimates in results for e in estimates)
    if fmt == "github":
        from . import github

        github.report(documents, fits, json_path, hook)
    return EXIT_OK if fits else EXIT_OVER


def _write_report(path: str, text: str) -> None:
    from .errors import ConfigError, shown_name

    from .files import write_problem

    problem = write_problem(path)
    if problem is None:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        except OSError as err:
            problem = f"it cannot be written ({err.strerror or err})"
    raise ConfigError(f"cannot write the JSON report to {shown_name(path, 200)}: {problem}.")


def _targets(args: argparse.Namespace) -> List[Any]:
    """The pyprojects to check, each once: given directly, as a folder, or as a user of a model
    config.json anywhere in the repository. In hook mode also every [tool.llmmem] pyproject whose
    model config no longer exists: pre-commit passes nothing for a deletion, only new names for a rename."""
    from pathlib import Path

    from .errors import ConfigError, shown_name
    from .projects import find_pyproject, has_llmmem_table

    raws = list(args.paths or [])
    jsons = {raw for raw in raws if Path(raw).suffix in (".json", ".yaml", ".yml")}  # model configs, trainer configs (from)
    index, root = None, None
    if args.hook or jsons:  # only then is the repository scanned (and repo_scan imported)
        from . import repo_scan

        root = repo_scan.repository_root(os.getcwd())
        folders = {os.path.dirname(os.path.abspath(raw)) for raw in jsons}  # 5,000 paths: a few folders
        index = repo_scan.index_projects([root], [p for f in sorted(folders) for p in repo_scan.walk_up(os.path.join(f, "x"))])
        if not index.complete:
            print(f"llmmem: warning: stopped scanning {root} after {repo_scan.MAX_ENTRIES:,} entries; "
                  "pyprojects beyond them that share a changed model config were not checked.", file=sys.stderr)
    seen, targets = set(), []

    def add(raw: Optional[str], candidate: Path) -> None:
        key = _resolved(candidate)
        if key in seen or (args.hook and not has_llmmem_table(candidate)):
            return
        seen.add(key)
        targets.append((raw if raw and _resolved(Path(raw)) == key else _shown_path(key, root), candidate))

    for raw in raws or ([] if args.hook else [None]):
        if raw in jsons:
            found = index.owners.get(repo_scan.resolve_config(os.getcwd(), raw), [])
            if not found and not args.hook:
                raise ConfigError(f"no pyproject.toml with [tool.llmmem] in the repository at {shown_name(root, 200)} "
                                  f"uses {shown_name(raw, 200)} as its model config" + (" or reads it with from." if not raw.endswith(".json") else "."))
            for owner in found:
                add(None, Path(owner))
        else:
            add(raw, find_pyproject(raw))
    for pyproject in index.missing if args.hook else []:
        add(None, Path(pyproject))
    return targets


def _resolved(path: Any) -> Any:
    from pathlib import Path

    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop: reading it reports the problem
        return Path(os.path.abspath(path))


def _shown_path(path: Any, root: Optional[str]) -> str:
    """A path as the user will recognise it: relative to the current folder inside the repository."""
    if root is None:
        from .projects import repository_root

        root = repository_root(os.getcwd())
    text = str(path)
    inside = text == root or text.startswith(root.rstrip(os.sep) + os.sep)
    return os.path.relpath(text) if inside or text.startswith(os.getcwd() + os.sep) else text


def _selected_runs(project: Any, names: Optional[List[str]]) -> List[Any]:
    """The runs --run names (each checked to exist, with a "did you mean"), else all of them."""
    return [project.run(name) for name in names] if names else list(project.runs)


def _check(args: argparse.Namespace) -> int:
    from .config import load
    from .errors import ConfigError
    from .estimate import estimate

    results, errors = [], 0
    for shown, path in _targets(args):
        try:
            project = load(path, display=shown)
            runs = _selected_runs(project, args.run)
            results.append((project.path, [estimate(_strict(run, args)) for run in runs]))
        except ConfigError as err:
            if not args.hook:
                raise
            print(f"llmmem: error: {err}", file=sys.stderr)  # the hook reports every project, not the first error
            errors += 1
    if not results:
        if not errors:
            print("llmmem: no pyproject.toml with [tool.llmmem] among the changed files; nothing to check.")
        return EXIT_ERROR if errors else EXIT_OK
    code = _emit(results, args, hook=args.hook)
    return EXIT_ERROR if errors or _refused(results) else code


def _strict(run: Any, args: argparse.Namespace) -> Any:
    """--strict makes every run strict; without it each run keeps its strict key."""
    return run._replace(strict=True) if args.strict else run


def _refused(results: List[Any]) -> bool:
    """Print why strict refuses each partial or approximate estimate (after the report); True if any."""
    from .report import strict_refusal

    refusals = [m for _, estimates in results for m in map(strict_refusal, estimates) if m]
    for message in refusals:
        print(f"llmmem: error: {message}", file=sys.stderr)
    return bool(refusals)


def _fit(args: argparse.Namespace) -> int:
    from . import fit
    from .config import load
    from .estimate import estimate
    from .report import verdict
    from .units import format_bytes

    from .model import Architecture

    project = load(args.path)
    runs = _selected_runs(project, args.run)
    all_fit = True
    for run in runs:
        est = estimate(run)
        all_fit &= est.fits is not False
        print(f"{run.name} ({project.path}:{run.line}): {verdict(est, args.units)}")
        if run.budget is None:
            print("  no budget: nothing to solve")
            continue
        if run.serve is not None:  # a server's questions: max-model-len, concurrency, tensor-parallel, fp8
            from .serve_fit import answers

            print("\n".join(f"  {line}" for line in answers(run, args.units)))
            continue
        if isinstance(run.model, Architecture):  # batch and sequence only move activations, logits and KV cache
            batch = fit.largest_fitting(run, "batch_size", 1 << 20)
            seq = fit.largest_fitting(run, "seq_len", 1 << 24)
            print(f"  largest batch-size that fits: {f'{batch} (at seq-len {run.seq_len})' if batch else 'none (batch-size 1 is over)'}")
            print(f"  longest seq-len that fits:    {f'{seq} (at batch-size {run.batch_size})' if seq else 'none (seq-len 1 is over)'}")
        else:
            print("  largest batch-size that fits: n/a (batch and sequence need the architecture: give config or the shape)")
        if run.mode == "train" and (run.zero_stage or run.fsdp != "none"):
            gpus = fit.fewest_gpus(run)
            print(f"  fewest GPUs that fit:         {gpus if gpus else f'none up to {fit.MAX_GPUS}'} (with this sharding)")
        elif run.mode == "train":
            zero3 = fit.fewest_gpus(run._replace(zero_stage=3))
            print("  fewest GPUs that fit:         more GPUs do not help as declared (nothing is sharded); "
                  f"with zero-stage = 3: {zero3 if zero3 else f'none up to {fit.MAX_GPUS}'}")
        for toggle in fit.toggles(run):
            if toggle.estimate is None:
                print(f"  {toggle.setting}: n/a ({toggle.reason})")
            else:
                total = format_bytes(toggle.estimate.total_bytes, args.units)
                print(f"  {toggle.setting}: {total}, {'fits' if toggle.estimate.fits else 'still over'}")
    return EXIT_OK if all_fit else EXIT_OVER


def _measure(args: argparse.Namespace) -> int:
    from .config import load
    from .measure import calibration_of, measure, render, write_calibration

    project = load(args.path)
    runs = _selected_runs(project, args.run)
    for run in runs:
        result = measure(run._replace(calibration=None), device=args.device, max_layers=args.layers)
        print(render(result))
        if args.write:
            value = calibration_of(result)
            write_calibration(run.file, run, value)
            print(f"  wrote calibration = {value} to {run.file} (run {run.name})")
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from .report_diff import diff, read_report, render_diff

    rows, regressed = diff(read_report(args.base), read_report(args.head))
    print(render_diff(rows, markdown=args.format == "markdown"))
    return EXIT_OVER if regressed else EXIT_OK


def _estimate(args: argparse.Namespace) -> int:
    from .config import adhoc_run
    from .errors import ConfigError
    from .estimate import estimate

    values: Dict[str, Any] = {}
    for flag in list(_VALUE_FLAGS) + list(_SWITCHES):
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            values[flag] = value
    if "model" in values:  # --model org/name: a Hugging Face Hub id (hub.py)
        values["id"] = values.pop("model")
    if args.lora_targets:
        values["lora-targets"] = "all-linear" if args.lora_targets == "all-linear" else [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    try:
        run = adhoc_run(values)
    except ConfigError as err:
        raise _as_flag_error(err) from None
    results = [("command line", [estimate(_strict(run, args))])]
    code = _emit(results, args)
    return EXIT_ERROR if _refused(results) else code


def _as_flag_error(err: Any) -> Any:
    """A ConfigError about tool.llmmem.runs[0].dtype, as `estimate` users wrote it: --dtype."""
    from .errors import ConfigError

    leaf = (err.key or "").rsplit(".", 1)[-1]
    leaf = "model" if leaf == "id" else leaf  # --model is the table's id
    known = leaf in _VALUE_FLAGS or leaf in _SWITCHES or leaf == "lora-targets"
    message = err.message.replace('run "estimate" has mode = ', "--mode is ")
    hint = (err.hint or "").replace("the folder of the pyproject.toml", "the current folder") or None
    return ConfigError(message, path=err.path, key=f"--{leaf}" if known else err.key, hint=hint)


def _catalog(args: argparse.Namespace) -> int:
    from .catalog import default_catalog
    from .units import format_bytes

    cat = default_catalog()
    cat.load_entry_points()
    if args.what in (None, "gpus"):
        print("GPUs (memory as the driver reports it):")
        for name in cat.gpus.names:
            print(f"  {name:<12} {format_bytes(cat.gpu(name).memory_bytes)}")
    if args.what in (None, "dtypes"):
        print("dtypes (bytes per parameter, detailed method):")
        for name in cat.dtypes.names:
            d = cat.dtype(name)
            print(f"  {name:<6} {d.bytes:.4g}  {d.doc}")
    if args.what in (None, "optimizers"):
        print("optimizers (full-size states per trainable parameter):")
        for name in cat.optimizers.names:
            o = cat.optimizer(name)
            print(f"  {name:<13} {o.states:g}  {o.doc}")
    if args.what in (None, "models"):
        from .hub import catalog_lines

        print("\n".join(catalog_lines()))
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = _parser(command).parse_args(argv)
    from .errors import ConfigError, shown_name

    if hasattr(sys.stdout, "reconfigure") and getattr(sys.stdout, "errors", "") == "strict":
        sys.stdout.reconfigure(errors="backslashreplace")  # a run name an ASCII terminal cannot show
    json_out = getattr(args, "json_out", None)
    from .files import write_problem

    problem = write_problem(json_out) if json_out else None
    if problem:  # before any work, so nothing is printed as if the run had been reported
        print(f"llmmem: error: --json-out {shown_name(json_out, 200)}: {problem}.", file=sys.stderr)
        return EXIT_ERROR
    try:
        return {"check": _check, "estimate": _estimate, "catalog": _catalog, "diff": _diff, "fit": _fit, "measure": _measure}[args.command](args)
    except ConfigError as err:
        print(f"llmmem: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`llmmem check | head`): stop quietly, as cat and grep do; point stdout at
        # devnull so the interpreter's final flush does not fail again (Python docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as err:  # never a traceback for a user; LLMMEM_DEBUG=1 shows it
        if os.environ.get("LLMMEM_DEBUG"):
            raise
        print(f"llmmem: internal error: {type(err).__name__}: {err}. Please report it; LLMMEM_DEBUG=1 shows the traceback.", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
