"""Reading what the user points at, guarded: files with size and depth limits, TOML, finding the pyproject.toml.
Imports only the base modules (errors, units, values); nothing here knows an LLM.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
