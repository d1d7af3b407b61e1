"""``llmmem``: check declared runs against their budget, or estimate one run ad hoc.

Exit codes: 0 every run fits, 1 a run is over budget, 2 a configuration or usage error.
Heavy modules load inside the command that needs them: pre-commit runs this on every commit.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional, Sequence

from .output import EXIT_ERROR, EXIT_OK, closed_reader, common_arguments, emit, refused, say, selected_runs, with_strict

# The sub-commands and their one-line help, in the order --help lists them.
_COMMANDS = (
    ("check", "check the runs declared under [tool.llmmem] in a pyproject.toml"),
    ("estimate", "estimate one run from flags, without a pyproject.toml"),
    ("catalog", "list the known GPUs, dtypes and optimizers (built-in and from plugins)"),
    ("diff", "compare two JSON reports (e.g. a PR's base and head) run by run"),
    ("fit", "what would make a run fit: largest batch and sequence, fewest GPUs, switches"),
    ("measure", "run one real step of a run (needs pytest-llmmem[measure]) and compare with the estimate"),
)


# core/run.py METHODS, spelled out so that `llmmem --help` loads no core module (tests/test_trace_extra.py holds them equal)
CHECK_METHODS = ("detailed", "rule-of-thumb", "trace")

def _parser(command: Optional[str]) -> argparse.ArgumentParser:
    """The argument parser. A known ``command`` gets only its own sub-parser, with its flags: each
    sub-parser costs start-up and pre-commit runs ``check`` on every commit. Otherwise (--help, a
    typo) every command is listed, so the help and the invalid-choice error name them all."""
    parser = argparse.ArgumentParser(
        prog="llmmem",
        description="Estimate the peak per-GPU memory of LLM training and serving runs and enforce a budget.",
        epilog="Exit codes: 0 all runs fit, 1 a run is over budget, 2 configuration or usage error. Sizes print in GiB (1024^3 bytes) unless --units gb.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    known = any(command == name for name, _ in _COMMANDS)
    for name, text in _COMMANDS:
        if not known or name == command:
            chosen = sub.add_parser(name, help=text)
    if command == "check":
        _check_arguments(chosen)
    elif known:
        from .commands import add_arguments

        add_arguments(command, chosen)
    return parser


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="pyproject.toml files or folders holding one (default: .); a model config.json checks the pyprojects that use it")
    p.add_argument("--run", action="append", metavar="NAME", help="check only this run (repeatable)")
    p.add_argument("--method", choices=CHECK_METHODS, default=None,
                   help="estimate every run by this method (trace: the real step on fake tensors, needs the measure extra)")
    p.add_argument("--hook", action="store_true",
                   help="pre-commit mode: short output, pyprojects without [tool.llmmem] are skipped, each pyproject checked once")
    common_arguments(p)


def _parse(argv: List[str], command: Optional[str]) -> argparse.Namespace:
    """The parsed command line. ``llmmem check ...`` (pre-commit's call, on every commit) is parsed by
    the check sub-parser alone, built as argparse builds it (prog "llmmem check"): the parent parser
    and its sub-parser action cost about half a millisecond for nothing. Arguments it does not know
    go to the full parser, which reports them as it always has."""
    if argv[:1] != ["check"]:
        return _parser(command).parse_args(argv)
    check = argparse.ArgumentParser(prog="llmmem check")
    _check_arguments(check)
    args, unknown = check.parse_known_args(argv[1:])
    if unknown:
        return _parser(command).parse_args(argv)  # exits 2 with the parent's "unrecognized arguments"
    args.command = "check"
    return args


def _targets(args: argparse.Namespace) -> List[Any]:
    """The pyprojects to check, each once: given directly, as a folder, or as a user of a model
    config.json anywhere in the repository. In hook mode also every [tool.llmmem] pyproject whose
    model config no longer exists: pre-commit passes nothing for a deletion, only new names for a rename."""
    from pathlib import Path

    from ..errors import ConfigError, shown_name
    from ..io.projects import find_pyproject, has_llmmem_table

    raws = list(args.paths or [])
    jsons = {raw for raw in raws if Path(raw).suffix in (".json", ".yaml", ".yml")}  # model configs, trainer configs (from)
    index, root = None, None
    if args.hook or jsons:  # only then is the repository scanned (and repo_scan imported)
        from . import repo_scan

        root = repo_scan.repository_root(os.getcwd())
        folders = {os.path.dirname(os.path.abspath(raw)) for raw in jsons}  # 5,000 paths: a few folders
        index = repo_scan.index_projects([root], [p for f in sorted(folders) for p in repo_scan.walk_up(os.path.join(f, "x"))])
        if not index.complete:
            say(f"llmmem: warning: stopped scanning {root} after {repo_scan.MAX_ENTRIES:,} entries; "
                "pyprojects beyond them that share a changed model config were not checked.", error=True)
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
        from ..io.projects import repository_root

        root = repository_root(os.getcwd())
    text = str(path)
    inside = text == root or text.startswith(root.rstrip(os.sep) + os.sep)
    return os.path.relpath(text) if inside or text.startswith(os.getcwd() + os.sep) else text


def _check(args: argparse.Namespace) -> int:
    from ..config.load import load
    from ..errors import ConfigError
    from ..estimator import estimate

    results, errors = [], 0
    for shown, path in _targets(args):
        try:
            project = load(path, display=shown)
            runs = selected_runs(project, args.run)
            results.append((project.path, [estimate(with_strict(run, args)) for run in runs]))
        except ConfigError as err:
            if not args.hook:
                raise
            say(f"llmmem: error: {err}", error=True)  # the hook reports every project, not the first error
            errors += 1
    if not results:
        if not errors:
            say("llmmem: no pyproject.toml with [tool.llmmem] among the changed files; nothing to check.")
        return EXIT_ERROR if errors else EXIT_OK
    code = emit(results, args, hook=args.hook)
    return EXIT_ERROR if errors or refused(results) else code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv``; the exit code. The cyclic garbage collector is paused while it runs:
    importing the core creates thousands of objects, whose collections cost ~1 ms of every pre-commit
    run, and a check leaves ~100 objects in cycles (freed when the collector resumes)."""
    import gc

    paused = gc.isenabled()
    gc.disable()
    try:
        return _flushed(argv)
    finally:
        if paused:
            gc.enable()


def script() -> int:
    """The ``llmmem`` console script (pyproject.toml): :func:`main` in a process that exits next. The
    collector stays paused to the end and what the run made is frozen (``gc.freeze``): resuming it and then
    the interpreter's exit would each traverse every object the imports made, ~9 ms of a ~65 ms check
    (benchmarks/cli_startup.py), to free what the exit frees anyway."""
    import gc

    gc.disable()
    code = _flushed(None)
    if hasattr(gc, "freeze"):  # CPython; elsewhere the exit's collection runs as it always has
        gc.freeze()
    return code


def _flushed(argv: Optional[Sequence[str]]) -> int:
    code = _main(argv)
    try:  # what is still buffered for a pipe: a reader gone by now is no reason to change the verdict
        sys.stdout.flush()
    except BrokenPipeError:
        closed_reader(sys.stdout)
    return code


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = _parse(argv, command)
    from ..errors import ConfigError, shown_name

    if hasattr(sys.stdout, "reconfigure") and getattr(sys.stdout, "errors", "") == "strict":
        sys.stdout.reconfigure(errors="backslashreplace")  # a run name an ASCII terminal cannot show
    json_out = getattr(args, "json_out", None)
    from ..io.files import write_problem

    problem = write_problem(json_out) if json_out else None
    if problem:  # before any work, so nothing is printed as if the run had been reported
        say(f"llmmem: error: --json-out {shown_name(json_out, 200)}: {problem}.", error=True)
        return EXIT_ERROR
    try:
        if args.command == "check":
            return _check(args)
        from . import commands  # estimate, catalog, diff, fit and measure

        return commands.run(args)
    except ConfigError as err:
        say(f"llmmem: error: {err}", error=True)
        return EXIT_ERROR
    except BrokenPipeError:  # a write that bypassed say and the guarded printer: stop quietly, the verdict unknown
        closed_reader(sys.stdout)
        return EXIT_ERROR
    except Exception as err:  # never a traceback for a user; LLMMEM_DEBUG=1 shows it
        if os.environ.get("LLMMEM_DEBUG"):
            raise
        say(f"llmmem: internal error: {type(err).__name__}: {err}. Please report it; LLMMEM_DEBUG=1 shows the traceback.", error=True)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(script())
