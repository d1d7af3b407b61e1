"""Hold the caching-allocator replay (pytest_llmmem/trace/allocator.py) to the reserved peaks measured on an H100.

    python benchmarks/allocator_replay.py [benchmarks/data/gpu-peaks-h100*.jsonl ...] [--only NAME ...]
    python benchmarks/allocator_replay.py --run '{"model": "meta-llama/Llama-2-7b-hf", "mode": "lora", ...}' [--capacity GIB ...] [--need]
        [--unsloth-offload]
    python benchmarks/allocator_replay.py --sweep [--write]
    python benchmarks/allocator_replay.py --sweep-lora [--write]

Each measured row of benchmarks/gpu_peaks.py is run again here the way gpu_peaks.measure ran it (the same
config, depth cut, dtype, attention, AdamW foreach, checkpointing, warm-up step for a steady-state row, one
reset of the peaks per phase), on fake tensors on the CPU: every allocation and free goes through the
replayed allocator. Printed per phase: replayed and measured max_memory_allocated and max_memory_reserved;
per row, the run's reserved peak (the largest phase) and its error. Needs torch and transformers (the CPU
wheel); a row takes 2-15 s.

``--run`` traces one declared run (llmmem keys as JSON, at full depth: ``method = "trace"``'s step,
trace/step.py) and prints each phase's allocated and reserved peaks and the slack (reserved less
allocated) as a share of the short-lived bytes at the allocated peak (activations and logits), the
quantity the analytic estimate prices at core/records.py SLACK_CHECKPOINTED / SLACK_UNCHECKPOINTED. With
``--capacity``, the run is traced again on a card of each size: when a cudaMalloc would pass it the allocator releases every fully free
segment and retries, and the run fails only if that is not enough; a failing one prints the request that failed
and the allocated, reserved and largest free block at that moment. The smallest capacity that passes is what
the run needs, which lies between its allocated peak and its uncapped reserved peak: ``--need`` finds it by
bisection (to 0.05 GiB, about ten more traces) and prints it less the allocated peak, the slack a flush
cannot release (docs/trace.md "Under a cap"). ``--unsloth-offload`` runs a LoRA step with Unsloth's offloaded
checkpointing emulated (the trace refuses activation offload): each layer's input freed after its forward and
allocated again at its backward, the head on the last position only.

``--sweep`` holds the analytic estimate to the replay where no GPU measured: gpu_peaks.measure's steady-state
training step (full fine-tune, pure bf16, AdamW foreach) with the output dropped before backward as the HF
Trainer does, on bundled configs at full depth (SWEEP_MODELS x
checkpointing off/on x SWEEP_SHAPES), each run's allocated and reserved peaks replayed against the detailed
estimate's (less its CUDA context; allocated also less its slack). ``--write`` keeps the rows in
benchmarks/data/allocator-sweep.jsonl. About 5 minutes on 2 cores.

``--sweep-lora`` does the same for LoRA as the configs users copy declare it (issue 26): r 16 on every linear,
dropout 0 and 0.05, checkpointing off and on, 2 x 2,048 tokens, the HF Trainer's step as ``method = "trace"``
runs it (trace/step.py, full depth, PEFT's own modules), on SWEEP_LORA_MODELS; rows in
benchmarks/data/allocator-sweep-lora.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = [ROOT / "benchmarks" / "data" / name for name in
           ("gpu-peaks-h100-steady.jsonl", "gpu-peaks-h100-families.jsonl", "gpu-peaks-h100.jsonl")]
GIB = 2**30
SWEEP = ROOT / "benchmarks" / "data" / "allocator-sweep.jsonl"
SWEEP_MODELS = ("Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen3-1.7B",
                "google/gemma-2-2b-it", "ibm-granite/granite-3.3-2b-instruct", "HuggingFaceTB/SmolLM3-3B",
                "microsoft/Phi-3-mini-4k-instruct")
SWEEP_SHAPES = ((1, 2048), (4, 1024), (2, 4096))  # (batch, tokens)
SWEEP_LORA = ROOT / "benchmarks" / "data" / "allocator-sweep-lora.jsonl"
SWEEP_LORA_MODELS = ("Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-1.5B",
                     "ibm-granite/granite-3.3-2b-instruct", "HuggingFaceTB/SmolLM3-3B")


def cut_config(row: Dict[str, Any]) -> Dict[str, Any]:
    """The row's config at the depth it was measured (gpu_peaks.child)."""
    cfg = {k: v for k, v in row["config"].items() if k != "quantization_config"}
    layers = row["scenario"].get("layers")
    if layers:
        for table in (cfg, cfg.get("text_config")):
            if isinstance(table, dict) and "num_hidden_layers" in table:
                table["num_hidden_layers"] = layers
                if "layer_types" in table:
                    table["layer_types"] = table["layer_types"][:layers]
    return cfg


