"""The estimate of one model: the Run record, the Estimate record, the detailed and rule-of-thumb methods and
their terms (terms/). Imports hf/ and below; which runs are recipes or servers is decided above
(:mod:`pytest_llmmem.estimator`).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
