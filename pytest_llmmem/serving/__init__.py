"""Serving engines (vLLM, SGLang) at start-up: weights, profile-run activations, the KV pool. Imports core/
and below.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
