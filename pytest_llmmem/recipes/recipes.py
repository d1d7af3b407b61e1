"""Post-training recipes as the set of models a step holds (issue 13; DESIGN.md section 5).

A recipe is a catalog entry (catalog.entries.Recipe, registered through llmmem_register_recipes):
how many rows one example becomes (DPO and reward models put chosen and rejected in one forward),
how the policy scores tokens (TRL's fused log-prob head, a score head, or HF logits), which extra
models sit in memory (reference, reward, value) and its generation phase. Nothing here branches on
a recipe's name. The policy's step is priced by the same term functions as an SFT run (``step.step_terms``
at the recipe's rows), its head replaced by the recipe's; each extra model is priced from the same
weights/states functions and is its own breakdown term, resident in every phase. Generation (GRPO,
PPO) is a phase of its own: in-process ``generate()`` holds a KV cache while no activations or
gradients live; a colocated vLLM engine holds its ``gpu-memory-utilization`` share all the time.
The phases go to the same composer as an SFT job's (compose.py); the peak is the largest.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..catalog.entries import Recipe
from ..catalog.registry import default_catalog
from ..core import detailed as core
from ..core.compose import OVERHEAD, Item, Pairs, Phase, compose, run_overhead
from ..core.records import TERMS, Estimate
from ..core.run import RecipeSettings, Run
from ..core.terms.activations import FP32
from ..core.terms.model_ends import INDEX_BYTES
from ..core.terms.backward import INSTANTS, Instant, backward_instant, instant_details, instant_items
from ..core.terms.job_phases import first_step_basis, first_step_why, job_note
from ..core.terms.transients import forward_transient
from ..core.terms.parallel import local_params
from ..core.terms.prefill import stage_kv
from ..core.terms.step import Step, step_terms, stored_weight_bytes
from ..core.terms.trainer_terms import optimizer_step
from ..model.architecture import Architecture
from .ppo_rollout import ROLLOUT_CHUNK, rollout_phase

# Breakdown terms a recipe adds (labels in report.LABELS), placed before the overhead term.
RL_TERMS = ("reference_model", "reward_model", "value_model", "generation_kv_cache", "rollout_logits", "vllm_engine_share")
# The breakdown of a recipe's step: an SFT step's terms (estimate.TERMS) with the recipe's before the overhead.
RECIPE_TERMS = TERMS[:TERMS.index(OVERHEAD)] + RL_TERMS + TERMS[TERMS.index(OVERHEAD):]

# TRL 1.16 fused LM head: tiles of TOKEN_CHUNK_SIZE tokens x _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary
# columns (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE = 4096; trl/trainer/utils.py:1506 = 32768).
FUSED_TOKEN_TILE = 4096
FUSED_VOCAB_TILE = 32768


def score_model_params(arch: Architecture) -> int:
    """A sequence-classification model of the policy's shape: the LM head (unless tied) replaced by a
    bias-free h x 1 score (transformers LlamaForSequenceClassification: nn.Linear(h, num_labels, bias=False))."""
    lm_head = 0 if arch.tie_embeddings else arch.vocab_size * arch.hidden_size
    return arch.param_count() - lm_head + arch.hidden_size


def _frozen_weight_bytes(run: Run, arch: Optional[Architecture], params: int, quantized_ok: bool) -> int:
    # (params: the frozen model's own count; its tensor/pipeline share is the policy's)
    """A frozen model's weights on one GPU: its dtype (16-bit when ``quantized_ok`` is false), split by
    tensor/pipeline parallelism, and sharded under ZeRO-3 / FSDP full-shard, as TRL prepares its
    reference and reward models (prepare_deepspeed / prepare_fsdp in trl/models/utils.py)."""
    dtype = run.dtype
    if dtype.quantized and quantized_ok:
        weights = stored_weight_bytes(run, params)[0]
    else:
        weights = round(params * (dtype.compute_bytes if dtype.quantized else dtype.bytes))
    policy = arch.param_count() if arch else params
    share = local_params(run, arch, policy).params / policy if policy else 1.0
    sharded = run.zero_stage == 3 or run.fsdp in ("full-shard", "hybrid-shard")
    return round(weights * share / (run.shard_group if sharded else 1))


def _fused_head(run: Run, arch: Architecture, rows: int, act: int, details: Pairs, notes: List[str]) -> Tuple[Pairs, Pairs]:
    """TRL's fused LM head (trl/trainer/utils.py:1548 add_fused_lm_head; trl/kernels/chunked_logprob.py
    _ChunkedLogProbFunction): no b*s*V logits. It saves a copy of the scored positions' hidden states
    (``hidden_states[mask]``), their int64 targets, and fp32 log-Z and entropy per position; the
    per-token outputs are scattered back through a bool mask each. Backward accumulates grad_hidden
    in fp32 (and grad_weight in fp32, V x h, when the head trains) and recomputes one tile at a time;
    it returns ``grad_hidden.to(hidden.dtype)`` and ``grad_weight.to(weight.dtype)``, copies made while
    the fp32 sums and the tile are still its locals (``fused_backward_casts``).
    Returns (the step's items without its logits, the head's logits items)."""
    rs, s, t = run.recipe, run.seq_len, run.tensor_parallel
    positions_per_row = rs.completion_len or (s - 1)
    if not rs.completion_len:
        notes.append("max-prompt-length not set: the fused log-prob head is counted over every position (an upper bound; it scores the completion only)")
    n = rows * positions_per_row
    h, vocab = arch.hidden_size, arch.vocab_size
    kept = dict((k, v) for k, v in details if not k.startswith("logits."))
    if run.mode == "train":
        # The plain LM head's input (counted with the head in activations) is not kept: the fused head keeps its own copy.
        kept["activations.embedding_and_head"] -= rows * s * h * act
    head_trains = run.mode == "train"
    head = (("logits.fused_head_input", n * h * act),
            ("logits.per_token", n * (INDEX_BYTES + 2 * FP32) + 2 * rows * (s - 1)),
            ("logits.fused_backward_buffers", n * h * FP32 + min(n, FUSED_TOKEN_TILE) * min(vocab, FUSED_VOCAB_TILE) * act
             + ((vocab * h * FP32) // t if head_trains else 0)),
            # ChunkedLogProbFunction.backward's return: the compute-dtype copies of both sums
            ("logits.fused_backward_casts", n * h * act + ((vocab * h * act) // t if head_trains else 0)))
    return tuple(kept.items()), head


def _score_head(run: Run, rows: int, act: int, details: Pairs) -> Tuple[Pairs, Pairs]:
    """Reward model: the score head's (b, s, 1) output and the pooled (b, 1) rewards instead of b*s*V
    logits (modeling_llama.py LlamaForSequenceClassification.forward); the loss is -logsigmoid of a difference."""
    kept = tuple((k, v) for k, v in details if not k.startswith("logits."))
    return kept, (("logits.scores", rows * run.seq_len * act + rows * FP32),)


def _score_model_states(run: Run, arch: Architecture, states: Dict[str, int]) -> Tuple[Dict[str, int], int]:
    """Reward-model training trains a sequence-classification model: the LM head's V x h weights (and,
    under full training, their gradients and optimizer states) are not there; the h x 1 score is.
    Full training: the model states scale with the parameter count. LoRA: the base loses the head's
    16-bit weights (PEFT SEQ_CLS trains the score as a module to save: h params, counted as noise).
    Returns the states and the trained model's parameter count."""
    params, score = arch.param_count(), score_model_params(arch)
    if run.mode == "train":
        return {term: round(value * score / params) for term, value in states.items()}, score
    if not arch.tie_embeddings:
        per = run.dtype.compute_bytes if run.dtype.quantized else run.dtype.bytes
        share = local_params(run, arch, params).params / params
        return {**states, "weights": states["weights"] - round(arch.vocab_size * arch.hidden_size * per * share)}, score
    return states, score


