"""The recipe keys of a training run (issue 13), read as the run's recipe entry declares them (which
keys apply, the models it holds, its defaults as the trainer sets them: catalog/builtin.py cites
each), and the contradictions a trainer would reject or silently ignore.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from .keys import MODEL_KEYS, RECIPE_KEYS, Table
from ..catalog.entries import RECIPE_GENERATIONS, RECIPE_HEADS, RECIPE_MODELS, Recipe
from ..errors import ConfigError, one_of
from ..values import type_name
from ..core.run import SFT, RecipeSettings
from .model_config import model_from_table

GENERATIONS = ("transformers", "vllm-colocate", "vllm-server")
VALUE_HEADS = ("separate", "shared")
# dpo's log-prob head: TRL 1.16's fused LM head (the entry's), or the model's whole logits upcast then
# log_softmax (LLaMA-Factory src/llamafactory/train/dpo/trainer.py concatenated_forward:
# model(**batch).logits.to(torch.float32), then trainer_utils.get_batch_logps: logits.log_softmax(-1)).
LOG_PROB_HEADS = ("fused", "logits")
# TRL 1.16 DPOConfig.loss_type values (trl/trainer/dpo_config.py, loss_type help text): all compare
# the policy with a reference model.
REFERENCE_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
# Reference-free preference losses: SimPO and CPO (TRL CPOTrainer, loss_type "simpo"), ORPO
# (TRL ORPOTrainer): no reference model is loaded (trl/experimental/cpo, trl/experimental/orpo).
REFERENCE_FREE_LOSSES = ("simpo", "cpo", "orpo")
LOSS_TYPES = REFERENCE_LOSSES + REFERENCE_FREE_LOSSES
VLLM_COLOCATE_UTILIZATION = 0.3  # trl/trainer/grpo_config.py:656: vllm_gpu_memory_utilization default=0.3
# Which recipes a key belongs to, the models they hold and their defaults: each recipe's catalog entry
# (catalog/builtin.py llmmem_register_recipes, or a plugin's); a key on another recipe is a contradiction.


def _number(table: Table, key: str, low: float, high: float, low_open: bool = False) -> Optional[float]:
    """A float in [low, high] (or (low, high] when ``low_open``); booleans and strings are not numbers."""
    if key not in table:
        return None
    value = table.values[key]
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value and low <= value <= high
    if ok and low_open and value == low:
        ok = False
    if not ok:
        bound = f"above {low}" if low_open else f"from {low}"
        raise table.fail(key, f"expected a number {bound} up to {high}, got {type_name(value)} {value!r}.")
    return float(value)


def recipe_settings(table: Table, mode: str, name: str, data_parallel: int,
                    accumulation: int = 1, adapts: bool = False) -> Tuple[RecipeSettings, Dict[str, int]]:
    """The run's recipe, and the batch-size / seq-len it implies (empty when the run's own keys stand).
    ``accumulation``: the run's gradient accumulation steps (micro-batches without pipeline stages)."""
    catalog = table.ctx.catalog
    wanted = table.values.get("recipe")  # a name the built-ins lack loads the plugins first (catalog.names)
    plain = isinstance(wanted, str) and wanted.lower() == SFT
    recipes = [catalog.recipe(n) for n in catalog.names("recipes", *([] if plain else [wanted]))]
    recipe = table.choice("recipe", [SFT] + [r.name for r in recipes], SFT)
    entry = next((r for r in recipes if r.name == recipe), None)  # None: sft, the plain step
    given = [k for k in RECIPE_KEYS if k != "recipe" and k in table]
    if entry is not None and mode == "inference":
        raise table.fail("recipe", f'recipe = "{recipe}" is a training recipe; run "{name}" has mode = "inference".')
    for key in given:
        if entry is None or key not in entry.keys:
            owners = " or ".join(f'"{r.name}"' for r in recipes if key in r.keys)
            named = [f'"{r.name}"' for r in recipes]
            raise table.fail(key, f'only applies to recipe = {owners}; run "{name}" has recipe = "{recipe}".',
                             hint=f'Set recipe = {", ".join(named[:-1])} or {named[-1]} on the run (default "{SFT}").')
    if entry is None:
        return RecipeSettings(), {}
    _check_entry(entry)
    for key in ("max-length", "max-prompt-length"):
        if key in table and "seq-len" in table:
            raise table.fail(key, f"{key} and seq-len both set the sequence length; give one.",
                             hint="seq-len is the length of one training row: prompt + completion.")
    lora = adapts  # a PEFT policy: TRL disables its adapters for the reference
    reference_key = table.boolean("reference-model", True) if "reference-model" in table else None
    if entry.generation:
        generating = "/".join(r.name for r in recipes if r.generation)
        return _online(table, entry, lora, reference_key, data_parallel, accumulation, generating)
    return _offline(table, entry, lora, reference_key)