def replay(row: Dict[str, Any], keeps_output: bool = True) -> Dict[str, Tuple[int, int]]:
    """phase -> (allocated peak, reserved peak), replayed on fake tensors; ``keeps_output``: the model's output
    lives until backward is done, as in gpu_peaks.measure (``out.loss.backward(); del out``)."""
    import torch
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_llmmem.trace import attention
    from pytest_llmmem.trace.live import LiveBytes
    from pytest_llmmem.trace.step import fake_parameters

    scenario, cfg = row["scenario"], cut_config(row)
    config = transformers.AutoConfig.for_model(**cfg)
    attn = row.get("attn", "sdpa")
    if attn == "sdpa":
        attention.register()
        attn = attention.NAME
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
    tracker = LiveBytes(vocab)
    with FakeTensorMode(allow_non_fake_inputs=True), tracker, attention.gpu_mask_decisions():
        fake_parameters(torch, model, tracker)
        ids = torch.zeros((scenario["batch"], scenario["seq"]), dtype=torch.long)
        extra = {"token_type_ids": torch.zeros_like(ids)} if cfg.get("model_type") == "gemma3" else {}
        if scenario["mode"] == "inference":
            model.eval()
            keep = 1 if scenario.get("logits") == "last" else 0
            tracker.start("prefill")
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=True, logits_to_keep=keep, **extra)
            tracker.stop()
            del out
        else:
            model.train()
            if scenario.get("checkpointing"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
            if row.get("steady_state"):
                model(input_ids=ids, labels=ids, **extra).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            tracker.start("forward")
            out = model(input_ids=ids, labels=ids, **extra)
            if not keeps_output:  # the HF Trainer's compute_loss returns only the loss (transformers/trainer.py)
                out = out.loss
            tracker.start("backward")
            (out if not keeps_output else out.loss).backward()
            del out
            tracker.start("optimizer_step")
            optimizer.step()
            tracker.stop()
    return {name: (tracker.peaks[name], tracker.reserved[name]) for name in tracker.reserved}


def on_card(run, capacity: Optional[float], offload: bool = False):
    """The run traced at full depth with every cudaMalloc capped at ``capacity`` GiB (None: uncapped): the pool (its peaks,
    out_of_memory and, when it failed, ``failure``: the request, allocated, reserved and largest free block then, in
    bytes). ``offload``: Unsloth's offloaded checkpointing, which the trace refuses, emulated (``offloaded_step``)."""
    from pytest_llmmem.trace import live
    from pytest_llmmem.trace.allocator import CachingAllocator
    from pytest_llmmem.trace.step import trace_at

    class Capped(CachingAllocator):
        failure = None

        def allocate(self, key: int, nbytes: int) -> None:
            failed = self.out_of_memory
            super().allocate(key, nbytes)
            if self.out_of_memory and not failed:
                largest = max((order[0] for pool in self._free.values() for order in pool), default=0)
                self.failure = (nbytes, self.allocated, self.reserved, largest)

    pools: List[CachingAllocator] = []

    def build() -> CachingAllocator:
        pools.append(Capped(None if capacity is None else round(capacity * GIB)))
        return pools[-1]

    live.CachingAllocator, plain = build, live.CachingAllocator  # the tracker builds its pool through this name
    try:
        offloaded_step(run) if offload else trace_at(run, run.model, run.model.num_layers)
    finally:
        live.CachingAllocator = plain
    return pools[-1]


def offloaded_step(run) -> None:
    """Two LoRA steps (a warm-up, then the measured one) with Unsloth's offloaded checkpointing as unsloth_zoo 936b85a
    (2025-03-04) runs it (gradient_checkpointing.py UnslothCheckpointFunction): from the second forward on, every
    checkpointed layer's input but the last one's goes to host memory once the layer's no-grad forward is done, and comes back, at the layer's backward, into
    one GPU_BUFFER kept for the run (resized to a layer input at the first forward); the head runs on the last position
    only (Unsloth's fused loss keeps no b x s x V block whole; its chunks are not followed)."""
    import torch
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_llmmem.trace import attention
    from pytest_llmmem.trace.build import causal_lm
    from pytest_llmmem.trace.live import LiveBytes
    from pytest_llmmem.trace.step import _attention_name, _compute_dtype, _with_adapters, fake_parameters

    buffers: List[Any] = []  # the GPU_BUFFER
    layers = [0, 0]  # layers seen this forward, layers of the first forward (LAST_GC_INDEX)

    class Offloaded(torch.autograd.Function):
        @staticmethod
        def forward(ctx, layer, hidden, *args):
            layers[0] += 1
            ctx.layer, ctx.args, ctx.shape, ctx.dtype = layer, args, hidden.shape, hidden.dtype
            # CURRENT_GC_INDEX != LAST_GC_INDEX: the last layer keeps its input, and the first pass, which counts the layers
            # (FIRST_PASS), keeps every one
            ctx.offloaded = layers[1] != 0 and layers[0] != layers[1]
            if ctx.offloaded and not buffers:
                buffers.append(torch.empty(hidden.numel(), dtype=hidden.dtype))
            ctx.save_for_backward(*(() if ctx.offloaded else (hidden,)))
            with torch.no_grad():
                return layer(hidden, *args)

        @staticmethod
        def backward(ctx, *grads):
            source = buffers[0][:int(torch.Size(ctx.shape).numel())].view(ctx.shape) if ctx.offloaded else ctx.saved_tensors[0]
            hidden = source.detach().requires_grad_()
            with torch.enable_grad():
                outputs = ctx.layer(hidden, *ctx.args)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad and g is not None]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            return (None, hidden.grad) + (None,) * len(ctx.args)

    arch = run.model
    with torch.device("meta"):
        model = causal_lm(transformers, arch, run.seq_len, _attention_name(run, arch), _compute_dtype(torch, run))
    model = _with_adapters(torch, run, model)
    tracker = LiveBytes(arch.vocab_size)
    with FakeTensorMode(allow_non_fake_inputs=True), tracker, attention.gpu_mask_decisions():
        tracker.start("load", "weights")
        fake_parameters(torch, model, tracker)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for module in model.modules():  # transformers' GradientCheckpointingLayer calls this with (layer, hidden, ...)
            if hasattr(module, "_gradient_checkpointing_func"):
                module._gradient_checkpointing_func = Offloaded.apply
        model.train()
        ids = torch.zeros((run.batch_size, run.seq_len), dtype=torch.long)
        for phase in ("warm-up step", "backward"):
            tracker.start(phase)
            layers[:] = [0, layers[0] or layers[1]]  # the first forward counts the layers; the next ones know the last
            loss = model(input_ids=ids, logits_to_keep=1).logits.float().sum()
            loss.backward()
            del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        tracker.stop()


