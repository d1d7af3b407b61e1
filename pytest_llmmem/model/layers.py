"""Layer kinds: what one decoder layer holds, by attention kind and MLP kind.

A model is a list of :class:`LayerGroup` (``count`` layers of one attention kind and one MLP kind),
as vLLM divides its KV pool by one spec per attention kind (vllm/v1/kv_cache_interface.py:
FullAttentionSpec, SlidingWindowSpec, MLAAttentionSpec, MambaSpec). Each kind answers its own
questions: its parameters, the linears LoRA can target (with the family's module names) and its
cache per sequence. What each kind keeps for backward lives in :mod:`activations`, keyed by kind.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, List, Tuple

from ..record import Record


class Linear(Record):
    """One weight matrix of a layer (``count`` of them: MoE experts), as LoRA and quantisers see it."""

    role: str
    name: str
    d_in: int
    d_out: int
    bias: bool
    count: int = 1
    active: int = 1  # how many of the ``count`` each token passes through (MoE top-k)
    # How PEFT reaches it: "module" (an nn.Linear, wrapped by target_modules), "param" (routed experts
    # stored as one 3D parameter that PEFT 0.21.2 wraps through its v4->v5 target conversion), "none"
    # (a 3D expert parameter PEFT leaves alone: target_modules only wraps nn.Linear), "bypassed" (an
    # nn.Linear PEFT wraps whose forward never runs: the model reads its .weight, so the adapter gets no gradient).
    wrap: str = "module"
    rank_scale: int = 1  # PEFT doubles the rank of a fused gate_up_proj it targets for gate_proj + up_proj

    @property
    def params(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


def _name(fam: Any, role: str, default: str) -> str:
    return fam.module(role) or default


class Attention(Record):
    """Softmax attention over q/k/v projections: full, or sliding over ``window`` tokens."""

    heads: int
    kv_heads: int
    head_dim: int
    window: int = 0  # 0: full attention
    qk_norm: str = ""  # "head": RMSNorm(head_dim) on q and k (Qwen3, Gemma 3); "proj": over the whole projection (OLMo 2, Cohere)
    sinks: bool = False  # gpt-oss: one learned logit per head (modeling_gpt_oss.py GptOssAttention.sinks)
    softcap: float = 0.0  # Gemma 2: tanh soft-capping of the scores
    cache_heads: int = 0  # K/V heads the cache holds, when not kv_heads (Falcon's new architecture expands them)

    @property
    def kind(self) -> str:
        return "sliding" if self.window else "full"

    def linears(self, fam: Any, h: int) -> List[Linear]:
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if fam.module("qkv"):
            out = [Linear("qkv", fam.module("qkv"), h, q_out + 2 * kv_out, fam.qkv_bias)]
        else:
            out = [Linear("q", _name(fam, "q", "q_proj"), h, q_out, fam.qkv_bias),
                   Linear("k", _name(fam, "k", "k_proj"), h, kv_out, fam.qkv_bias),
                   Linear("v", _name(fam, "v", "v_proj"), h, kv_out, fam.qkv_bias)]
        return out + [Linear("o", _name(fam, "o", "o_proj"), q_out, h, fam.out_bias)]

    def extra_params(self) -> int:
        """Weights outside the linears: q/k norms and attention sinks."""
        d = self.head_dim
        n = {"": 0, "head": 2 * d, "proj": (self.heads + self.kv_heads) * d}[self.qk_norm]
        return n + (self.heads if self.sinks else 0)

    def cache_bytes(self, batch: int, seq: int, act: int, tp: int = 1) -> int:
        """K and V for every cached token; tensor parallelism splits the KV heads (replicated below t).

        A sliding layer's DynamicCache keeps only the last window - 1 tokens after a prefill, but as
        a view of the concatenated prompt (transformers 5.24 cache_utils.py
        DynamicSlidingWindowLayer.update: ``full_key_states[:, :, -sliding_window + 1:, :]``), so the
        whole prompt's storage stays allocated until the next token replaces it: the prefill's peak.
        """
        tokens = seq
        return 2 * math.ceil((self.cache_heads or self.kv_heads) / tp) * self.head_dim * tokens * batch * act

    def engine_cache_bytes(self, kv_bytes: float, tp: int = 1) -> int:
        """What a serving engine keeps per token of this layer on one rank: K and V of the rank's KV
        heads in the cache dtype (vllm/v1/kv_cache_interface.py AttentionSpec.real_page_size_bytes =
        2 x block_size x num_kv_heads x head_size x dtype size, per block of tokens). The engine builds
        its attention with the config's KV heads, so ``cache_heads`` (a copy transformers' own cache may
        expand) does not apply."""
        return math.ceil(self._replace(cache_heads=0).cache_bytes(1, 1, kv_bytes, tp))  # type: ignore[arg-type]


class LatentAttention(Record):
    """DeepSeek multi-head latent attention (MLA; DeepSeek-V2 paper, section 2.1)."""

    heads: int
    q_lora_rank: int  # 0: a plain q_proj (DeepSeek-V2-Lite)
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    bias: bool = False

    kind = "mla"

    @property
    def head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def linears(self, fam: Any, h: int) -> List[Linear]:
        a, qk = self.heads, self.head_dim
        out = []
        if self.q_lora_rank:
            out += [Linear("q_a", "q_a_proj", h, self.q_lora_rank, self.bias), Linear("q", "q_b_proj", self.q_lora_rank, a * qk, False)]
        else:
            out.append(Linear("q", "q_proj", h, a * qk, False))
        return out + [
            Linear("kv_a", "kv_a_proj_with_mqa", h, self.kv_lora_rank + self.qk_rope_head_dim, self.bias),
            Linear("kv", "kv_b_proj", self.kv_lora_rank, a * (self.qk_nope_head_dim + self.v_head_dim), False),
            Linear("o", "o_proj", a * self.v_head_dim, h, self.bias),
        ]

    def extra_params(self) -> int:
        return self.q_lora_rank + self.kv_lora_rank  # q_a_layernorm and kv_a_layernorm (RMSNorm weights)

    def cache_bytes(self, batch: int, seq: int, act: int, tp: int = 1) -> int:
        """The compressed latent and the shared rope key, one "head" per token: transformers 5.24
        caches them before expanding (modeling_deepseek_v3.py DeepseekV3Attention.forward,
        ``cache.update(kv_nope, k_rot, ...)``). Every tensor-parallel rank keeps the whole latent."""
        return (self.kv_lora_rank + self.qk_rope_head_dim) * seq * batch * act

    def engine_cache_bytes(self, kv_bytes: float, tp: int = 1) -> int:
        """Per token on every rank: the latent and the rope key (MLAAttentionSpec keeps num_kv_heads = 1,
        head_size = kv_lora_rank + qk_rope_head_dim; vllm/v1/kv_cache_interface.py)."""
        return math.ceil(self.cache_bytes(1, 1, kv_bytes, tp))  # type: ignore[arg-type]


class StateSpace(Record):
    """A Mamba (selective state-space) mixer in place of attention (Gu & Dao 2023; modeling_mamba.py)."""

    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int
    conv_bias: bool = True
    proj_bias: bool = False
    inner_norms: bool = False  # Jamba: RMSNorms on dt, B and C

    kind = "mamba"

    def linears(self, fam: Any, h: int) -> List[Linear]:
        di = self.d_inner
        return [
            Linear("in", "in_proj", h, 2 * di, self.proj_bias),
            Linear("x", "x_proj", di, self.dt_rank + 2 * self.d_state, False),
            # The mixer multiplies by dt_proj.weight itself (modeling_mamba.py:440 and the kernel path :387,
            # modeling_jamba.py:580): a LoRA adapter on dt_proj exists but never runs (measured: no .grad).
            Linear("dt", "dt_proj", self.dt_rank, di, True, wrap="bypassed"),
            Linear("out", "out_proj", di, h, self.proj_bias),
        ]

    def extra_params(self) -> int:
        """Depthwise conv1d, A_log (d_inner x d_state), D, and Jamba's dt/B/C norms."""
        di = self.d_inner
        n = di * self.d_conv + (di if self.conv_bias else 0) + di * self.d_state + di
        return n + ((self.dt_rank + 2 * self.d_state) if self.inner_norms else 0)

    def cache_bytes(self, batch: int, seq: int, act: int, tp: int = 1, state_bytes: int = 4) -> int:
        """A fixed state per sequence, whatever its length: the conv window in the compute dtype and
        the SSM state in fp32 in transformers (5.24 cache_utils.LinearAttentionLayer; modeling_mamba.py
        keeps ``ssm_state`` as float; measured on the CPU: 2 x 512 x (4 x 2 B + 16 x 4 B) per layer).
        vLLM keeps it in the model dtype (mamba_ssm_cache_dtype "auto"): ``state_bytes``."""
        return batch * math.ceil(self.d_inner / tp) * (self.d_conv * act + self.d_state * state_bytes)

    def engine_cache_bytes(self, kv_bytes: float, tp: int = 1) -> int:
        """Per sequence: the conv and SSM state in the model dtype (vLLM MambaSpec, mamba_ssm_cache_dtype
        "auto"), whatever its length."""
        size = max(1, round(kv_bytes))
        return self.cache_bytes(1, 1, size, tp, state_bytes=size)


