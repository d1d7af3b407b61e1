"""What a model is: layer kinds (attention and MLP kinds answering for their own bytes), the architecture
as layer groups, the families' traits, and LoRA's adapted linears. Imports only the base modules.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
