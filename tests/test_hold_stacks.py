"""The reshard hook's hold (core/terms/fsdp_pools.py reshard_hook_holds_inputs) for the stacks built on the HF Trainer:
axolotl, LLaMA-Factory and TRL read from their YAML, each with the transformers release its own pin allows
(docs/trainer-configs.md), and checkpoint-reentrant mapped from each trainer's own key."""

import pytest

from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

pytest.importorskip("yaml")
HELD = "backward.activations.fsdp_held_input_grads"
# mistralai/Mistral-7B-v0.1 (bundled; its 32k vocabulary leaves the backward's bottom instant the step's peak, as on
# fms-acceleration's rows): 32 layers, hidden 4,096. One layer input at 4 x 4,096 tokens in bf16 is
# 4 x 4096 x 4096 x 2 B = 134,217,728 B (128 MiB); the hold adds the gradients of layers 2..L-1: 30 of them
ONE = 4 * 4096 * 4096 * 2
MODEL = "mistralai/Mistral-7B-v0.1"
STACKS = {
    # axolotl v0.7.0 pins transformers==4.48.3 (requirements.txt @ 3c743c4)
    "axolotl": (f"base_model: {MODEL}\nadapter: lora\nlora_r: 16\nlora_target_linear: true\nmicro_batch_size: 4\n"
                "sequence_len: 4096\nbf16: true\ngradient_checkpointing: true\nfsdp: [full_shard, auto_wrap]\n",
                "4.48.3", "gradient_checkpointing_kwargs: {use_reentrant: false}\n"),
    # LLaMA-Factory v0.9.2 allows transformers >= 4.41.2, <= 4.49.0 (requirements.txt @ e2299e2)
    "llama-factory": (f"model_name_or_path: {MODEL}\nstage: sft\nfinetuning_type: lora\nlora_rank: 16\n"
                      "per_device_train_batch_size: 4\ncutoff_len: 4096\nbf16: true\nfsdp: full_shard auto_wrap\n",
                      "4.49.0", "use_reentrant_gc: false\n"),
    # TRL v0.19.0 requires transformers >= 4.51.0 (setup.cfg @ 5b3ea9d): 4.51.3 is the one release below 4.52 it allows
    "trl": (f"model_name_or_path: {MODEL}\nuse_peft: true\nlora_r: 16\nper_device_train_batch_size: 4\nmax_length: 4096\n"
            "dtype: bfloat16\nbf16: true\ngradient_checkpointing: true\nfsdp: full_shard auto_wrap\n",
            "4.51.3", "gradient_checkpointing_kwargs: {use_reentrant: false}\n"),
}


def _run(tmp_path, yaml_text, extra=""):
    (tmp_path / "train.yaml").write_text(yaml_text)
    text = (f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / "train.yaml"}"\ngpus = 2\n'
            f'seq-len = 4096\n{extra}')
    return parse(text, base_dir=tmp_path).runs[0]


@pytest.mark.parametrize("stack", list(STACKS))
def test_a_stack_on_a_transformers_before_4_52_holds_30_layer_input_gradients(tmp_path, stack):
    yaml_text, version, _ = STACKS[stack]
    run = _run(tmp_path, yaml_text, f'framework-version = "{version}"\n')
    assert run.fsdp == "full-shard" and run.adapter.name == "lora" and run.gradient_checkpointing
    est = estimate(run)
    assert est.details[HELD] == 30 * ONE  # 4,026,531,840 B (3.75 GiB): (L - 2) x b x s x hidden x 2 B
    assert est.details["activations.layer_inputs"] == 32 * ONE


@pytest.mark.parametrize("stack", list(STACKS))
def test_non_reentrant_or_a_later_transformers_holds_nothing(tmp_path, stack):
    yaml_text, version, off = STACKS[stack]
    run = _run(tmp_path, yaml_text + off, f'framework-version = "{version}"\n')
    assert run.knobs.checkpoint_reentrant is False
    assert HELD not in estimate(run).details
    # axolotl v0.10.0 pins transformers==4.52.3 (requirements.txt @ 88c0e8d): GradientCheckpointingLayer, no hold
    assert HELD not in estimate(_run(tmp_path, yaml_text, 'framework-version = "4.52.3"\n')).details


