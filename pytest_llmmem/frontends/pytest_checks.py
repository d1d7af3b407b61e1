"""The pytest side of ``--llmmem``: a test item per declared run, a summary, a JSON report, a fixture.

Imported only when ``--llmmem`` is given (or a test uses the ``llmmem`` fixture). Every verdict
comes from the same :func:`pytest_llmmem.estimator.estimate` the CLI uses.

Items travel as ordinary pytest reports: the estimate rides in ``report.user_properties``, so
under pytest-xdist each run is checked once on some worker and the controller still prints one
summary and writes one JSON file.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from ..config.load import Project, adhoc_run, load
from ..errors import ConfigError, shown_name
from ..core.records import Estimate
from ..estimator import estimate
from ..io.projects import has_llmmem_table
from ..report.text import JSON_VERSION, as_dict, caveats, render_failure, render_run, strict_refusal
from ..core.run import Run
from ..report.layout import fit_text, terminal_width
from .output import ways_out_of
from ..units import format_bytes
from ..io import files
from ..io.files import write_problem
from ..untrusted import json_text, log_text

PROPERTY = "llmmem"



def _ways_out(est: Estimate) -> Optional[List[Any]]:
    """The ways out of an over-budget run, for the failure text (the report prints them, it runs no search)."""
    if est.fits is not False:
        return None
    return ways_out_of([est], "gib")[est.run.name]

class LlmmemEstimateCaveat(UserWarning):
    """A run passed on a partial or approximate estimate (``strict`` would fail it)."""


class StrictRefused(Exception):
    """Raised by a run's item under strict when the estimate is partial or approximate."""

    def __init__(self, est: Estimate) -> None:
        super().__init__(est.run.name)
        self.estimate = est


class OverBudget(Exception):
    """Raised by a run's item when the estimate exceeds the budget; rendered, not traced."""

    def __init__(self, est: Estimate) -> None:
        super().__init__(est.run.name)
        self.estimate = est


def _shown(path: Path, rootpath: Path) -> str:
    """A path as messages show it: relative to pytest's rootdir when inside it."""
    path = Path(path).resolve()
    return os.path.relpath(path, rootpath) if path.is_relative_to(rootpath.resolve()) else str(path)


def _declares_llmmem(path: Path) -> bool:
    """A pyproject.toml met during collection is ours when it declares [tool.llmmem] (a broken one
    that mentions llmmem counts, so that its error is shown rather than skipped)."""
    try:  # through the guarded reader: a 200 MB pyproject.toml in a test fixture folder is not read whole
        if b"llmmem" not in files.read_bytes(path, files.PYPROJECT_LIMIT):
            return False
    except (OSError, ValueError):
        return False
    return has_llmmem_table(path)


def _json_target(config: pytest.Config) -> Optional[Path]:
    """--llmmem-json as an absolute path, refused before any test runs when it cannot be written:
    the same check and words as the CLI's --json-out (a FIFO too, which would hang the final write)."""
    raw = config.option.llmmem_json
    if not raw:
        return None
    target = Path(config.invocation_params.dir, raw)
    problem = write_problem(str(target))
    if problem:
        raise pytest.UsageError(log_text(f"--llmmem-json {shown_name(raw, 200)}: {problem}."))
    return target