def generation_phase(run: Run, arch: Architecture, act: int) -> Dict[str, int]:
    """In-process ``generate()`` of ``generation-batch-size`` completions: the KV cache after the last token
    (prompt + completion - 1 positions: the last sampled token is never fed back; measured, groundtruth-rl
    grpo gen_kv_bytes_final), the last position's logits in the compute dtype (generate passes
    logits_to_keep=1) beside generate's fp32 copy and the sampling softmax (transformers 5.24
    generation/utils.py:3248 and :3275), and the larger of the prefill's and a decode step's transient."""
    rs = run.recipe
    rows, completion = rs.generation_batch_size, rs.completion_len
    prompt = rs.prompt_len or run.seq_len - completion
    t = run.tensor_parallel
    groups = arch.layer_groups()
    prefill = max(forward_transient(arch, g, batch=rows, seq=prompt, act=act, flash=run.flash_attention, tp=t, fa=run.mask_free) for g in groups)
    decode = max(forward_transient(arch, g, batch=rows, seq=1, act=act, flash=run.flash_attention, tp=t, fa=run.mask_free) for g in groups)
    kv_prompt = stage_kv(run, arch, rows, prompt, act)
    kv_final = stage_kv(run, arch, rows, prompt + completion - 1, act)
    kv_at_peak, transient = (kv_prompt, prefill) if kv_prompt + prefill > kv_final + decode else (kv_final, decode)
    return {
        "kv_cache": kv_final,
        "kv_cache_at_peak": kv_at_peak,
        "transient": transient,
        "logits": rows * arch.vocab_size * act // t,
        "sampling_fp32": 2 * rows * arch.vocab_size * FP32 // t,
    }


