"""The readers behind :mod:`hf_config`: a family's config.json keys -> layer groups.

Each reader follows the family's ``modeling_<name>.py`` in transformers 5.24 (cited per reader);
defaults for keys a config leaves out are that family's config-class defaults.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError
from ..model.context_window import derive
from ..values import boolean, limit, probability, whole_number
from ..model.layers import Attention, Dense, LatentAttention, LayerGroup, MoE, NoMLP, StateSpace, merge_groups
from ..model.architecture import Architecture, Family

# Each field: the spellings families use in config.json, first match wins.
HF_KEYS: Dict[str, Tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "vocab_size": ("vocab_size",),
    "head_dim": ("head_dim",),
    "max_positions": ("n_positions", "max_position_embeddings"),
}
# config.json key -> the TOML key whose limit applies (anything else: at most 10^9).
_LIMIT_OF = {
    "hidden_size": "hidden-size", "n_embd": "hidden-size", "d_model": "hidden-size", "num_hidden_layers": "num-layers",
    "n_layer": "num-layers", "num_layers": "num-layers", "num_attention_heads": "num-heads", "n_head": "num-heads",
    "num_key_value_heads": "num-kv-heads", "num_kv_heads": "num-kv-heads", "head_dim": "head-dim",
    "intermediate_size": "intermediate-size", "vocab_size": "vocab-size", "max_position_embeddings": "max-position-embeddings",
}


class Keys:
    """A config.json mapping with checked getters; every error names the file and the key."""

    def __init__(self, cfg: Mapping[str, Any], source: str, prefix: str = "") -> None:
        self.cfg, self.source, self.prefix = cfg, source, prefix

    def get(self, key: str) -> Any:
        return self.cfg.get(key)

    def first(self, *keys: str) -> Any:
        for key in keys:
            if self.cfg.get(key) is not None:
                return self.cfg[key]
        return None

    def fail(self, key: str, message: str, hint: Optional[str] = None) -> ConfigError:
        return ConfigError(message, path=self.source, key=self.prefix + key, hint=hint)

    def _checked(self, key: str, check: Callable[[Any], Any]) -> Any:
        try:
            return check(self.cfg[key])
        except ValueError as err:
            raise self.fail(key, str(err)) from None

    def whole(self, key: str, default: Optional[int] = None, low: int = 1) -> Any:
        """A whole number (null or absent: ``default``)."""
        if self.cfg.get(key) is None:
            return default
        high = limit(_LIMIT_OF[key]) if key in _LIMIT_OF else 10**9
        return self._checked(key, lambda v: whole_number(v, low, high))

    def exact_whole(self, key: str, low: int = 1) -> int:
        """A whole number that must be there: null is refused, not taken as absent."""
        return self._checked(key, lambda v: whole_number(v, low, 10**9))

    def probability(self, key: str) -> float:
        return self._checked(key, probability) if self.cfg.get(key) is not None else 0.0

    def boolean(self, key: str, default: bool) -> bool:
        return self._checked(key, boolean) if key in self.cfg else default

    def number(self, key: str) -> float:
        """A finite positive float (soft-capping, rope factors), 0.0 when null or absent."""
        value = self.cfg.get(key)
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise self.fail(key, f"expected a positive number, got {value!r}.")
        return float(value)

    def sub(self, key: str, defaults: Mapping[str, Any]) -> "Keys":
        """A nested config (``text_config``, ``vision_config``) over its class defaults."""
        value = self.cfg.get(key) or {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a JSON object, got {value!r}.")
        return Keys({**defaults, **value}, self.source, f"{self.prefix}{key}.")


def _biases(k: Keys, fam: Family) -> Family:
    """Biases that config keys switch on: attention_bias (q/k/v[/o] per family), mlp_bias (LLaMA-style),
    or StarCoder2's use_bias on every linear (modeling_starcoder2.py, default true)."""
    if fam.attention_bias == "all":
        on = k.boolean("use_bias", True)
        return fam._replace(qkv_bias=on, out_bias=on, mlp_bias=on)
    bias = k.boolean("attention_bias", fam.attention_bias_default) if fam.attention_bias else False
    if bias:
        fam = fam._replace(qkv_bias=True, out_bias=fam.out_bias or "o" in fam.attention_bias)
    if k.boolean("mlp_bias", False):
        fam = fam._replace(mlp_bias=True)
    if "lm_head_bias" in k.cfg:  # PhiMoE: a config key, default false (configuration_phimoe.py)
        fam = fam._replace(lm_head_bias=k.boolean("lm_head_bias", False))
    return fam


