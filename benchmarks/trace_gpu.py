"""The trace and the detailed estimate against the H100 rows, side by side, phase by phase (issue 22 part 4).

    python benchmarks/trace_gpu.py

Rows: benchmarks/data/gpu-peaks-h100-steady.jsonl (training measured at the second step, when AdamW's
states exist; inference prefills) and the prefill rows of gpu-peaks-h100.jsonl and
gpu-peaks-h100-families.jsonl (their training rows measured a first step, without states, and are
left out). Each row is estimated as tests/test_gpu_steady.py does (its config, bf16, pure precision,
foreach AdamW), both ways. The measured figure is ``torch.cuda.max_memory_allocated`` of the phase
(training: the larger of forward and backward, as the estimate's backward phase spans both), so
both estimates are compared without the CUDA context and cuBLAS workspace, which it does not see,
and without fragmentation. Writes benchmarks/data/trace-gpu.md.
"""

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "benchmarks" / "data"
OUT = DATA / "trace-gpu.md"


def rows() -> List[Dict[str, Any]]:
    out = []
    for name in ("gpu-peaks-h100-steady.jsonl", "gpu-peaks-h100.jsonl", "gpu-peaks-h100-families.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            row = json.loads(line)
            if row.get("oom") or not row.get("phases"):
                continue
            if row["scenario"]["mode"] == "train" and not row.get("steady_state"):
                continue
            out.append({**row, "file": name})
    return out


def run_of(row: Dict[str, Any], config: Path, method: str, **extra: Any):
    """The row's run as tests/test_gpu_steady.py declares it; ``extra``: more llmmem keys (benchmarks/trace_reserved.py)."""
    from pytest_llmmem.config.load import adhoc_run

    config.write_text(json.dumps(row["config"]))
    sc = row["scenario"]
    keys = {"config": str(config), "mode": sc["mode"], "dtype": "bf16", "batch-size": sc["batch"],
            "seq-len": sc["seq"], "gpu": "H100-80GB", "method": method}
    if sc["mode"] == "train":
        keys.update({"precision": "pure", "optimizer-impl": "foreach", "gradient-checkpointing": bool(sc.get("checkpointing"))})
    else:
        keys["logits"] = sc.get("logits", "last")
    if row.get("attn") == "eager" or sc.get("attn") == "eager":
        keys["flash-attention"] = False
    keys.update(sc.get("run_keys", {}))
    keys.update(extra)
    return adhoc_run(keys)


def allocated(est, phase: str) -> Optional[int]:
    """The phase's bytes as max_memory_allocated sees them: no context, workspace or fragmentation."""
    if est.method == "trace":
        part = next((p for p in est.phase_parts if p.name == phase), None)
        return None if part is None else part.total - part.breakdown.get("overhead", 0)
    if phase == "prefill":
        return est.total_bytes - est.breakdown["overhead"]
    totals = dict(est.phases)
    if phase not in totals:
        return None
    frag = est.details.get("overhead.fragmentation", 0)
    context = est.breakdown["overhead"] - frag
    return totals[phase] - context - (frag if phase == "backward" else 0)


def measured(row: Dict[str, Any], phase: str) -> Optional[int]:
    ph = row["phases"]
    if phase == "backward":
        return max(ph.get(k, {}).get("max_allocated", 0) for k in ("forward", "backward")) or None
    key = "optimizer_step" if phase == "optimizer step" else phase
    return ph.get(key, {}).get("max_allocated")


def main() -> int:
    from pytest_llmmem.estimator import estimate

    lines = ["# Detailed estimate and trace against torch.cuda.max_memory_allocated on an H100", "",
             "ratio = estimate / measured (context, workspace and fragmentation left out of both estimates).", "",
             "| row | phase | measured GiB | detailed | trace | trace time |", "|---|---|---:|---:|---:|---:|"]
    scores = {"detailed": [], "trace": []}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows():
            sc = row["scenario"]
            name = f"{sc['name']} {sc['mode']} b{sc['batch']}xs{sc['seq']}" + (" ckpt" if sc.get("checkpointing") else "") \
                + (" eager" if (row.get("attn") or sc.get("attn")) == "eager" else "")
            detailed = estimate(run_of(row, Path(tmp) / "config.json", "detailed"))
            started = time.perf_counter()
            try:
                traced = estimate(run_of(row, Path(tmp) / "config.json", "trace"))
            except Exception as err:
                lines.append(f"| {name} | - | - | - | {type(err).__name__}: {str(err)[:80]} | - |")
                continue
            seconds = time.perf_counter() - started
            for phase in (("prefill",) if sc["mode"] == "inference" else ("backward", "optimizer step")):
                got = measured(row, phase)
                a, t = allocated(detailed, phase), allocated(traced, phase)
                if not got or a is None or t is None:
                    continue
                scores["detailed"].append(a / got)
                scores["trace"].append(t / got)
                lines.append(f"| {name} | {phase} | {got / 2**30:.2f} | {a / got:.3f} | {t / got:.3f} | {seconds:.1f} s |")
            print(lines[-1], flush=True)
    for method, values in scores.items():
        close = sum(abs(v - 1) <= 0.02 for v in values)
        lines.append("")
        lines.append(f"- {method}: {close} of {len(values)} phases within 2 %; worst under {min(values):.3f}, worst over {max(values):.3f}")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
