"""What would fit: each change that brings a run under budget, found by calling the estimate. Imports
:mod:`pytest_llmmem.estimator` and below.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
