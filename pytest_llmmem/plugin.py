"""The pytest11 entry point (``pytest_llmmem.plugin``): pytest reads the hooks and the ``llmmem`` fixture
from this module; they are defined in :mod:`pytest_llmmem.frontends.plugin`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .frontends.plugin import llmmem, pyproject_path, pytest_addoption, pytest_configure

__all__ = ["llmmem", "pyproject_path", "pytest_addoption", "pytest_configure"]
