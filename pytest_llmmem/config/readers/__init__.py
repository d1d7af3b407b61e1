"""Runs read from a trainer's own config (``from = "train.yaml"`` on a run): adapters at the edge.

One module per format, each a table from the trainer's key to ours with every default cited; the
result is plain run keys, so the core never knows where a key came from (the report does, through
``Reading.origins``). Keys written on the run in pyproject.toml override what was read.

The shared parts (Mapper, Reading, the YAML loader with key lines) are in mapper.py; this file imports
nothing, so importing one format loads only what it needs.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""