def _extra_models(run: Run, arch: Optional[Architecture], params: int, rows: int, recipe: Recipe,
                  policy: "object", notes: List[str]) -> Tuple[Dict[str, int], Pairs]:
    """Reference, reward and value models, each its own term: (their terms, the value model's items)."""
    rs = run.recipe
    terms: Dict[str, int] = {}
    if rs.reference:
        # A frozen copy of the policy's base weights (TRL create_model_from_path / create_reference_model).
        terms["reference_model"] = _frozen_weight_bytes(run, arch, params, quantized_ok=True)
    if "reward" in recipe.models:
        model = rs.reward_model if rs.reward_model is not None else (arch or run.model)
        shaped = model if isinstance(model, Architecture) else None
        rm = score_model_params(shaped) if shaped else model.params
        terms["reward_model"] = _frozen_weight_bytes(run, shaped, rm, quantized_ok=False)
        if shaped is None:
            notes.append("reward model counted at its params: its score head needs the architecture")
    if "value" not in recipe.models:
        return terms, ()
    if rs.value_head == "shared":
        # AutoModelForCausalLMWithValueHead: a Linear(h, 1) with bias on the policy's backbone
        # (trl/experimental/ppo/modeling_value_head.py ValueHead), trained in fp32 with AdamW.
        h = arch.hidden_size if arch else 0
        terms["value_model"] = (h + 1) * FP32 * 4
        return terms, ()
    # A separate AutoModelForSequenceClassification critic, fully trained with the policy's optimizer
    # (PolicyAndValueWrapper): its states scale with its parameter count; its activations are the
    # policy's backbone activations at the same rows; its output is one value per position.
    full = policy  # an estimate of the critic's shape at these rows under full training
    shaped = full.run.model if isinstance(full.run.model, Architecture) else None
    vm = score_model_params(shaped) if shaped else full.params
    states = sum(full.full(k) for k in ("weights", "master_weights", "gradients", "optimizer_states"))
    items = (("value_model.model_states", round(states * vm / full.params)), ("value_model.activations", full.full("activations")),
             ("value_model.values", rows * run.seq_len * run.dtype.compute_bytes))
    terms["value_model"] = sum(v for _, v in items)
    return terms, items


