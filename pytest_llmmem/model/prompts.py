"""The prompt-learning methods: PEFT's prompt tuning, prefix tuning and p-tuning, as :class:`adapters.Adapter` entries.

They adapt no linear: PEFT freezes the whole model and trains the values of ``num_virtual_tokens`` virtual tokens.
Prompt tuning and p-tuning prepend them to every sequence as input embeddings (peft/peft_model.py
PeftModelForCausalLM.forward: ``torch.cat((prompts, inputs_embeds), dim=1)``), so the model runs on seq-len + N
positions; prefix tuning hands them to every layer as N cached keys and values (``past_key_values`` from
PeftModel.get_prompt, a DynamicCache each attention extends with its own), so the sequence keeps its length and the
attention reads seq-len + N keys. Split from :mod:`adapters`, which holds the adapter kind and the methods that adapt linears.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ..record import Record
from .adapters import Adapter, Saved
from .layers import Attention, Linear

INDEX_BYTES = 8  # the int64 indices of the virtual tokens an Embedding keeps for backward (EmbeddingBackward0)


class PromptEncoder(Record):
    """What turns the virtual tokens into their values, as PEFT's prompt-learning configs set it (run keys in brackets)."""

    projection: bool = False  # PrefixTuningConfig.prefix_projection (prefix-projection): an MLP between embedding and K/V
    hidden: int = 0  # encoder_hidden_size (encoder-hidden-size); 0: PEFT's default, the token dim (utils/other.py)
    kind: str = "mlp"  # PromptEncoderConfig.encoder_reparameterization_type (encoder-reparameterization-type), lower case
    layers: int = 2  # PromptEncoderConfig.encoder_num_layers (encoder-num-layers): the LSTM's; PEFT's MLP ignores it


ENCODER_KINDS = ("mlp", "lstm")  # peft/tuners/p_tuning/config.py PromptEncoderReparameterizationType


def prompt_embedding(arch: Any, virtual_tokens: int, encoder: Optional[PromptEncoder] = None) -> int:
    """Prompt tuning (Lester et al. 2021) trains one embedding per virtual token, hidden wide (peft/tuners/prompt_tuning/
    model.py PromptEmbedding: nn.Embedding(num_virtual_tokens * num_transformer_submodules, token_dim), one
    submodule for a causal LM)."""
    return virtual_tokens * arch.hidden_size


def no_linears(arch: Any, targets: Tuple[str, ...], linears: Any = None) -> Tuple[Linear, ...]:
    """A method that adapts no linear (prompt tuning: the frozen model runs on a longer sequence)."""
    return ()


def nothing_saved(width: int, rank: int, adapter_bytes: int, act: int, dropout: bool = False) -> Saved:
    """No adapted module, so nothing of its own kept (prompt tuning's prompt is the first layer's input)."""
    return Saved(False, 0)


def nothing_merged(numel: int, quantized: bool, compute_bytes: int, adapter_bytes: int) -> int:
    """Prompt tuning has no weight to merge into (PEFT's merge_and_unload is LoRA-like tuners' only): nothing in flight."""
    return 0


def _tokens_summary(label: str) -> Callable[[int, Tuple[str, ...]], str]:
    """A method's summary in a report: '<label>, 20 virtual tokens'."""
    def summary(virtual_tokens: int, targets: Tuple[str, ...]) -> str:
        return f"{label}, {virtual_tokens} virtual tokens"
    summary.__doc__ = f"'{label}, 20 virtual tokens'."
    return summary


PROMPT_TUNING = Adapter(
    "prompt-tuning", "prompt tuning (PEFT PromptTuningConfig): num-virtual-tokens trained embeddings prepended to every "
    "sequence, the whole model frozen", no_linears, lambda lin, rank: (), nothing_saved, nothing_merged,
    keys=("num-virtual-tokens", "adapter-dtype"), summary=_tokens_summary("prompt tuning"), rank_source="", outer=False, expert_params=False,
    label="prompt tuning", prompt=prompt_embedding)


def prefix_token_dim(arch: Any) -> int:
    """PEFT's token_dim for prefix tuning: one layer's K (or V) width, kv heads x head dim (peft/utils/other.py
    _prepare_prompt_learning_config: ``token_dim = head_dim * num_key_value_heads`` for grouped-query attention,
    #1901; the hidden size where a config has no num_key_value_heads, the same for the families prefix_problem allows)."""
    return arch.num_kv_heads * arch.d_head


def prefix_params(arch: Any, virtual_tokens: int, encoder: Optional[PromptEncoder] = None) -> int:
    """peft/tuners/prefix_tuning/model.py PrefixEncoder: without projection Embedding(N, 2 L T), the keys and values of
    every layer themselves; with it Embedding(N, T), Linear(T, E), Tanh, Linear(E, 2 L T), biases included, E the
    encoder_hidden_size (T by default). L is every decoder layer, T prefix_token_dim (Li and Liang 2021, section 4.3)."""
    encoder = encoder or PromptEncoder()
    t = prefix_token_dim(arch)
    width = 2 * arch.num_layers * t
    if not encoder.projection:
        return virtual_tokens * width
    e = encoder.hidden or t
    return virtual_tokens * t + (t * e + e) + (e * width + width)


