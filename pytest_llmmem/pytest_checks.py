"""The pytest side of ``--llmmem``: a test item per declared run, a summary, a JSON report, a fixture.

Imported only when ``--llmmem`` is given (or a test uses the ``llmmem`` fixture). Every verdict
comes from the same :func:`pytest_llmmem.estimate.estimate` the CLI uses.

Items travel as ordinary pytest reports: the estimate rides in ``report.user_properties``, so
under pytest-xdist each run is checked once on some worker and the controller still prints one
summary and writes one JSON file.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from .config import Project, adhoc_run, load
from .errors import ConfigError
from .estimate import Estimate, estimate
from .report import as_dict, render_failure
from .run import Run
from .units import format_bytes

PROPERTY = "llmmem"


class OverBudget(Exception):
    """Raised by a run's item when the estimate exceeds the budget; rendered, not traced."""

    def __init__(self, est: Estimate) -> None:
        super().__init__(est.run.name)
        self.estimate = est


def _shown(path: Path, rootpath: Path) -> str:
    """A path as messages show it: relative to pytest's rootdir when inside it."""
    path = Path(path).resolve()
    return os.path.relpath(path, rootpath) if path.is_relative_to(rootpath.resolve()) else str(path)


class LlmmemChecks:
    """Registered for the session when --llmmem is given: adds the pyproject to what is collected."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path.resolve()
        self.results: Dict[str, Dict[str, Any]] = {}  # nodeid -> the estimate as report.as_dict gives it
        if not self.path.is_file():
            raise pytest.UsageError(
                f"--llmmem: {path} does not exist. Pass --llmmem-config PATH, or run pytest from the project "
                "whose pyproject.toml declares [tool.llmmem]."
            )
        self._collect_the_pyproject(config.args)

    def _collect_the_pyproject(self, args: List[str]) -> None:
        """Make sure pytest visits the pyproject: a folder argument holding it already does (our
        pytest_collect_file picks it up there); otherwise, e.g. testpaths = ["tests"], add it. An
        overlapping file argument would make pytest 8 drop the folder's other tests."""
        def path_of(arg: str) -> Path:
            return Path(self.config.invocation_params.dir, arg.split("::")[0]).resolve()

        target = str(self.path)
        if self.config.option.llmmem_only:
            args[:] = [a for a in args if path_of(a) == self.path] or [target]
        elif not any(path_of(a) == self.path or (path_of(a).is_dir() and self.path.is_relative_to(path_of(a))) for a in args):
            args.append(target)

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> Optional[pytest.Collector]:
        if file_path.resolve() == self.path:
            return PyprojectFile.from_parent(parent, path=file_path)
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == PROPERTY:
                self.results[report.nodeid] = value

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.results:
            return
        rows = self._sorted_runs()
        width = max(len(r["name"]) for r in rows)
        terminalreporter.write_sep("=", "llmmem")
        terminalreporter.write_line(f"{'run':<{width}}  {'total':>12}  {'budget':>12}  {'used':>7}  verdict   (GiB = 1024^3 bytes)")
        for data in rows:
            budget = data["budget_bytes"]
            used = f"{100 * data['total_bytes'] / budget:6.1f}%" if budget else "     - "
            verdict = "PASS" if data["fits"] else ("FAIL" if data["fits"] is False else "-")
            line = f"{data['name']:<{width}}  {format_bytes(data['total_bytes']):>12}  {format_bytes(budget) if budget else '-':>12}  {used:>7}  {verdict}"
            terminalreporter.write_line(line, red=verdict == "FAIL", green=verdict == "PASS")
        if os.environ.get("GITHUB_ACTIONS") == "true":
            from . import github

            lines = github.annotations(self._file(), rows, os.environ.get("GITHUB_WORKSPACE"))
            for annotation in github.capped(lines):
                terminalreporter.write_line(annotation)

    def _sorted_runs(self) -> List[Dict[str, Any]]:
        """The checked runs in declaration order, whichever worker checked them."""
        return sorted(self.results.values(), key=lambda d: (d.get("line") or 0, d["name"]))

    def _file(self) -> str:
        return _shown(self.path, Path(self.config.rootpath))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # xdist workers report to the controller, which writes each file once
        runs = self._sorted_runs()
        target = self.config.option.llmmem_json
        if target:
            document = {"version": 1, "file": self._file(), "runs": runs}
            Path(target).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if runs and os.environ.get("GITHUB_ACTIONS") == "true":
            from . import github

            github.append_summary([{"file": self._file(), "runs": runs}], os.environ.get("GITHUB_WORKSPACE"))


class PyprojectFile(pytest.File):
    """pyproject.toml as a test file: its [tool.llmmem] runs become items under ``llmmem``."""

    def collect(self):
        try:
            project = load(self.path, display=_shown(Path(self.path), Path(self.config.rootpath)))
        except ConfigError as err:
            raise self.CollectError(f"llmmem: {err}") from None
        yield RunGroup.from_parent(self, name="llmmem", project=project)


class RunGroup(pytest.Collector):
    """The ``llmmem`` level of ``pyproject.toml::llmmem::<run>``."""

    def __init__(self, *, project: Project, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project = project

    def collect(self):
        for run in self.project.runs:
            yield RunItem.from_parent(self, name=run.name, run=run)


class RunItem(pytest.Item):
    """One declared run: passes when its estimated peak fits the budget."""

    def __init__(self, *, run: Run, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run
        self.add_marker("llmmem")

    def runtest(self) -> None:
        est = estimate(self.run)
        self.user_properties.append((PROPERTY, as_dict(est)))
        if est.fits is False:
            raise OverBudget(est)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, OverBudget):
            return render_failure(excinfo.value.estimate)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, (self.run.line or 1) - 1, f"llmmem run {self.run.name}"


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
                pytest.fail(f"llmmem: {err}", pytrace=False)
        return self._project

    def estimate(self, run: Optional[str] = None, **overrides: Any) -> Estimate:
        """Estimate a declared run (``run="sft"``), optionally with keys changed (``batch_size=8``),
        or, with no ``run``, an ad-hoc one from keys alone (``params="7B", mode="inference", gpu="L4"``)."""
        try:
            if run is None:
                return estimate(adhoc_run({k.replace("_", "-"): v for k, v in overrides.items()}, path="llmmem fixture"))
            chosen = self.project.with_overrides(run, **overrides) if overrides else self.project.run(run)
            return estimate(chosen)
        except ConfigError as err:
            pytest.fail(f"llmmem: {err}", pytrace=False)

    def assert_fits(self, run: Optional[str] = None, **overrides: Any) -> Estimate:
        """Fail the test, with the same message as ``pytest --llmmem``, unless the run fits its budget."""
        est = self.estimate(run, **overrides)
        if est.fits is None:
            pytest.fail(f"llmmem: run \"{est.run.name}\" has no budget: give gpu or gpu_memory.", pytrace=False)
        if not est.fits:
            pytest.fail(render_failure(est), pytrace=False)
        return est