class LlmmemChecks:
    """Registered for the session when --llmmem is given: decides which pyprojects become test files."""

    def __init__(self, config: pytest.Config, explicit: List[Path], root: Path) -> None:
        self.config = config
        for given in explicit:
            if not Path(config.invocation_params.dir, given).is_file():
                raise pytest.UsageError(log_text(
                    f"--llmmem: {given} does not exist. Pass --llmmem-config PATH, or run pytest from the project "
                    "whose pyproject.toml declares [tool.llmmem]."
                ))
        self.explicit = [Path(config.invocation_params.dir, p).resolve() for p in explicit]
        self.root = root.resolve()
        self.json_target = _json_target(config)
        self.results: Dict[str, Tuple[str, Dict[str, Any]]] = {}  # nodeid -> (file as shown, report.as_dict)
        self.found = 0  # pyprojects made into test files (this process)
        self.errors: List[str] = []  # pyprojects whose [tool.llmmem] could not be read
        self.messages: List[str] = []  # for the terminal summary
        wanted = self.explicit or ([self.root] if self.root.is_file() and _declares_llmmem(self.root) else [])
        self._collect_these(config.args, wanted)

    def _collect_these(self, args: List[str], wanted: List[Path]) -> None:
        """Make sure pytest visits the wanted pyprojects: a folder argument holding one already does
        (our pytest_collect_file picks it up there); otherwise, e.g. testpaths = ["tests"], add it.
        An overlapping file argument would make pytest 8 drop the folder's other tests."""
        def path_of(arg: str) -> Path:
            return Path(self.config.invocation_params.dir, arg.split("::")[0]).resolve()

        if self.config.option.llmmem_only and self.explicit:
            args[:] = [a for a in args if path_of(a) in wanted] or [str(p) for p in wanted]
            return
        for path in wanted:
            if not any(path_of(a) == path or (path_of(a).is_dir() and path.is_relative_to(path_of(a))) for a in args):
                args.append(str(path))

    def pytest_ignore_collect(self, collection_path: Path, config: pytest.Config) -> Optional[bool]:
        """--llmmem-only without --llmmem-config walks the collected paths for pyprojects only."""
        if self.config.option.llmmem_only and not self.explicit and collection_path.name != "pyproject.toml" and collection_path.is_file():
            return True
        return None

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> Optional[pytest.Collector]:
        if self.explicit:
            wanted = any(file_path.name == p.name for p in self.explicit) and file_path.resolve() in self.explicit
        else:
            wanted = file_path.name == "pyproject.toml" and _declares_llmmem(file_path)
        if not wanted:
            return None
        self.found += 1
        return PyprojectFile.from_parent(parent, path=file_path)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and str(report.longrepr).startswith("llmmem: "):
            self.errors.append(report.nodeid)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        xdist = hasattr(self.config, "workerinput") or self.config.pluginmanager.has_plugin("dsession")
        if not self.found and not self.errors and not xdist:
            where = ", ".join(session.config.args) or str(self.config.rootpath)
            raise pytest.UsageError(log_text(
                f"--llmmem: no pyproject.toml with [tool.llmmem] under {where}; pass --llmmem-config PATH "
                "(repeatable), or run pytest from a project that declares [tool.llmmem]."
            ))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == PROPERTY:
                self.results[report.nodeid] = (value["file"], value["run"])

    def _documents(self) -> List[Dict[str, Any]]:
        """One JSON document per pyproject, runs in declaration order, whichever worker checked them."""
        by_file: Dict[str, List[Dict[str, Any]]] = {}
        for file, run in sorted(self.results.values(), key=lambda fr: (fr[0], fr[1].get("line") or 0, fr[1]["name"])):
            by_file.setdefault(file, []).append(run)
        return [{"version": JSON_VERSION, "file": file, "runs": runs} for file, runs in by_file.items()]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        documents = self._documents()
        if documents:
            rows = [(doc["file"] + "::" if len(documents) > 1 else "", run) for doc in documents for run in doc["runs"]]
            width = max(len(prefix + r["name"]) for prefix, r in rows)
            terminalreporter.write_sep("=", "llmmem")
            terminalreporter.write_line(f"{'run':<{width}}  {'total':>12}  {'budget':>12}  {'used':>7}  verdict   (GiB = 1024^3 bytes)")
            for prefix, data in rows:
                budget = data["budget_bytes"]
                used = f"{100 * data['total_bytes'] / budget:6.1f}%" if budget else "     - "
                verdict = "PASS" if data["fits"] else ("FAIL" if data["fits"] is False else "-")
                kind = ", ".join(k for k in ("partial", "approximate") if data.get(k))
                if kind and data.get("strict"):
                    verdict = f"FAIL (strict, {kind})"
                elif kind:
                    verdict += f" ({kind})"
                line = f"{prefix + data['name']:<{width}}  {format_bytes(data['total_bytes']):>12}  {format_bytes(budget) if budget else '-':>12}  {used:>7}  {verdict}"
                # under Actions the runner parses this line: a run named "::error ..." must not be a command
                terminalreporter.write_line(log_text(line), red=verdict.startswith("FAIL"), green=verdict == "PASS")
            if os.environ.get("GITHUB_ACTIONS") == "true":
                from ..report import github

                for annotation in github.annotation_lines(documents, os.environ.get("GITHUB_WORKSPACE")):
                    terminalreporter.write_line(annotation)
        for message in self.messages:
            terminalreporter.write_line(log_text(message), red=True)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # xdist workers report to the controller, which writes each file once
        documents = self._documents()
        actions = os.environ.get("GITHUB_ACTIONS") == "true"
        target = self.json_target
        if target is None and actions and os.environ.get("RUNNER_TEMP"):
            target = Path(os.environ["RUNNER_TEMP"], "llmmem-report.json")
        written = None
        if self.errors:
            # A report with only the runs that could be read would look like a clean pass.
            if self.config.option.llmmem_json:
                self.messages.append(f"llmmem: no JSON report written to {self.config.option.llmmem_json}: {len(self.errors)} "
                                     f"pyproject.toml could not be checked ({', '.join(self.errors)}).")
        elif target is not None:
            document = documents[0] if len(documents) == 1 else {"version": JSON_VERSION, "projects": documents}
            if not documents:
                document = {"version": JSON_VERSION, "file": None, "runs": []}
            try:
                target.write_text(json_text(json.dumps(document, indent=2)) + "\n", encoding="utf-8")
                written = target
            except OSError as err:
                self.messages.append(f"llmmem: cannot write the JSON report to {target}: {err.strerror or err}.")
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
        if actions:
            from ..report import github

            if documents:
                github.append_summary(documents, os.environ.get("GITHUB_WORKSPACE"))
            outputs = os.environ.get("GITHUB_OUTPUT")
            if outputs:
                fits = not self.errors and not any(r["fits"] is False for doc in documents for r in doc["runs"])
                lines = github.step_outputs(fits, str(written) if written else None)
                try:
                    with open(outputs, "a", encoding="utf-8") as handle:
                        handle.write(lines)
                except OSError as err:
                    self.messages.append(f"llmmem: cannot write the step outputs to GITHUB_OUTPUT={outputs}: {err.strerror or err}.")