class Dense(Record):
    """A feed-forward block: gate/up/down with an activation on the gate (``gated``) or fc1/fc2."""

    d_ff: int
    gated: bool = True

    kind = "dense"

    def linears(self, fam: Any, h: int) -> List[Linear]:
        f, b = self.d_ff, fam.mlp_bias
        if self.gated and fam.module("gate_up"):
            out = [Linear("gate_up", fam.module("gate_up"), h, 2 * f, b)]  # phi3/glm: one fused projection
        elif self.gated:
            out = [Linear("gate", _name(fam, "gate", "gate_proj"), h, f, b), Linear("up", _name(fam, "up", "up_proj"), h, f, b)]
        else:
            out = [Linear("up", _name(fam, "up", "up_proj"), h, f, b)]
        return out + [Linear("down", _name(fam, "down", "down_proj"), f, h, b)]

    def extra_params(self) -> int:
        return 0


class MoE(Record):
    """Routed experts (top-k of ``experts``) plus optional shared experts every token uses."""

    experts: int
    top_k: int
    d_ff: int
    shared_d_ff: int = 0  # all shared experts together (DeepSeek: n_shared_experts x moe_intermediate_size)
    shared_gate: bool = False  # qwen2_moe: the shared expert's output is scaled by a 1-wide sigmoid gate
    router_bias: bool = False  # gpt-oss
    expert_bias: bool = False  # gpt-oss: biases on gate_up and down of every expert
    router_fp32: bool = False  # DeepSeek keeps gate.weight in fp32 and routes an fp32 copy of the input
    gated: bool = True

    kind = "moe"

    def linears(self, fam: Any, h: int) -> List[Linear]:
        e, k, f, b = self.experts, self.top_k, self.d_ff, self.expert_bias
        # transformers 5.24 keeps routed experts as 3D parameters (e.g. modeling_qwen3_moe.py Qwen3MoeExperts
        # gate_up_proj / down_proj), not nn.Linear: PEFT reaches them only where Family.peft_experts says.
        w = "param" if fam.peft_experts else "none"
        out = [Linear("router", _name(fam, "router", "gate"), h, e, self.router_bias)]
        if self.gated and fam.module("expert_gate_up"):
            out.append(Linear("gate_up", fam.module("expert_gate_up"), h, 2 * f, b, e, k, w))
        elif self.gated:
            out.append(Linear("gate", _name(fam, "expert_gate", _name(fam, "gate", "gate_proj")), h, f, b, e, k, w))
            out.append(Linear("up", _name(fam, "expert_up", _name(fam, "up", "up_proj")), h, f, b, e, k, w))
        else:
            out.append(Linear("up", _name(fam, "expert_up", _name(fam, "up", "up_proj")), h, f, b, e, k, w))
        out.append(Linear("down", _name(fam, "expert_down", _name(fam, "down", "down_proj")), f, h, b, e, k, w))
        fs = self.shared_d_ff
        if fs:
            prefix = fam.module("shared") or "shared_experts"
            out += [Linear("shared_gate", f"{prefix}.gate_proj", h, fs, False),
                    Linear("shared_up", f"{prefix}.up_proj", h, fs, False),
                    Linear("shared_down", f"{prefix}.down_proj", fs, h, False)]
            if self.shared_gate:
                out.append(Linear("shared_router", "shared_expert_gate", h, 1, False))
        return out

    def extra_params(self) -> int:
        return 0  # DeepSeek-V3's e_score_correction_bias is a buffer, not a parameter