def prefix_saved(arch: Any, virtual_tokens: int, encoder: Optional[PromptEncoder], batch: int, adapter_bytes: int) -> int:
    """PeftModel.get_prompt runs the encoder on the batch's rows of virtual-token indices (peft/peft_model.py:
    ``prompt_tokens.unsqueeze(0).expand(batch_size, -1)``): the Embedding keeps its int64 indices (one row's storage,
    expanded), and with projection
    the first Linear keeps its input (T wide) and Tanh its output (E wide, the second Linear's input: one storage), in
    the adapter dtype. Its output, cast to the model's dtype, is viewed per layer and concatenated before each layer's
    keys and values (DynamicCache.update, torch.cat keeps nothing). Measured: tests/data/adapters/prefix-tuning*.json."""
    encoder = encoder or PromptEncoder()
    if not encoder.projection:
        return virtual_tokens * INDEX_BYTES
    t = prefix_token_dim(arch)
    return virtual_tokens * INDEX_BYTES + batch * virtual_tokens * (t + (encoder.hidden or t)) * adapter_bytes


def prefix_problem(arch: Any) -> str:
    """Why PEFT's prefix tuning does not fit this model ("" where it does). get_prompt builds a DynamicCache of N
    positions per layer, (batch, kv heads, N, head dim) each, and every layer's attention concatenates its own keys and
    values after them: layers without that cache (Mamba: no keys; MLA: keys and values of different head dims, which
    PEFT's one head dim cannot view) cannot take it; neither can attention sinks or soft-capped scores (not measured).
    A sliding window is no matter where PEFT builds ``DynamicCache(past_key_values)``: its layers are plain, so every
    layer reads all N + s keys under a sliding mask (measured: prefix-tuning-starcoder2.json, window 16 < 64). For
    Gemma PEFT builds ``DynamicCache(config=...)`` (get_prompt), whose sliding layers (DynamicSlidingWindowLayer)
    keep only the last window: not measured, refused."""
    if arch.family.classifier:
        return f"prefix tuning is modelled for causal LMs (PEFT's CAUSAL_LM task); {arch.family.name} here is a classifier."
    for group in arch.layer_groups():
        attn = group.attention
        if not isinstance(attn, Attention):
            kind = type(attn).__name__
            return (f"PEFT's prefix tuning needs every layer to keep keys and values of one head dim in a DynamicCache; "
                    f"this {arch.family.name} model has {kind} layers that do not.")
        if attn.sinks or attn.softcap or (attn.window and arch.family.name.startswith("gemma")):
            return (f"prefix tuning on {arch.family.name}'s sliding-window, sink or soft-capped layers is not modelled: PEFT gives "
                    "Gemma a cache whose sliding layers keep only the last window of keys (DynamicSlidingWindowLayer), and sinks "
                    "and soft-capping were not measured with a prefix.")
    return ""


PREFIX_TUNING = PROMPT_TUNING._replace(
    name="prefix-tuning", doc="prefix tuning (PEFT PrefixTuningConfig): num-virtual-tokens trained keys and values in every "
    "layer's attention, the whole model frozen", keys=("num-virtual-tokens", "adapter-dtype", "prefix-projection", "encoder-hidden-size"),
    summary=_tokens_summary("prefix tuning"), label="prefix tuning", prompt=prefix_params, kv_prefix=True, prompt_saved=prefix_saved,
    fits=prefix_problem)


def p_tuning_params(arch: Any, virtual_tokens: int, encoder: Optional[PromptEncoder] = None) -> int:
    """peft/tuners/p_tuning/model.py PromptEncoder (Liu et al. 2021, GPT Understands, Too): Embedding(N, T), T the hidden
    size, then the MLP head Linear(T, E), ReLU, Linear(E, E), ReLU, Linear(E, T) (encoder_num_layers is ignored for it),
    or a bidirectional LSTM(T, E, encoder_num_layers) and the head Linear(2E, 2E), ReLU, Linear(2E, T); biases included,
    E the encoder_hidden_size, T by default (utils/other.py _prepare_prompt_learning_config)."""
    encoder = encoder or PromptEncoder()
    t = arch.hidden_size
    e = encoder.hidden or t
    if encoder.kind == "lstm":
        # torch.nn.LSTM, per layer and direction: weight_ih (4E x its input: T, then both directions' 2E), weight_hh
        # (4E x E), bias_ih and bias_hh (4E each)
        lstm = 2 * sum(4 * e * (t if i == 0 else 2 * e) + 4 * e * e + 8 * e for i in range(encoder.layers))
        return virtual_tokens * t + lstm + (2 * e * 2 * e + 2 * e) + (2 * e * t + t)
    return virtual_tokens * t + (t * e + e) + (e * e + e) + (e * t + t)


def p_tuning_saved(arch: Any, virtual_tokens: int, encoder: Optional[PromptEncoder], batch: int, adapter_bytes: int) -> int:
    """get_prompt runs the MLP encoder on one row of indices and repeats its output over the batch (peft/peft_model.py:
    ``prompt_tokens[:1]``, then ``prompts.repeat(batch_size, 1, 1)``, issue 2043): the Embedding keeps N int64 indices,
    the first Linear its input (T wide) and each ReLU its output (E wide; the next Linear keeps the same storage), in the
    adapter dtype. Measured: tests/data/adapters/p-tuning*.json."""
    encoder = encoder or PromptEncoder()
    t = arch.hidden_size
    return virtual_tokens * INDEX_BYTES + virtual_tokens * (t + 2 * (encoder.hidden or t)) * adapter_bytes


P_TUNING = PROMPT_TUNING._replace(
    name="p-tuning", doc="p-tuning (PEFT PromptEncoderConfig): num-virtual-tokens embeddings through a trained MLP encoder, "
    "prepended to every sequence, the whole model frozen",
    keys=("num-virtual-tokens", "adapter-dtype", "encoder-reparameterization-type", "encoder-hidden-size", "encoder-num-layers"),
    summary=_tokens_summary("p-tuning"), label="p-tuning", prompt=p_tuning_params, prompt_saved=p_tuning_saved)