def estimate_recipe(run: Run):
    """The peak of one step of a post-training run (DPO, GRPO, PPO, reward model, a plugin's): see the module docstring."""
    rs: RecipeSettings = run.recipe
    recipe = default_catalog().recipe(rs.name)
    rows = run.batch_size * recipe.rows_per_example
    plain = run._replace(recipe=RecipeSettings(), calibration=None, batch_size=rows)
    if rs.log_prob_head == "logits":  # the log-probs come from the whole logits, not the trainer's loss function
        plain = plain._replace(knobs=plain.knobs._replace(loss="upcast", keeps_logits=True))
    if run.method == "rule-of-thumb":
        est = core.estimate_model(plain)
        return est._replace(run=run, notes=est.notes + (f"recipe = \"{rs.name}\": the rule of thumb counts the policy only",))
    step = step_terms(plain)  # the policy's step at the recipe's rows
    policy = core.detailed(plain, step)  # the same step read as an SFT job: its notes, and what _carried keeps
    opt = optimizer_step(plain, step.tensors, step.trained, step.gradients, step.optimizer_states)
    arch = step.arch
    params = policy.params
    states = {"weights": step.weights, "master_weights": step.master_weights, "gradients": opt.gradients,
              "optimizer_states": step.optimizer_states}
    items, head = step.details, ()
    # the SFT reading's "peak at ..." note is about its own phases; the recipe's peak is named below from its own
    notes, partial = [n for n in policy.notes if not n.startswith("peak at ")], list(policy.partial)
    act = run.dtype.compute_bytes
    if recipe.rows_per_example == 2:
        notes.append(f"{rs.name}: chosen and rejected run in one forward: {rows} rows of {run.seq_len} tokens")
    if arch is not None:
        if recipe.head == "fused" and rs.log_prob_head == "logits":
            # the plain step's logits and loss terms at the recipe's rows: the whole b*s*V logits, upcast
            # (LLaMA-Factory's .logits.to(torch.float32), then log_softmax), as loss = "upcast" counts them
            notes.append(f"{rs.name}: log-prob-head = \"logits\": the whole logits and an fp32 log-softmax over {rows} rows")
        elif recipe.head == "fused":
            items, head = _fused_head(run, arch, rows, act, items, notes)
        elif recipe.head == "score":
            items, head = _score_head(run, rows, act, items)
            states, params = _score_model_states(run, arch, states)
    value_basis = None
    if "value" in recipe.models and rs.value_head == "separate":
        if rs.value_model is not None:
            # The critic as its own full-training run, on the policy's data-parallel GPUs (no TP/PP split).
            critic = plain._replace(model=rs.value_model, mode="train", dtype=_compute_dtype(run), tensor_parallel=1,
                                    pipeline_parallel=1, sequence_parallel=False, gpus=max(1, run.data_parallel))
            value_basis = core.estimate_model(critic)
            if not isinstance(rs.value_model, Architecture):
                partial.append("the value model is given by params only: its activations are not counted")
        else:
            value_basis = policy if run.mode == "train" else core.estimate_model(plain._replace(mode="train", dtype=_compute_dtype(run)))
    models, value_items = _extra_models(run, arch, policy.params, rows, recipe, value_basis, notes)
    if rs.precompute_ref_log_probs:
        notes.append("precompute-ref-log-probs: the reference log-probs are computed before training; no reference model during the step")
    elif "reference" in recipe.models and not rs.reference:
        notes.append(_no_reference_reason(run, recipe))
    gen, shares, gen_items = _generation(run, recipe, arch, act, notes, partial)
    policy_step = _policy_step(run, step, items + head, params) if arch is not None else step
    instant = _policy_instant(plain, recipe, policy_step, states["gradients"], head)
    value_activations = dict(value_items).get("value_model.activations", 0)
    phases = _phases(run, policy_step, states, {**models, **shares}, value_activations, opt, gen, _carried(policy), instant)
    phases = _first_step(run, plain, recipe, policy_step, states, {**models, **shares}, value_activations, opt, _carried(policy),
                         head) + phases
    comp = compose(phases, run_overhead(run), RECIPE_TERMS, run.calibration)
    if comp.peak == "first step":
        notes.insert(0, job_note(next(p for p in phases if p.name == "first step")))
    if comp.peak == "generation":
        notes.append(f"peak is the generation phase ({rs.generation_batch_size} completions): above the training forward/backward")
    elif gen is not None:
        notes.append("peak is the training step: the generation phase (KV cache, last-token logits) is lower; see details generation.*")
    if run.calibration is not None:
        notes.append(f"calibrated: x {run.calibration} from llmmem measure")
    details = {**dict(items), **comp.overhead_details, **dict(opt.details), **dict(head), **dict(value_items), **dict(gen_items),
               **instant_details(instant), "full.gradients": states["gradients"], "full.activations": policy_step.activations,
               "full.logits": policy_step.logits}
    return Estimate(run, "detailed", comp.breakdown, params, policy.trainable_params, tuple(notes), details,
                         policy.host_bytes, tuple(partial), policy.approximate, peak_phase=comp.peak,
                         phases=comp.totals if len(comp.phases) > 1 else ())


