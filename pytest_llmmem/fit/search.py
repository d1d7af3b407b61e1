"""What would fit: the changes to a run, each computed by the estimator, that bring it under budget.

Every suggestion is exact at the integer boundary: the suggested batch size (or sequence length)
fits and the next one up does not. Memory only grows with batch and sequence (every activation,
logit and KV-cache term is linear or quadratic in them), so a binary search finds the boundary.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from ..catalog.registry import default_catalog
from ..core.records import Estimate
from ..estimator import estimate
from ..model.architecture import Architecture
from ..core.run import Run
from ..record import Record
from ..units import format_bytes
from ..core.records import WayOut
from .adapters import narrower_targets, toml_list


Price = Callable[[Run], Estimate]  # the estimate of a run: ``estimate`` itself, or a search's memo of it


class Priced:
    """The estimates one search has made, by run. A bisection's last probe and the offer made from it
    price the same run twice; the estimate is a function of the run, so an equal run gets the same one
    (start-up: ``llmmem check`` runs the search for every over-budget run, on every commit)."""

    def __init__(self, run: Optional[Run] = None, current: Optional[Estimate] = None) -> None:
        self.runs: List[Run] = [run] if current is not None else []
        self.estimates: List[Estimate] = [current] if current is not None else []

    def __call__(self, run: Run) -> Estimate:
        for i, seen in enumerate(self.runs):
            if seen == run:
                return self.estimates[i]
        est = estimate(run)
        self.runs.append(run)
        self.estimates.append(est)
        return est


def _fits(run: Run, price: Price = estimate) -> bool:
    return bool(price(run).fits)


def largest_fitting(run: Run, field: str, upper: int, price: Price = estimate) -> Optional[int]:
    """The largest value of ``field`` in 1..upper at which the run fits, or None if even 1 does not."""
    def at(value: int) -> Run:
        return run._replace(**{field: value})

    if not _fits(at(1), price):
        return None
    low, high = 1, upper  # invariant: low fits; high does not
    if _fits(at(high), price):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        if _fits(at(mid), price):
            low = mid
        else:
            high = mid
    return low


MAX_GPUS = 65536


def fewest_gpus(run: Run, price: Price = estimate) -> Optional[int]:
    """The fewest GPUs at which the run fits with its own sharding and parallel layout, or None.

    Only sharded states shrink with more GPUs (ZeRO >= 1, FSDP); the count stays a multiple of
    tensor x pipeline parallel, with a data-parallel size the expert-parallel size divides.
    """
    if run.zero_stage == 0 and run.fsdp == "none":
        return None
    step = run.tensor_parallel * run.pipeline_parallel * run.expert_parallel
    best = smallest_fitting_count(lambda k: _fits(run._replace(gpus=k * step), price), MAX_GPUS // step)
    return None if best is None else best * step


def smallest_fitting_count(fits_at, upper: int) -> Optional[int]:
    """Smallest k in 1..upper with fits_at(k), for a predicate that stays true once true.

    Doubling first, then bisecting: the answer is usually a handful of GPUs, found in a few estimates.
    """
    high = 1
    while high < upper and not fits_at(high):
        high = min(upper, high * 2)
    if not fits_at(high):
        return None
    low = high // 2 if high > 1 else 0  # invariant: fits_at(high); low == 0 or not fits_at(low)
    while high - low > 1:
        mid = (low + high) // 2
        if fits_at(mid):
            high = mid
        else:
            low = mid
    return high


def ways_out(run: Run, units: str = "gib", current: Optional[Estimate] = None, any_gpu: bool = False) -> List[WayOut]:
    """Changes that make an over-budget run fit, cheapest to adopt first: changes to the run, then a
    bigger card of the declared card's kind (``any_gpu``: of any kind). Empty when it already fits.
    ``current``: the run's own estimate when the caller has it (one estimate fewer)."""
    if run.budget is None or (current if current is not None else estimate(run)).fits:
        return []
    price = Priced(run, current)
    if run.method == "trace":
        # every way out is priced by the detailed method: tracing each alternative would take minutes
        run = run._replace(method="detailed")
    if run.serve is not None:
        from .serving import ways_out as serving_ways_out

        return serving_ways_out(run, units)
    out: List[WayOut] = []
    has_shape = isinstance(run.model, Architecture)

    def offer(key: str, value: object, text: str, changed: Run) -> None:
        est = price(changed)
        if est.fits:
            out.append(WayOut(key, value, f"{text} ({format_bytes(est.total_bytes, units)})", est))

    if has_shape and run.trains and (not run.gradient_checkpointing or run.selective_ac):
        offer("gradient-checkpointing", True, "fits with gradient-checkpointing = true",
              run._replace(gradient_checkpointing=True, selective_ac=""))
    if has_shape and not run.flash_attention:
        offer("flash-attention", True, "fits with flash-attention = true", run._replace(flash_attention=True, attn_implementation="sdpa"))
    if has_shape and run.adapter is not None and run.lora_dropout > 0:
        # each adapted module keeps its dropout's output and mask (adapters.lora_saved); without it, none
        offer("lora-dropout", 0.0, "fits with lora-dropout = 0", run._replace(lora_dropout=0.0))
    if has_shape and run.adapter is not None:
        for targets, why in narrower_targets(run):  # the widest that fits: each adapted module keeps its own input copy
            before = len(out)
            offer("lora-targets", list(targets), f"fits with lora-targets = {toml_list(targets)} ({why})", run._replace(lora_targets=targets))
            if len(out) > before:
                break
        if run.lora_rank > 1 and "lora-rank" in run.adapter.keys:  # lora_A's r-wide output, A and B, their gradients and states shrink with r
            best = largest_fitting(run, "lora_rank", run.lora_rank - 1, price)
            if best:
                out.append(WayOut("lora-rank", best, f"fits with lora-rank <= {best}", price(run._replace(lora_rank=best))))
    # Recipe changes (a LoRA policy, beta = 0, a separate vLLM server, fewer generations): fit/recipes.py.
    if run.recipe.post_training:
        tried = set()
        from .recipes import recipe_changes

        for key, value, text, changed in recipe_changes(run):
            if key in tried:
                continue  # num-generations: the most generations that fit, tried from the top
            before = len(out)
            offer(key, value, text, changed)
            if len(out) > before:
                tried.add(key)
    # A grouped recipe's batch-size (GRPO's) must stay a multiple of num-generations: fewer generations is offered above.
    if has_shape and run.batch_size > 1 and not run.recipe.num_generations:
        best = largest_fitting(run, "batch_size", run.batch_size - 1, price)
        if best:
            out.append(WayOut("batch-size", best, f"fits with batch-size <= {best} (raise gradient accumulation to keep the global batch)",
                              price(run._replace(batch_size=best))))
    if has_shape and run.seq_len > 1:
        best = largest_fitting(run, "seq_len", run.seq_len - 1, price)
        if best:
            out.append(WayOut("seq-len", best, f"fits with seq-len <= {best}", price(run._replace(seq_len=best))))
    if run.optimizer is not None and run.optimizer.name in ("adamw", "adam"):
        eight_bit = default_catalog().optimizer("adamw-8bit")
        offer("optimizer", "adamw-8bit", 'fits with optimizer = "adamw-8bit"', run._replace(optimizer=eight_bit))
    for key, value, text, changed in trainer_knobs(run) + phase_changes(run):
        offer(key, value, text, changed)
    if run.trains and run.mode == "train":
        if run.zero_stage or run.fsdp != "none":
            gpus = fewest_gpus(run, price)
            if gpus and gpus > run.gpus:
                offer("gpus", gpus, f"fits on {gpus} GPUs with this sharding (gpus = {gpus})", run._replace(gpus=gpus))
        else:
            zero3 = fewest_gpus(run._replace(zero_stage=3), price)
            if zero3:
                offer("zero-stage", 3, f"fits on {zero3} GPUs with zero-stage = 3 (gpus = {zero3})", run._replace(zero_stage=3, gpus=zero3))
    gpu = smallest_gpu(run, any_gpu, price)
    if gpu:
        on_card = _on_gpu(run, gpu)
        est = price(run)._replace(run=on_card) if _budget_blind(run) else price(on_card)  # as smallest_gpu judged it
        out.append(WayOut("gpu", gpu, f'fits on a {gpu} (gpu = "{gpu}") ({format_bytes(est.total_bytes, units)})', est))
    return out


