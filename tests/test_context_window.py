"""Issue 23 part 2: a config's context limit, derived per rope type as vLLM derives max_model_len
(vllm/config/model.py _get_and_verify_max_len), holds on the training side, in serving and in ``fit``."""

import json

import pytest

from pytest_llmmem.hf import hub
from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.hf.config import from_hf_config

LLAMA = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000}


def _limit(**keys):
    return from_hf_config({**LLAMA, **keys}).context()[0]


@pytest.mark.parametrize("keys, limit", [
    ({"max_position_embeddings": 4096}, 4096),  # no rope scaling: the key itself
    # llama3 and longrope: max_position_embeddings already counts the factor (Llama-3.1-8B, Phi-4-mini)
    ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}, 131072),
    ({"max_position_embeddings": 131072, "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}, 131072),
    # yarn: original_max_position_embeddings x factor (DeepSeek-V3: 4096 x 40); without it, max_position_embeddings x factor
    ({"max_position_embeddings": 163840, "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096}}, 163840),
    ({"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, 131072),
    # linear and dynamic: max_position_embeddings x factor
    ({"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, 8192),
    ({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, 8192),
    ({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, 4096),
    # the smallest length key wins; model_max_length (Command-R) overrides them
    ({"max_position_embeddings": 8192, "seq_length": 4096}, 4096),
    ({"max_position_embeddings": 8192, "model_max_length": 131072}, 131072),
])
def test_the_context_follows_vllms_derivation_per_rope_type(keys, limit):
    assert _limit(**keys) == limit


def test_gemma3s_length_already_counts_its_linear_rope_scaling():
    # vLLM skips the factor for gemma3 model types: 131,072, not 8 x 131,072
    arch = from_hf_config(json.loads((hub.BUNDLED / "google--gemma-3-12b-it" / "config.json").read_text()))
    assert arch.context() == (131072, "max_position_embeddings 131,072 (Gemma 3's length already counts its rope scaling)")


def test_a_bad_rope_factor_names_its_key():
    with pytest.raises(ConfigError, match=r"rope_scaling\.factor: expected a positive number"):
        _limit(max_position_embeddings=4096, rope_scaling={"rope_type": "linear", "factor": "8"})


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "download", lambda *a: pytest.fail(f"tried the network for {a}"))


def test_vllm_on_the_bundled_llama31_derives_131072_without_max_model_len(offline, run_cli):
    code, out, err = run_cli("estimate", "--model", "meta-llama/Llama-3.1-8B", "--mode", "inference", "--engine", "vllm",
                             "--gpu", "H100-80GB", "--format", "json")
    assert code in (0, 1), err
    assert json.loads(out)["runs"][0]["serving"]["max_model_len"] == 131072


def test_a_max_model_len_past_the_llama3_context_is_refused_as_vllm_does(offline, run_cli):
    code, _, err = run_cli("estimate", "--model", "meta-llama/Llama-3.1-8B", "--mode", "inference", "--engine", "vllm",
                           "--gpu", "H100-80GB", "--max-model-len", "400000")
    assert code == 2
    assert "400,000 is more than the model's context: max_position_embeddings 131,072 (llama3 rope scaling already counted)" in err


def test_axolotl_sequence_len_past_llama31s_context_is_an_error(offline, tmp_path, run_cli):
    (tmp_path / "train.yml").write_text("base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nlora_r: 16\nsequence_len: 200000\n"
                                        "micro_batch_size: 1\ngradient_checkpointing: true\n")
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "train.yml"\n')
    code, out, err = run_cli("check", tmp_path / "pyproject.toml")
    assert code == 2, out
    assert "200,000 tokens is past the model's context of 131,072" in err


def test_fit_proposes_no_max_model_len_past_the_context(offline, tmp_path, run_cli):
    # 8B on an H100 holds about 450k KV tokens; before, fit offered that as the largest max-model-len
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = "meta-llama/Llama-3.1-8B"\n'
                                             '[[tool.llmmem.runs]]\nname = "serve"\nmode = "inference"\nengine = "vllm"\n')
    code, out, err = run_cli("fit", tmp_path)
    assert code == 0, err
    assert "largest max-model-len that starts: 131,072" in out


def test_falcons_context_is_its_config_class_default():
    arch = adhoc_run({"model": "tiiuae/falcon-7b", "mode": "inference", "engine": "vllm", "gpu": "H100-80GB"}).model
    assert arch.context()[0] == 2048  # FalconConfig's max_position_embeddings default; falcon-7b's config.json has none


def test_fit_on_the_bundled_70b_stays_within_its_131072_tokens(offline, tmp_path, run_cli):
    # the case: Llama-3.1-70B at TP=4 on H100s holds 433,632 KV tokens, which fit offered as max-model-len
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = "meta-llama/Llama-3.1-70B"\n'
                                             '[[tool.llmmem.runs]]\nname = "serve"\nmode = "inference"\nengine = "vllm"\n'
                                             'tensor-parallel = 4\ngpus = 4\n')
    code, out, err = run_cli("fit", tmp_path)
    assert code == 0, err
    assert "largest max-model-len that starts: 131,072" in out
    code, _, err = run_cli("estimate", "--model", "meta-llama/Llama-3.1-70B", "--mode", "inference", "--engine", "vllm",
                           "--gpu", "H100-80GB", "--tensor-parallel", "4", "--gpus", "4", "--max-model-len", "400000")
    assert code == 2 and "400,000 is more than the model's context" in err
