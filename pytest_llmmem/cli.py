"""The ``llmmem`` console script's entry point (``pytest_llmmem.cli:main``); the command line is
:mod:`pytest_llmmem.frontends.cli`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import sys

from .frontends.cli import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
