"""The detailed estimate against the trace (method = "trace"), phase by phase and term by term (issue 22).

    python benchmarks/trace_sweep.py [--jobs 2] [--only FAMILY ...] [--plot-only | --reestimate]

Every family of ``tests/data/families`` (the published config.json with the overrides that cut it to
two layers that keep every layer kind) x full training / LoRA / inference x checkpointing on/off x
SDPA / eager x a batch and sequence spread, bf16, AdamW (fused), pure precision for full training
(weights, gradients and states in bf16, so both methods describe the same tensors) and a mixed slice;
inference in both logits modes. The loss is HF's upcast cross-entropy: the trace follows only that
one (chunked and fused kernels take the analytic term, so comparing them would compare it with itself).

Each run is estimated both ways; the overhead term (analytic in both) is left out, so each phase
compares the bytes the tensors hold. Writes ``benchmarks/data/trace-sweep.jsonl`` (one row per run),
``trace-sweep.csv`` and ``trace-sweep.md`` (the headline figures) and ``docs/trace-sweep.png``
(analytic / trace per family and mode, one dot per run; matplotlib is a benchmark dependency only).
tests/test_trace_sweep.py runs a fixed slice of about 30 of these runs through ``measure_one``.
"""

import argparse
import json
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Dict, Iterator, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FAMILIES = ROOT / "tests" / "data" / "families"
OUT = ROOT / "benchmarks" / "data" / "trace-sweep"
PICTURE = ROOT / "docs" / "trace-sweep.png"
SHAPES = ((1, 128), (2, 64))  # (batch, seq)
SLOW = ("mamba", "jamba")  # the slow (no-kernel) Mamba path runs one scan step per token: short sequences only
PHASES = ("load", "backward", "optimizer step", "prefill")
TOLERANCE = 0.02