def declared(values: Dict[str, Any], capacities: List[float], need: bool = False, offload: bool = False) -> None:
    """Trace one declared run at full depth and print each phase's peaks and slack share; then on each capacity; with
    ``need``, the smallest capacity that passes; ``offload``: Unsloth's offloaded checkpointing emulated (offloaded_step)."""
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.trace.step import trace_at

    run = adhoc_run({"name": "replayed", **values})
    trace = trace_at(run, run.model, run.model.num_layers) if not offload else None
    for phase, terms in (trace.phases.items() if trace else ()):
        if phase not in trace.reserved:
            continue
        allocated, reserved = sum(terms.values()), trace.reserved[phase]
        transient = terms.get("activations", 0) + terms.get("logits", 0)
        share = f"{100 * (reserved - allocated) / transient:.0f} % of {transient / GIB:.2f} GiB short-lived" if transient > 2**26 else ""
        print(f"{phase:<15} allocated {allocated / GIB:6.2f} GiB  reserved {reserved / GIB:6.2f} GiB  "
              f"slack {(reserved - allocated) / GIB:5.2f} GiB  {share}")

    def shown(pool) -> str:
        if not pool.out_of_memory:
            return "fits"
        request, allocated, reserved, largest = pool.failure
        return (f"out of memory: a {request / GIB:.3f} GiB request with {allocated / GIB:.2f} GiB allocated, {reserved / GIB:.2f} "
                f"reserved, its largest free block {largest / GIB:.3f} GiB")

    uncapped = on_card(run, None, offload)
    allocated, reserved = uncapped.peak_allocated / GIB, uncapped.peak_reserved / GIB
    print(f"whole run: allocated peak {allocated:.2f} GiB, reserved peak {reserved:.2f} GiB")
    for capacity in capacities:
        print(f"on {capacity:.2f} GiB: {shown(on_card(run, capacity, offload))}")
        sys.stdout.flush()
    if need:
        low, high = allocated, reserved  # fails below the allocated peak; passes uncapped
        while high - low > 0.05:
            middle = (low + high) / 2
            pool = on_card(run, middle, offload)
            print(f"  on {middle:.2f} GiB: {shown(pool)}")
            sys.stdout.flush()
            low, high = (middle, high) if pool.out_of_memory else (low, middle)
        print(f"needs {high:.2f} GiB: {high - allocated:.2f} GiB over its allocated peak, of {reserved - allocated:.2f} GiB "
              f"uncapped slack")


