"""Every family, read from its published config.json, counts its parameters exactly as transformers builds it.

The figures are literal so the test runs without torch: each is ``sum(p.numel() for p in
model.parameters())`` of the model transformers 5.24.0 builds from that config on the meta device
(``with torch.device("meta"): AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))``;
Gemma 3 multimodal through AutoModelForImageTextToText; tied weights once). The configs are the
shape keys of the checkpoints named, as published on the Hugging Face Hub.
``test_counts_rederived_with_transformers`` rebuilds each when torch and transformers are installed.
"""

import json
from pathlib import Path

import pytest

from pytest_llmmem.hf.config import from_hf_config

CONFIGS = {
    'Qwen3-30B-A3B': (
        {'model_type': 'qwen3_moe', 'hidden_size': 2048, 'num_hidden_layers': 48, 'num_attention_heads': 32, 'num_key_value_heads': 4, 'head_dim': 128, 'intermediate_size': 6144, 'moe_intermediate_size': 768, 'num_experts': 128, 'num_experts_per_tok': 8, 'decoder_sparse_step': 1, 'mlp_only_layers': [], 'vocab_size': 151936, 'tie_word_embeddings': False, 'max_position_embeddings': 40960, 'use_sliding_window': False, 'sliding_window': None},
        30_532_122_624,
    ),
    'gemma-3-1b-pt': (
        {'model_type': 'gemma3_text', 'hidden_size': 1152, 'num_hidden_layers': 26, 'num_attention_heads': 4, 'num_key_value_heads': 1, 'head_dim': 256, 'intermediate_size': 6912, 'vocab_size': 262144, 'sliding_window': 512, 'sliding_window_pattern': 6, 'max_position_embeddings': 32768, 'query_pre_attn_scalar': 256, 'rope_scaling': None},
        999_885_952,
    ),
    'gemma-3-4b-pt': (
        {'model_type': 'gemma3', 'text_config': {'hidden_size': 2560, 'intermediate_size': 10240, 'model_type': 'gemma3_text', 'num_hidden_layers': 34, 'num_attention_heads': 8, 'num_key_value_heads': 4, 'sliding_window': 1024, 'rope_scaling': {'factor': 8.0, 'rope_type': 'linear'}}, 'vision_config': {'hidden_size': 1152, 'image_size': 896, 'intermediate_size': 4304, 'model_type': 'siglip_vision_model', 'num_attention_heads': 16, 'num_hidden_layers': 27, 'patch_size': 14, 'vision_use_head': False}, 'mm_tokens_per_image': 256},
        4_300_079_472,
    ),
    'Phi-3.5-MoE': (
        {'model_type': 'phimoe', 'hidden_size': 4096, 'num_hidden_layers': 32, 'num_attention_heads': 32, 'num_key_value_heads': 8, 'intermediate_size': 6400, 'num_local_experts': 16, 'num_experts_per_tok': 2, 'vocab_size': 32064, 'attention_bias': True, 'lm_head_bias': True, 'tie_word_embeddings': False, 'max_position_embeddings': 131072, 'sliding_window': 131072},
        41_873_153_344,
    ),
    'DeepSeek-V3': (
        {'model_type': 'deepseek_v3', 'hidden_size': 7168, 'num_hidden_layers': 61, 'num_attention_heads': 128, 'num_key_value_heads': 128, 'q_lora_rank': 1536, 'kv_lora_rank': 512, 'qk_nope_head_dim': 128, 'qk_rope_head_dim': 64, 'v_head_dim': 128, 'intermediate_size': 18432, 'moe_intermediate_size': 2048, 'n_routed_experts': 256, 'n_shared_experts': 1, 'num_experts_per_tok': 8, 'first_k_dense_replace': 3, 'vocab_size': 129280, 'tie_word_embeddings': False, 'max_position_embeddings': 163840, 'rope_scaling': {'beta_fast': 32, 'beta_slow': 1, 'factor': 40, 'mscale': 1.0, 'mscale_all_dim': 1.0, 'original_max_position_embeddings': 4096, 'type': 'yarn'}},
        671_026_404_352,
    ),
    'OLMo-2-1124-7B': (
        {'model_type': 'olmo2', 'hidden_size': 4096, 'num_hidden_layers': 32, 'num_attention_heads': 32, 'num_key_value_heads': 32, 'intermediate_size': 11008, 'vocab_size': 100352, 'tie_word_embeddings': False, 'max_position_embeddings': 4096, 'attention_bias': False},
        7_298_617_344,
    ),
    'granite-3.1-8b': (
        {'model_type': 'granite', 'hidden_size': 4096, 'num_hidden_layers': 40, 'num_attention_heads': 32, 'num_key_value_heads': 8, 'intermediate_size': 12800, 'vocab_size': 49155, 'tie_word_embeddings': True, 'max_position_embeddings': 131072, 'attention_bias': False, 'mlp_bias': False},
        8_170_848_256,
    ),
    'SmolLM3-3B': (
        {'model_type': 'smollm3', 'hidden_size': 2048, 'num_hidden_layers': 36, 'num_attention_heads': 16, 'num_key_value_heads': 4, 'intermediate_size': 11008, 'vocab_size': 128256, 'tie_word_embeddings': True, 'max_position_embeddings': 65536, 'attention_bias': False, 'mlp_bias': False, 'use_sliding_window': False, 'sliding_window': None},
        3_075_098_624,
    ),
    'glm-4-9b-hf': (
        {'model_type': 'glm', 'hidden_size': 4096, 'num_hidden_layers': 40, 'num_attention_heads': 32, 'num_key_value_heads': 2, 'head_dim': 128, 'intermediate_size': 13696, 'vocab_size': 151552, 'attention_bias': True, 'partial_rotary_factor': 0.5, 'tie_word_embeddings': False, 'max_position_embeddings': 131072},
        9_399_951_360,
    ),
    'GLM-4-9B-0414': (
        {'model_type': 'glm4', 'hidden_size': 4096, 'num_hidden_layers': 40, 'num_attention_heads': 32, 'num_key_value_heads': 2, 'head_dim': 128, 'intermediate_size': 13696, 'vocab_size': 151552, 'attention_bias': True, 'partial_rotary_factor': 0.5, 'tie_word_embeddings': False, 'max_position_embeddings': 32768},
        9_400_279_040,
    ),
    'c4ai-command-r-v01': (
        {'model_type': 'cohere', 'hidden_size': 8192, 'num_hidden_layers': 40, 'num_attention_heads': 64, 'num_key_value_heads': 64, 'intermediate_size': 22528, 'vocab_size': 256000, 'use_qk_norm': False, 'max_position_embeddings': 8192, 'logit_scale': 0.0625},
        34_980_831_232,
    ),
    'c4ai-command-r-plus': (
        {'model_type': 'cohere', 'hidden_size': 12288, 'num_hidden_layers': 64, 'num_attention_heads': 96, 'num_key_value_heads': 8, 'intermediate_size': 33792, 'vocab_size': 256000, 'use_qk_norm': True, 'max_position_embeddings': 8192, 'logit_scale': 0.8333333333333334},
        103_810_674_688,
    ),
    'c4ai-command-r7b-12-2024': (
        {'model_type': 'cohere2', 'hidden_size': 4096, 'num_hidden_layers': 32, 'num_attention_heads': 32, 'num_key_value_heads': 8, 'intermediate_size': 14336, 'vocab_size': 256000, 'sliding_window': 4096, 'sliding_window_pattern': 4, 'max_position_embeddings': 8192},
        8_028_033_024,
    ),
    'starcoder2-3b': (
        {'model_type': 'starcoder2', 'hidden_size': 3072, 'num_hidden_layers': 30, 'num_attention_heads': 24, 'num_key_value_heads': 2, 'intermediate_size': 12288, 'vocab_size': 49152, 'use_bias': True, 'sliding_window': 4096, 'max_position_embeddings': 16384, 'hidden_act': 'gelu_pytorch_tanh'},
        3_030_371_328,
    ),
    'falcon-7b': (
        {'model_type': 'falcon', 'hidden_size': 4544, 'num_hidden_layers': 32, 'num_attention_heads': 71, 'multi_query': True, 'parallel_attn': True, 'new_decoder_architecture': False, 'bias': False, 'alibi': False, 'vocab_size': 65024},
        6_921_720_704,
    ),
    'falcon-40b': (
        {'model_type': 'falcon', 'hidden_size': 8192, 'num_hidden_layers': 60, 'num_attention_heads': 128, 'num_kv_heads': 8, 'new_decoder_architecture': True, 'parallel_attn': True, 'bias': False, 'alibi': False, 'vocab_size': 65024},
        41_303_293_952,
    ),
    'falcon-rw-1b': (
        {'model_type': 'falcon', 'hidden_size': 2048, 'num_hidden_layers': 24, 'num_attention_heads': 32, 'multi_query': False, 'parallel_attn': False, 'new_decoder_architecture': False, 'bias': True, 'alibi': True, 'vocab_size': 50304},
        1_311_625_216,
    ),
    'mamba-130m-hf': (
        {'model_type': 'mamba', 'hidden_size': 768, 'num_hidden_layers': 24, 'vocab_size': 50280, 'state_size': 16, 'conv_kernel': 4, 'expand': 2, 'time_step_rank': 48, 'use_bias': False, 'use_conv_bias': True},
        129_135_360,
    ),
    'Jamba-v0.1': (
        {'model_type': 'jamba', 'hidden_size': 4096, 'num_hidden_layers': 32, 'num_attention_heads': 32, 'num_key_value_heads': 8, 'intermediate_size': 14336, 'num_experts': 16, 'num_experts_per_tok': 2, 'attn_layer_period': 8, 'attn_layer_offset': 4, 'expert_layer_period': 2, 'expert_layer_offset': 1, 'mamba_d_state': 16, 'mamba_d_conv': 4, 'mamba_expand': 2, 'mamba_dt_rank': 256, 'mamba_conv_bias': True, 'mamba_proj_bias': False, 'vocab_size': 65536, 'tie_word_embeddings': False},
        51_570_323_328,
    ),
    'Qwen1.5-MoE-A2.7B': (
        {'model_type': 'qwen2_moe', 'hidden_size': 2048, 'num_hidden_layers': 24, 'num_attention_heads': 16, 'num_key_value_heads': 16, 'intermediate_size': 5632, 'moe_intermediate_size': 1408, 'shared_expert_intermediate_size': 5632, 'num_experts': 60, 'num_experts_per_tok': 4, 'vocab_size': 151936, 'tie_word_embeddings': False},
        14_315_784_192,
    ),
}
ARCHS = Path(__file__).resolve().parents[2] / "shared" / "validation" / "archs.jsonl"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_family_count_is_exact(name):
    cfg, expected = CONFIGS[name]
    arch = from_hf_config(cfg)
    assert arch.param_count() == expected
    assert arch.approximate == ()