class NoMLP(Record):
    """A layer without a feed-forward block (Mamba: the mixer is the whole layer)."""

    kind = "none"

    def linears(self, fam: Any, h: int) -> List[Linear]:
        return []

    def extra_params(self) -> int:
        return 0


def _targets(lin: Linear, wanted: Any) -> bool:
    return lin.name in wanted or lin.name.split(".")[-1] in wanted


def peft_target_problem(family: str, linears: List[Linear], targets: Tuple[str, ...]) -> Tuple[str, str]:
    """(error, note) about LoRA targets that reach routed experts, as PEFT 0.21.2 treats them.

    Error: gate_proj without up_proj (or the reverse) where PEFT fuses them into one gate_up_proj
    parameter (peft/utils/transformers_weight_conversion.py _convert_peft_config_moe raises ValueError),
    or a name that only routed experts PEFT cannot wrap carry (PEFT: "Target modules ... not found").
    Note: a name both nn.Linears and unwrappable experts carry (Jamba's gate_proj): only the linears adapt.
    """
    if "all-linear" in targets:
        return "", ""
    wanted = set(targets)
    fused = [lin for lin in linears if lin.wrap == "param" and lin.role in ("gate", "up")]
    hit = sorted({lin.name for lin in fused if _targets(lin, wanted)})
    if fused and hit and len(hit) < len(fused):
        missing = sorted({lin.name for lin in fused} - set(hit))
        return (f'{", ".join(hit)} needs {", ".join(missing)} too: {family}\'s routed experts keep gate and up in one '
                f"gate_up_proj parameter, which PEFT 0.21.2 adapts whole or not at all (peft/utils/"
                f"transformers_weight_conversion.py _convert_peft_config_moe). Target both, or neither."), ""
    frozen = sorted({t for t in targets if any(_targets(lin, {t}) for lin in linears if lin.wrap == "none")})
    only = [t for t in frozen if not any(_targets(lin, {t}) for lin in linears if lin.wrap != "none")]
    if only:
        return (f'{", ".join(only)} names only {family}\'s routed experts, which transformers 5.24 keeps as 3D '
                f"parameters that PEFT 0.21.2 does not wrap (target_modules adapts nn.Linear layers only): PEFT stops "
                f'with "Target modules ... not found". Drop it, or adapt the attention projections.'), ""
    if frozen:
        return "", (f'LoRA on {", ".join(frozen)}: {family}\'s routed experts are 3D parameters PEFT 0.21.2 does not '
                    f"wrap; only the nn.Linear layers of that name get adapters")
    return "", ""


