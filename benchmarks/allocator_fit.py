"""The allocator term (core/records.py FRAGMENTATION, CUDA_CONTEXT_BYTES) fitted and checked on measured pairs.

    python benchmarks/allocator_fit.py

Fit set: the steady-state H100 training rows of benchmarks/data/gpu-peaks-h100-steady.jsonl (one warm-up step,
then every phase's torch.cuda.max_memory_allocated and max_memory_reserved). The slack (reserved - allocated, the
maxima over the step's phases) is fitted by one factor on two models, each scored leave-one-out on reserved:
  M1: a x the peak phase's transient bytes (the estimate's form, with a = 0.30);
  M2: a x min(transient bytes, gradient bytes): the blocks activations free are refilled by gradients of other
      sizes (in inference, with no gradients, a x transient);
  M3: a x activations + 5 % of the loss buffers: the loss head's b x s x V blocks come in one size and are reused
      (benchmarks/allocator_replay.py: Gemma-3-1B and Qwen3-0.6B keep 0.3-0.4 GiB of slack beside 8-14 GiB of them).
Held-out set: the 26 published torch.cuda.max_memory_reserved rows (benchmarks/data/published-*.jsonl), never used
in the fit, each estimate's allocated figure plus each model's slack, against the 30 % share of every transient
byte the estimate keeps (core/records.py FRAGMENTATION). The CUDA context is nvidia-smi used less
max_memory_reserved in every H100 phase (driver_used - max_reserved).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llmmem.config.load import adhoc_run  # noqa: E402
from pytest_llmmem.estimator import estimate  # noqa: E402

GIB = 2**30
DATA = ROOT / "benchmarks" / "data"


def _h100_keys(row: Dict, config: str) -> Dict:
    """The run keys benchmarks/gpu_peaks.py --score estimates a measured row with."""
    sc = row["scenario"]
    keys = {"config": config, "mode": sc["mode"], "dtype": "bf16", "batch-size": sc["batch"], "seq-len": sc["seq"], "gpu": "H100-80GB"}
    if sc["mode"] == "train":
        keys.update({"precision": "pure", "optimizer-impl": "foreach", "gradient-checkpointing": bool(sc.get("checkpointing"))})
    else:
        keys["logits"] = sc.get("logits", "last")
    if row.get("attn") == "eager" and sc.get("attn") == "eager":
        keys["flash-attention"] = False
    keys.update(sc.get("run_keys", {}))
    return keys


def _parts(est) -> Dict[str, float]:
    """The estimate's allocated figure and the transient and gradient bytes of its peak phase, in GiB (the
    backward's activations and loss buffers are its transient items: job_phases.step_phases), at full size
    (the details' full.* where the breakdown shows what is alive at the peak instant)."""
    b, d = est.breakdown, est.details
    full = lambda term: d.get(f"full.{term}", b[term])  # noqa: E731
    return {"trains": est.run.trains, "alloc_est": est.allocated_bytes / GIB,
            "transient": (full("activations") + full("logits")) / GIB, "gradients": full("gradients") / GIB,
            "activations": full("activations") / GIB, "logits": full("logits") / GIB}


def h100_rows() -> List[Dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(DATA.glob("gpu-peaks-h100*.jsonl")):
            for n, line in enumerate(path.read_text().splitlines()):
                row = json.loads(line)
                if not row.get("phases") or row.get("superseded_by"):
                    continue
                config = os.path.join(tmp, f"{path.stem}-{n}.json")
                Path(config).write_text(json.dumps(row["config"]))
                est = estimate(adhoc_run(_h100_keys(row, config)))
                phases = row["phases"].values()
                rows.append({"name": row["scenario"]["name"], "mode": row["scenario"]["mode"], "steady": bool(row.get("steady_state")),
                             "allocated": max(p["max_allocated"] for p in phases) / GIB,
                             "reserved": max(p["max_reserved"] for p in phases) / GIB,
                             "context": [(p["driver_used"] - p["max_reserved"]) / GIB for p in phases if "driver_used" in p],
                             **_parts(est)})
    return rows


def published_rows() -> List[Dict]:
    rows = []
    for path in sorted(DATA.glob("published-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "reserved" not in row["metric"]:
                continue
            est = estimate(adhoc_run({**row["model"], **row["keys"], "gpu": row["gpu"], "name": row["id"]}))
            rows.append({"name": row["id"], "reserved": row["published_gib"], **_parts(est)})
    return rows


MODELS: Dict[str, Callable[[Dict, float], float]] = {
    "M1 a x transient": lambda r, a: a * r["transient"],
    "M2 a x min(transient, gradients)": lambda r, a: a * (min(r["transient"], r["gradients"]) if r["trains"] else r["transient"]),
    "M3 a x activations + 0.05 x logits": lambda r, a: a * r["activations"] + 0.05 * r["logits"],
}


def _error(r: Dict, model, a: float, allocated: str) -> float:
    """Reserved estimated as allocated + the model's slack."""
    return (r[allocated] + model(r, a)) / r["reserved"] - 1


def fit(rows: List[Dict], model) -> float:
    """The factor (0.00-1.50) with the least median |error| of reserved, from the measured allocated figure."""
    return min((i / 100 for i in range(151)), key=lambda a: statistics.median(abs(_error(r, model, a, "allocated")) for r in rows))


def _summary(errors: List[float]) -> str:
    return f"median |{statistics.median(abs(e) for e in errors):.1%}|, worst {min(errors):+.1%} / {max(errors):+.1%}"


def main() -> int:
    h100 = h100_rows()
    train = [r for r in h100 if r["mode"] == "train" and r["steady"]]
    held_out = published_rows()
    contexts = [c for r in h100 for c in r["context"]]
    print(f"CUDA context on the H100 (nvidia-smi used - max_memory_reserved), {len(contexts)} phases: "
          f"{min(contexts):.2f}-{max(contexts):.2f} GiB, median {statistics.median(contexts):.2f}")
    print(f"fit: {len(train)} steady-state H100 training rows; held out: {len(held_out)} published reserved rows")
    for name, model in MODELS.items():
        a = fit(train, model)
        loo = [_error(r, model, fit(train[:i] + train[i + 1:], model), "allocated") for i, r in enumerate(train)]
        out = [_error(r, model, a, "alloc_est") for r in held_out]
        print(f"  {name:<34} a = {a:.2f}   H100 leave-one-out: {_summary(loo)}   published (held out): {_summary(out)}")
    inference = [r for r in h100 if r["mode"] == "inference"]
    slack = [(r["reserved"] - r["allocated"]) / r["transient"] for r in inference if r["transient"]]
    print(f"  inference prefill rows ({len(slack)}, first call): slack / transient median {statistics.median(slack):.2f}")
    kept = [_error(r, MODELS["M1 a x transient"], 0.30, "alloc_est") for r in held_out]
    print(f"  published with the estimate's 30 % x transient: {_summary(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