def _windows(k: Keys, fam: Family, n: int) -> List[int]:
    """Each layer's sliding window (0 = full attention): ``layer_types`` when given, else the family's
    pattern as its transformers config class derives it, else a ``sliding_window`` on every layer
    (transformers 5.24 cache_utils.get_layer_types_and_kwargs)."""
    window = k.whole("sliding_window", 0, low=0)
    types = k.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n or not all(isinstance(t, str) for t in types):
            raise k.fail("layer_types", f"expected a list of {n} layer kinds (one per layer), got {str(types)[:60]}.")
        known = {"full_attention": 0, "sliding_attention": window, "chunked_attention": k.whole("attention_chunk_size", window)}
        for t in types:
            if t not in known:
                raise k.fail("layer_types", f'unknown layer kind "{t}".', hint=f"Known: {', '.join(known)}.")
        return [known[t] for t in types]
    if not window or fam.sliding == "none":
        return [0] * n
    if fam.sliding == "qwen":  # configuration_qwen3.py: sliding from max_window_layers on, when use_sliding_window
        first = k.whole("max_window_layers", 28, low=0)
        return [window if k.boolean("use_sliding_window", False) and i >= first else 0 for i in range(n)]
    if fam.sliding == "alternate":  # configuration_gemma2.py / gpt_oss: even layers slide
        return [window if (i + 1) % 2 else 0 for i in range(n)]
    if fam.sliding == "every":  # configuration_gemma3.py / cohere2: every n-th layer is full
        every = k.whole("sliding_window_pattern", fam.sliding_every)
        return [window if (i + 1) % every else 0 for i in range(n)]
    return [window] * n


def _mlps(k: Keys, fam: Family, n: int, d_ff: int, gated: bool) -> List[Any]:
    """Each layer's MLP kind: dense, or MoE on the layers the family's pattern makes sparse."""
    experts = 0
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if k.get(key) is not None:
            experts = k.whole(key, low=0)
            break
    dense = Dense(d_ff, gated)
    if not experts:
        return [dense] * n
    top_k = k.whole("num_experts_per_tok", 2)
    if top_k > experts:
        raise k.fail("num_experts_per_tok", f"{top_k} experts per token is more than the {experts} experts.")
    moe_ff = k.whole("moe_intermediate_size", d_ff)
    shared_ff, shared_gate = k.whole("shared_expert_intermediate_size", 0, low=0), False
    if shared_ff:
        shared_gate = True  # qwen2_moe: sigmoid(shared_expert_gate(x)) scales the shared expert
    elif k.get("n_shared_experts"):
        shared_ff = k.whole("n_shared_experts", 0, low=0) * moe_ff  # DeepSeek: one MLP of n x moe_intermediate_size
    biased = fam.sinks  # gpt-oss: biases on the router and every expert (modeling_gpt_oss.py)
    moe = MoE(experts, top_k, moe_ff, shared_ff, shared_gate, router_bias=biased, expert_bias=biased,
              router_fp32=fam.reader == "mla", gated=gated)
    if fam.moe_layers == "sparse-step":  # modeling_qwen3_moe.py: not in mlp_only_layers and (i+1) % decoder_sparse_step == 0
        step = k.whole("decoder_sparse_step", 1)
        only = k.get("mlp_only_layers") or []
        if not isinstance(only, list):
            raise k.fail("mlp_only_layers", f"expected a list of layer indices, got {only!r}.")
        return [moe if i not in only and (i + 1) % step == 0 else dense for i in range(n)]
    if fam.moe_layers == "first-k-dense":  # modeling_deepseek_v3.py: MoE from first_k_dense_replace on
        first = k.whole("first_k_dense_replace", 0, low=0)
        return [moe if i >= first else dense for i in range(n)]
    if fam.moe_layers == "period":  # modeling_jamba.py: i % expert_layer_period == expert_layer_offset
        period, offset = k.whole("expert_layer_period", 2), k.whole("expert_layer_offset", 1, low=0)
        return [moe if i % period == offset else dense for i in range(n)]
    return [moe] * n


def _rotary(k: Keys, fam: Family, d: int) -> int:
    """Dimensions that get rotary cos/sin tables (partial_rotary_factor: GLM, Phi); 0 without rotary."""
    if fam.learned_positions:
        return 0
    factor = k.number("partial_rotary_factor") or 1.0
    return int(d * factor)


