"""Hugging Face config.json: the keys per layout (readers), the whole config to an Architecture, the Hub cache
and the bundled configs. Imports catalog/ and below.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