def family_config(path: Path) -> Dict[str, Any]:
    """The published config with the family file's overrides (nested under text_config where the config is)."""
    fam = json.loads(path.read_text())
    cfg = json.loads(json.dumps(fam["config"]))
    for key, value in (fam.get("overrides") or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return {"config": cfg, "lora_targets": fam.get("lora_targets") or ["q_proj", "v_proj"]}


def scenarios(only: List[str]) -> Iterator[Dict[str, Any]]:
    for path in sorted(FAMILIES.glob("*.json")):
        name = path.stem
        if only and name not in only:
            continue
        shapes = ((1, 32), (2, 16)) if any(s in name for s in SLOW) else SHAPES
        for batch, seq in shapes:
            for attn in ("sdpa", "eager"):
                for mode in ("train", "lora"):
                    for ckpt in (False, True):
                        yield dict(family=name, mode=mode, precision="pure", checkpointing=ckpt, attn=attn, batch=batch, seq=seq)
                if batch == 2:  # mixed precision: one shape is enough, its gap is per parameter
                    yield dict(family=name, mode="train", precision="mixed", checkpointing=False, attn=attn, batch=batch, seq=seq)
                for logits in ("last", "all"):
                    yield dict(family=name, mode="inference", logits=logits, checkpointing=False, attn=attn, batch=batch, seq=seq)


def _run(s: Dict[str, Any], cfg_path: str, targets: List[str]):
    from pytest_llmmem.config.load import adhoc_run

    keys = {"config": cfg_path, "mode": s["mode"], "dtype": "bf16", "batch-size": s["batch"], "seq-len": s["seq"],
            "flash-attention": s["attn"] == "sdpa", "gpu-memory": "10000 GiB"}
    if s["mode"] == "train":
        keys["precision"] = s["precision"]
    if s["mode"] == "lora":
        keys["lora-targets"] = list(targets)
    if s["mode"] == "inference":
        keys["logits"] = s["logits"]
    else:
        keys["gradient-checkpointing"] = s["checkpointing"]
    return adhoc_run(keys)


def _no_overhead(parts: Dict[str, int]) -> Dict[str, int]:
    return {k: v for k, v in parts.items() if v and k != "overhead"}


def measure_one(s: Dict[str, Any]) -> Dict[str, Any]:
    """One run estimated both ways: each phase's terms (overhead left out) and the trace's own time."""
    from pytest_llmmem.estimator import estimate
    from pytest_llmmem.trace.estimate import traced

    fam = family_config(FAMILIES / f"{s['family']}.json")
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = str(Path(tmp) / "config.json")
        Path(cfg_path).write_text(json.dumps(fam["config"]))
        try:
            run = _run(s, cfg_path, fam["lora_targets"])
            analytic = estimate(run)
            started = time.perf_counter()
            trace = traced(run._replace(method="trace"))
            seconds = time.perf_counter() - started
        except Exception as err:  # a family transformers cannot build this way: an error row, not a stop
            return {**s, "error": f"{type(err).__name__}: {str(err)[:300]}"}
    phases: Dict[str, Any] = {}
    traced_parts = {p.name: _no_overhead(p.breakdown) for p in trace.phase_parts}
    analytic_parts = _analytic_parts(run, analytic)
    for name in PHASES:
        if name in traced_parts and name in analytic_parts:
            phases[name] = {"analytic": analytic_parts[name], "trace": traced_parts[name]}
    saved = {k.split(".")[-1]: v for k, v in trace.details.items() if k.startswith("trace.forward end.")}
    row = {**s, "seconds": round(seconds, 2), "phases": phases}
    if saved:
        row["forward_end"] = {"trace": saved, "analytic": _saved_at_forward_end(analytic)}
    return row


def _analytic_parts(run, analytic) -> Dict[str, Dict[str, int]]:
    if run.trains:
        return {p.name: _no_overhead(p.breakdown) for p in analytic.phase_parts}
    return {"prefill": _no_overhead(analytic.breakdown)}


def _saved_at_forward_end(analytic) -> Dict[str, int]:
    """The analytic's saved activations and loss tensors, against the trace's saved set at the end of the forward."""
    d = analytic.details
    return {"activations": analytic.full("activations") - d.get("activations.recomputed_layer", 0),
            "logits": d.get("logits.logits", 0) + d.get("logits.log_softmax", 0) + d.get("logits.softcap_tanh", 0)}


def reestimate(row: Dict[str, Any]) -> Dict[str, Any]:
    """A stored row with its analytic side estimated again by the current code; the trace side is kept (it
    depends only on pytest_llmmem/trace and the torch / transformers versions, which did not change)."""
    from pytest_llmmem.estimator import estimate

    if "error" in row:
        return row
    fam = family_config(FAMILIES / f"{row['family']}.json")
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = str(Path(tmp) / "config.json")
        Path(cfg_path).write_text(json.dumps(fam["config"]))
        run = _run(row, cfg_path, fam["lora_targets"])
        analytic = estimate(run)
    parts = _analytic_parts(run, analytic)
    out = {**row, "phases": {name: {**v, "analytic": parts[name]} for name, v in row["phases"].items()}}
    if "forward_end" in row:
        out["forward_end"] = {**row["forward_end"], "analytic": _saved_at_forward_end(analytic)}
    return out


def ratio(phase: Dict[str, Dict[str, int]]) -> float:
    return sum(phase["analytic"].values()) / max(1, sum(phase["trace"].values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--plot-only", action="store_true", help="re-draw the table and picture from the JSONL")
    parser.add_argument("--reestimate", action="store_true",
                        help="estimate the analytic side of the JSONL's rows again, keep their trace side (the trace code unchanged)")
    args = parser.parse_args()
    jsonl = OUT.with_suffix(".jsonl")
    if args.plot_only or args.reestimate:
        rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        if args.reestimate:
            rows = [reestimate(row) for row in rows]
            jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    else:
        todo = list(scenarios(args.only))
        started = time.time()
        rows = []
        with Pool(args.jobs) as pool:
            for i, row in enumerate(pool.imap_unordered(measure_one, todo, chunksize=1), 1):
                rows.append(row)
                if i % 25 == 0 or i == len(todo):
                    print(f"{i}/{len(todo)} runs, {time.time() - started:.0f} s", flush=True)
        key = ("family", "mode", "precision", "logits", "checkpointing", "attn", "batch", "seq")
        rows.sort(key=lambda r: tuple(str(r.get(k, "")) for k in key))
        if not args.only:
            jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    from trace_sweep_report import write_report

    print(write_report(rows, OUT, PICTURE, TOLERANCE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
