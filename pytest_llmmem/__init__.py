"""pytest-llmmem: per-GPU peak-memory estimates for declared LLM runs, enforced as a budget.

The core (``config``, ``estimate``, ``model``, ``catalog``, ``units``) does no I/O beyond
reading the files a config names, and never imports pytest.
"""

__version__ = "0.1.0"
