"""The fit solver is exact at the integer boundary: the suggested value fits, the next one does not."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmmem.fit import search as fit
from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate

TINYLLAMA = {"family": "llama", "hidden-size": 2048, "num-layers": 22, "num-heads": 32, "num-kv-heads": 4,
             "intermediate-size": 5632, "vocab-size": 32000}


def run(**keys):
    return adhoc_run({**TINYLLAMA, **keys})


@settings(max_examples=60, deadline=None)
@given(budget_gib=st.integers(min_value=4, max_value=120), seq=st.sampled_from([256, 1024, 4096]),
       mode=st.sampled_from(["train", "lora", "inference"]), ckpt=st.booleans())
def test_largest_batch_is_exact(budget_gib, seq, mode, ckpt):
    keys = {"gpu-memory": f"{budget_gib} GiB", "seq-len": seq, "mode": mode}
    if mode != "inference":
        keys["gradient-checkpointing"] = ckpt
    r = run(**keys)
    best = fit.largest_fitting(r, "batch_size", 4096)
    if best is None:
        assert not estimate(r._replace(batch_size=1)).fits
    else:
        assert estimate(r._replace(batch_size=best)).fits
        assert best == 4096 or not estimate(r._replace(batch_size=best + 1)).fits


@settings(max_examples=40, deadline=None)
@given(budget_gib=st.integers(min_value=4, max_value=80), batch=st.integers(1, 16), flash=st.booleans())
def test_longest_sequence_is_exact(budget_gib, batch, flash):
    r = run(**{"gpu-memory": f"{budget_gib} GiB", "batch-size": batch, "flash-attention": flash, "mode": "lora"})
    best = fit.largest_fitting(r, "seq_len", 1 << 20)
    if best is not None:
        assert estimate(r._replace(seq_len=best)).fits
        assert best == 1 << 20 or not estimate(r._replace(seq_len=best + 1)).fits


@settings(max_examples=40, deadline=None)
@given(budget_gib=st.integers(min_value=8, max_value=80), stage=st.sampled_from([1, 2, 3]), tp=st.sampled_from([1, 2]))
def test_fewest_gpus_is_exact(budget_gib, stage, tp):
    r = adhoc_run({"params": "70B", "mode": "train", "dtype": "bf16", "gpu-memory": f"{budget_gib} GiB",
                   "zero-stage": stage, "tensor-parallel": tp, "gpus": tp})
    best = fit.fewest_gpus(r)
    if best is not None:
        assert best % tp == 0
        assert estimate(r._replace(gpus=best)).fits
        assert best == tp or not estimate(r._replace(gpus=best - tp)).fits


def test_unsharded_runs_do_not_get_a_gpu_count():
    assert fit.fewest_gpus(adhoc_run({"params": "70B", "mode": "train", "gpu": "H100-80GB", "gpus": 8})) is None


def test_ways_out_for_a_single_gpu_full_fine_tune():
    r = adhoc_run({"params": "7B", "mode": "train", "dtype": "bf16", "gpu": "A100-80GB"})
    texts = [w.text for w in fit.ways_out(r)]
    # 18 B/param / N + 1375 MiB overhead <= 80 GiB first at N = 2 (63e9 + 1.44e9 B = 60.0 GiB); N = 1 is 127e9 B.
    assert any(t.startswith("fits on 2 GPUs with zero-stage = 3 (gpus = 2)") for t in texts), texts
    assert any(t.startswith('fits with optimizer = "adamw-8bit"') for t in texts)
    assert all(estimate_fits for estimate_fits in (w.estimate.fits for w in fit.ways_out(r)))


# --- ways out offer a card of the declared card's kind (issue 23 part 5) ---------------------------


def test_ways_out_keep_to_the_declared_cards_kind(run_cli):
    from pytest_llmmem.report.layout import unfit

    # by hand: 11.8e9 params x 2 B = 21.98 GiB + 0.78 GiB CUDA context and workspace = 22.76 GiB, over an A10G's 22.49 GiB
    # (23028 MiB) and within an RTX-4090's 23.99 GiB; the smallest NVIDIA datacenter card above is the V100-32GB
    _, out, _ = run_cli("estimate", "--params", "11.8B", "--mode", "inference", "--gpu", "A10G")
    assert '    - fits on a V100-32GB (gpu = "V100-32GB") (22.76 GiB)' in out and "RTX-4090" not in out
    _, out, _ = run_cli("estimate", "--params", "11.8B", "--mode", "inference", "--gpu", "A10G", "--any-gpu")
    assert '    - fits on a RTX-4090 (gpu = "RTX-4090") (22.76 GiB)' in out
    # 28e9 x 2 B = 52.15 GiB + 0.78 = 52.94 GiB: no consumer card holds it; an MI250X (63.98 GiB) only when asked
    _, out, _ = run_cli("estimate", "--params", "28B", "--mode", "inference", "--gpu", "RTX-4090")
    assert "MI250X" not in out and "or a bigger GPU of its kind fits on its own" in unfit(out)
    _, out, _ = run_cli("estimate", "--params", "28B", "--mode", "inference", "--gpu", "RTX-4090", "--any-gpu")
    assert '    - fits on a MI250X (gpu = "MI250X") (52.94 GiB)' in out


def test_every_built_in_card_has_a_kind():
    from pytest_llmmem.catalog.registry import default_catalog

    catalog = default_catalog()
    kinds = {name: catalog.gpu(name).kind for name in catalog.gpus.names}
    assert set(kinds.values()) == {"nvidia datacenter", "nvidia workstation", "nvidia consumer", "amd datacenter"}
    assert kinds["RTX-4090"] == "nvidia consumer" and kinds["A10G"] == "nvidia datacenter" and kinds["MI250X"] == "amd datacenter"


def test_lora_dropout_zero_is_offered_when_dropping_the_masks_makes_the_run_fit():
    keys = {"mode": "lora", "lora-targets": "all-linear", "batch-size": 8, "seq-len": 2048, "lora-dropout": 0.05}
    with_dropout, without = estimate(run(**keys)).total_bytes, estimate(run(**{**keys, "lora-dropout": 0.0})).total_bytes
    assert with_dropout > without  # each of the 7 x 22 adapted linears keeps its dropout output and mask
    budget = {"gpu-memory": f"{(with_dropout + without) // 2} B", "headroom": "0 B"}
    r = run(**keys, **budget)
    assert not estimate(r).fits
    offered = {w.key: w.value for w in fit.ways_out(r)}
    assert offered["lora-dropout"] == 0.0
    assert "lora-dropout = 0" in [t.setting for t in fit.toggles(r) if t.estimate is not None and t.estimate.fits]


def test_the_detailed_count_and_the_rule_of_thumb_read_no_budget():
    # fit.search.smallest_gpu judges one estimate against each bigger card's budget. That is exact only
    # while these two methods read nothing of the budget: the same run on an 80 GiB card and on a 141 GB
    # one must give the same estimate, and no module that computes them may look at the budget
    # (core/records.py only compares the total with it; the estimator marks a unified-memory card and a verdict
    # that rests on the allocator's flush near the card, which the H200-141GB, with no CUDA total in the catalog, is not).
    from pathlib import Path

    from pytest_llmmem.config.load import load

    root = Path(__file__).resolve().parent.parent
    for declared in load(root / "examples" / "pyproject.toml").runs:
        for method in ("detailed", "rule-of-thumb"):
            a = declared._replace(method=method)
            b = a._replace(budget=a.budget._replace(ceiling_bytes=150754820096, headroom_bytes=7537741004, gpu="H200-141GB",
                                                      cuda_total_bytes=None))
            assert estimate(a)._replace(run=None) == estimate(b)._replace(run=None), (declared.name, method)
    core = root / "pytest_llmmem" / "core"
    readers = [p.relative_to(core).as_posix() for p in core.rglob("*.py") if ".budget" in p.read_text()]
    assert readers == ["records.py"]


def test_ways_out_price_each_distinct_run_once(monkeypatch):
    # The bundled example's full-sft run (over budget on one A100-80GB): the fewest-GPUs bisection and the
    # zero-stage = 3 offer made from it, and the bigger-card scan and its offer, priced the same runs
    # twice or three times (14 estimates); each distinct run is now priced once, the cards on one estimate.
    from pathlib import Path

    from pytest_llmmem.config.load import load

    root = Path(__file__).resolve().parent.parent
    over = next(r for r in load(root / "examples" / "pyproject.toml").runs if r.name == "full-sft")
    current = estimate(over)
    priced = []
    monkeypatch.setattr(fit, "estimate", lambda r: priced.append(r) or estimate(r))
    ways = fit.ways_out(over, current=current)
    # adamw-8bit is no way out since the step holds fp32 gradients on the masters under mixed precision:
    # 6,738,415,616 x (2 + 4 + 4 + 2.03) B + the head's bf16 gradient + context = 77.09 GiB of 76 (test_cli)
    assert [w.key for w in ways] == ["zero-stage", "gpu"]
    assert all(a != b for i, a in enumerate(priced) for b in priced[i + 1:])
    # seq-len 1, adamw-8bit, three trainer knobs, zero-stage = 3 on 1 and 2 GPUs; the H200 offer is the
    # run's own estimate on the card's budget (the detailed count reads none), the same as pricing it there
    assert len(priced) == 7
    assert ways[1].estimate == estimate(ways[1].estimate.run) and ways[1].estimate.run.budget.gpu == "H200-141GB"


def test_fewer_targets_and_a_lower_rank_are_offered_where_they_make_the_run_fit(write_pyproject, run_cli):
    """TinyLlama, LoRA r64 on all seven linears and the head: the budget sits between the run and the same run
    on the layer linears alone, so dropping the head fits and the widest fitting target set is the one offered;
    the rank search gives the largest r that fits, exact at the boundary (r + 1 does not)."""
    keys = {"mode": "lora", "lora-targets": ["all-linear", "lm_head"], "lora-rank": 64, "batch-size": 4, "seq-len": 1024}
    wide = estimate(run(**keys)).total_bytes
    layers = estimate(run(**{**keys, "lora-targets": ["all-linear"]})).total_bytes
    assert wide > layers  # the head's adapter keeps its input cast (hidden wide, fp32) and trains A and B
    budget = {"gpu-memory": f"{(wide + layers) // 2} B", "headroom": "0 B"}
    r = run(**keys, **budget)
    offered = {w.key: w.value for w in fit.ways_out(r)}
    assert offered["lora-targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    rank = offered["lora-rank"]
    assert estimate(r._replace(lora_rank=rank)).fits and not estimate(r._replace(lora_rank=rank + 1)).fits
    # through the CLI: the user sees both, spelled as the TOML takes them
    path = write_pyproject(f"""
        [tool.llmmem]
        gpu-memory = "{(wide + layers) // 2} B"
        headroom = "0 B"
        [tool.llmmem.model]
        family = "llama"
        hidden-size = 2048
        num-layers = 22
        num-heads = 32
        num-kv-heads = 4
        intermediate-size = 5632
        vocab-size = 32000
        [[tool.llmmem.runs]]
        name = "wide"
        mode = "lora"
        lora-targets = ["all-linear", "lm_head"]
        lora-rank = 64
        batch-size = 4
        seq-len = 1024
    """)
    code, out, _ = run_cli("check", path)
    assert code == 1
    out = " ".join(out.split())  # the report wraps long lines
    assert ('fits with lora-targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] '
            "(the layer linears only, not the head or the embedding)") in out, out
    assert f"fits with lora-rank <= {rank}" in out, out