def _compute_dtype(run: Run):
    if not run.dtype.quantized:
        return run.dtype
    return default_catalog().dtype("bf16" if run.dtype.compute_bytes == 2 else "fp32")


def _no_reference_reason(run: Run, recipe: Recipe) -> str:
    rs = run.recipe
    if rs.loss_type in ("simpo", "cpo", "orpo"):  # config/recipe_keys.py REFERENCE_FREE_LOSSES
        return f'loss-type = "{rs.loss_type}" is reference-free: no reference model'
    if recipe.beta_gates_reference and not rs.beta:
        return "beta = 0 (TRL GRPOConfig's default): no reference model is loaded"
    return "LoRA: the reference is the policy with its adapters disabled, no second model"


def _generation(run: Run, recipe: Recipe, arch: Optional[Architecture], act: int, notes: List[str],
                partial: List[str]) -> Tuple[Optional[Dict[str, int]], Dict[str, int], Pairs]:
    """The generation share of a GRPO/PPO step: a colocated vLLM engine's share (resident), nothing
    (a separate server), or the in-process generation phase's figures (for ``_phases``). Returns
    (those figures or None, the resident terms it adds, its items)."""
    rs = run.recipe
    if not recipe.generation:
        return None, {}, ()
    if rs.generation == "vllm-server":
        notes.append("generation runs on a separate vLLM server (trl vllm-serve): nothing on the training GPUs")
        return None, {}, ()
    if rs.generation == "vllm-colocate":
        if run.budget is None:
            partial.append("the colocated vLLM engine's share is a fraction of the GPU's memory: set gpu or gpu-memory to count it")
            return None, {}, ()
        # vLLM takes gpu_memory_utilization x the GPU's total memory as the CUDA runtime reports it, for its
        # weights, activations and KV pool (vllm/v1/worker/gpu_worker.py requested_memory = total_gpu_memory
        # * gpu_memory_utilization); the serving module knows that total per GPU (serve.cuda_total).
        from ..serving.serve import cuda_total

        total, note = cuda_total(run)
        if note:
            notes.append(note)
        return None, {"vllm_engine_share": round(rs.vllm_gpu_memory_utilization * total)}, ()
    if arch is None:
        partial.append("generation's KV cache needs the architecture: give config or the architecture keys")
        return None, {}, ()
    shares = {}
    if recipe.generation == "rollout":
        # TRL PPOTrainer: chunked generate() with every token's fp32 scores kept through the update (ppo_rollout.py)
        gen = rollout_phase(run, arch, act)
        shares["rollout_logits"] = gen["rollout_scores"]
        chunk = min(rs.rollout_chunk or ROLLOUT_CHUNK, rs.generation_batch_size)
        notes.append(f"{rs.name}: rollout of {rs.generation_batch_size} completions, generate() and reference forwards "
                     f"{chunk} rows at a time (local-rollout-forward-batch-size)")
    else:
        gen = generation_phase(run, arch, act)
    return gen, shares, tuple((f"generation.{item}", value) for item, value in gen.items())


def _carried(policy) -> Tuple[Item, ...]:
    """The SFT reading's job-phase excess (load, eval or save above its step), which recipe figures
    have always kept in the breakdown although the recipe's own phases do not include it: carried
    here unchanged so that no figure moves; the recipe's own load/eval/save phases are still to do."""
    return tuple(Item(term, policy.breakdown[term]) for term in ("load", "eval", "save") if policy.breakdown[term])


def _policy_step(run: Run, step: Step, dynamic: Pairs, trained_params: int) -> Step:
    """The policy's step with the recipe's head in place of the plain one: its items, and the activations and
    loss-head totals they add up to. A reward model's states were scaled to its score model's parameters
    (_score_model_states); its trained count is scaled alike, so the backward's per-parameter gradient holds."""
    activations, logits = (sum(v for k, v in dynamic if k.startswith(term + ".")) for term in ("activations", "logits"))
    params = step.arch.param_count()
    trained = round(step.trained * trained_params / params) if run.mode == "train" and trained_params != params else step.trained
    return step._replace(details=tuple(dynamic), activations=activations, logits=logits, trained=trained)


