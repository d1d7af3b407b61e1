"""Transformer architectures: exact parameter counts and the linear layers LoRA can target.

A :class:`Family` records the traits that change the count or the activations (gated MLP, norm
kind, biases, learned positions, tied head, MoE). :mod:`hf_config` reads a Hugging Face
``config.json`` dict with each family's own key names. Counts follow the ``transformers``
modelling code of each family and are tested against published totals (GPT-2 124,439,808;
Llama-2-7B 6,738,415,616; Mixtral-8x7B 46,702,792,704; ...).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from ..errors import ConfigError
from ..record import Record
from .layers import Attention, Dense, LayerGroup, Linear, MoE

__all__ = ["Architecture", "Family", "Linear", "ParamsOnly", "validate"]


class Family(Record):
    """Traits of one modelling-code family, as in ``transformers/models/<name>/modeling_<name>.py``.

    The package's records are ``record.Record`` tuples, not dataclasses or ``typing.NamedTuple``: a
    dataclass costs up to 1 ms of start-up to generate and a NamedTuple ~0.1 ms, and ``llmmem check``
    runs on every commit (benchmarks/cli_startup.py).
    """

    name: str
    gated_mlp: bool = True  # gate/up/down with an activation on the gate (LLaMA) vs fc1/fc2
    norm: str = "rms"  # "rms" (RMSNorm, weight only), "layer" (LayerNorm, weight and bias), "layer-nobias" (Cohere)
    norms_per_layer: int = 2  # phi runs attention and MLP in parallel off one LayerNorm; Gemma 2 has 4
    qkv_bias: bool = False
    out_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False
    learned_positions: bool = False  # GPT-2 / BERT position embedding table
    token_types: int = 0  # BERT segment embeddings
    embedding_norm: bool = False  # BERT: LayerNorm after the embeddings
    final_norm: bool = True
    lm_head_bias: bool = False
    classifier: bool = False  # BERT sequence classification: pooler + classifier instead of an LM head
    softmax_upcast: bool = True  # eager attention runs softmax in fp32 and casts back
    tie_default: bool = False
    names: Tuple[Tuple[str, str], ...] = (
        ("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"),
        ("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj"),
    )  # role -> module name as the family spells it; a "qkv" role means one fused projection
    default_act: str = "silu"
    qk_norm: str = ""  # "head" (Qwen3, Gemma 3) or "proj" (OLMo 2) RMSNorm on q and k
    # How RMSNorm applies its weight: "cast" (LLaMA: weight * x.to(dtype), keeps the 16-bit x), "fp32"
    # (OLMo 2: weight * x in fp32, keeps the fp32 x), "gemma" ((1 + weight) * x in fp32, keeps both).
    rms_weight: str = "cast"
    sdpa: bool = True  # False: transformers has no SDPA path (Gemma 2 soft-capping, gpt-oss sinks): eager unless flash-attn
    reader: str = "decoder"  # which reader in hf_config builds its layer groups
    sliding: str = "config"  # how layer kinds follow when config.json has no layer_types (hf_config.sliding_layers)
    attention_bias: str = ""  # what config.json's attention_bias switches: "qkvo" (LLaMA), "qkv" (GLM); "all": use_bias, every linear
    attention_bias_default: bool = False  # attention_bias when config.json omits it: configuration_<name>.py's default (GLM, GLM-4: true)
    sinks: bool = False  # gpt-oss attention sinks
    # Rotary reads q as a strided view of the fused projection's output (modeling_phi3.py: qkv[..., :query_pos].view(...)
    # .transpose(1, 2)), so it writes a fresh contiguous (b, H, s, d) q and SDPA's output is not o_proj's input.
    # Falcon's fused layout is reshaped (a copy) first, so its rotary keeps the projection's layout: False there.
    fresh_rotary_q: bool = False
    glu_saves: int = 3  # f-wide tensors a gated MLP keeps per token (gate, up, act(gate)); gpt-oss's clamped SwiGLU keeps 6
    moe_layers: str = "all"  # which layers are MoE when experts are set (hf_config.mlp_kinds)
    sliding_every: int = 0  # "every" pattern: every n-th layer is full attention, the rest sliding
    # PEFT's default LoRA target_modules for the model_type (peft/utils/constants.py
    # TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); () where PEFT has none and asks for them.
    lora_targets: Tuple[str, ...] = ("q_proj", "v_proj")
    # PEFT 0.21.2 maps LoRA targets named after v4 expert linears onto the 3D routed-expert parameters only for
    # model types transformers lists in _MODEL_TO_CONVERSION_PATTERN as "qwen2_moe" (peft/utils/
    # transformers_weight_conversion.py _convert_peft_config_moe; transformers/conversion_mapping.py): True there.
    peft_experts: bool = False
    logits_fp32: bool = False  # the head's output is upcast before returning (MambaForCausalLM: lm_head(...).float())
    doc: str = ""  # an example checkpoint, for the README and messages
    aliases: Tuple[str, ...] = ()
    # (length, why) when config.json has no length key: the config class default, or vLLM's fallback
    default_context: Tuple[int, str] = (0, "")

    def module(self, role: str) -> Optional[str]:
        for known, module in self.names:  # a loop, not dict(self.names): fit's search asks ~1,000 times
            if known == role:
                return module
        return None

    def own_spelling(self, name: str) -> Optional[str]:
        """This family's name for the role that LLaMA's module ``name`` plays (Mixtral: gate_proj -> w1),
        for a target written in another family's spelling; None when there is none."""
        role = {module: role for role, module in type(self)._field_defaults["names"]}.get(name)
        own = role and (self.module(f"expert_{role}") or self.module(role))
        return own if own and own != name else None


