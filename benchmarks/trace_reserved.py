"""method = "trace"'s reserved pool against torch.cuda.max_memory_reserved on the H100 rows (issue 25).

    python benchmarks/trace_reserved.py [--only NAME ...] [--full-depth]

Rows: those of benchmarks/trace_gpu.py (the steady-state training rows of gpu-peaks-h100-steady.jsonl, whose
second step the trace models, and every prefill row), less the superseded ones. Each is estimated with
``method = "trace"`` as trace_gpu.run_of declares it (bf16, pure precision, foreach AdamW, the row's
checkpointing and attention, depth cut by the config the row ran), a training row as gpu_peaks.measure's own
loop, framework = "pytorch" (the model's output held through backward), as gpu_peaks.py --score declares it. The estimate's reserved figure is its total
less the CUDA context (Estimate.reserved_bytes: the traced allocated peak, the cuBLAS workspace and the pool's
slack); the measured one is the row's largest max_memory_reserved over its phases (no phase empties the cache).

Three columns per row: the trace with the slack replayed through the caching allocator (trace/allocator.py,
what ``method = "trace"`` reports), the same traced phases with the analytic slack share instead
(core/records.py FRAGMENTATION of the activations and loss buffers at each phase's peak, what it reported
before), and the detailed estimate's reserved figure. Needs torch and transformers; about 2 s a row.

``--full-depth``: each row traced once at its whole depth (trace/step.py trace_at, no depth cut), its replayed
pool's peak over the phases (no workspace, as allocator_replay.py) against the measured one: the warm-up step's
effect on the pool without the cut's (docs/trace.md; the zero-gradient warm-up is trace/step.py of 92e7e55).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
GIB = 2**30


def analytic_share_reserved(est) -> int:
    """The traced phases' largest allocated peak + workspace + FRAGMENTATION x their activations and logits: the
    reserved figure method = "trace" gave while its slack was the analytic share."""
    from pytest_llmmem.core.records import CUBLAS_WORKSPACE_BYTES, FRAGMENTATION

    best = 0
    for part in est.phase_parts:
        if part.name in ("eval", "save"):
            continue
        allocated = sum(v for k, v in part.breakdown.items() if k != "overhead")
        transient = part.breakdown.get("activations", 0) + part.breakdown.get("logits", 0)
        best = max(best, allocated + CUBLAS_WORKSPACE_BYTES + round(FRAGMENTATION * transient))
    return best


def summary(label: str, errors: List[float]) -> str:
    return (f"{label}: median |error| {statistics.median(abs(e) for e in errors):.1f} %, "
            f"worst under {min(errors):+.1f} %, worst over {max(errors):+.1f} % ({len(errors)} rows)")


def declared(row, config: Path, method: str):
    """The row's run (trace_gpu.run_of), a training row in gpu_peaks.measure's loop (framework = "pytorch")."""
    from trace_gpu import run_of

    return run_of(row, config, method, **({"framework": "pytorch"} if row["scenario"]["mode"] == "train" else {}))


def full_depth(row, config: Path) -> float:
    """The row's replayed reserved peak traced at its whole depth, as an error against the measured one (%)."""
    from pytest_llmmem.trace.step import trace_at

    run = declared(row, config, "trace")
    trace = trace_at(run, run.model, run.model.num_layers)
    measured = max(p["max_reserved"] for p in row["phases"].values())
    return 100 * (max(trace.reserved.values()) / measured - 1)


def main() -> int:
    import warnings

    from trace_gpu import rows

    from pytest_llmmem.estimator import estimate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="scenario names")
    parser.add_argument("--full-depth", action="store_true", help="the replayed pool at each row's whole depth only")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.full_depth:
        found: List[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            for row in rows():
                if not row.get("superseded_by") and (not args.only or row["scenario"]["name"] in args.only):
                    found.append(full_depth(row, Path(tmp) / "config.json"))
                    print(f"{row['scenario']['name']} {row['scenario']['mode']}: {found[-1]:+.1f} %", flush=True)
        print("- " + summary("replayed pool at full depth", found))
        return 0
    errors: Dict[str, List[float]] = {"trace, replayed slack": [], "trace, 30 % share": [], "detailed": []}
    seconds: List[float] = []
    print("| row | measured GiB | trace replayed | trace 30 % share | detailed | trace time |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows():
            sc = row["scenario"]
            if row.get("superseded_by") or (args.only and sc["name"] not in args.only):
                continue
            config = Path(tmp) / "config.json"
            started = time.perf_counter()
            traced = estimate(declared(row, config, "trace"))
            seconds.append(time.perf_counter() - started)
            detailed = estimate(declared(row, config, "detailed"))
            measured = max(p["max_reserved"] for p in row["phases"].values())
            figures = (traced.reserved_bytes, analytic_share_reserved(traced), detailed.reserved_bytes)
            for label, figure in zip(errors, figures):
                errors[label].append(100 * (figure / measured - 1))
            name = f"{sc['name']} {sc['mode']} b{sc['batch']}xs{sc['seq']}" + (" ckpt" if sc.get("checkpointing") else "") \
                + (" eager" if (row.get("attn") or sc.get("attn")) == "eager" else "")
            cells = " | ".join(f"{100 * (f / measured - 1):+.1f} %" for f in figures)
            print(f"| {name} | {measured / GIB:.2f} | {cells} | {seconds[-1]:.1f} s |", flush=True)
    print()
    for label, values in errors.items():
        if values:
            print("- " + summary(label, values))
    if seconds:
        print(f"- trace time: {sum(seconds):.1f} s over {len(seconds)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