@pytest.mark.skipif(not ARCHS.exists(), reason="shared validation data not present")
def test_shared_validation_archs_are_exact():
    rows = [json.loads(line) for line in ARCHS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 6
    for row in rows:
        assert from_hf_config(row["config"]).param_count() == row["params"], row["name"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_counts_rederived_with_transformers(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(CONFIGS[name][0])
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    auto = transformers.AutoModelForImageTextToText if "vision_config" in cfg else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == CONFIGS[name][1]


@pytest.mark.parametrize("model_type", ["glm", "glm4"])
def test_glm_attention_bias_defaults_to_true(model_type):
    """A GLM config.json without attention_bias has the q/k/v biases: configuration_glm.py and
    configuration_glm4.py default it to true (transformers 5.24). GLM-4-9B-0414 as vendored on GitHub
    omits the key."""
    cfg = {key: value for key, value in CONFIGS["GLM-4-9B-0414"][0].items() if key != "attention_bias"}
    cfg["model_type"] = model_type
    omitted = from_hf_config(cfg).param_count()
    assert omitted == from_hf_config({**cfg, "attention_bias": True}).param_count()
    # by hand: 40 layers x (q 32·128 + k 2·128 + v 2·128) = 40 x 4,608 = 184,320 bias parameters
    assert omitted - from_hf_config({**cfg, "attention_bias": False}).param_count() == 184_320


def test_partial_rotary_keeps_o_proj_input_beside_the_kernel_output(tmp_path):
    """GLM-4's partial rotary concatenates the rotated and pass-through halves (modeling_glm4.py
    apply_rotary_pos_emb), so SDPA gets a contiguous (b, H, s, d) q, returns its output in that layout,
    and o_proj's input is a transposed copy kept beside it. Measured on a 1-layer GLM-4 (hidden 256,
    4 heads of 64, 2 KV heads, rotary over 32 dims, vocab 1000; bf16, batch 2 x 16 tokens; torch 2.13 CPU,
    transformers 5.24, SDPA): the tensors its autograd graph saves, parameters excluded, hold 623,232 bytes,
    16,384 = 2·16·4·64·2 of them the copy; the same model with full rotary keeps no copy."""
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    def saved(rotary: float) -> int:
        cfg = {"model_type": "glm4", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000, "partial_rotary_factor": rotary, "attention_bias": True}
        path = tmp_path / f"config-{rotary}.json"
        path.write_text(json.dumps(cfg))
        est = estimate(adhoc_run({"config": str(path), "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 2,
                                  "seq-len": 16, "optimizer": "adamw"}))
        d = est.details  # what autograd keeps: activations less the one-layer recompute, plus the fp32 log-softmax
        return est.full("activations") - d.get("activations.recomputed_layer", 0) + d["logits.log_softmax"]

    assert saved(0.5) == 623_232
    # full rotary: no copy (16,384) and rotary tables over all 64 dims instead of 32 (+2·16·32·2 = 2,048)
    assert saved(0.5) - saved(1.0) == 16_384 - 2_048


def test_rotary_on_a_fused_projection_keeps_o_proj_input_beside_the_kernel_output(tmp_path):
    """Phi-3 slices q and k out of qkv_proj's output, so rotary writes a fresh contiguous (b, H, s, d) q and,
    as with partial rotary above, o_proj's input is a copy beside SDPA's output. Measured on a 1-layer Phi-3
    (hidden 256, 4 heads of 64, 4 KV heads, intermediate 512, vocab 1000, untied; bf16, batch 2 x 16 tokens;
    torch 2.13 CPU, transformers 5.24, SDPA): its autograd graph saves 575,872 bytes, parameters excluded."""
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    cfg = {"model_type": "phi3", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 4, "vocab_size": 1000, "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    est = estimate(adhoc_run({"config": str(path), "mode": "train", "dtype": "bf16", "precision": "pure", "batch-size": 2, "seq-len": 16,
                              "optimizer": "adamw"}))
    d = est.details
    assert est.full("activations") - d.get("activations.recomputed_layer", 0) + d["logits.log_softmax"] == 575_872