def trainer_knobs(run: Run) -> List[tuple]:
    """(key, value, text, changed run) for each trainer knob that would lower this run's peak (profiles.py)."""
    if not run.trains or not isinstance(run.model, Architecture):
        return []
    knobs, out = run.knobs, []

    def knob(key: str, value: object, text: str, **change) -> None:
        out.append((key, value, text, run._replace(knobs=knobs._replace(**change))))

    if knobs.loss != "fused":
        knob("loss", "fused", 'fits with loss = "fused" (Liger / Cut Cross-Entropy: no b x s x vocab logits)', loss="fused")
    if run.gradient_checkpointing and not knobs.activation_offload:
        knob("activation-offload", True, "fits with activation-offload = true (checkpointed layer inputs in host memory)", activation_offload=True)
    if run.mode == "train" and not knobs.optimizer_in_backward and run.micro_batches == 1:
        knob("optimizer-in-backward", True, "fits with optimizer-in-backward = true (each gradient applied and freed in backward)",
             optimizer_in_backward=True)
    if knobs.optimizer_impl != "fused" and run.optimizer is not None and run.optimizer.name in ("adamw", "adam"):
        knob("optimizer-impl", "fused", 'fits with optimizer-impl = "fused" (no foreach step temporaries)', optimizer_impl="fused")
    return out