class LayerGroup(Record):
    """``count`` decoder layers that share one attention kind and one MLP kind."""

    count: int
    attention: Any  # Attention | LatentAttention | StateSpace
    mlp: Any  # Dense | MoE | NoMLP
    norms: int = 2  # hidden-size norms per layer (Gemma 2: 4; phi/Cohere parallel blocks: 1; Mamba: 1)

    def linears(self, fam: Any, h: int) -> List[Linear]:
        try:
            return list(_group_linears(self, type(self.attention), type(self.mlp), fam, h))
        except TypeError:  # a plugin's family with a list inside is unhashable: build it each time
            return self.attention.linears(fam, h) + self.mlp.linears(fam, h)

    def params(self, fam: Any, h: int, norm_params: int) -> int:
        """One layer's parameters: linears, the kinds' own weights and the layer's norms."""
        own = self.attention.extra_params() + self.mlp.extra_params()
        return sum(lin.params for lin in self.linears(fam, h)) + own + self.norms * norm_params


@lru_cache(maxsize=64)
def _group_linears(group: LayerGroup, attention_kind: type, mlp_kind: type, fam: Any, h: int) -> Tuple[Linear, ...]:
    """A group's linears, built once: one estimate asks ~8 times, fit's search ~15 estimates more.
    The kinds are part of the key: two kinds' records can be equal tuples."""
    return tuple(group.attention.linears(fam, h) + group.mlp.linears(fam, h))


def merge_groups(groups: List[LayerGroup]) -> Tuple[LayerGroup, ...]:
    """Layers of the same kinds folded into one group each, in order of first appearance."""
    out: List[LayerGroup] = []
    for g in groups:
        for i, seen in enumerate(out):
            if seen._replace(count=0) == g._replace(count=0):
                out[i] = seen._replace(count=seen.count + g.count)
                break
        else:
            out.append(g)
    return tuple(out)
