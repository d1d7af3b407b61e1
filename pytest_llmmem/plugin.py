"""pytest entry point (``-p no:llmmem`` disables it).

Loaded in every pytest run of every repo that installs the package, so this module imports
nothing beyond pytest's own hook machinery and does no I/O unless ``--llmmem`` is given.
"""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    group = parser.getgroup("llmmem", "LLM GPU memory budgets (pytest-llmmem)")
    group.addoption(
        "--llmmem",
        action="store_true",
        default=False,
        help="check the runs declared under [tool.llmmem] in pyproject.toml against their GPU memory budget",
    )