# Activations written as several Python ops save their intermediates for backward:
# gelu_new = 0.5*x*(1+tanh(...)) keeps tanh, 0.5*x and 1+tanh (transformers activations.NewGELUActivation).
PYTHON_ACTIVATIONS = {"gelu_new": 3, "gelu_fast": 3, "quick_gelu": 1}


class Architecture(Record):
    """A transformer's shape; every count and activation size is derived from it.

    The scalar fields describe a uniform LLaMA-style stack (what the TOML shape keys give).
    ``groups``, when set, is the model as a list of layer groups of their own kinds (sliding and
    full attention, MLA, Mamba, dense and MoE layers); otherwise one group is derived from the fields.
    """

    family: Family
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    head_dim: int = 0  # 0: hidden_size // num_heads
    max_positions: int = 0  # learned position tables only
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0  # 0: intermediate_size
    shared_expert_intermediate_size: int = 0  # qwen2_moe shared expert
    hidden_act: str = ""
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    num_labels: int = 2  # classifier families
    source: str = ""  # where it was read from, for messages
    groups: Tuple[LayerGroup, ...] = ()  # the layers by kind; () = one group from the fields above
    extra_params: int = 0  # weights outside the decoder stack: a vision tower and its projector (Gemma 3)
    final_softcap: float = 0.0  # Gemma 2: tanh soft-capping of the final logits
    approximate: Tuple[str, ...] = ()  # why the count is not exact (a generic reading of an unknown family)
    rotary_dim: Optional[int] = None  # dims with rotary cos/sin tables; None: the head dim, 0: no rotary
    max_context: int = 0  # the longest sequence config.json allows (context_window.derive; 0: not given)
    context_why: str = ""  # how max_context was derived, for messages
    config: Any = None  # the config.json mapping it was read from, for llmmem measure

    def context(self) -> Tuple[int, str]:
        """(the longest sequence the model accepts, why); (0, "") when nothing says. A config.json's
        derived length, else a declared max-position-embeddings."""
        if self.max_context:
            return self.max_context, self.context_why
        if self.max_positions:
            return self.max_positions, f"max_position_embeddings {self.max_positions:,}, no rope_scaling"
        return 0, ""

    @property
    def d_head(self) -> int:
        return self.head_dim or (self.hidden_size // self.num_heads if self.num_heads else 0)

    @property
    def act(self) -> str:
        return self.hidden_act or self.family.default_act

    def layer_groups(self) -> Tuple[LayerGroup, ...]:
        """The decoder layers grouped by kind."""
        if self.groups:
            return self.groups
        fam = self.family
        attn = Attention(self.num_heads, self.num_kv_heads, self.d_head, qk_norm=fam.qk_norm)
        if self.num_experts:
            fs = self.shared_expert_intermediate_size
            mlp: Any = MoE(self.num_experts, self.experts_per_token, self.moe_intermediate_size or self.intermediate_size,
                           shared_d_ff=fs, shared_gate=bool(fs), gated=fam.gated_mlp)
        else:
            mlp = Dense(self.intermediate_size, fam.gated_mlp)
        return (LayerGroup(self.num_layers, attn, mlp, fam.norms_per_layer),)

    def linears(self) -> List[Linear]:
        """The distinct weight matrices of the layers (one per module name and shape), in module order."""
        seen, out = set(), []
        for g in self.layer_groups():
            for lin in g.linears(self.family, self.hidden_size):
                if lin not in seen:
                    seen.add(lin)
                    out.append(lin)
        return out

    def group_linears(self) -> List[Tuple[int, List[Linear]]]:
        """(layer count, that group's linears) for every group."""
        return [(g.count, g.linears(self.family, self.hidden_size)) for g in self.layer_groups()]

    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.family.norm == "layer" else 1)

    def decoder_params(self) -> int:
        """All decoder layers together."""
        h, n = self.hidden_size, self.norm_params()
        return sum(g.count * g.params(self.family, h, n) for g in self.layer_groups())

    def layer_params(self) -> int:
        """The largest single decoder layer (what FSDP gathers as one unit)."""
        h, n = self.hidden_size, self.norm_params()
        return max(g.params(self.family, h, n) for g in self.layer_groups())

    def embedding_params(self) -> int:
        """Token table plus position/segment tables and the embedding LayerNorm."""
        fam, h = self.family, self.hidden_size
        n = self.vocab_size * h
        n += self.max_positions * h if fam.learned_positions else 0
        n += fam.token_types * h
        n += self.norm_params() if fam.embedding_norm else 0
        return n

    def head_params(self) -> int:
        """Final norm plus the output head (LM head unless tied, or BERT's pooler + classifier)."""
        fam, h = self.family, self.hidden_size
        n = self.norm_params() if fam.final_norm else 0
        if fam.classifier:
            return n + (h * h + h) + (h * self.num_labels + self.num_labels)
        if not self.tie_embeddings:
            n += self.vocab_size * h + (self.vocab_size if fam.lm_head_bias else 0)
        elif fam.lm_head_bias:
            n += self.vocab_size
        return n

    def param_count(self) -> int:
        return self.embedding_params() + self.decoder_params() + self.head_params() + self.extra_params

    def linear_params(self) -> int:
        """Parameters in the layers' weight matrices (what weight quantisation applies to)."""
        return sum(count * sum(lin.params for lin in lins) for count, lins in self.group_linears())

    def fp32_params(self) -> int:
        """Parameters kept in fp32 whatever the dtype: DeepSeek's router (modeling_deepseek_v3.py
        ``_keep_in_fp32_modules_strict = [..., "gate.weight"]``)."""
        h = self.hidden_size
        return sum(g.count * h * g.mlp.experts for g in self.layer_groups() if getattr(g.mlp, "router_fp32", False))

    def module_names(self) -> List[str]:
        return sorted({lin.name for lin in self.linears()})