def _context(k: Keys, fam: Family) -> Dict[str, Any]:
    """max_context and its derivation (context_window.derive: vLLM's max_model_len, per rope type)."""
    limit, why = derive(k, *fam.default_context)
    return {"max_context": limit, "context_why": why}


def _arch(fam: Family, v: Dict[str, Any], groups: List[LayerGroup], **extra: Any) -> Architecture:
    h, heads = v["hidden_size"], v.get("num_heads", 0)
    fields = dict(
        family=fam, hidden_size=h, num_layers=v["num_layers"], num_heads=heads, num_kv_heads=v.get("num_kv_heads", heads),
        intermediate_size=v.get("intermediate_size", 4 * h), vocab_size=v["vocab_size"], tie_embeddings=v["tie_embeddings"],
        head_dim=v.get("head_dim", 0), max_positions=v.get("max_positions", 0) if fam.learned_positions else 0,
        hidden_act=v["hidden_act"], attention_dropout=v.get("attention_dropout", 0.0), hidden_dropout=v.get("hidden_dropout", 0.0),
        groups=merge_groups(groups),
    )
    moe = next((g.mlp for g in groups if isinstance(g.mlp, MoE)), None)
    if moe is not None:
        fields.update(num_experts=moe.experts, experts_per_token=moe.top_k, moe_intermediate_size=moe.d_ff)
    fields.update(extra)
    return Architecture(**fields)


def _need(k: Keys, v: Dict[str, Any], *names: str) -> None:
    for name in names:
        if name not in v:
            spellings = HF_KEYS[name]
            raise ConfigError(f'lacks "{spellings[0]}" (or {", ".join(spellings[1:]) or "an alias"}), needed for the parameter count.',
                              path=k.source)


def read_decoder(k: Keys, fam: Family, v: Dict[str, Any]) -> Architecture:
    """LLaMA-style decoders: attention (full or sliding, q/k norms, sinks, soft-capping) + dense or MoE MLP."""
    _need(k, v, "hidden_size", "num_layers", "num_heads", "vocab_size")
    fam = _biases(k, fam)
    h, n, heads = v["hidden_size"], v["num_layers"], v["num_heads"]
    if not v.get("head_dim") and h % heads:
        raise k.fail("num_attention_heads", f"hidden_size {h} is not divisible by num_attention_heads {heads}.",
                     hint="Give head_dim if the model uses a different head size.")
    kv = v.get("num_kv_heads", heads)
    if model_type_is(k, "gpt_bigcode") and k.boolean("multi_query", True):
        kv = 1  # GPTBigCode multi-query attention: one K/V head
        v["num_kv_heads"] = 1
    if heads % kv:
        raise k.fail("num_key_value_heads", f"num_attention_heads {heads} cannot be grouped over num_key_value_heads {kv}.",
                     hint="num_key_value_heads must divide num_attention_heads (1 = multi-query).")
    d = v.get("head_dim") or h // heads
    if "intermediate_size" not in v:
        if fam.gated_mlp:
            _need(k, v, "intermediate_size")
        v["intermediate_size"] = 4 * h  # GPT-2 n_inner=None means 4 * n_embd
    qk_norm = fam.qk_norm or ("proj" if k.boolean("use_qk_norm", False) else "")  # Cohere's optional q/k LayerNorms
    softcap = k.number("attn_logit_softcapping")
    mlps = _mlps(k, fam, n, v["intermediate_size"], fam.gated_mlp)
    groups = [LayerGroup(1, Attention(heads, kv, d, w, qk_norm, fam.sinks, softcap), m, fam.norms_per_layer)
              for w, m in zip(_windows(k, fam, n), mlps)]
    labels = k.get("id2label")
    extra: Dict[str, Any] = {}
    if fam.classifier:
        extra["num_labels"] = len(labels) if isinstance(labels, dict) and labels else k.whole("num_labels", 2)
    return _arch(fam, v, groups, final_softcap=k.number("final_logit_softcapping"), rotary_dim=_rotary(k, fam, d), **_context(k, fam), **extra)


def model_type_is(k: Keys, name: str) -> bool:
    return k.get("model_type") == name