def analytic(row: Dict[str, Any], config: str) -> Tuple[int, int]:
    """The detailed estimate's (allocated, reserved) for a gpu_peaks row: benchmarks/gpu_peaks.py score's keys."""
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    scenario = row["scenario"]
    keys = {"config": config, "mode": "train", "dtype": "bf16", "batch-size": scenario["batch"], "seq-len": scenario["seq"],
            "gpu": "H100-80GB", "precision": "pure", "optimizer-impl": "foreach",
            "gradient-checkpointing": bool(scenario.get("checkpointing"))}
    if row.get("attn") == "eager":
        keys["flash-attention"] = False
    est = estimate(adhoc_run(keys))
    return est.allocated_bytes, est.reserved_bytes


def compared(run: str, mine: Tuple[int, int], other: Tuple[int, int], what: str,
             allocated_errors: List[float], reserved_errors: List[float]) -> None:
    """Print one run's (allocated, reserved) estimate beside the replayed or traced one and keep both errors."""
    allocated_errors.append(100 * (mine[0] / other[0] - 1))
    reserved_errors.append(100 * (mine[1] / other[1] - 1))
    print(f"{run}  allocated: estimate {mine[0] / GIB:6.2f} {what} {other[0] / GIB:6.2f} ({allocated_errors[-1]:+5.1f} %)  "
          f"reserved: estimate {mine[1] / GIB:6.2f} {what} {other[1] / GIB:6.2f} ({reserved_errors[-1]:+5.1f} %)")
    sys.stdout.flush()


def summarise(allocated_errors: List[float], reserved_errors: List[float]) -> None:
    for label, errors in (("allocated", allocated_errors), ("reserved", reserved_errors)):
        print(f"{len(errors)} runs, {label}: median |error| {statistics.median(abs(e) for e in errors):.1f} %, "
              f"worst {min(errors):+.1f} % / {max(errors):+.1f} %")


