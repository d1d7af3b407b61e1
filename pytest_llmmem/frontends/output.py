"""What the sub-commands share: the exit codes, the output flags, printing a report in the chosen
format, picking and making strict the runs asked for. Apart from :mod:`.cli` so that :mod:`.commands`
imports it from here, not from the module that imports the commands.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

EXIT_OK, EXIT_OVER, EXIT_ERROR = 0, 1, 2


def say(text: str, error: bool = False) -> None:
    """Print ``text`` (on stderr when ``error``) so that no line of it is a workflow command to a CI
    runner: a run name, path or value from a pull request can start a line (untrusted.log_text)."""
    from ..untrusted import log_text

    _print(log_text(text), sys.stderr if error else sys.stdout)


def _print(text: str, stream: Any) -> None:
    """Print, unless the reader has gone (`llmmem check | head`): then the rest is dropped, as cat and grep
    drop it, and the run goes on, so the exit code is still the verdict and --json-out is still written."""
    try:
        print(text, file=stream)
    except BrokenPipeError:
        closed_reader(stream)


def closed_reader(stream: Any) -> None:
    """Point a stream whose reader went away at devnull, so no later write or the interpreter's final flush
    fails on it again (Python docs, signal module, "Note on SIGPIPE")."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def common_arguments(p: argparse.ArgumentParser) -> None:
    """The output flags of check and estimate."""
    p.add_argument("--format", choices=("text", "json", "github"), default=None,
                   help="output format (default: text; github when GITHUB_ACTIONS=true: text plus annotations, job summary and step outputs)")
    p.add_argument("--units", choices=("gib", "gb"), default="gib", help="print GiB (1024^3, default) or decimal GB (10^9)")
    p.add_argument("--json-out", metavar="PATH", help="also write the JSON report to PATH")
    p.add_argument("--any-gpu", action="store_true",
                   help="ways out may name a card of another vendor or class (default: only the declared card's kind)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="a partial or approximate estimate is an error (exit 2), as strict = true under [tool.llmmem]")


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text"


def ways_out_of(estimates: List[Any], units: str, any_gpu: bool = False) -> Dict[str, List[Any]]:
    """The ways out of each over-budget run, by run name: the front-end runs the fit search and hands the
    result to the report, which prints it (a report computes nothing)."""
    over = [e for e in estimates if e.fits is False]
    if not over:
        return {}
    from ..fit.search import ways_out  # the search loads only when a run is over budget

    return {e.run.name: ways_out(e.run, units, current=e, any_gpu=any_gpu) for e in over}


def emit(results: List[Any], args: argparse.Namespace, hook: bool = False) -> int:
    """Print (path, estimates) pairs in the chosen format; 1 when any run is over budget."""
    import json

    from ..report import text as report
    from ..untrusted import json_text

    fmt = _output_format(args)
    documents = [report.as_json_document(path, estimates) for path, estimates in results]
    combined = documents[0] if len(documents) == 1 else {"version": report.JSON_VERSION, "projects": documents}
    if fmt == "json":
        _print(json_text(json.dumps(combined, indent=2)), sys.stdout)  # a log may show it: no "##[" command
    else:
        encoding = (getattr(sys.stdout, "encoding", None) or "").lower()
        ascii_only = "utf" not in encoding
        from ..report.layout import terminal_width

        render = report.render_short if hook else report.render_text
        width = terminal_width()
        any_gpu = bool(getattr(args, "any_gpu", False))
        say("\n\n".join(render(path, estimates, args.units, ascii_only, width, ways_out_of(estimates, args.units, any_gpu))
                          for path, estimates in results))
    json_path = args.json_out
    if fmt == "github" and not json_path and not hook and os.environ.get("RUNNER_TEMP"):
        json_path = os.path.join(os.environ["RUNNER_TEMP"], "llmmem-report.json")  # never into the repository
    if json_path:
        _write_report(json_path, json_text(json.dumps(combined, indent=2)) + "\n")
    fits = not any(e.fits is False for _, estimates in results for e in estimates)
    if fmt == "github":
        from ..report import github

        for line in github.annotation_lines(documents, os.environ.get("GITHUB_WORKSPACE")):
            _print(line, sys.stdout)  # the runner's commands: not log_text, which would defuse them
        if not hook:  # the pre-commit hook prints the annotations only: it writes no file, the runner's included
            github.write_step_files(documents, fits, json_path)
    return EXIT_OK if fits else EXIT_OVER


def _write_report(path: str, text: str) -> None:
    from ..errors import ConfigError, shown_name

    from ..io.files import write_problem

    problem = write_problem(path)
    if problem is None:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        except OSError as err:
            problem = f"it cannot be written ({err.strerror or err})"
    raise ConfigError(f"cannot write the JSON report to {shown_name(path, 200)}: {problem}.")


def selected_runs(project: Any, names: Optional[List[str]]) -> List[Any]:
    """The runs --run names (each checked to exist, with a "did you mean"), else all of them."""
    return [project.run(name) for name in names] if names else list(project.runs)


def with_strict(run: Any, args: argparse.Namespace) -> Any:
    """--strict makes every run strict, check's --method sets every run's method; without them each run keeps its keys."""
    if getattr(args, "method", None):
        run = run._replace(method=args.method)
    return run._replace(strict=True) if args.strict else run


def refused(results: List[Any]) -> bool:
    """Print why strict refuses each partial or approximate estimate (after the report); True if any."""
    from ..report.text import strict_refusal

    refusals = [m for _, estimates in results for m in map(strict_refusal, estimates) if m]
    for message in refusals:
        say(f"llmmem: error: {message}", error=True)
    return bool(refusals)