def phase_changes(run: Run) -> List[tuple]:
    """(key, value, text, changed run) for each change that lowers a peak outside the training step:
    evaluation's kept logits, an FSDP full state dict (job_phases.py, issue 16)."""
    if not run.trains:
        return []
    job, out = run.job, []

    def change(key: str, value: object, text: str, **fields) -> None:
        out.append((key, value, text, run._replace(job=job._replace(**fields))))

    if job.evaluates and job.eval_samples and job.eval_accumulation_steps != 1:
        change("eval-accumulation-steps", 1, "fits with eval-accumulation-steps = 1 (each eval batch's logits moved to the CPU)",
               eval_accumulation_steps=1)
    if run.fsdp != "none" and job.save == "full-state-dict" and not job.offload_to_cpu:
        change("offload-to-cpu", True, "fits with offload-to-cpu = true (the full state dict built on the CPU, one unit at a time)",
               offload_to_cpu=True)
        change("save", "sharded", 'fits with save = "sharded" (each rank saves its own shard)', save="sharded")
    if job.merge_adapters and job.merge_on_gpu:
        change("merge-adapters", False, "fits with merge-adapters = false (merge on the CPU after training)", merge_adapters=False)
    return out


def _on_gpu(run: Run, name: str) -> Run:
    budget = run.budget
    gpu = default_catalog().gpu(name)
    fraction = budget.headroom_bytes / budget.ceiling_bytes if budget.ceiling_bytes else 0.0
    headroom = int(gpu.memory_bytes * fraction)
    return run._replace(budget=budget._replace(ceiling_bytes=gpu.memory_bytes, headroom_bytes=headroom, gpu=gpu.name,
                                                  cuda_total_bytes=gpu.cuda_total_bytes))


def _budget_blind(run: Run) -> bool:
    """Whether the run's estimate reads no budget, so that one estimate holds on every card: the detailed
    count and the rule of thumb (tests/test_fit.py holds them to it). A recipe's colocated vLLM engine and
    a server take a share of the card, so theirs are priced per card."""
    return run.serve is None and not run.recipe.post_training


def smallest_gpu(run: Run, any_kind: bool = False, price: Price = estimate) -> Optional[str]:
    """The known GPU with the least memory that holds the run (keeping its headroom share), if any:
    of the declared card's vendor and class (an A10G user is not told to buy an RTX-4090, nor an
    RTX-4090 user an MI250X), or of any kind when asked. A gpu-memory budget names no card: none."""
    catalog = default_catalog()
    declared = catalog.gpu(run.budget.gpu).kind if run.budget.gpu else None
    if declared is None and not any_kind:
        return None
    # One estimate judged against each card's budget where the estimate reads none (_budget_blind).
    same = price(run) if _budget_blind(run) else None
    for name in sorted(catalog.gpus.names, key=lambda n: catalog.gpu(n).memory_bytes):
        card = catalog.gpu(name)
        if (any_kind or card.kind == declared) and card.memory_bytes > run.budget.ceiling_bytes:
            on_card = _on_gpu(run, name)
            if (same._replace(run=on_card).fits if same is not None else _fits(on_card, price)):
                return name
    return None


