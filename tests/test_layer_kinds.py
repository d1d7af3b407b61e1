"""Layer kinds and families as a user meets them: the family override, the generic reading, each
attention kind's cache, soft-capping, LoRA names, and a plugin that adds an in-house family."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_llmmem.config.load import adhoc_run, load
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.hf.config import from_hf_config
from pytest_llmmem.catalog.registry import family

from .test_families import CONFIGS

_ARCHS = Path(__file__).resolve().parents[2] / "shared" / "validation" / "archs.jsonl"
ARCHS = {json.loads(line)["model_type"]: json.loads(line)["config"] for line in _ARCHS.read_text().splitlines()} if _ARCHS.exists() else {}
needs_archs = pytest.mark.skipif(not ARCHS, reason="shared validation data not present")
SMALL = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 688, "vocab_size": 1000, "max_position_embeddings": 4096}
# embedding 1000*256 = 256,000; 2 layers x (4*256^2 + 3*256*688 + 2*256 = 791,040); final norm 256; head 256,000
SMALL_PARAMS = 2_094_336


def _run(tmp_path, cfg, model_extra="", run_extra="seq-len = 1024"):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.llmmem]
        gpu = "H100-80GB"
        [tool.llmmem.model]
        config = "config.json"
        {}
        [[tool.llmmem.runs]]
        name = "run"
        dtype = "bf16"
        {}
    ''').format(model_extra, run_extra))
    return load(str(tmp_path / "pyproject.toml")).runs[0]


def test_family_beside_config_overrides_an_unknown_model_type(tmp_path):
    run = _run(tmp_path, {**SMALL, "model_type": "acme_lm"}, 'family = "llama"')
    assert run.model.family.name == "llama"
    assert run.model.param_count() == SMALL_PARAMS
    assert estimate(run).approximate == ()


def test_unknown_model_type_estimates_marked_approximate(tmp_path):
    est = estimate(_run(tmp_path, {**SMALL, "model_type": "acme_lm"}))
    assert est.approximate == ('model_type "acme_lm" is not a known family; counted as a LLaMA-style decoder',)
    assert est.params == SMALL_PARAMS


def test_params_only_is_partial():
    est = estimate(adhoc_run({"params": "7B", "dtype": "bf16", "mode": "inference"}))
    assert est.partial == ("the model is given by params only: activations, logits and KV cache are not counted",)


@pytest.mark.parametrize("name, expected", [("gemma2", "gemma2"), ("phi3", "phi3"), ("gpt-oss", "gpt_oss"), ("Qwen3_MoE", "qwen3_moe")])
def test_families_are_their_own_not_aliases(name, expected):
    assert family(name).name == expected


def test_qwen1_model_type_is_not_read_as_qwen2(tmp_path):
    # Qwen-1 (model_type "qwen", remote code, fused c_attn) counts differently: no alias may claim it exact.
    est = estimate(_run(tmp_path, {**SMALL, "model_type": "qwen"}))
    assert est.approximate and "not a known family" in est.approximate[0]


def test_unknown_toml_family_suggests_a_real_spelling():
    with pytest.raises(ConfigError, match='Did you mean "gpt_oss"'):
        family("gpt_osss")


@needs_archs
def test_sliding_layers_hold_the_prompt_after_a_prefill(tmp_path):
    # Gemma-2-9B, bf16, prefill of 8192: 21 full layers keep every token; the 21 sliding ones (window
    # 4096) keep a 4095-token view of the whole prompt's storage (cache_utils DynamicSlidingWindowLayer),
    # so they hold all 8192 too; 8 KV heads x 256, K and V.
    est = estimate(_run(tmp_path, ARCHS["gemma2"], run_extra='mode = "inference"\nseq-len = 8192'))
    assert est.details["kv_cache.full"] == 21 * 2 * 8 * 256 * 8192 * 2
    assert est.details["kv_cache.sliding"] == 21 * 2 * 8 * 256 * 8192 * 2
    assert est.breakdown["kv_cache"] == est.details["kv_cache.full"] + est.details["kv_cache.sliding"]


def test_mla_caches_the_latent_and_mamba_a_fixed_state():
    # DeepSeek-V3: kv_lora_rank 512 + qk_rope_head_dim 64 per token and layer, one "head".
    v3 = from_hf_config(CONFIGS["DeepSeek-V3"][0])
    assert sum(g.count * g.attention.cache_bytes(1, 1000, 2) for g in v3.layer_groups()) == 61 * 576 * 1000 * 2
    # mamba-130m: d_inner 1536 x (d_conv 4 in bf16 + d_state 16 in fp32) per layer and sequence, whatever its length.
    mamba = from_hf_config(CONFIGS["mamba-130m-hf"][0])
    for seq in (10, 100_000):
        assert sum(g.count * g.attention.cache_bytes(1, seq, 2) for g in mamba.layer_groups()) == 24 * 1536 * (4 * 2 + 16 * 4)


def test_jamba_mixes_attention_and_mamba_layers():
    arch = from_hf_config(CONFIGS["Jamba-v0.1"][0])
    kinds = {(g.attention.kind, g.mlp.kind): g.count for g in arch.layer_groups()}
    # attention on layers 4, 12, 20, 28 (period 8, offset 4); MoE on the odd layers (period 2, offset 1)
    assert kinds == {("mamba", "dense"): 12, ("mamba", "moe"): 16, ("full", "dense"): 4}


def test_mamba_training_is_marked_approximate(tmp_path):
    est = estimate(_run(tmp_path, CONFIGS["mamba-130m-hf"][0], run_extra='mode = "train"\nseq-len = 1024'))
    assert any("mamba-ssm" in reason for reason in est.approximate)


def test_deepseek_first_layers_are_dense():
    arch = from_hf_config(CONFIGS["DeepSeek-V3"][0])
    assert [(g.mlp.kind, g.count) for g in arch.layer_groups()] == [("dense", 3), ("moe", 58)]


@needs_archs
def test_gemma2_final_softcap_keeps_another_logits_tensor(tmp_path):
    est = estimate(_run(tmp_path, ARCHS["gemma2"], run_extra='mode = "train"\nseq-len = 1024'))
    assert est.details["logits.softcap_tanh"] == 1024 * 256_000 * 2  # b*s*V in bf16


@needs_archs
def test_phi3_lora_targets_use_its_fused_names(tmp_path):
    est = estimate(_run(tmp_path, ARCHS["phi3"], run_extra='mode = "lora"\nlora-targets = ["qkv_proj"]\nseq-len = 1024'))
    # Phi-3-mini: 32 layers, qkv_proj 3072 -> 9216, r = 8: 8 * (3072 + 9216) each
    assert est.trainable_params == 32 * 8 * (3072 + 9216)


def test_rope_scaling_lifts_the_context_limit(tmp_path):
    run = _run(tmp_path, {**SMALL, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, run_extra="seq-len = 8192")
    assert run.seq_len == 8192


PLUGIN = '''
from pytest_llmmem.families import LLAMA
from pytest_llmmem.hookspecs import hookimpl

@hookimpl
def llmmem_register_families(register):
    register(LLAMA._replace(name="acme_lm", qkv_bias=True, doc="acme/acme-lm"))
'''


def test_a_plugin_adds_an_in_house_family(tmp_path):
    site = tmp_path / "site"
    (site / "llmmem_acme-1.0.dist-info").mkdir(parents=True)
    (site / "llmmem_acme.py").write_text(PLUGIN)
    (site / "llmmem_acme-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: llmmem-acme\nVersion: 1.0\n")
    (site / "llmmem_acme-1.0.dist-info" / "entry_points.txt").write_text("[llmmem]\nacme = llmmem_acme\n")
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "model_type": "acme_lm"}))
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\nconfig = "config.json"\n'
                                             '[[tool.llmmem.runs]]\nname = "r"\ndtype = "bf16"\nmode = "inference"\nseq-len = 128\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest_llmmem.cli", "check", "--format", "json", str(tmp_path / "pyproject.toml")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "not a known family" not in out.stdout
    # the LLaMA count plus q/k/v biases: 2 layers x 3 x 256
    assert str(SMALL_PARAMS + 2 * 3 * 256) in out.stdout.replace(",", "")


def test_each_layer_kind_answers_an_engines_cache_bytes_and_serving_uses_them():
    from pytest_llmmem.model.layers import Attention, LatentAttention, StateSpace
    from pytest_llmmem.serving.serve import KVKind, kv_kinds

    att = Attention(heads=32, kv_heads=8, head_dim=128)
    assert att.engine_cache_bytes(2, 1) == 2 * 8 * 128 * 2 == 4096  # K and V, 8 heads x 128, fp16
    assert att.engine_cache_bytes(2, 16) == 2 * 1 * 128 * 2  # 8 KV heads on 16 ranks: one replicated head each
    assert att._replace(cache_heads=32).engine_cache_bytes(1, 1) == 2 * 8 * 128  # the engine caches the config's KV heads
    mla = LatentAttention(heads=16, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    assert mla.engine_cache_bytes(2, 8) == (512 + 64) * 2  # every rank keeps the whole latent
    ssm = StateSpace(d_inner=1536, d_state=16, d_conv=4, dt_rank=48)
    assert ssm.engine_cache_bytes(2, 1) == 1536 * (4 * 2 + 16 * 2)  # conv and SSM state in the model dtype, per sequence

    class Group:  # two layer groups of one model, as Architecture.layer_groups() gives them
        def __init__(self, count, attention):
            self.count, self.attention = count, attention

    class Arch:
        def layer_groups(self):
            return [Group(20, att), Group(4, att._replace(window=4096)), Group(4, att)]

    assert kv_kinds(Arch(), 2, 1) == [KVKind("full", 24, 4096), KVKind("sliding", 4, 4096, 4096)]
