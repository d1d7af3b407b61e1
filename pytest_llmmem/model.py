"""Transformer architectures: exact parameter counts and the linear layers LoRA can target.

A :class:`Family` records the traits that change the count or the activations (gated MLP, norm
kind, biases, learned positions, tied head, MoE). :mod:`hf_config` reads a Hugging Face
``config.json`` dict with each family's own key names. Counts follow the ``transformers``
modelling code of each family and are tested against published totals (GPT-2 124,439,808;
Llama-2-7B 6,738,415,616; Mixtral-8x7B 46,702,792,704; ...).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from .errors import ConfigError, did_you_mean, one_of


class Family(NamedTuple):
    """Traits of one modelling-code family, as in ``transformers/models/<name>/modeling_<name>.py``.

    The package's records are NamedTuples, not dataclasses: a dataclass costs up to 1 ms of
    start-up to generate, and ``llmmem check`` runs on every commit (benchmarks/cli_startup.py).
    """

    name: str
    gated_mlp: bool = True  # gate/up/down with an activation on the gate (LLaMA) vs fc1/fc2
    norm: str = "rms"  # "rms" (RMSNorm, weight only) or "layer" (LayerNorm, weight and bias)
    norms_per_layer: int = 2  # phi runs attention and MLP in parallel off one LayerNorm
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

    def module(self, role: str) -> Optional[str]:
        return dict(self.names).get(role)


_LLAMA = Family("llama")
_GPT2_NAMES = (("qkv", "c_attn"), ("o", "c_proj"), ("up", "c_fc"), ("down", "mlp.c_proj"))
FAMILIES: Dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA._replace(name="mistral"),
    "mixtral": _LLAMA._replace(name="mixtral", names=_LLAMA.names + (("router", "gate"),)),
    "qwen2": _LLAMA._replace(name="qwen2", qkv_bias=True),
    "qwen2_moe": _LLAMA._replace(name="qwen2_moe", qkv_bias=True, names=_LLAMA.names + (("router", "gate"),)),
    "gemma": _LLAMA._replace(name="gemma", tie_default=True, default_act="gelu_pytorch_tanh"),
    "gpt2": Family(
        "gpt2", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True,
        learned_positions=True, softmax_upcast=False, tie_default=True, names=_GPT2_NAMES, default_act="gelu_new",
    ),
    "gpt_bigcode": Family(
        "gpt_bigcode", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True,
        learned_positions=True, softmax_upcast=True, tie_default=True, names=_GPT2_NAMES, default_act="gelu_pytorch_tanh",
    ),
    "gpt_neox": Family(
        "gpt_neox", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True,
        names=(("qkv", "query_key_value"), ("o", "dense"), ("up", "dense_h_to_4h"), ("down", "dense_4h_to_h")),
        default_act="gelu",
    ),
    "phi": Family(
        "phi", gated_mlp=False, norm="layer", norms_per_layer=1, qkv_bias=True, out_bias=True, mlp_bias=True,
        lm_head_bias=True, names=(("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "dense"), ("up", "fc1"), ("down", "fc2")),
        default_act="gelu_new",
    ),
    "bert": Family(
        "bert", gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True, learned_positions=True,
        token_types=2, embedding_norm=True, final_norm=False, classifier=True, softmax_upcast=False,
        names=(("q", "query"), ("k", "key"), ("v", "value"), ("o", "attention.output.dense"), ("up", "intermediate.dense"), ("down", "output.dense")),
        default_act="gelu",
    ),
}
FAMILY_ALIASES = {"qwen2.5": "qwen2", "qwen": "qwen2", "gemma2": "gemma", "pythia": "gpt_neox", "starcoder": "gpt_bigcode"}

# Activations written as several Python ops save their intermediates for backward:
# gelu_new = 0.5*x*(1+tanh(...)) keeps tanh, 0.5*x and 1+tanh (transformers activations.NewGELUActivation).
PYTHON_ACTIVATIONS = {"gelu_new": 3, "gelu_fast": 3, "quick_gelu": 1}


def family(name: object) -> Family:
    if not isinstance(name, str):
        raise ConfigError(f"expected a family name as a string, got {name!r}.", hint=f"Valid: {one_of(sorted(FAMILIES))}.")
    key = FAMILY_ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise ConfigError(
            f'unknown model family "{name}".{did_you_mean(name, FAMILIES)}',
            hint=f"Valid: {one_of(sorted(FAMILIES))}.",
        )
    return FAMILIES[key]


class Linear(NamedTuple):
    """One weight matrix of a layer (``count`` of them: MoE experts), as LoRA and quantisers see it."""

    role: str
    name: str
    d_in: int
    d_out: int
    bias: bool
    count: int = 1
    active: int = 1  # how many of the ``count`` each token passes through (MoE top-k)

    @property
    def params(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


class Architecture(NamedTuple):
    """A transformer's shape; every count and activation size is derived from it."""

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

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def act(self) -> str:
        return self.hidden_act or self.family.default_act

    def linears(self) -> List[Linear]:
        """The weight matrices of one layer, in module order."""
        fam, h, d = self.family, self.hidden_size, self.d_head
        q_out, kv_out = self.num_heads * d, self.num_kv_heads * d
        out: List[Linear] = []
        if fam.module("qkv"):
            out.append(Linear("qkv", fam.module("qkv"), h, q_out + 2 * kv_out, fam.qkv_bias))
        else:
            out.append(Linear("q", fam.module("q"), h, q_out, fam.qkv_bias))
            out.append(Linear("k", fam.module("k"), h, kv_out, fam.qkv_bias))
            out.append(Linear("v", fam.module("v"), h, kv_out, fam.qkv_bias))
        out.append(Linear("o", fam.module("o"), q_out, h, fam.out_bias))
        f = self.moe_intermediate_size or self.intermediate_size
        experts, active = (self.num_experts, self.experts_per_token) if self.num_experts else (1, 1)
        if self.num_experts:
            out.append(Linear("router", fam.module("router") or "gate", h, self.num_experts, False))
        if fam.gated_mlp:
            out.append(Linear("gate", fam.module("gate"), h, f, fam.mlp_bias, experts, active))
        out.append(Linear("up", fam.module("up"), h, f, fam.mlp_bias, experts, active))
        out.append(Linear("down", fam.module("down"), f, h, fam.mlp_bias, experts, active))
        fs = self.shared_expert_intermediate_size
        if fs:
            # qwen2_moe: a shared expert every token uses, gated by a 1-wide sigmoid (modeling_qwen2_moe.py).
            out += [
                Linear("shared_gate", "shared_expert.gate_proj", h, fs, False),
                Linear("shared_up", "shared_expert.up_proj", h, fs, False),
                Linear("shared_down", "shared_expert.down_proj", fs, h, False),
                Linear("shared_router", "shared_expert_gate", h, 1, False),
            ]
        return out

    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.family.norm == "layer" else 1)

    def layer_params(self) -> int:
        return sum(lin.params for lin in self.linears()) + self.family.norms_per_layer * self.norm_params()

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
        return self.embedding_params() + self.num_layers * self.layer_params() + self.head_params()

    def linear_params(self) -> int:
        """Parameters in the layers' weight matrices (what weight quantisation applies to)."""
        return self.num_layers * sum(lin.params for lin in self.linears())

    def module_names(self) -> List[str]:
        return sorted({lin.name for lin in self.linears()})


def validate(arch: Architecture, source: str) -> None:
    """Shape rules every family obeys; a violation names the key."""
    if arch.num_layers <= 0 or arch.hidden_size <= 0 or arch.vocab_size <= 0 or arch.num_heads <= 0:
        raise ConfigError("hidden-size, num-layers, num-heads and vocab-size must all be greater than zero.", path=source, key="hidden-size")
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


class ParamsOnly(NamedTuple):
    """A model known only by its parameter count: no activations, KV cache or exact splits."""

    params: int
    source: str = ""


Model = Any  # Architecture | ParamsOnly
