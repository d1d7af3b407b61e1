"""The phase composer: overhead, fragmentation and calibration applied once, the peak the largest phase."""

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.core.compose import Item, Overhead, Phase, compose, overhead_slot, training_overhead
from pytest_llmmem.core.records import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, TERMS
from pytest_llmmem.core.terms.fsdp_pools import offloaded_shard_copies, small_pool_states, wrap_leftovers
from pytest_llmmem.core.terms.step import step_terms
from pytest_llmmem.estimator import estimate

OVERHEAD = Overhead(7, 0.3, (("overhead.cuda_context", 7),))
BACKWARD = Phase("backward", (Item("weights", 100), Item("activations", 50, transient=True), Item("logits", 10, transient=True)))
# fsdp_qlora's Llama-2-7B QLoRA at 512 tokens on two GPUs (benchmarks/data/published-fsdp-qlora.jsonl fq-7b-qlora-b1-512)
FQ_7B_QLORA_512 = {
    "dtype": "nf4", "adapter-dtype": "bf16", "lora-rank": 64, "optimizer": "adamw", "gpus": 2, "fsdp": "full-shard",
    "lora-targets": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj", "gate_proj"], "gradient-checkpointing": True,
    "flash-attention": True, "seq-len": 512, "mode": "qlora", "double-quant": True, "batch-size": 1, "lora-dropout": 0.1,
    "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "intermediate-size": 11008, "vocab-size": 32000}
UPDATE = Phase("optimizer step", (Item("weights", 100), Item("optimizer_step", 80)), over=("backward",), excess="optimizer_step")


def test_the_peak_is_the_largest_phase_with_its_overhead():
    comp = compose((BACKWARD, UPDATE), OVERHEAD, TERMS)
    # backward: 160 + 7 fixed + round(0.3 x 60 transient) = 185; optimizer step: 180 + 7 (nothing transient) = 187
    assert comp.totals == (("backward", 185), ("optimizer step", 187))
    assert comp.peak == "optimizer step"
    # shown as backward's own terms plus what the step adds above it, 187 - 185 = 2
    assert comp.breakdown["overhead"] == 25 and comp.breakdown["optimizer_step"] == 2
    assert sum(comp.breakdown.values()) == 187
    assert comp.overhead_details == {"overhead.cuda_context": 7, "overhead.fragmentation": 18}


def test_calibration_scales_the_peak_once():
    comp = compose((BACKWARD, UPDATE), OVERHEAD, TERMS, calibration=1.1)
    assert comp.breakdown["calibration"] == 19  # round(0.1 x 187 = 18.7)
    assert comp.totals[1] == ("optimizer step", 187)  # the phases stay uncalibrated


def test_a_phase_without_over_is_shown_as_its_own_items():
    gen = Phase("generation", (Item("weights", 100), Item("kv_cache", 90), Item("activations", 20, transient=True)))
    comp = compose((BACKWARD, gen), OVERHEAD, TERMS)
    assert comp.peak == "generation"  # 210 + 7 + round(0.3 x 20) = 223 > 185
    assert comp.breakdown["kv_cache"] == 90 and comp.breakdown["logits"] == 0 and comp.breakdown["overhead"] == 13
    assert comp.overhead_details["overhead.fragmentation"] == 6  # the fragmentation of the phase shown


def test_the_first_of_equal_phases_sets_the_peak():
    load = Phase("load", (Item("weights", 178),), over=("backward",), excess="load")  # 178 + 7 = 185, as backward
    comp = compose((load, BACKWARD), OVERHEAD, TERMS)
    assert comp.peak == "load" and comp.breakdown["load"] == 0 and sum(comp.breakdown.values()) == 185


def test_alive_at_the_peak_counts_in_place_of_the_full_size():
    # 40 of the 50 bytes of activations alive at the peak instant: 100 + 40 + 7 + round(0.3 x 40) = 159
    phase = Phase("backward", (Item("weights", 100), Item("activations", 50, transient=True, alive=40)))
    comp = compose((phase,), OVERHEAD, TERMS)
    assert comp.totals == (("backward", 159),) and comp.breakdown["activations"] == 40


def test_a_phase_lists_its_terms_in_order_with_the_overhead_where_it_says():
    phase = Phase("load", (Item("weights", 5, shown_if_zero=True), overhead_slot(), Item("load_copies", 0), Item("state_dict", 0, shown_if_zero=True)))
    shown = compose((phase,), Overhead(3, None), TERMS).phases[0]
    assert list(shown.breakdown.items()) == [("weights", 5), ("overhead", 3), ("state_dict", 0)]
    assert phase.resident == (phase.items[0], phase.items[2], phase.items[3]) and phase.transient == ()


def test_a_given_overhead_replaces_context_workspace_and_fragmentation():
    assert training_overhead(None).fixed == CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES
    comp = compose((BACKWARD,), training_overhead(1000), TERMS)
    assert comp.breakdown["overhead"] == 1000 and comp.overhead_details == {}


def test_a_recipe_adds_its_models_to_the_same_phases():
    # GRPO with a reference model: the reference's weights are resident in backward and generation alike,
    # so the two phases differ by what each holds for itself, not by the reference.
    keys = {"hidden-size": 2048, "num-layers": 16, "num-heads": 16, "intermediate-size": 8192, "vocab-size": 32000,
            "recipe": "grpo", "beta": 0.04, "batch-size": 8, "max-prompt-length": 256, "max-completion-length": 256}
    est = estimate(adhoc_run(keys))
    without = estimate(adhoc_run({**keys, "beta": 0.0}))
    ref = est.breakdown["reference_model"]
    assert ref > 0 and without.breakdown["reference_model"] == 0
    assert [name for name, _ in est.phases] == ["backward", "generation"]
    assert [(n, t - ref) for n, t in est.phases] == list(without.phases)


def test_the_reserved_peak_is_taken_over_every_instant_and_the_allocated_peak_stays_shown():
    # Instant A holds the most allocated: 100 + 40 + 10 = 150, slack round(0.3 x 10) = 3, reserved 153.
    # Instant B holds less (100 + 45 = 145) but more short-lived bytes: slack round(0.3 x 45) = 14, reserved 159.
    a = (Item("weights", 100), Item("gradients", 40), Item("activations", 10, transient=True))
    b = (Item("weights", 100), Item("activations", 45, transient=True))
    comp = compose((Phase("backward", a, instants=(b,)),), OVERHEAD, TERMS)
    # the phase's total is B's reserved with the fixed 7; A's items are shown, the rest is the pool's slack
    assert comp.totals == (("backward", 166),)
    assert comp.breakdown["gradients"] == 40 and comp.breakdown["activations"] == 10
    assert comp.breakdown["overhead"] == 7 + 159 - 150
    assert comp.overhead_details["overhead.fragmentation"] == 9
    # without the other instant: 150 + 7 + 3
    assert compose((Phase("backward", a),), OVERHEAD, TERMS).totals == (("backward", 160),)


def test_a_published_reserved_row_counts_the_slack_of_the_instant_with_the_most_short_lived_bytes():
    # fsdp_qlora's Llama-2-7B QLoRA at 512 tokens (benchmarks/data/published-fsdp-qlora.jsonl) on one GPU: the most
    # allocated is at the bottom of the recomputed backward (LoRA gradients made), the most short-lived bytes at the loss
    # (every kept layer input and the fp32 loss buffers): the slack is larger than 30 % of what the shown instant holds.
    # (The published row runs FSDP over two GPUs, which shards the adapters' gradients: there the loss instant holds
    # the most allocated too, and so both peaks.)
    est = estimate(adhoc_run({**FQ_7B_QLORA_512, "gpus": 1, "fsdp": "none"}))
    shown = est.breakdown["activations"] + est.breakdown["logits"]
    assert est.breakdown["gradients"] > 0 and est.breakdown["logits"] == 0
    assert est.details["overhead.fragmentation"] > round(0.3 * shown)
    assert est.allocated_bytes == est.total_bytes - est.breakdown["overhead"]


def test_a_pool_left_by_an_earlier_phase_is_a_floor_of_the_default_stream_and_another_streams_blocks_add():
    # weights 100 of which 20 gathered on the all-gather stream (apart), activations 30 short-lived:
    # default stream's own need 100 - 20 + 30 + round(0.3 x 30) = 119; the wrap left 130 cached there, so that pool
    # reserves max(119, 130) = 130, and the gathered 20 sit beside it: reserved 150, allocated 130, slack 20.
    items = (Item("weights", 100), Item("activations", 30, transient=True))
    phase = Phase("backward", items, apart=20, held_pool=130)
    assert OVERHEAD.fragmented(phase) == 20 and OVERHEAD.held_pool_binds(phase)
    assert compose((phase,), OVERHEAD, TERMS).totals == (("backward", 157),)  # 150 + the fixed 7
    # a smaller pool (100 < 119) leaves the phase as it was: 130 + round(0.3 x 30) = 139 reserved
    smaller = phase._replace(held_pool=100)
    assert OVERHEAD.fragmented(smaller) == 9 and not OVERHEAD.held_pool_binds(smaller)
    # another stream's cached blocks (no item holds them) add to the reserved peak whichever pool binds: 150 + 5
    assert OVERHEAD.fragmented(phase._replace(cached=5)) == 25
    assert OVERHEAD.fragmented(smaller._replace(cached=5)) == 14  # 139 + 5 - 130
    # a given overhead has no pool to model
    assert Overhead(7, None).fragmented(phase) == 0 and not Overhead(7, None).held_pool_binds(phase)


def test_an_fsdp_step_keeps_the_wraps_pool_beside_its_gathered_units():
    # fsdp_qlora's Llama-2-7B QLoRA at 512 tokens on two GPUs (published-fsdp-qlora.jsonl fq-7b-qlora-b1-512, 4.98 GiB
    # reserved). The load phase (FSDP init) holds the shards and the root unit flattened twice, all resident, and leaves
    # the last decoder unit's two blocks cached: 4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096 = 202,383,360 params x 0.5 B,
    # twice = 202,383,360 B, none of which fits a 32000 x 4096 x 2 B table of the root (so the embedding's stays too). Across
    # the two GPUs each broadcast bucket's block waits for the NCCL stream's event (fsdp_pools.wrap_leftovers), so the
    # decoder unit's flat copy takes a block beside its bucket's, 101,191,680 B more, and the root's shard one beside the
    # head's bucket: (2 x 32000 x 4096 + 4096) / 2 = 262,148,096 B: 565,723,136 B in all. The step's default-stream need
    # (its reserved less the gathered units and the AdamW states of the LoRA matrices, all under 1 MiB a rank, so in
    # the small pool: 143,130,624 / 2 x 2 states x 2 B = 286,261,248 B) is below that pool, so the reserved peak is the
    # pool plus the gathered units plus those states, marked approximate.
    keys = FQ_7B_QLORA_512
    run = adhoc_run(keys)
    step = step_terms(run)
    assert wrap_leftovers(run, step) == 565_723_136
    assert small_pool_states(run, step) == step.optimizer_states == 286_261_248
    est = estimate(run)
    load = next(p for p in est.phase_parts if p.name == "load")
    pool = load.breakdown["weights"] + load.breakdown["load_copies"] + 565_723_136
    fixed = est.details["overhead.cuda_context"] + est.details["overhead.cublas_workspace"]
    assert est.total_bytes == pool + est.details["weights.gathered_for_compute"] + 286_261_248 + fixed
    # one GPU: no collective, so no bucket waits: the last decoder unit's two blocks only
    one = adhoc_run({**keys, "gpus": 1})
    assert wrap_leftovers(one, step_terms(one)) == 202_383_360
    # rank 512: the smallest matrix, q_proj's A, is 512 x 4096 = 2,097,152 elements: 2,097,152 / 2 x 2 B = 2 MiB a rank
    # per bf16 state, over the small pool's 1 MiB, and every other matrix is larger: none in the small pool
    wide = adhoc_run({**keys, "lora-rank": 512})
    assert small_pool_states(wide, step_terms(wide)) == 0
    assert any(a.startswith("FSDP: the wrap's cached pool") for a in est.approximate)
    # one GPU, no FSDP: no wrap pool, no all-gather stream, nothing marked
    single = estimate(adhoc_run({**keys, "gpus": 1, "fsdp": "none"}))
    assert not any(a.startswith("FSDP:") for a in single.approximate)
    # 16-bit LoRA (fq-7b-lora-b1-512): the decoder unit is 202,383,360 x 2 B = 404,766,720 B, and the embedding's
    # 32000 x 4096 x 2 B = 262,144,000 B table goes into its freed flat block: 2 x 404,766,720 - 262,144,000 left
    lora = adhoc_run({k: v for k, v in {**keys, "dtype": "bf16", "mode": "lora"}.items() if k != "double-quant"})
    assert wrap_leftovers(lora, step_terms(lora)) == 547_389_440  # its unit spans two buckets: no deferral counted
    # a tied head (one table, no head bucket: another allocation order) is not modelled
    tied = adhoc_run({**keys, "tie-embeddings": True})
    assert wrap_leftovers(tied, step_terms(tied)) == 0


def test_fsdp_cpu_offload_keeps_the_largest_shard_copy_in_the_pre_unshard_streams_pool():
    # fq-7b-qlora-offload-b12's keys: the largest unit is the 16-bit root, embed 32000 x 4096 + head 32000 x 4096 +
    # final norm 4096 = 262,148,096 params x 2 B = 524,296,192 B whole; its GPU copy of one GPU's half: 262,148,096 B
    offload = adhoc_run({**FQ_7B_QLORA_512, "offload": "optimizer+params", "batch-size": 12, "seq-len": 2048})
    assert offloaded_shard_copies(offload, step_terms(offload)) == 262_148_096
    resident = adhoc_run(FQ_7B_QLORA_512)
    assert offloaded_shard_copies(resident, step_terms(resident)) == 0  # the shards stay on the GPU: nothing copied


def test_each_item_carries_its_own_share_of_the_pool():
    # activations 60 at 5 % (3) and logits 10 at 30 % (3); the optimizer step's 80 temporaries, not transient, at
    # 15 % (12); weights none: backward 170 + 7 + 6 = 183, the step 180 + 7 + 12 = 199
    backward = Phase("backward", (Item("weights", 100), Item("activations", 60, transient=True, slack=0.05),
                                  Item("logits", 10, transient=True, slack=0.3)))
    update = Phase("optimizer step", (Item("weights", 100), Item("optimizer_step", 80, slack=0.15)))
    assert compose((backward, update), OVERHEAD, TERMS).totals == (("backward", 183), ("optimizer step", 199))


def test_the_optimizer_step_keeps_the_pool_its_backward_left():
    # backward: 160 allocated + 50 % of 60 activations = 190 reserved, + 7 = 197. The step allocates 180 with no
    # slack of its own, but the pool the backward reserved stays cached (no empty_cache): 190 reserved, + 7 = 197
    backward = Phase("backward", (Item("weights", 100), Item("activations", 60, transient=True, slack=0.5)))
    items = (Item("weights", 100), Item("gradients", 70), Item("optimizer_step", 10, slack=0.0))
    comp = compose((backward, Phase("optimizer step", items, follows="backward")), OVERHEAD, TERMS)
    assert comp.totals == (("backward", 197), ("optimizer step", 197))
    # of equal totals the phase with more allocated is shown (180 > 160): max_memory_allocated stays the step's
    assert comp.peak == "optimizer step" and comp.breakdown["overhead"] == 7 + 10
    assert sum(comp.breakdown.values()) - comp.breakdown["overhead"] == 180
    # without the backward before it, the step reserves only its own 180: 187
    assert compose((backward, Phase("optimizer step", items)), OVERHEAD, TERMS).totals[1] == ("optimizer step", 187)