def read_mla(k: Keys, fam: Family, v: Dict[str, Any]) -> Architecture:
    """DeepSeek-V2/V3 (modeling_deepseek_v3.py DeepseekV3Attention): latent attention, dense then MoE layers."""
    _need(k, v, "hidden_size", "num_layers", "num_heads", "vocab_size", "intermediate_size")
    attn = LatentAttention(
        # q_lora_rank: null means a plain q_proj; absent means the config class default, 1536
        v["num_heads"], (k.whole("q_lora_rank", 0, low=0) if "q_lora_rank" in k.cfg else 1536),
        k.whole("kv_lora_rank", 512), k.whole("qk_nope_head_dim", 128),
        k.whole("qk_rope_head_dim", 64), k.whole("v_head_dim", 128), k.boolean("attention_bias", False),
    )
    mlps = _mlps(k, fam, v["num_layers"], v["intermediate_size"], True)
    groups = [LayerGroup(1, attn, m, 2) for m in mlps]
    return _arch(fam, v, groups, head_dim=attn.head_dim, num_kv_heads=v["num_heads"], rotary_dim=attn.qk_rope_head_dim, **_context(k, fam))


def read_falcon(k: Keys, fam: Family, v: Dict[str, Any]) -> Architecture:
    """Falcon (modeling_falcon.py FalconAttention / FalconDecoderLayer): all three layouts."""
    _need(k, v, "hidden_size", "num_layers", "num_heads", "vocab_size")
    h, heads = v["hidden_size"], v["num_heads"]
    new, parallel = k.boolean("new_decoder_architecture", False), k.boolean("parallel_attn", True)
    bias = k.boolean("bias", False)
    fam = fam._replace(qkv_bias=bias, out_bias=bias, mlp_bias=bias)
    if new:
        kv = v.get("num_kv_heads", heads)  # (2 * num_kv_heads + heads) * head_dim in one query_key_value
    else:
        kv = 1 if k.boolean("multi_query", True) else heads
    if not parallel:
        norms = 2  # input_layernorm + post_attention_layernorm
    else:
        norms = k.whole("num_ln_in_parallel_attn", 2) if new else 1  # ln_attn + ln_mlp, or one input_layernorm
    ffn = k.whole("ffn_hidden_size", 4 * h)
    v.update(num_kv_heads=kv, intermediate_size=ffn)
    # K/V are cached with their own heads (transformers 5.25 modeling_falcon.py FalconAttention.forward:
    # layer_past.update(key_states, value_states) before the attention interface; 5.24 and older expanded
    # them to every head first, 16x the cache for Falcon-40B).
    attn = Attention(heads, kv, h // heads)
    groups = [LayerGroup(v["num_layers"], attn, Dense(ffn, False), norms)]
    alibi = k.boolean("alibi", False)
    return _arch(fam, v, groups, rotary_dim=0 if alibi else h // heads, **_context(k, fam))


def _mamba(k: Keys, h: int, prefix: str, inner_norms: bool) -> StateSpace:
    expand = k.number(prefix + "expand") or 2
    d_inner = k.whole("intermediate_size", int(expand * h)) if not prefix else int(expand * h)
    rank = k.get(prefix + ("dt_rank" if prefix else "time_step_rank"))
    dt_rank = math.ceil(h / 16) if rank in (None, "auto") else k.whole(prefix + ("dt_rank" if prefix else "time_step_rank"))
    return StateSpace(
        d_inner, k.whole(prefix + ("d_state" if prefix else "state_size"), 16), k.whole(prefix + ("d_conv" if prefix else "conv_kernel"), 4),
        dt_rank, k.boolean(prefix + "conv_bias" if prefix else "use_conv_bias", True), k.boolean(prefix + "proj_bias" if prefix else "use_bias", False),
        inner_norms,
    )


def read_mamba(k: Keys, fam: Family, v: Dict[str, Any]) -> Architecture:
    """Mamba (modeling_mamba.py MambaBlock: one RMSNorm and a MambaMixer per layer, no attention)."""
    _need(k, v, "hidden_size", "num_layers", "vocab_size")
    mixer = _mamba(k, v["hidden_size"], "", False)
    groups = [LayerGroup(v["num_layers"], mixer, NoMLP(), 1)]
    return _arch(fam, v, groups, num_heads=0, num_kv_heads=0, intermediate_size=mixer.d_inner, rotary_dim=0, **_context(k, fam))


def read_jamba(k: Keys, fam: Family, v: Dict[str, Any]) -> Architecture:
    """Jamba (modeling_jamba.py): attention every attn_layer_period-th layer, Mamba elsewhere, MoE by period."""
    _need(k, v, "hidden_size", "num_layers", "num_heads", "vocab_size", "intermediate_size")
    h, n, heads = v["hidden_size"], v["num_layers"], v["num_heads"]
    kv = v.get("num_kv_heads", heads)
    period, offset = k.whole("attn_layer_period", 8), k.whole("attn_layer_offset", 4, low=0)
    attn, mixer = Attention(heads, kv, h // heads), _mamba(k, h, "mamba_", True)
    mlps = _mlps(k, fam, n, v["intermediate_size"], True)
    groups = [LayerGroup(1, attn if i % period == offset else mixer, mlps[i], 2) for i in range(n)]
    return _arch(fam, v, groups, rotary_dim=0, **_context(k, fam))  # Jamba attention has no positional encoding


# SigLIP vision tower defaults (configuration_siglip.py SiglipVisionConfig) and Gemma 3 text defaults
# (configuration_gemma3.py Gemma3TextConfig): published Gemma 3 configs leave most of these out.
_SIGLIP = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_channels": 3, "image_size": 224, "patch_size": 16}
_GEMMA3_TEXT = {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 4096,
                "max_position_embeddings": 131_072, "model_type": "gemma3_text"}


def _siglip_params(k: Keys) -> int:
    """SiglipVisionTransformer without its head (modeling_siglip.py): patch conv, positions, encoder, post-LayerNorm."""
    hv, f, n = k.whole("hidden_size"), k.whole("intermediate_size"), k.whole("num_hidden_layers")
    patch, channels, image = k.whole("patch_size"), k.whole("num_channels"), k.whole("image_size")
    embed = channels * patch * patch * hv + hv + (image // patch) ** 2 * hv
    layer = 2 * 2 * hv + 4 * (hv * hv + hv) + (hv * f + f) + (f * hv + hv)  # 2 LayerNorms, q/k/v/o, fc1, fc2
    head = (hv * hv + hv) * 4 + hv + 2 * 2 * hv + (hv * f + f) + (f * hv + hv) if k.boolean("vision_use_head", False) else 0
    return embed + n * layer + 2 * hv + head


def read_gemma3(k: Keys, fam: Family, v: Dict[str, Any]) -> Architecture:
    """Gemma 3 multimodal (modeling_gemma3.py Gemma3ForConditionalGeneration): the text decoder read from
    text_config, plus the SigLIP tower and the projector (an hv x h matrix and an RMSNorm of hv)."""
    text = k.sub("text_config", _GEMMA3_TEXT)
    text.cfg = {**text.cfg, "tie_word_embeddings": k.get("tie_word_embeddings") if "tie_word_embeddings" in k.cfg else True}
    arch = read_decoder(text, fam, common_fields(text, fam))
    vision = k.sub("vision_config", _SIGLIP)
    hv = vision.whole("hidden_size")
    return arch._replace(extra_params=_siglip_params(vision) + hv * arch.hidden_size + hv)


def common_fields(keys: Keys, fam: Family) -> Dict[str, Any]:
    """The fields every transformer config carries, checked, in :class:`Architecture` names."""
    values: Dict[str, Any] = {}
    for field_name, spellings in HF_KEYS.items():
        for key in spellings:
            if keys.get(key) is not None:
                values[field_name] = keys.whole(key, low=0 if field_name in ("head_dim", "max_positions") else 1)
                break
    act = keys.first("hidden_activation", "hidden_act", "activation_function")
    if act is not None and not isinstance(act, str):
        raise keys.fail("hidden_act", f"expected a string, got {act!r}.")
    values["hidden_act"] = act or ""
    for field_name, spellings in (("attention_dropout", ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")),
                                  ("hidden_dropout", ("hidden_dropout", "resid_pdrop", "hidden_dropout_prob"))):
        for key in spellings:
            if keys.get(key) is not None:
                values[field_name] = keys.probability(key)
                break
    values["tie_embeddings"] = keys.boolean("tie_word_embeddings", fam.tie_default)
    if "num_labels" in keys.cfg:  # present means meant: null, "two", -3 and 2.5 are all refused
        keys.exact_whole("num_labels")
    return values


READERS: Dict[str, Callable[[Keys, Family, Dict[str, Any]], Architecture]] = {
    "decoder": read_decoder, "mla": read_mla, "falcon": read_falcon, "mamba": read_mamba, "jamba": read_jamba, "gemma3": read_gemma3,
}
