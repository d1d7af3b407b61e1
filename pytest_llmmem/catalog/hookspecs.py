"""Hook specifications: how a plugin adds dtypes, optimizers, GPUs, model families, adapters,
serving engines, trainer profiles, trainer-config readers and post-training recipes.

Plugins are found in the ``llmmem`` entry-point group (``LLMMEM_DISABLE_PLUGINS`` blocks them by
name, or ``all``). The built-ins in :mod:`pytest_llmmem.builtin` use these same hooks. Each hook
receives one keyword argument, ``register``, a callable taking one catalog entry; a name that two
plugins both register is an error rather than a silent override.

Example plugin module::

    from pytest_llmmem.hookspecs import hookimpl
    from pytest_llmmem.catalog import GPU, Optimizer

    @hookimpl
    def llmmem_register_gpus(register):
        register(GPU("Gaudi3", memory_bytes=128 * 1024**3))

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .entries import GPU, DType, Engine, Optimizer, Reader, Recipe
    from ..model.adapters import Adapter
    from .profiles import Profile
    from ..model.architecture import Family

PROJECT = "llmmem"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmmem_register_dtypes(register: "Callable[[DType], None]") -> None:
    """Call ``register(DType(...))`` for each number format the plugin knows."""

@hookspec
def llmmem_register_optimizers(register: "Callable[[Optimizer], None]") -> None:
    """Call ``register(Optimizer(...))`` for each optimizer the plugin knows."""


@hookspec
def llmmem_register_gpus(register: "Callable[[GPU], None]") -> None:
    """Call ``register(GPU(...))`` for each accelerator the plugin knows."""


@hookspec
def llmmem_register_families(register: "Callable[[Family], None]") -> None:
    """Call ``register(Family(...))`` for each model family the plugin knows.

    A family is the ``model_type`` of a Hugging Face config.json (or ``family = "..."`` in the
    TOML) plus its traits; ``Family.reader`` picks how the config's keys become layer groups
    ("decoder" covers LLaMA-style models, with sliding layers, q/k norms and MoE by traits).
    Example: an in-house LLaMA fork with biases on q/k/v::

        @hookimpl
        def llmmem_register_families(register):
            from pytest_llmmem.families import LLAMA
            register(LLAMA._replace(name="acme_lm", qkv_bias=True, doc="acme/acme-lm-7b"))
    """


@hookspec
def llmmem_register_engines(register: "Callable[[Engine], None]") -> None:
    """Call ``register(Engine(name, startup))`` for each serving engine the plugin knows.

    ``engine = "<name>"`` in a run then calls ``startup(run)``, which returns a
    :class:`pytest_llmmem.serving.serve.Startup` (weights, activations, KV pool, whether it starts);
    ``pytest_llmmem.serving.serve`` has the pieces vLLM and SGLang share (``kv_kinds``, ``cuda_total``).
    """


@hookspec
def llmmem_register_adapters(register: "Callable[[Adapter], None]") -> None:
    """Call ``register(Adapter(...))`` for each PEFT method the plugin knows; a run names it with
    ``mode = "<name>"``. An adapter declares the linears it touches, the trainable tensors it adds to
    each, what each adapted module keeps for backward and whether the frozen base stays quantized
    (:mod:`pytest_llmmem.model.adapters`, docs/adapters.md). Example: an in-house method that trains
    two A/B pairs per matrix::

        @hookimpl
        def llmmem_register_adapters(register):
            from pytest_llmmem.model.adapters import LORA, lora_tensors
            register(LORA._replace(name="twin-lora", doc="two LoRA pairs", tensors=lambda lin, r: 2 * lora_tensors(lin, r)))
    """


@hookspec
def llmmem_register_profiles(register: "Callable[[Profile], None]") -> None:
    """Call ``register(Profile(...))`` for each trainer the plugin knows (``framework = "<name>"``).

    A :class:`pytest_llmmem.catalog.profiles.Profile` is the trainer's defaults for the knobs (loss
    implementation, activation offload, optimizer implementation, 4-bit layout, adapter dtype,
    gradient checkpointing), each cited in ``sources``; a run's own keys win over it. ``phases``
    (a :class:`pytest_llmmem.config.phase_keys.PhaseDefaults`: loader, evaluation, merge) defaults to
    the Hugging Face Trainer's. Example: a trainer that runs on the HF Trainer with Liger's fused loss::

        @hookimpl
        def llmmem_register_profiles(register):
            from pytest_llmmem.catalog.profiles import PROFILES
            register(PROFILES["transformers"]._replace(name="acme", loss="fused", keeps_logits=False,
                                                       describes="Acme trainer (Liger fused CE)"))
    """


@hookspec
def llmmem_register_readers(register: "Callable[[Reader], None]") -> None:
    """Call ``register(Reader(name, read, detect=..., keys=...))`` for each trainer-config format the plugin reads.

    A run with ``from = "train.yaml"`` (and ``format = "<name>"``, or a file ``detect(data)`` claims
    after the built-ins' checks) is parsed without executing anything, checked against ``keys``, and
    handed to ``read(mapper, base_dir)``, which maps the trainer's settings to run keys with
    ``mapper.put(ours, value, theirs)`` and ``mapper.assume(ours, value, cite)``; the run's own keys
    in pyproject.toml still win. Example::

        @hookimpl
        def llmmem_register_readers(register):
            def read(m, base_dir):
                m.put("model", {"id": m.get("base")}, "base")
                m.put("batch-size", m.get("batch", 1), "batch")
            register(Reader("acme", read, detect=lambda d: "base" in d, keys=("base", "batch")))
    """


@hookspec
def llmmem_register_recipes(register: "Callable[[Recipe], None]") -> None:
    """Call ``register(Recipe(...))`` for each post-training recipe the plugin knows (``recipe = "<name>"``).

    A :class:`pytest_llmmem.catalog.Recipe` declares what its step holds beyond an SFT step: the
    recipe keys it reads (any other is an error), the models in memory (policy, reference, reward,
    value), the rows one example becomes, the policy's head, its generation phase, its keys' defaults
    and the keys ``llmmem fit`` may change; nothing else is needed. Example: DPO with a frozen reward
    model beside the reference (tests/test_plugins.py prices it)::

        @hookimpl
        def llmmem_register_recipes(register):
            from pytest_llmmem.catalog import Recipe
            register(Recipe("judged-dpo", keys=("beta", "reference-model", "max-length", "max-prompt-length"),
                            models=("policy", "reference", "reward"), rows_per_example=2, head="fused", beta=0.1,
                            ways_out=("mode",), doc="DPO scored by a frozen reward model"))
    """