class Toggle(Record):
    """One switch the solver tried, with the estimate it gives."""

    setting: str
    estimate: Optional[Estimate]  # None when it does not apply (already on, or no architecture)
    reason: str = ""


def toggles(run: Run) -> List[Toggle]:
    """Whether checkpointing, flash attention, 8-bit AdamW, a trainer knob or ZeRO-3 would make the run fit, one at a time."""
    out = []
    shaped = isinstance(run.model, Architecture)

    def attempt(setting: str, applies: bool, reason: str, changed) -> None:
        out.append(Toggle(setting, estimate(changed()) if applies else None, "" if applies else reason))

    if run.gradient_checkpointing:
        why = "already on"
    elif not run.trains:
        why = "only for training: inference keeps no activations for a backward pass"
    else:
        why = "needs the architecture"
    attempt("gradient-checkpointing = true", shaped and run.trains and not run.gradient_checkpointing, why,
            lambda: run._replace(gradient_checkpointing=True))
    attempt("flash-attention = true", shaped and not run.flash_attention,
            "already on" if run.flash_attention else "needs the architecture", lambda: run._replace(flash_attention=True, attn_implementation="sdpa"))
    is_adam = run.optimizer is not None and run.optimizer.name in ("adamw", "adam")
    attempt('optimizer = "adamw-8bit"', is_adam, "only replaces adam/adamw",
            lambda: run._replace(optimizer=default_catalog().optimizer("adamw-8bit")))
    if shaped and run.adapter is not None and run.lora_dropout > 0:  # listed only where there is a dropout to drop
        attempt("lora-dropout = 0", True, "", lambda: run._replace(lora_dropout=0.0))
    if shaped and run.adapter is not None:
        for targets, _ in narrower_targets(run)[-1:]:  # the narrowest: PEFT's default, or attention only
            attempt(f"lora-targets = {toml_list(targets)}", True, "", lambda: run._replace(lora_targets=targets))
        if run.lora_rank > 1 and "lora-rank" in run.adapter.keys:  # (IA3 and prompt tuning have no rank)
            attempt(f"lora-rank = {run.lora_rank // 2}", True, "", lambda: run._replace(lora_rank=run.lora_rank // 2))
    for key, value, _, changed in trainer_knobs(run):
        shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
        out.append(Toggle(f"{key} = {shown}", estimate(changed)))
    out += _recipe_toggles(run)
    if run.mode != "train":
        why = "only for full training"
    elif run.gpus == 1:
        why = "one GPU shards nothing; see the fewest GPUs above"  # cli fit prints that line for every full-training run
    else:
        why = "already sharded"
    attempt(f"zero-stage = 3 on {run.gpus} GPU{'s' if run.gpus > 1 else ''}",
            run.mode == "train" and run.zero_stage != 3 and run.fsdp == "none" and run.gpus > 1, why,
            lambda: run._replace(zero_stage=3))
    return out


def _recipe_toggles(run: Run) -> List[Toggle]:
    """A recipe's own switches (fit/recipes.py recipe_changes): LoRA policy, beta = 0, precomputed reference
    log-probs, a separate vLLM server, a shared value head; and the most generations per prompt that
    fit (the fewest tried when none does), at the same prompts per step."""
    if not run.recipe.post_training:
        return []

    out: List[Toggle] = []
    generations = []
    from .recipes import recipe_changes

    for key, value, _, changed in recipe_changes(run):
        if key == "num-generations":
            generations.append((value, changed))
            continue
        shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
        out.append(Toggle(f"{key} = {shown}", estimate(changed)))
    if generations:
        tried = [(value, changed, estimate(changed)) for value, changed in generations]
        value, changed, est = next((t for t in tried if t[2].fits), tried[-1])
        out.append(Toggle(f"num-generations = {value} (batch-size {changed.batch_size}, same prompts per step)", est))
    return out
