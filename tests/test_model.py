"""Exact parameter counts from config.json, checked against published totals."""

import pytest

from pytest_llmmem.errors import ConfigError
from pytest_llmmem.hf.config import from_hf_config

from .conftest import LLAMA2_7B

CONFIGS = {
    # GPT-2 small: HF key names n_embd / n_layer / n_head, tied head, learned positions, biases.
    "gpt2": ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}, 124_439_808),
    "llama-2-7b": (LLAMA2_7B, 6_738_415_616),
    # Mistral-7B-v0.1: GQA with 8 KV heads.
    "mistral-7b": (
        {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
         "intermediate_size": 14336, "vocab_size": 32000, "tie_word_embeddings": False},
        7_241_732_096,
    ),
    # Qwen2.5-0.5B: q/k/v biases, tied embeddings, 2 KV heads.
    "qwen2.5-0.5b": (
        {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
         "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True},
        494_032_768,
    ),
    "tinyllama-1.1b": (
        {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
         "intermediate_size": 5632, "vocab_size": 32000, "tie_word_embeddings": False},
        1_100_048_384,
    ),
    # Mixtral-8x7B: 8 experts of gate/up/down plus a 4096x8 router per layer.
    "mixtral-8x7b": (
        {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
         "intermediate_size": 14336, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False},
        46_702_792_704,
    ),
    # phi-2: one LayerNorm per layer (parallel block), biases everywhere, lm_head bias.
    "phi-2": (
        {"model_type": "phi", "hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 10240,
         "vocab_size": 51200, "tie_word_embeddings": False},
        2_779_683_840,
    ),
    # pythia-160m (gpt_neox): fused query_key_value with bias, untied embed_out.
    "pythia-160m": (
        {"model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "vocab_size": 50304, "tie_word_embeddings": False},
        162_322_944,
    ),
    # gemma-2b: explicit head_dim 256, multi-query, tied by default.
    "gemma-2b": (
        {"model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
         "head_dim": 256, "intermediate_size": 16384, "vocab_size": 256000},
        2_506_172_416,
    ),
    # Qwen1.5-MoE-A2.7B: 60 routed experts + a shared expert with its own sigmoid gate.
    "qwen1.5-moe-a2.7b": (
        {"model_type": "qwen2_moe", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
         "intermediate_size": 5632, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
         "num_experts_per_tok": 4, "vocab_size": 151936, "tie_word_embeddings": False},
        14_315_784_192,
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_param_count_matches_published(name):
    cfg, expected = CONFIGS[name]
    assert from_hf_config(cfg).param_count() == expected


def test_llama_7b_count_by_hand():
    arch = from_hf_config(LLAMA2_7B)
    # embedding 32000*4096 = 131,072,000; per layer 4*4096^2 + 3*4096*11008 + 2*4096 = 202,383,360
    assert arch.embedding_params() == 131_072_000
    assert arch.layer_params() == 202_383_360
    # final norm 4096 + untied head 131,072,000
    assert arch.head_params() == 131_076_096
    assert arch.linear_params() == 32 * (4 * 4096**2 + 3 * 4096 * 11008)


def test_gpt2_defaults_inner_size_and_ties():
    arch = from_hf_config(CONFIGS["gpt2"][0])
    assert arch.intermediate_size == 4 * 768
    assert arch.tie_embeddings is True
    assert arch.module_names() == ["c_attn", "c_fc", "c_proj", "mlp.c_proj"]


def test_missing_field_names_it():
    cfg = dict(LLAMA2_7B)
    del cfg["hidden_size"]
    with pytest.raises(ConfigError, match='lacks "hidden_size"'):
        from_hf_config(cfg, "cfg.json")


def test_unknown_model_type_is_a_generic_decoder_marked_approximate():
    arch = from_hf_config({**LLAMA2_7B, "model_type": "lama"}, "cfg.json")
    assert arch.param_count() == 6_738_415_616  # read as LLaMA: the same shape keys, the same count
    assert arch.approximate == ('model_type "lama" is not a known family; counted as a LLaMA-style decoder',)


def test_unknown_model_type_without_the_usual_keys_names_them():
    cfg = {k: v for k, v in LLAMA2_7B.items() if k != "intermediate_size"}
    with pytest.raises(ConfigError, match='model_type "foo" is not a known family, and the config lacks intermediate_size'):
        from_hf_config({**cfg, "model_type": "foo"}, "cfg.json")


def test_gqa_must_divide():
    with pytest.raises(ConfigError, match="cannot be grouped"):
        from_hf_config({**LLAMA2_7B, "num_key_value_heads": 5}, "cfg.json")