def sweep(write: bool) -> None:
    """The analytic estimate against the replay over generated runs (see the module docstring)."""
    from pytest_llmmem.hf.hub import BUNDLED, bundled_index

    index = bundled_index()
    rows, allocated_errors, reserved_errors = [], [], []
    for name in SWEEP_MODELS:
        config_path = BUNDLED / index[name]["folder"] / "config.json"
        config = json.loads(config_path.read_text())
        for checkpointing in (False, True):
            for batch, seq in SWEEP_SHAPES:
                row = {"config": config, "steady_state": True, "attn": "eager" if config.get("model_type") == "gemma2" else "sdpa",
                       "scenario": {"name": name, "mode": "train", "batch": batch, "seq": seq, "checkpointing": checkpointing}}
                phases = replay(row, keeps_output=False)  # the estimate follows the HF Trainer's step
                replayed = (max(a for a, _ in phases.values()), max(r for _, r in phases.values()))
                mine = analytic(row, str(config_path))
                compared(f"{name:<36} b{batch} s{seq:<5} {'checkpointed' if checkpointing else 'no checkpoint'}",
                         mine, replayed, "replay", allocated_errors, reserved_errors)
                rows.append({"model": name, "batch": batch, "seq": seq, "checkpointing": checkpointing,
                             "replayed_allocated": replayed[0], "replayed_reserved": replayed[1],
                             "estimated_allocated": mine[0], "estimated_reserved": mine[1]})
    summarise(allocated_errors, reserved_errors)
    if write:
        SWEEP.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def sweep_lora(write: bool) -> None:
    """The detailed estimate against the full-depth trace (its replayed pool included) over LoRA runs."""
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate
    from pytest_llmmem.trace.step import trace_at

    rows, allocated_errors, reserved_errors = [], [], []
    for name in SWEEP_LORA_MODELS:
        for checkpointing in (False, True):
            for dropout in (0.0, 0.05):
                keys = {"name": "sweep", "model": name, "mode": "lora", "dtype": "bf16", "lora-rank": 16,
                        "lora-targets": "all-linear", "lora-dropout": dropout, "batch-size": 2, "seq-len": 2048,
                        "gradient-checkpointing": checkpointing, "gpu": "H100-80GB"}
                run = adhoc_run(keys)
                trace = trace_at(run, run.model, run.model.num_layers)
                phases = ("load", "backward", "optimizer step")
                traced = (max(sum(trace.phases[p].values()) for p in phases if p in trace.phases),
                          max(trace.reserved[p] for p in phases if p in trace.reserved))
                est = estimate(run)
                mine = (est.allocated_bytes, est.reserved_bytes)
                compared(f"{name:<36} dropout {dropout:<4} {'checkpointed' if checkpointing else 'no checkpoint'}",
                         mine, traced, "trace", allocated_errors, reserved_errors)
                rows.append({"model": name, "dropout": dropout, "checkpointing": checkpointing, "traced_allocated": traced[0],
                             "traced_reserved": traced[1], "estimated_allocated": mine[0], "estimated_reserved": mine[1]})
    summarise(allocated_errors, reserved_errors)
    if write:
        SWEEP_LORA.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=[str(p) for p in DEFAULT])
    parser.add_argument("--only", nargs="*", default=[], help="scenario names to replay")
    parser.add_argument("--run", help="one declared run's llmmem keys, as JSON")
    parser.add_argument("--capacity", nargs="*", type=float, default=[], help="with --run: card sizes in GiB to trace it on")
    parser.add_argument("--need", action="store_true", help="with --run: bisect for the smallest capacity the run passes")
    parser.add_argument("--unsloth-offload", action="store_true", help="with --run: Unsloth's offloaded checkpointing, emulated")
    parser.add_argument("--sweep", action="store_true", help="the analytic estimate against the replay over generated runs")
    parser.add_argument("--sweep-lora", action="store_true", help="the same over LoRA runs (dropout, checkpointing)")
    parser.add_argument("--write", action="store_true", help="with --sweep / --sweep-lora: keep the rows in benchmarks/data")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    if args.run:
        declared(json.loads(args.run), args.capacity, args.need, args.unsloth_offload)
        return 0
    if args.sweep:
        sweep(args.write)
        return 0
    if args.sweep_lora:
        sweep_lora(args.write)
        return 0
    errors: List[float] = []
    for path in args.files:
        for line in open(path):
            row = json.loads(line)
            name = row["scenario"]["name"]
            if not row.get("phases") or row.get("superseded_by") or (args.only and name not in args.only):
                continue
            phases = replay(row)
            print(f"{name} ({Path(path).name}, {row['scenario']['mode']} b{row['scenario']['batch']} s{row['scenario']['seq']})")
            for phase, (alloc, reserved) in phases.items():
                measured = row["phases"].get(phase, {})
                print(f"  {phase:<15} allocated {alloc / GIB:6.2f} measured {measured.get('max_allocated', 0) / GIB:6.2f}   "
                      f"reserved {reserved / GIB:6.2f} measured {measured.get('max_reserved', 0) / GIB:6.2f}")
            replayed = max(r for _, r in phases.values())
            measured_peak = max(p["max_reserved"] for p in row["phases"].values())
            error = 100 * (replayed / measured_peak - 1)
            errors.append(error)
            print(f"  run's reserved peak: replayed {replayed / GIB:.2f} GiB, measured {measured_peak / GIB:.2f} GiB, {error:+.1f} %")
            sys.stdout.flush()
    if errors:
        print(f"{len(errors)} rows: reserved peak median |error| {statistics.median(abs(e) for e in errors):.1f} %, "
              f"worst under {min(errors):+.1f} %, worst over {max(errors):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
