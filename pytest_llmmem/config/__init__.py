"""The [tool.llmmem] contract: the keys and their checks, locating a key's line, the run/model/GPU/recipe/
serving key groups, and readers of trainer configs (readers/). Imports fit/ and below (in practice core/,
serving/, hf/ and catalog/).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
