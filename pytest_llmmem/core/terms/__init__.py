"""The terms of a detailed estimate, one concern per module: activations saved for backward, attention
masks, trainer terms (loss, optimizer step), parallelism, the inference prefill and the job's phases.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
