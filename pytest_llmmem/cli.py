"""``llmmem``: check declared runs against their budget, or estimate one run ad hoc.

Exit codes: 0 every run fits, 1 a run is over budget, 2 a configuration or usage error.
Heavy modules load inside the command that needs them: pre-commit runs this on every commit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

EXIT_OK, EXIT_OVER, EXIT_ERROR = 0, 1, 2

# Ad-hoc estimate flags: (flag, kind). Each maps to the config key of the same name.
_VALUE_FLAGS = {
    "params": str, "config": str, "family": str, "hidden-size": int, "num-layers": int, "num-heads": int,
    "num-kv-heads": int, "head-dim": int, "intermediate-size": int, "vocab-size": int,
    "max-position-embeddings": int, "num-experts": int, "experts-per-token": int, "moe-intermediate-size": int,
    "hidden-act": str, "mode": str, "dtype": str, "precision": str, "optimizer": str, "batch-size": int,
    "seq-len": int, "lora-rank": int, "adapter-dtype": str, "gpus": int, "gpu": str, "gpu-memory": str,
    "headroom": str, "method": str, "overhead": str,
}
_SWITCHES = ("gradient-checkpointing", "flash-attention", "tie-embeddings")


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
        p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
        p.add_argument("--units", choices=("gib", "gb"), default="gib", help="print GiB (1024^3, default) or decimal GB (10^9)")

    check = sub.add_parser("check", help="check the runs declared under [tool.llmmem] in a pyproject.toml")
    est = sub.add_parser("estimate", help="estimate one run from flags, without a pyproject.toml")
    cat = sub.add_parser("catalog", help="list the known GPUs, dtypes and optimizers (built-in and from plugins)")
    if command == "check":
        check.add_argument("path", nargs="?", default=None, help="a pyproject.toml, or a folder holding one (default: .)")
        check.add_argument("--run", action="append", metavar="NAME", help="check only this run (repeatable)")
        common(check)
    elif command == "estimate":
        for flag, kind in _VALUE_FLAGS.items():
            est.add_argument(f"--{flag}", type=kind, metavar=flag.split("-")[-1].upper())
        est.add_argument("--lora-targets", metavar="NAMES", help='comma-separated module names, or "all-linear"')
        for flag in _SWITCHES:
            est.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action="store_true", default=None)
            est.add_argument(f"--no-{flag}", dest=flag.replace("-", "_"), action="store_false")
        common(est)
    elif command == "catalog":
        cat.add_argument("what", nargs="?", choices=("gpus", "dtypes", "optimizers"), default=None)
    return parser


def _emit(path: str, estimates: List[Any], args: argparse.Namespace) -> int:
    from . import report

    if args.format == "json":
        import json

        print(json.dumps(report.as_json_document(path, estimates), indent=2))
    else:
        encoding = (getattr(sys.stdout, "encoding", None) or "").lower()
        print(report.render_text(path, estimates, args.units, ascii_only="utf" not in encoding))
    return EXIT_OVER if any(e.fits is False for e in estimates) else EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from .config import load
    from .estimate import estimate

    project = load(args.path)
    runs = [project.run(name) for name in args.run] if args.run else list(project.runs)
    return _emit(project.path, [estimate(run) for run in runs], args)


def _estimate(args: argparse.Namespace) -> int:
    from .config import adhoc_run
    from .estimate import estimate

    values: Dict[str, Any] = {}
    for flag in list(_VALUE_FLAGS) + list(_SWITCHES):
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            values[flag] = value
    if args.lora_targets:
        values["lora-targets"] = "all-linear" if args.lora_targets == "all-linear" else [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return _emit("command line", [estimate(adhoc_run(values))], args)


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
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = _parser(command).parse_args(argv)
    from .errors import ConfigError

    try:
        return {"check": _check, "estimate": _estimate, "catalog": _catalog}[args.command](args)
    except ConfigError as err:
        print(f"llmmem: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # never a traceback for a user; LLMMEM_DEBUG=1 shows it
        if os.environ.get("LLMMEM_DEBUG"):
            raise
        print(f"llmmem: internal error: {type(err).__name__}: {err}. Please report it; LLMMEM_DEBUG=1 shows the traceback.", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