def validate(arch: Architecture, source: str) -> None:
    """Shape rules every family obeys; a violation names the key."""
    if arch.num_layers <= 0 or arch.hidden_size <= 0 or arch.vocab_size <= 0 or (arch.num_heads <= 0 and not arch.groups):
        raise ConfigError("hidden-size, num-layers, num-heads and vocab-size must all be greater than zero.", path=source, key="hidden-size")
    if not arch.num_heads:
        return  # no softmax attention anywhere (Mamba): the reader checked the mixer's own keys
    if not arch.head_dim and arch.hidden_size % arch.num_heads:
        raise ConfigError(
            f"hidden-size {arch.hidden_size} is not divisible by num-heads {arch.num_heads}.",
            path=source, key="num-heads", hint="Set head-dim explicitly if the model uses a different head size.",
        )
    if arch.num_kv_heads <= 0 or arch.num_heads % arch.num_kv_heads:
        raise ConfigError(
            f"num-heads {arch.num_heads} cannot be grouped over num-kv-heads {arch.num_kv_heads}.",
            path=source, key="num-kv-heads", hint="num-kv-heads must divide num-heads (1 = multi-query, = num-heads for plain attention).",
        )
    if arch.experts_per_token and not arch.num_experts:
        raise ConfigError("experts-per-token is set but num-experts is not.", path=source, key="experts-per-token",
                          hint="Set num-experts for a mixture-of-experts model, or drop experts-per-token.")
    if arch.num_experts and not 0 < arch.experts_per_token <= arch.num_experts:
        raise ConfigError(
            f"experts-per-token {arch.experts_per_token} must be between 1 and num-experts {arch.num_experts}.",
            path=source, key="experts-per-token",
        )


class ParamsOnly(Record):
    """A model known only by its parameter count: no activations, KV cache or exact splits."""

    params: int
    source: str = ""


Model = Any  # Architecture | ParamsOnly
