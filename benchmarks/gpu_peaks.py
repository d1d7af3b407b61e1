"""Measure real peak GPU memory of published architectures, phase by phase, for the accuracy data.

Each scenario runs in its own process (a clean allocator and one CUDA context each): the model is
built from its published ``config.json`` with random weights straight on the GPU (no download:
the shapes are what matter), then one inference prefill or one training step runs, and the peak
of each phase is read with ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` (reset
between phases) and the driver's view with ``torch.cuda.mem_get_info`` (what nvidia-smi shows as
used, CUDA context included). Results are JSON lines, one per scenario, with the config, the
settings and the versions, for ``benchmarks/data/gpu-peaks.jsonl``.

    python benchmarks/gpu_peaks.py --archs ARCHS.jsonl --out peaks.jsonl [--only NAME ...] [--scenarios S.json]
    python benchmarks/gpu_peaks.py --score benchmarks/data/gpu-peaks-h100-families.jsonl   # no GPU needed

An out-of-memory is a result too (``"oom": true``): it is a verdict the estimate must get right.
"""

import argparse
import json
import sys
import time
from typing import Any, Dict, List

# (name in archs.jsonl, mode, batch, seq, extra settings). Sizes keep each run inside 80 GB or,
# where marked, probe just past it.
SCENARIOS: List[Dict[str, Any]] = [
    {"name": "Llama-3.1-8B", "mode": "inference", "batch": 1, "seq": 8192, "logits": "last"},
    {"name": "Llama-3.1-8B", "mode": "inference", "batch": 1, "seq": 8192, "logits": "all"},
    {"name": "Qwen3-8B", "mode": "inference", "batch": 4, "seq": 4096, "logits": "last"},
    {"name": "Gemma-2-9B", "mode": "inference", "batch": 1, "seq": 8192, "logits": "last"},
    {"name": "Phi-3-mini-4k", "mode": "inference", "batch": 8, "seq": 4096, "logits": "last"},
    {"name": "DeepSeek-V2-Lite", "mode": "inference", "batch": 1, "seq": 8192, "logits": "last"},
    {"name": "gpt-oss-20b", "mode": "inference", "batch": 1, "seq": 4096, "logits": "last"},
    {"name": "Phi-3-mini-4k", "mode": "train", "batch": 2, "seq": 2048, "checkpointing": True},
    {"name": "Phi-3-mini-4k", "mode": "train", "batch": 1, "seq": 2048, "checkpointing": False},
    {"name": "Qwen3-8B", "mode": "train", "batch": 1, "seq": 1024, "checkpointing": True},
]


def _gib(n: int) -> float:
    return round(n / 2**30, 3)


