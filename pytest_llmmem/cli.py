"""``pytest_llmmem.cli:main``, the ``llmmem`` command line as a function (the console script itself is
``frontends.cli:script``, pyproject.toml); the command line is :mod:`pytest_llmmem.frontends.cli`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import sys

from .frontends.cli import main, script

__all__ = ["main", "script"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(script())
