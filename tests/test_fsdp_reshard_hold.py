"""FSDP1 over a frozen base with reentrant checkpointing around each unit (HF transformers <= 4.51) holds every finished
layer's recomputed input and its gradient to the end of the backward (issue 25; core/terms/fsdp_pools.py
reshard_hook_holds_inputs): counted at the backward's bottom instant."""

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate

# fms-acceleration's Mistral-7B QLoRA on 2 GPUs (benchmarks/data/published-fms-acceleration.jsonl, b4 x 4,096 packed)
RUN = {"name": "fsdp", "id": "mistralai/Mistral-7B-v0.1", "mode": "qlora", "dtype": "nf4", "batch-size": 4, "seq-len": 4096,
       "gradient-checkpointing": True, "gpus": 2, "fsdp": "full-shard", "framework": "transformers",
       "framework-version": "4.48.1", "lora-rank": 16, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
HELD = "backward.activations.fsdp_held_input_grads"


def test_the_bottom_layer_holds_every_input_and_the_gradients_of_layers_2_to_L_minus_1():
    est = estimate(adhoc_run(RUN))
    # by hand: one layer input is b x s x hidden x 2 B = 4 x 4096 x 4096 x 2 = 134,217,728 B (128 MiB); Mistral-7B has
    # 32 layers: all 32 inputs alive (4 GiB) and 30 held gradients (layer 1's is the one flowing in), 3.75 GiB
    assert est.details["activations.layer_inputs"] == 32 * 134_217_728
    assert est.details[HELD] == 30 * 134_217_728
    # the same run on transformers 4.52 (the checkpoint inside the unit) holds nothing, and peaks lower
    later = estimate(adhoc_run({**RUN, "framework-version": "4.52.0"}))
    assert HELD not in later.details
    assert est.allocated_bytes > later.allocated_bytes


@pytest.mark.parametrize("extra", [
    {"framework-version": "4.52.0"},  # GradientCheckpointingLayer: the checkpoint runs inside the FSDP unit
    {},  # no framework-version: a current transformers
    {"mode": "train", "dtype": "bf16"},  # a trained flat parameter gets a post-backward hook, not the reshard-only one
    {"gpus": 1, "fsdp": "none"},
    {"gradient-checkpointing": False},
])
def test_runs_without_the_hold(extra):
    run = {**RUN, **extra}
    if run["mode"] == "train":
        run = {k: v for k, v in run.items() if not k.startswith("lora-")}
    if not extra:
        run.pop("framework-version")
    assert HELD not in estimate(adhoc_run(run)).details


def test_the_hold_is_counted_not_marked_approximate():
    reasons = estimate(adhoc_run(RUN)).approximate
    assert not any("frozen base with checkpointing" in r for r in reasons)
