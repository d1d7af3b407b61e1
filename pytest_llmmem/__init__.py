"""pytest-llmmem: per-GPU peak-memory estimates for declared LLM runs, enforced as a budget.

The core (``config``, ``estimate``, ``model``, ``catalog``, ``units``) does no I/O beyond
reading the files a config names, and never imports pytest.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

__version__ = "0.1.0"