def _check_entry(entry: Recipe) -> None:
    """A plugin's recipe says only what the estimate knows how to price (the built-ins: tests/test_tables.py)."""
    wrong = [f"keys {[k for k in entry.keys if k not in RECIPE_KEYS]}" if set(entry.keys) - set(RECIPE_KEYS) else "",
             f"models {[m for m in entry.models if m not in RECIPE_MODELS]}" if set(entry.models) - set(RECIPE_MODELS) else "",
             f"head {entry.head!r}" if entry.head not in RECIPE_HEADS else "",
             f"generation {entry.generation!r}" if entry.generation not in RECIPE_GENERATIONS else ""]
    if any(wrong):
        raise ConfigError(f'recipe "{entry.name}" declares {", ".join(w for w in wrong if w)}, which the estimate does not know.',
                          hint=f"Valid keys: {one_of(RECIPE_KEYS[1:])}; models: {one_of(RECIPE_MODELS)}; heads: {one_of(RECIPE_HEADS)}; "
                               f'generations: {one_of(RECIPE_GENERATIONS[1:])} (or "" for none).')


def _reference(entry: Recipe, reference_key: Optional[bool], lora: bool, beta: Optional[float], dropped: bool) -> bool:
    """Whether a frozen reference model sits in memory. TRL keeps none under PEFT (the adapters are
    disabled instead), with precomputed log-probs or a reference-free loss (trl/trainer/dpo_trainer.py:909,
    "if is_peft_model(self.model) or (args.precompute_ref_log_probs ..."), nor, where beta gates it, at
    beta = 0 (trl/trainer/grpo_trainer.py:984-990); PPO copies it unless PEFT (trl/experimental/ppo/
    ppo_trainer.py:439-444 create_reference_model). reference-model = true means one passed explicitly."""
    if "reference" not in entry.models:
        return False
    if reference_key is not None:
        return reference_key
    return not (lora or dropped) and (not entry.beta_gates_reference or bool(beta and beta > 0))


def _beta(table: Table, entry: Recipe) -> Optional[float]:
    beta = _number(table, "beta", 0.0, 1e6)
    return entry.beta if beta is None else beta


def _offline(table: Table, entry: Recipe, lora: bool, reference_key: Optional[bool]) -> Tuple[RecipeSettings, Dict[str, int]]:
    """A recipe that scores given rows (DPO, reward): max-length is the row, max-prompt-length its prompt."""
    out: Dict[str, int] = {}
    max_length = table.integer("max-length")
    if max_length is not None:
        out["seq_len"] = max_length
    prompt = table.integer("max-prompt-length", 0, low=1)
    total = max_length or table.integer("seq-len") or 0
    if prompt and total and prompt >= total:
        raise table.fail("max-prompt-length", f"max-prompt-length {prompt} leaves no completion in a row of {total} tokens.",
                         hint="A row is prompt + completion; max-prompt-length must be below max-length (or seq-len).")
    loss = table.choice("loss-type", LOSS_TYPES, "sigmoid") if "loss-type" in entry.keys else None
    head = table.choice("log-prob-head", LOG_PROB_HEADS, "fused") if "log-prob-head" in entry.keys else ""
    free = loss in REFERENCE_FREE_LOSSES
    if free and reference_key:
        raise table.fail("reference-model", f'loss-type = "{loss}" is reference-free: the trainer loads no reference model.',
                         hint=f'Drop reference-model, or use a loss that compares with a reference ({", ".join(REFERENCE_LOSSES[:4])}, ...).')
    precompute = table.boolean("precompute-ref-log-probs", False)
    if free and precompute:
        raise table.fail("precompute-ref-log-probs", f'loss-type = "{loss}" is reference-free: there are no reference log-probs to precompute.')
    beta = _beta(table, entry)
    return RecipeSettings(name=entry.name, beta=beta, loss_type=loss, reference=_reference(entry, reference_key, lora, beta, precompute or free),
                          precompute_ref_log_probs=precompute, prompt_len=prompt,
                          completion_len=(total - prompt) if prompt and total else 0,
                          log_prob_head="" if head == "fused" else head), out