def _policy_instant(plain: Run, recipe: Recipe, step: Step, gradients: int, head: Pairs) -> Instant:
    """The policy's backward peak instant, by the same candidates as an SFT step (terms/backward.py). A recipe's
    own head is alive whole when backward starts: TRL's fused head saved its input copy, targets, log-Z and
    entropy (ctx.save_for_backward) and its backward makes the fp32 grad_hidden, grad_weight and one tile before
    any layer's backward runs (trl/kernels/chunked_logprob.py ChunkedLogProbFunction.backward); a score head's
    (b, s, 1) output is all it keeps. A score model has no V x h head, so no head gradient is made."""
    loss = sum(v for _, v in head) if head else None
    return backward_instant(plain, step, gradients, loss=loss, lm_head=recipe.head != "score")


def _first_step(run: Run, plain: Run, recipe: Recipe, step: Step, states: Dict[str, int], models: Dict[str, int],
                value_activations: int, opt, carried: Tuple[Item, ...], head: Pairs) -> Tuple[Phase, ...]:
    """The policy's first training step where the trainer's activation offload starts with the second (Unsloth
    2025.3.1 up to 2025.11.4: Knobs.first_pass_kept, core/terms/job_phases.first_step_phase for an SFT step): every
    checkpointed layer input on the GPU, no optimizer states yet (created by the first optimizer.step()), and in the
    first micro-batch no earlier gradient. The rollout before it is the generation phase's, the same in every step."""
    basis = first_step_basis(plain, step)
    if basis is None:
        return ()
    one_batch, first, host = basis
    instant = _policy_instant(one_batch, recipe, first, states["gradients"], head)
    backward = _phases(one_batch, first, {**states, "optimizer_states": 0}, models, value_activations,
                       opt._replace(in_backward=False, temporaries=0), None, carried, instant)[0]
    return (backward._replace(name="first step", why=first_step_why(run, host, instant.name)),)


def _phases(run: Run, step: Step, states: Dict[str, int], models: Dict[str, int], value_activations: int,
            opt, gen: Optional[Dict[str, int]], carried: Tuple[Item, ...], instant: Instant) -> Tuple[Phase, ...]:
    """The step's phases. Every phase holds the policy's weights, master copy and optimizer states,
    the extra models and the engine share. backward: plus the policy's gradients, saved activations and
    loss buffers at its peak instant (terms/backward.py, as an SFT step's) and the value model's
    activations. optimizer step: plus gradients and the step's temporaries (trainer_terms.optimizer_step).
    generation (in-process): plus the KV cache, generate's logits and one forward's transient; gradients
    are freed after each optimizer step (Trainer zero_grad(set_to_none=True)) and nothing is kept for
    backward under no_grad.
    """
    resident = [Item("weights", states["weights"]), Item("master_weights", states["master_weights"]),
                Item("optimizer_states", states["optimizer_states"]), Item("kv_cache", step.kv_cache)]
    resident += [Item(term, models.get(term, 0) - (value_activations if term == "value_model" else 0)) for term in RL_TERMS]
    gradients = Item("gradients", states["gradients"])
    temps = opt.temporaries
    alive, *policy = instant_items(run, step, states["gradients"], instant)
    backward = resident + [alive, Item("value_model", value_activations)] + policy
    if opt.in_backward:
        backward.append(Item("optimizer_step", temps))
    phases = [Phase("backward", tuple(backward), why=f"the backward peaks at its {instant.name} instant ({INSTANTS[instant.name]})",
                    carried=carried)]
    if temps and not opt.in_backward:
        phases.append(Phase("optimizer step", tuple(resident + [gradients, Item("optimizer_step", temps)]), over=("backward",),
                            excess="optimizer_step", carried=carried))
    if gen is not None:
        # The optimizer-in-backward temporaries stay in the breakdown of a generation peak, as recipe figures always had them.
        kept = (Item("optimizer_step", temps),) if opt.in_backward else ()
        phases.append(Phase("generation", tuple(resident + [Item("generation_kv_cache", gen["kv_cache_at_peak"]),
                                                             Item("activations", gen["transient"], transient=True),
                                                             Item("logits", gen["logits"] + gen["sampling_fp32"], transient=True)]),
                            carried=carried + kept))
    return tuple(phases)