def test_each_reader_maps_its_own_reentrant_key_and_default(tmp_path):
    origins = lambda run: dict(run.settings_from)  # noqa: E731
    axolotl = _run(tmp_path, STACKS["axolotl"][0])
    assert axolotl.knobs.checkpoint_reentrant is True
    assert "utils/config/__init__.py:383 @ 067b021c8b87: use_reentrant True" in origins(axolotl)["checkpoint-reentrant"]
    off = _run(tmp_path, STACKS["axolotl"][0] + STACKS["axolotl"][2])
    assert origins(off)["checkpoint-reentrant"] == "train.yaml: gradient_checkpointing_kwargs.use_reentrant"
    factory = _run(tmp_path, STACKS["llama-factory"][0])
    assert factory.knobs.checkpoint_reentrant is True and "use_reentrant_gc default True" in origins(factory)["checkpoint-reentrant"]
    assert origins(_run(tmp_path, STACKS["llama-factory"][0] + "use_reentrant_gc: false\n"))["checkpoint-reentrant"] \
        == "train.yaml: use_reentrant_gc"
    # TRL says nothing of its own: transformers' default (checkpoint-reentrant unset, reentrant before transformers 5)
    assert _run(tmp_path, STACKS["trl"][0]).knobs.checkpoint_reentrant is None
    # the run's own key wins over the file's
    assert _run(tmp_path, STACKS["axolotl"][0], "checkpoint-reentrant = false\n").knobs.checkpoint_reentrant is False


@pytest.mark.parametrize("stack, bad, key", [
    ("axolotl", "gradient_checkpointing_kwargs: {use_reentrant: maybe}\n", "gradient_checkpointing_kwargs.use_reentrant"),
    ("trl", "gradient_checkpointing_kwargs: [1]\n", "gradient_checkpointing_kwargs"),
    ("llama-factory", "use_reentrant_gc: 3\n", "use_reentrant_gc"),
])
def test_a_bad_reentrant_value_names_the_file_and_key(tmp_path, stack, bad, key):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, STACKS[stack][0] + bad)
    text = str(err.value)
    assert "train.yaml" in text and key in text and "expected" in text, text


def test_no_framework_version_is_counted_as_current_and_marked_approximate_with_the_hold_s_size(tmp_path):
    est = estimate(_run(tmp_path, STACKS["axolotl"][0]))
    assert HELD not in est.details
    reason = next(r for r in est.approximate if "reshard-only hook" in r)
    # by hand: 2L - 3 = 61 layer inputs of 128 MiB = 7.625 GiB
    assert "transformers before 4.52" in reason and "about 7.62 GiB" in reason and "2L - 3 = 61" in reason, reason
    # not where the hold cannot arise: non-reentrant, or a declared release
    assert not any("reshard-only hook" in r for r in estimate(_run(tmp_path, STACKS["axolotl"][0] + STACKS["axolotl"][2])).approximate)
    assert not any("reshard-only hook" in r for r in estimate(_run(tmp_path, STACKS["axolotl"][0], 'framework-version = "4.52.3"\n')).approximate)


def test_the_run_key_turns_the_hold_off_and_a_misspelling_is_caught():
    run = {"name": "fsdp", "id": "mistralai/Mistral-7B-v0.1", "mode": "qlora", "dtype": "nf4", "batch-size": 4, "seq-len": 4096,
           "gradient-checkpointing": True, "gpus": 2, "fsdp": "full-shard", "framework-version": "4.48.1", "lora-rank": 16}
    assert HELD in estimate(adhoc_run(run)).details
    assert HELD not in estimate(adhoc_run({**run, "checkpoint-reentrant": False})).details
    with pytest.raises(ConfigError, match='Did you mean "checkpoint-reentrant"'):
        adhoc_run({**run, "checkpoint-reentrnt": False})
    with pytest.raises(ConfigError, match="checkpoint-reentrant: expected true or false"):
        adhoc_run({**run, "checkpoint-reentrant": "maybe"})


