"""The built-in model families: one :class:`~pytest_llmmem.model.Family` record each.

Every entry's traits are read from ``transformers/models/<name>/modeling_<name>.py`` (5.24.0) and
its exact parameter count is tested against the model ``transformers`` builds on the meta device
(tests/test_families.py). Adding a family = one entry here (or from a plugin through the
``llmmem_register_families`` hook) plus its case in that test. :mod:`builtin` registers these
through the hook; nothing here runs at import beyond building the records.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import List

from .architecture import Family

LLAMA = Family("llama", attention_bias="qkvo", doc="meta-llama/Llama-3.1-8B")
_GPT2_NAMES = (("qkv", "c_attn"), ("o", "c_proj"), ("up", "c_fc"), ("down", "mlp.c_proj"))
_PHI3_NAMES = (("qkv", "qkv_proj"), ("o", "o_proj"), ("gate_up", "gate_up_proj"), ("down", "down_proj"))
_MOE_NAMES = LLAMA.names + (("router", "gate"),)
# Mixtral's experts as PEFT 0.21.2 names them: w1 (gate), w3 (up), w2 (down) become target_parameters
# gate_up_proj / down_proj (peft/utils/transformers_weight_conversion.py _MOE_TARGET_MODULE_MAPPING["mixtral"]);
# gate_proj/up_proj/down_proj match nothing in a Mixtral model (PEFT: "Target modules ... not found").
_MIXTRAL_NAMES = _MOE_NAMES + (("expert_gate", "w1"), ("expert_up", "w3"), ("expert_down", "w2"))
# gpt-oss experts keep gate and up fused (modeling_gpt_oss.py GptOssExperts.gate_up_proj).
_GPT_OSS_NAMES = LLAMA.names + (("router", "router"), ("expert_gate_up", "experts.gate_up_proj"), ("expert_down", "experts.down_proj"))


def builtin_families() -> List[Family]:
    """Every family the package knows without a plugin."""
    gemma = LLAMA._replace(name="gemma", tie_default=True, default_act="gelu_pytorch_tanh", rms_weight="gemma", doc="google/gemma-2b")
    gemma2 = gemma._replace(name="gemma2", norms_per_layer=4, sdpa=False, sliding="alternate", doc="google/gemma-2-9b")
    return [
        LLAMA,
        LLAMA._replace(name="mistral", attention_bias="", doc="mistralai/Mistral-7B-v0.1"),
        LLAMA._replace(name="mixtral", attention_bias="", peft_experts=True, names=_MIXTRAL_NAMES, doc="mistralai/Mixtral-8x7B-v0.1"),
        LLAMA._replace(name="qwen2", qkv_bias=True, attention_bias="", sliding="qwen", aliases=("qwen2.5",), doc="Qwen/Qwen2.5-0.5B"),
        # No "qwen" alias: model_type "qwen" is Qwen-1's remote-code model (fused c_attn), another count.
        LLAMA._replace(name="qwen2_moe", lora_targets=(), qkv_bias=True, attention_bias="", sliding="qwen", moe_layers="sparse-step",
                       names=_MOE_NAMES + (("shared", "shared_expert"),), doc="Qwen/Qwen1.5-MoE-A2.7B"),
        LLAMA._replace(name="qwen3", qk_norm="head", sliding="qwen", doc="Qwen/Qwen3-8B"),
        LLAMA._replace(name="qwen3_moe", lora_targets=(), peft_experts=True, qk_norm="head", sliding="qwen", moe_layers="sparse-step", names=_MOE_NAMES,
                       doc="Qwen/Qwen3-30B-A3B"),
        gemma,
        gemma2,
        gemma2._replace(name="gemma3_text", qk_norm="head", sdpa=True, sliding="every", sliding_every=6, doc="google/gemma-3-1b-pt"),
        gemma2._replace(name="gemma3", lora_targets=(), qk_norm="head", sdpa=True, sliding="every", sliding_every=6, reader="gemma3",
                        doc="google/gemma-3-4b-pt"),
        LLAMA._replace(name="phi3", lora_targets=(), names=_PHI3_NAMES, attention_bias="", fresh_rotary_q=True, doc="microsoft/Phi-3-mini-4k-instruct"),
        Family("phimoe", lora_targets=(), norm="layer", attention_bias="qkvo", names=_MOE_NAMES + (
            ("expert_gate", "w1"), ("expert_up", "w3"), ("expert_down", "w2")), doc="microsoft/Phi-3.5-MoE-instruct"),
        LLAMA._replace(name="deepseek_v2", lora_targets=(), peft_experts=True, reader="mla", attention_bias="", moe_layers="first-k-dense",
                       names=_MOE_NAMES, doc="deepseek-ai/DeepSeek-V2-Lite"),
        LLAMA._replace(name="deepseek_v3", lora_targets=(), peft_experts=True, reader="mla", attention_bias="", moe_layers="first-k-dense",
                       names=_MOE_NAMES, doc="deepseek-ai/DeepSeek-V3"),
        LLAMA._replace(name="gpt_oss", lora_targets=(), qkv_bias=True, out_bias=True, attention_bias="", sdpa=False, sliding="alternate",
                       sinks=True, glu_saves=6, rms_weight="fp32", names=_GPT_OSS_NAMES, doc="openai/gpt-oss-20b"),
        LLAMA._replace(name="olmo2", rms_weight="fp32", lora_targets=(), qk_norm="proj", doc="allenai/OLMo-2-1124-7B"),
        LLAMA._replace(name="granite", lora_targets=(), doc="ibm-granite/granite-3.1-8b-base"),
        LLAMA._replace(name="smollm3", lora_targets=(), doc="HuggingFaceTB/SmolLM3-3B"),
        LLAMA._replace(name="glm", lora_targets=(), attention_bias="qkv", attention_bias_default=True, names=LLAMA.names + (("gate_up", "gate_up_proj"),),
                       doc="THUDM/glm-4-9b-hf"),
        LLAMA._replace(name="glm4", lora_targets=(), attention_bias="qkv", attention_bias_default=True, norms_per_layer=4, names=LLAMA.names + (("gate_up", "gate_up_proj"),),
                       doc="THUDM/GLM-4-9B-0414"),
        LLAMA._replace(name="cohere", lora_targets=(), norm="layer-nobias", norms_per_layer=1, tie_default=True, doc="CohereForAI/c4ai-command-r-v01"),
        LLAMA._replace(name="cohere2", lora_targets=(), norm="layer-nobias", norms_per_layer=1, tie_default=True, sliding="every", sliding_every=4,
                       doc="CohereForAI/c4ai-command-r7b-12-2024"),
        Family("starcoder2", lora_targets=(), gated_mlp=False, norm="layer", attention_bias="all", tie_default=True,
               names=(("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"), ("up", "c_fc"), ("down", "c_proj")),
               default_act="gelu_pytorch_tanh", doc="bigcode/starcoder2-3b"),
        # "RefinedWebModel": the model_type falcon-7b's config.json had before the Hub moved it to transformers' Falcon
        # classes (tiiuae's remote-code configuration_RW.py; n_head, n_layer, the same architecture)
        Family("falcon", lora_targets=("query_key_value",), gated_mlp=False, norm="layer", reader="falcon", tie_default=True, default_act="gelu",
               aliases=("RefinedWebModel",),
               names=(("qkv", "query_key_value"), ("o", "dense"), ("up", "dense_h_to_4h"), ("down", "dense_4h_to_h")),
               doc="tiiuae/falcon-7b", default_context=(2048, "max_position_embeddings 2,048, FalconConfig's default (configuration_falcon.py; "
                                                        "the published falcon-7b/40b config.json have no length key)")),
        Family("mamba", lora_targets=(), reader="mamba", sdpa=False, tie_default=True, logits_fp32=True, doc="state-spaces/mamba-130m-hf"),
        LLAMA._replace(name="jamba", lora_targets=(), reader="jamba", attention_bias="", moe_layers="period",
                       names=LLAMA.names + (("router", "router"),), doc="ai21labs/Jamba-v0.1",
                       default_context=(262144, "max_position_embeddings 262,144, JambaConfig's default (configuration_jamba.py)")),
        Family(
            "gpt2", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True,
            learned_positions=True, softmax_upcast=False, tie_default=True, names=_GPT2_NAMES, default_act="gelu_new", doc="gpt2",
            lora_targets=("c_attn",),
        ),
        Family(
            "gpt_bigcode", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True, learned_positions=True,
            softmax_upcast=True, tie_default=True, names=_GPT2_NAMES, default_act="gelu_pytorch_tanh", lora_targets=("c_attn",),
            aliases=("starcoder",), doc="bigcode/starcoderbase-1b",
        ),
        Family(
            "gpt_neox", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True,
            names=(("qkv", "query_key_value"), ("o", "dense"), ("up", "dense_h_to_4h"), ("down", "dense_4h_to_h")),
            default_act="gelu", aliases=("pythia",), doc="EleutherAI/pythia-160m", lora_targets=("query_key_value",),
        ),
        Family(
            "phi", gated_mlp=False, norm="layer", norms_per_layer=1, qkv_bias=True, out_bias=True, mlp_bias=True,
            lm_head_bias=True, names=(("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "dense"), ("up", "fc1"), ("down", "fc2")),
            default_act="gelu_new", doc="microsoft/phi-2", lora_targets=("q_proj", "v_proj", "fc1", "fc2"),
        ),
        Family(
            "bert", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True, learned_positions=True,
            token_types=2, embedding_norm=True, final_norm=False, classifier=True, softmax_upcast=False,
            names=(("q", "query"), ("k", "key"), ("v", "value"), ("o", "attention.output.dense"), ("up", "intermediate.dense"), ("down", "output.dense")),
            default_act="gelu", doc="bert-base-uncased", lora_targets=("query", "value"),
        ),
    ]