class PyprojectFile(pytest.File):
    """pyproject.toml as a test file: its [tool.llmmem] runs become items under ``llmmem``."""

    def collect(self):
        try:
            project = load(self.path, display=_shown(Path(self.path), Path(self.config.rootpath)))
        except ConfigError as err:
            raise self.CollectError(log_text(f"llmmem: {err}")) from None
        yield RunGroup.from_parent(self, name="llmmem", project=project)


class RunGroup(pytest.Collector):
    """The ``llmmem`` level of ``pyproject.toml::llmmem::<run>``."""

    def __init__(self, *, project: Project, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project = project

    def collect(self):
        strict = self.config.getoption("llmmem_strict") or self.config.getini("llmmem_strict")
        for run in self.project.runs:
            # pytest prints the node id mid-line (FAILED ...::<name>): no "##[" command in it
            yield RunItem.from_parent(self, name=log_text(run.name), run=run._replace(strict=True) if strict else run)


class RunItem(pytest.Item):
    """One declared run: passes when its estimated peak fits the budget."""

    def __init__(self, *, run: Run, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run
        self.add_marker("llmmem")

    def runtest(self) -> None:
        est = estimate(self.run)
        self.user_properties.append((PROPERTY, {"file": self.parent.project.path, "run": as_dict(est)}))
        if strict_refusal(est):
            raise StrictRefused(est)
        if est.fits is False:
            raise OverBudget(est)
        if caveats(est):
            # at the run's line in its pyproject, where the user can act on it, not at this line of the plugin
            warnings.warn_explicit(LlmmemEstimateCaveat(log_text(f'run "{self.run.name}": the estimate is {caveats(est)}: '
                                                                 f"{'; '.join(est.partial + est.approximate)}")),
                                   LlmmemEstimateCaveat, str(self.path), self.run.line or 1)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, StrictRefused):
            est = excinfo.value.estimate
            return log_text(fit_text(f"llmmem: {strict_refusal(est)}", terminal_width()) + "\n"
                            + render_run(est, width=terminal_width(), ways=_ways_out(est)))
        if isinstance(excinfo.value, OverBudget):
            return log_text(render_failure(excinfo.value.estimate, width=terminal_width(), ways=_ways_out(excinfo.value.estimate)))
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, (self.run.line or 1) - 1, log_text(f"llmmem run {self.run.name}")


def fixture_pyproject(explicit: Sequence[str], test_path: Path, root: Path, rootpath: Path) -> Path:
    """The pyproject the ``llmmem`` fixture reads: the first --llmmem-config; else the nearest one
    declaring [tool.llmmem] from the test's folder up to the rootdir; else the one pytest read."""
    if explicit:
        return Path(explicit[0])
    top = rootpath.resolve()
    for folder in [test_path.resolve().parent, *test_path.resolve().parent.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _declares_llmmem(candidate):
            return candidate
        if folder == top or top not in folder.parents:
            break
    return root


class LlmmemFixture:
    """What the ``llmmem`` fixture gives a test: estimates and budget assertions from the same core."""

    def __init__(self, path: Path, rootpath: Path) -> None:
        self.path = path
        self.rootpath = rootpath
        self._project: Optional[Project] = None

    @property
    def project(self) -> Project:
        if self._project is None:
            try:
                self._project = load(self.path, display=_shown(self.path, self.rootpath))
            except ConfigError as err:
                pytest.fail(log_text(f"llmmem: {err}"), pytrace=False)
        return self._project

    def estimate(self, run: Optional[str] = None, **overrides: Any) -> Estimate:
        """Estimate a declared run (``run="sft"``), optionally with keys changed (``batch_size=8``),
        or, with no ``run``, an ad-hoc one from keys alone (``params="7B", mode="inference", gpu="L4"``)."""
        for key, value in overrides.items():
            if value is None:
                pytest.fail(log_text(f"llmmem: {key}=None: a key cannot be None; leave it out to keep the declared value."), pytrace=False)
        try:
            if run is None:
                return estimate(adhoc_run({k.replace("_", "-"): v for k, v in overrides.items()}, path="llmmem fixture"))
            chosen = self.project.with_overrides(run, **overrides) if overrides else self.project.run(run)
            return estimate(chosen)
        except ConfigError as err:
            pytest.fail(log_text(f"llmmem: {err}"), pytrace=False)

    def assert_fits(self, run: Optional[str] = None, **overrides: Any) -> Estimate:
        """Fail the test, with the same message as ``pytest --llmmem``, unless the run fits its budget."""
        est = self.estimate(run, **overrides)
        if est.fits is None:
            pytest.fail(log_text(f"llmmem: run \"{est.run.name}\" has no budget: give gpu or gpu_memory."), pytrace=False)
        if not est.fits:
            pytest.fail(log_text(render_failure(est, width=terminal_width(), ways=_ways_out(est))), pytrace=False)
        return est