# FSDP2 (fully_shard) has no reshard-only hook (fsdp_pools.py _hold_shape; measured on the CPU by
# benchmarks/measure_fsdp_reshard_hold.py --fsdp 2: its reentrant peak is its non-reentrant one).
FSDP2 = {
    # axolotl's top-level fsdp_version (src/axolotl/utils/schemas/fsdp.py FSDPConfig) with an FSDP2 fsdp_config
    "axolotl": ("fsdp_version: 2\nfsdp_config: {reshard_after_forward: true}\n", "fsdp_version"),
    # an accelerate-style fsdp_config in the YAML (accelerate >= 1.6 config files: fsdp_config.fsdp_version)
    "trl": ("fsdp_config: {fsdp_version: 2}\n", "fsdp_config.fsdp_version"),
}


@pytest.mark.parametrize("stack", list(FSDP2))
def test_fsdp2_holds_nothing_and_says_where_it_read_the_version(tmp_path, stack):
    yaml_text, version, _ = STACKS[stack]
    fsdp1 = _run(tmp_path, yaml_text, f'framework-version = "{version}"\n')
    extra, key = FSDP2[stack]
    run = _run(tmp_path, yaml_text.replace("fsdp: [full_shard, auto_wrap]\n", "").replace("fsdp: full_shard auto_wrap\n", "") + extra,
               f'framework-version = "{version}"\n')
    assert (run.fsdp, run.fsdp_version, fsdp1.fsdp_version) == ("full-shard", 2, 1)
    assert dict(run.settings_from)["fsdp-version"] == f"train.yaml: {key}"
    est, held = estimate(run), estimate(fsdp1)
    assert HELD not in est.details and held.details[HELD] == 30 * ONE
    assert not any("reshard-only hook" in r for r in est.approximate)


def test_trl_s_fsdp2_accelerate_profile_is_fsdp2(tmp_path):
    # trl/accelerate_configs/fsdp2.yaml @ 9ce14f8: fsdp_version 2 (fsdp1.yaml @ 5b2c1fa: 1)
    yaml_text = STACKS["trl"][0].replace("fsdp: full_shard auto_wrap\n", "")
    assert _run(tmp_path, yaml_text + "accelerate_config: fsdp2\n").fsdp_version == 2
    assert _run(tmp_path, yaml_text + "accelerate_config: fsdp1\n").fsdp_version == 1


def test_fsdp_version_on_the_run_and_its_errors():
    run = {"name": "fsdp", "id": "mistralai/Mistral-7B-v0.1", "mode": "qlora", "dtype": "nf4", "batch-size": 4, "seq-len": 4096,
           "gradient-checkpointing": True, "gpus": 2, "fsdp": "full-shard", "framework-version": "4.48.1", "lora-rank": 16}
    one, two = estimate(adhoc_run(run)), estimate(adhoc_run({**run, "fsdp-version": 2}))
    assert HELD in one.details and HELD not in two.details
    # no other term depends on the version: FSDP2 is FSDP1 without the hold, as a non-reentrant FSDP1 run is; the
    # hold's 2L - 3 inputs make the bottom recompute the peak, so the total drops by less than them (2.58 GB of their 8.19)
    assert two.total_bytes == estimate(adhoc_run({**run, "checkpoint-reentrant": False})).total_bytes < one.total_bytes
    with pytest.raises(ConfigError, match=r"fsdp-version: 3 is not an FSDP version; expected 1 \(FullyShardedDataParallel\) or 2"):
        adhoc_run({**run, "fsdp-version": 3})
    with pytest.raises(ConfigError, match='fsdp-version: only applies with fsdp; this run has fsdp = "none"'):
        adhoc_run({**{k: v for k, v in run.items() if k != "fsdp"}, "fsdp-version": 2})


def test_the_report_says_fsdp2(run_cli):
    args = ("estimate", "--model", "mistralai/Mistral-7B-v0.1", "--mode", "lora", "--gpus", "2", "--fsdp", "full-shard", "--gpu", "A100-80GB")
    assert "2 GPUs FSDP2 full-shard" in run_cli(*args, "--fsdp-version", "2")[1]
    assert "2 GPUs FSDP full-shard" in run_cli(*args)[1]
