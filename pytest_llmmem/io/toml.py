"""The one place that picks a TOML parser: tomllib on 3.11+, tomli before.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
import sys

if sys.version_info >= (3, 11):
    import tomllib as toml
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as toml

__all__ = ["toml"]
