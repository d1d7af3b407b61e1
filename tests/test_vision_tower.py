"""vision-tower: a multimodal model's vision tower in a full fine-tune is "trained" (the default, the safe side:
gradients and optimizer states for it; the images' activations are not modelled, so the estimate is partial) or
"frozen" (text-only data or requires_grad=False: no .grad, and torch AdamW creates no state for it).

The model is a tiny Gemma 3 whose tower is counted by hand below (modeling_siglip.py, modeling_gemma3.py).
"""

import json

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate
from pytest_llmmem.report.text import describe_run

TEXT = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 1000, "sliding_window": 16}
VISION = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_channels": 3, "image_size": 32, "patch_size": 16}
# By hand. SigLIP: patch conv 3·16·16·32 + 32 = 24,608, positions (32/16)² · 32 = 128; one layer: 2 LayerNorms
# 2·2·32 = 128, q/k/v/o 4·(32·32 + 32) = 4,224, fc1 32·64 + 64 = 2,112, fc2 64·32 + 32 = 2,080 -> 8,544;
# post-LayerNorm 2·32 = 64 -> 33,344. Projector: a 32 x 64 matrix + an RMSNorm of 32 = 2,080. Tower: 35,424.
TOWER = 35_424


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gemma3", "text_config": TEXT, "vision_config": VISION}))
    return str(path)


def _run(config, **keys):
    return estimate(adhoc_run({"config": config, "mode": "train", "dtype": "bf16", "batch-size": 1, "seq-len": 16, **keys}))


def test_frozen_tower_takes_no_gradients_or_optimizer_states(config):
    trained, frozen = _run(config), _run(config, **{"vision-tower": "frozen"})
    assert trained.params == frozen.params and trained.params - trained.trainable_params == 0
    assert trained.trainable_params - frozen.trainable_params == TOWER
    # bf16 mixed precision: 2 B gradients and 2 fp32 AdamW states (8 B) per trained parameter
    assert trained.full("gradients") - frozen.full("gradients") == TOWER * 2  # 70,848
    assert trained.breakdown["optimizer_states"] - frozen.breakdown["optimizer_states"] == TOWER * 8  # 283,392
    # weights and the fp32 master copy keep the tower either way
    for term in ("weights", "master_weights", "activations", "logits"):
        assert trained.breakdown[term] == frozen.breakdown[term], term


def test_frozen_tower_under_zero2_shards_the_saving(config):
    keys = {"gpus": 2, "zero-stage": 2}
    trained, frozen = _run(config, **keys), _run(config, **{**keys, "vision-tower": "frozen"})
    # ZeRO-2 partitions gradients and states over the 2 GPUs: each holds half of the tower's share
    assert trained.full("gradients") - frozen.full("gradients") == TOWER * 2 // 2  # 35,424
    assert trained.breakdown["optimizer_states"] - frozen.breakdown["optimizer_states"] == TOWER * 8 // 2  # 141,696


def test_default_says_image_activations_are_not_counted(config):
    trained, frozen = _run(config), _run(config, **{"vision-tower": "frozen"})
    assert trained.run.vision_tower == "trained"
    assert any("vision tower's activations are not counted" in reason for reason in trained.partial)
    assert frozen.partial == ()
    assert "vision tower frozen" in describe_run(frozen) and "vision tower" not in describe_run(trained)


def test_strict_refuses_the_default_and_accepts_frozen(tmp_path, config, run_cli):
    project = tmp_path / "pyproject.toml"
    runs = '[[tool.llmmem.runs]]\nname = "sft"\nbatch-size = 1\nseq-len = 16\n'
    project.write_text(f'[tool.llmmem]\ngpu = "H100-80GB"\nstrict = true\n[tool.llmmem.model]\nconfig = {json.dumps(config)}\n{runs}')
    code, _, err = run_cli("check", str(project))
    assert code == 2 and "strict refuses a partial estimate" in err and "vision-tower" in err
    project.write_text(project.read_text() + 'vision-tower = "frozen"\n')
    code, out, err = run_cli("check", str(project))
    assert code == 0, err


def test_inference_and_lora_ignore_the_tower(config):
    for mode in ("inference", "lora"):
        keys = {"lora-targets": ["q_proj", "v_proj"]} if mode == "lora" else {}
        est = estimate(adhoc_run({"config": config, "mode": mode, "dtype": "bf16", "seq-len": 16, **keys}))
        assert est.partial == (), mode
