"""Training recipes beyond SFT (DPO, GRPO, PPO, reward): the models one step holds and its phases. Imports
serving/ (a colocated vLLM engine's share) and below.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