def _online(table: Table, entry: Recipe, lora: bool, reference_key: Optional[bool], data_parallel: int,
            accumulation: int, generating: str) -> Tuple[RecipeSettings, Dict[str, int]]:
    """A recipe whose policy generates its completions inside the step (GRPO, PPO)."""
    out: Dict[str, int] = {}
    completion = table.integer("max-completion-length", entry.completion_len)
    prompt = table.integer("max-prompt-length")
    if prompt is not None:
        out["seq_len"] = prompt + completion
    else:
        total = table.integer("seq-len")
        if total is not None and total <= completion:
            raise table.fail("seq-len", f"seq-len {total} leaves no prompt beside max-completion-length {completion}.",
                             hint=f"For {generating} give max-prompt-length (the row is prompt + completion), or a seq-len above the completion.")
        if total is None and completion >= 2048:
            raise table.fail("max-completion-length", f"max-completion-length {completion} fills the assumed seq-len of 2048.",
                             hint="Give max-prompt-length: the row is prompt + completion.")
        prompt = 0  # seq-len less the completion, resolved by recipes.py once seq-len is known
    generation = table.choice("generation", GENERATIONS, "transformers")
    util = _number(table, "vllm-gpu-memory-utilization", 0.0, 1.0, low_open=True)
    if util is not None and generation != "vllm-colocate":
        raise table.fail("vllm-gpu-memory-utilization", f'only applies to generation = "vllm-colocate"; this run has generation = "{generation}".',
                         hint="A separate vLLM server (generation = \"vllm-server\") takes its memory on its own GPUs.")
    util = VLLM_COLOCATE_UTILIZATION if util is None and generation == "vllm-colocate" else (util or 0.0)
    batch = table.integer("batch-size")
    gens = 0
    if "num-generations" in entry.keys:
        gens = table.integer("num-generations", entry.num_generations)
        if gens < 2:
            raise table.fail("num-generations", f"{entry.name.upper()} compares each completion with its group: num-generations must be at least 2, got {gens}.")
        if batch is None:
            batch = gens  # one prompt's group per device
            out["batch_size"] = batch
    beta = _beta(table, entry)
    if entry.beta_gates_reference and reference_key and beta == 0.0:
        raise table.fail("reference-model", "beta = 0 (TRL GRPOConfig's default) loads no reference model: the KL term is off.",
                         hint="Set beta > 0 (e.g. 0.001, DeepSeek-R1) for a KL penalty, or drop reference-model.")
    batch = batch or 1
    gen_batch = _generation_batch(table, batch, accumulation)
    if gens and (gen_batch * data_parallel) % gens:
        raise table.fail("num-generations", f"the {gen_batch * data_parallel} completions generated per step (generation batch x "
                         f"{data_parallel} data-parallel GPUs) cannot be split into groups of num-generations = {gens}.",
                         hint="TRL GRPOConfig requires the generation batch to be divisible by num_generations; batch-size counts completions.")
    value_head = table.choice("value-head", VALUE_HEADS, "separate")
    if value_head == "shared" and "value-model" in table:
        raise table.fail("value-model", 'value-head = "shared" puts the value head on the policy: there is no separate value model.',
                         hint='Drop value-model, or use value-head = "separate" (TRL PPOTrainer\'s critic).')
    return RecipeSettings(name=entry.name, beta=beta, reference=_reference(entry, reference_key, lora, beta, False), prompt_len=prompt,
                          completion_len=completion, num_generations=gens, generation=generation, vllm_gpu_memory_utilization=util,
                          generation_batch_size=gen_batch, rollout_chunk=table.integer("local-rollout-forward-batch-size", 0),
                          value_head=value_head,
                          reward_model=_side_model(table, "reward-model"), value_model=_side_model(table, "value-model")), out


def _generation_batch(table: Table, batch: int, accumulation: int) -> int:
    """Completions one GPU generates at once. TRL GRPO generates for steps_per_generation optimisation
    micro-batches in one generate() call and buffers them (trl/trainer/grpo_trainer.py:1538-1546; its
    dataloader yields per_device_train_batch_size x steps_per_generation rows, :1275). steps_per_generation
    defaults to gradient_accumulation_steps (trl/trainer/grpo_config.py:1098-1100) and cannot be given with
    generation_batch_size (:1113-1116). PPO (no steps-per-generation key) rolls out its whole local batch,
    batch-size x accumulation steps (trl/experimental/ppo/ppo_trainer.py:463 local_batch_size)."""
    spg = table.integer("steps-per-generation")
    if spg is not None and "generation-batch-size" in table:
        raise table.fail("steps-per-generation", "steps-per-generation and generation-batch-size both set the generation batch; give one.",
                         hint="generation-batch-size = batch-size x steps-per-generation (TRL GRPOConfig accepts only one of the two).")
    if "generation-batch-size" in table:
        gen_batch = table.integer("generation-batch-size")
        if gen_batch % batch:
            raise table.fail("generation-batch-size", f"generation-batch-size {gen_batch} is not a multiple of batch-size {batch}.",
                             hint="TRL generates for several optimisation steps at once: generation_batch_size = batch-size x steps-per-generation.")
        return gen_batch
    return batch * (accumulation if spg is None else spg)


def _side_model(table: Table, key: str):
    """PPO's reward or value model when it is not the policy's shape: a table with the model keys
    (params, config or the architecture keys), read like [tool.llmmem.model]."""
    if key not in table:
        return None
    raw = table.values[key]
    if not isinstance(raw, dict) or not raw:
        raise table.fail(key, f"expected a table of model keys (params, config or the architecture), got {type_name(raw)} {raw!r}.",
                         hint=f'For example {key} = {{ params = "1B" }} or {key} = {{ config = "rm/config.json" }}.')
    sub = Table(raw, MODEL_KEYS, table.ctx, f"{table.dotted}.{key}", lambda _key: table.line_of(key))
    return model_from_table(sub, table.ctx)
