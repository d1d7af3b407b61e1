"""pytest entry point: ``pytest --llmmem`` checks every [tool.llmmem] run as a test item.

Loaded in every pytest run of every repo that installs the package, so this module imports
nothing from the estimator and does no file I/O unless ``--llmmem`` (or ``--llmmem-only``) is
given; ``-p no:llmmem`` disables it. The items, the summary and the JSON report live in
:mod:`pytest_llmmem.pytest_checks`, imported only then. The ``llmmem`` fixture is always there and
imports the core when a test first uses it.

Which pyproject.toml files: each ``--llmmem-config PATH`` given (repeatable); else every
pyproject.toml declaring ``[tool.llmmem]`` that pytest visits under the paths it collects (a
monorepo's projects, or the one of the subfolder pytest runs in), plus the one pytest read its
own configuration from (``config.inipath``, else ``<rootdir>/pyproject.toml``) even when
``testpaths`` points elsewhere. The ``llmmem`` fixture reads the nearest of them to the test.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmmem", "LLM GPU memory budgets (pytest-llmmem)")
    group.addoption("--llmmem", action="store_true", default=False,
                    help="check each run declared under [tool.llmmem] in pyproject.toml against its GPU memory budget")
    group.addoption("--llmmem-only", action="store_true", default=False,
                    help="run only the llmmem checks (implies --llmmem; collects no other tests)")
    group.addoption("--llmmem-config", metavar="PATH", action="append", default=[],
                    help="a pyproject.toml to read, as --llmmem-config=PATH; repeatable (default: every one declaring "
                         "[tool.llmmem] under the collected paths, and the one pytest was configured from)")
    group.addoption("--llmmem-json", metavar="PATH", default=None,
                    help="also write the JSON report `llmmem check --format json` prints to PATH")
    group.addoption("--llmmem-strict", action="store_true", default=False,
                    help="fail a run whose estimate is partial or approximate (as strict = true under [tool.llmmem])")
    parser.addini("llmmem_strict", type="bool", default=False,
                  help="pytest-llmmem: fail a run whose estimate is partial or approximate (as --llmmem-strict)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmmem: a GPU memory budget check of a [tool.llmmem] run (pytest-llmmem)")
    if config.option.llmmem or config.option.llmmem_only:
        from .pytest_checks import LlmmemChecks

        explicit = [Path(p) for p in config.option.llmmem_config]
        config.pluginmanager.register(LlmmemChecks(config, explicit, pyproject_path(config)), "llmmem-checks")


def pyproject_path(config: pytest.Config) -> Path:
    """The pyproject.toml pytest was configured from (else ``<rootdir>/pyproject.toml``)."""
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return Path(inipath)
    return Path(config.rootpath) / "pyproject.toml"


@pytest.fixture
def llmmem(request: pytest.FixtureRequest):
    """Estimate and assert budgets from a test: ``llmmem.assert_fits(run="sft", batch_size=8)``."""
    from .pytest_checks import LlmmemFixture, fixture_pyproject

    path = fixture_pyproject(request.config.option.llmmem_config, Path(request.path), pyproject_path(request.config),
                             Path(request.config.rootpath))
    return LlmmemFixture(path, Path(request.config.rootpath))