def measure(cfg: Dict[str, Any], scenario: Dict[str, Any], device: str) -> Dict[str, Any]:
    """One scenario in this process: build, run, read the peaks."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    cuda = device == "cuda"
    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}  # gpt-oss: bf16 experts, not MXFP4
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    wanted = scenario.get("attn", "sdpa")
    try:  # SDPA (flash on CUDA) where the family has it; Gemma 2 and gpt-oss run eager
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=wanted)
        attn = wanted
    except ValueError:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="eager")
        attn = "eager"
    if cuda:
        torch.cuda.synchronize()
    info: Dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "attn": attn, "torch": torch.__version__, "transformers": transformers.__version__,
    }
    if cuda:
        info["gpu"] = torch.cuda.get_device_name()
        info["total_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["after_load_allocated"] = torch.cuda.memory_allocated()
    b, s = scenario["batch"], scenario["seq"]
    vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
    ids = torch.randint(0, vocab, (b, s), device=device)
    # Gemma 3 (image-text) asks for token_type_ids in training: all zeros is text-only input
    extra = {"token_type_ids": torch.zeros_like(ids)} if cfg.get("model_type") == "gemma3" else {}
    phases: Dict[str, Dict[str, int]] = {}

    def phase(name: str) -> None:
        if cuda:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            phases[name] = {
                "max_allocated": torch.cuda.max_memory_allocated(),
                "max_reserved": torch.cuda.max_memory_reserved(),
                "driver_used": total - free,
            }
            torch.cuda.reset_peak_memory_stats()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if scenario["mode"] == "inference":
        model.eval()
        keep = 1 if scenario.get("logits") == "last" else 0
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=keep, **extra)
        phase("prefill")
        info["logits_shape"] = list(out.logits.shape)
    else:
        model.train()
        if scenario.get("checkpointing"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)  # foreach on CUDA (the PyTorch default)
        if scenario.get("warmup", True):
            # Steady state: AdamW creates its states in the first step(), so a first step's forward and
            # backward run without them; one unmeasured step first, then the phases of the second.
            model(input_ids=ids, labels=ids, **extra).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            info["steady_state"] = True
        out = model(input_ids=ids, labels=ids, **extra)
        phase("forward")
        out.loss.backward()
        del out
        phase("backward")
        opt.step()
        phase("optimizer_step")
        opt.zero_grad(set_to_none=True)
    info["phases"] = phases
    return info


def child(args: argparse.Namespace) -> int:
    scenario = json.loads(args.child)
    cfg = next(json.loads(line)["config"] for line in open(args.archs) if json.loads(line)["name"] == scenario["name"])
    if "layers" in scenario:  # depth cut so a training step fits one GPU; the row keeps the config it ran
        cfg = json.loads(json.dumps(cfg))
        text = cfg["text_config"] if "text_config" in cfg else cfg
        text["num_hidden_layers"] = scenario["layers"]
        if "layer_types" in text:  # gpt-oss, Qwen3: one entry per layer
            text["layer_types"] = text["layer_types"][: scenario["layers"]]
    start = time.time()
    try:
        result = measure(cfg, scenario, args.device)
        result["oom"] = False
    except Exception as err:  # an OOM is a measured outcome; anything else is reported as such
        oom = "out of memory" in str(err).lower()
        result = {"oom": oom, "error": f"{type(err).__name__}: {str(err)[:300]}"}
    result.update(scenario=scenario, config=cfg, seconds=round(time.time() - start, 1))
    print("RESULT " + json.dumps(result))
    return 0


def score(path: str) -> int:
    """Estimate each measured row offline and print estimate vs measured whole-run max_memory_allocated.

    The estimate's allocated figure is its total less the CUDA context/allocator term (max_memory_allocated
    sees neither); training rows are measure's own loop, declared as such: framework = "pytorch" (``out`` held
    through backward, torch.optim's foreach AdamW), pure bf16. A row measured on the first step (no
    ``steady_state``) has no AdamW states in its backward yet (torch/optim/adam.py _init_group creates them in the
    first step()), so its estimated backward is compared less the optimizer states the estimate counts there.
    """
    import os
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    errors: List[float] = []
    reserved_errors: List[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, line in enumerate(open(path)):
            row = json.loads(line)
            scenario = row["scenario"]
            if not row.get("phases"):
                print(f"{scenario['name']}: not measured ({row.get('error', 'oom' if row.get('oom') else '?')})")
                continue
            if row.get("superseded_by"):
                print(f"{scenario['name']}: superseded by {row['superseded_by']} ({row.get('superseded_why', '')})")
                continue
            config = os.path.join(tmp, f"{number}.json")
            with open(config, "w") as handle:
                json.dump(row["config"], handle)
            keys = {"config": config, "mode": scenario["mode"], "dtype": "bf16", "batch-size": scenario["batch"],
                    "seq-len": scenario["seq"], "gpu": "H100-80GB"}
            if scenario["mode"] == "train":
                keys.update({"precision": "pure", "framework": "pytorch",
                             "gradient-checkpointing": bool(scenario.get("checkpointing"))})
            else:
                keys["logits"] = scenario.get("logits", "last")
            if row.get("attn") == "eager" and scenario.get("attn") == "eager":  # asked-for eager: s x s weights kept
                keys["flash-attention"] = False
            keys.update(scenario.get("run_keys", {}))  # settings the scenario declares (e.g. vision-tower)
            est = estimate(adhoc_run(keys))
            # max_memory_allocated sees no CUDA context and no fragmentation: each phase less its own overhead
            # (compose.Shown; the peak phase's fragmentation is not the other phases')
            context = est.breakdown["overhead"] - est.details.get("overhead.fragmentation", 0)  # CUDA context and workspace
            first_step = scenario["mode"] == "train" and not row.get("steady_state")
            states = est.breakdown.get("optimizer_states", 0) if first_step else 0
            allocated_by_phase = {part.name: part.total - part.breakdown.get("overhead", 0) - (states if part.name == "backward" else 0)
                                  for part in est.phase_parts if part.name in ("backward", "optimizer step")}
            allocated = max(allocated_by_phase.values()) if allocated_by_phase else est.total_bytes - est.breakdown["overhead"]
            measured = max(p["max_allocated"] for p in row["phases"].values())
            phase = max(row["phases"], key=lambda k: row["phases"][k]["max_allocated"]).replace("_", " ")
            estimated_phase = max(allocated_by_phase, key=allocated_by_phase.get) if allocated_by_phase else "prefill"
            error = 100 * (allocated / measured - 1)
            errors.append(error)
            # the run's reserved peak: the estimate less its CUDA context against max_memory_reserved
            reserved_errors.append(100 * ((est.total_bytes - context) / max(p["max_reserved"] for p in row["phases"].values()) - 1))
            print(f"{scenario['name']:<38} {scenario['mode']:<9} b{scenario['batch']} s{scenario['seq']:<6} "
                  f"estimate {_gib(allocated):7.2f} GiB  measured {_gib(measured):7.2f} GiB  {error:+6.1f} %  "
                  f"peak: estimated {estimated_phase}, measured {phase}"
                  f"{'' if row.get('steady_state') or scenario['mode'] != 'train' else ' (first step: no AdamW states yet in forward/backward)'}")
            if row.get("steady_state"):
                for name, mine in allocated_by_phase.items():
                    key = name.replace(" ", "_")
                    if key in row["phases"]:
                        print(f"    {name:<15} estimate {_gib(mine):7.2f} GiB  measured {_gib(row['phases'][key]['max_allocated']):7.2f} GiB"
                              f"  {100 * (mine / row['phases'][key]['max_allocated'] - 1):+6.1f} %")
    if errors:
        ordered = sorted(abs(e) for e in errors)
        print(f"{len(errors)} rows: median |error| {ordered[len(ordered) // 2]:.1f} %, worst under-estimate {min(errors):+.1f} %")
        reserved = sorted(abs(e) for e in reserved_errors)
        print(f"reserved (the estimate less its CUDA context against the run's max_memory_reserved): median |error| "
              f"{reserved[len(reserved) // 2]:.1f} %, worst {min(reserved_errors):+.1f} % / {max(reserved_errors):+.1f} %")
    return 0


def main() -> int:
    if "--score" in sys.argv[1:2]:
        return score(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", required=True, help="JSONL with name and config per model (shared/validation/archs.jsonl)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*", help="scenario model names to run")
    parser.add_argument("--scenarios", help="JSON file with a list of scenarios to run instead of the built-in ones")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per scenario")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from child_run import run_child  # benchmarks/ is the script's directory, first on sys.path

    scenarios = json.load(open(args.scenarios)) if args.scenarios else SCENARIOS
    with open(args.out, "w") as sink:
        for scenario in scenarios:
            if args.only and scenario["name"] not in args.only:
                continue
            cmd = [sys.executable, __file__, "--archs", args.archs, "--out", args.out, "--device", args.device,
                   "--child", json.dumps(scenario)]
            result = run_child(cmd, scenario, args.timeout)
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            peaks = {k: _gib(v["max_allocated"]) for k, v in result.get("phases", {}).items()}
            print(scenario["name"], scenario["mode"], scenario.get("batch"), scenario.get("seq"),
                  "oom" if result.get("oom") else peaks or result.get("error", "")[:200], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
