"""pytest entry point: ``pytest --llmmem`` checks every [tool.llmmem] run as a test item.

Loaded in every pytest run of every repo that installs the package, so this module imports
nothing from the estimator and does no file I/O unless ``--llmmem`` (or ``--llmmem-only``) is
given; ``-p no:llmmem`` disables it. The items, the summary and the JSON report live in
:mod:`pytest_llmmem.pytest_checks`, imported only then. The ``llmmem`` fixture is always there and
imports the core when a test first uses it.

Which pyproject.toml: ``--llmmem-config PATH`` if given; else the pyproject.toml pytest read its
own configuration from (``config.inipath``); else ``<rootdir>/pyproject.toml``. That holds even
when ``testpaths`` points elsewhere.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmmem", "LLM GPU memory budgets (pytest-llmmem)")
    group.addoption("--llmmem", action="store_true", default=False,
                    help="check each run declared under [tool.llmmem] in pyproject.toml against its GPU memory budget")
    group.addoption("--llmmem-only", action="store_true", default=False,
                    help="run only the llmmem checks (implies --llmmem; collects no other tests)")
    group.addoption("--llmmem-config", metavar="PATH", default=None,
                    help="the pyproject.toml to read, as --llmmem-config=PATH (default: the one pytest was configured from, else <rootdir>/pyproject.toml)")
    group.addoption("--llmmem-json", metavar="PATH", default=None,
                    help="also write the JSON report `llmmem check --format json` prints to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmmem: a GPU memory budget check of a [tool.llmmem] run (pytest-llmmem)")
    if config.option.llmmem or config.option.llmmem_only:
        from .pytest_checks import LlmmemChecks

        config.pluginmanager.register(LlmmemChecks(config, pyproject_path(config)), "llmmem-checks")


def pyproject_path(config: pytest.Config) -> Path:
    """The pyproject.toml whose [tool.llmmem] table the checks read (see the module docstring)."""
    if config.option.llmmem_config:
        return Path(config.option.llmmem_config)
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return Path(inipath)
    return Path(config.rootpath) / "pyproject.toml"


@pytest.fixture
def llmmem(request: pytest.FixtureRequest):
    """Estimate and assert budgets from a test: ``llmmem.assert_fits(run="sft", batch_size=8)``."""
    from .pytest_checks import LlmmemFixture

    return LlmmemFixture(pyproject_path(request.config), Path(request.config.rootpath))
