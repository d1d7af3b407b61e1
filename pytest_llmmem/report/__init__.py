"""Output: text and JSON, GitHub annotations and summaries, the diff of two JSON reports. Imports config/ and
below.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
