"""What a user runs: the llmmem command line and its sub-commands, the pytest plugin and its checks, llmmem
measure, the pre-commit repository scan. Imports everything below; nothing imports it except the
entry-point modules at the package root.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
