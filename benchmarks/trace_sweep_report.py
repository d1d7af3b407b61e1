"""The sweep's table and picture (benchmarks/trace_sweep.py): headline figures, per-term gaps, one dot per run.

Split from the sweep so the rows can be re-read and re-drawn without torch (``--plot-only``).
"""

import csv
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

MODES = ("train", "train mixed", "lora", "inference")
UNFOLLOWED = ("mamba", "jamba")  # the trace runs their sequential PyTorch scan, not the mamba-ssm kernels (approximate)
FAMILIES = Path(__file__).resolve().parents[1] / "tests" / "data" / "families"


def family_kinds(names) -> Dict[str, Tuple[bool, bool]]:
    """(tied head, MoE layers) per family, read from its config the way the estimate reads it."""
    from trace_sweep import family_config  # the sweep's own reading of the family files

    from pytest_llmmem.hf.config import from_hf_config

    kinds = {}
    for name in names:
        cfg = family_config(FAMILIES / f"{name}.json")["config"]
        arch = from_hf_config(cfg)
        kinds[name] = (arch.tie_embeddings, any(type(g.mlp).__name__ == "MoE" for g in arch.layer_groups()))
    return kinds


def kind_of(row: Dict[str, Any], phase: str, kinds: Dict[str, Tuple[bool, bool]]) -> str:
    tied, moe = kinds[row["family"]]
    if phase == "backward":
        if row["mode"] == "lora":
            return "LoRA, MoE experts adapted" if moe else "LoRA, dense"
        return f"{mode_of(row)}, " + ("tied head" if tied else "untied head")
    if phase == "optimizer step":
        return "mixed precision" if mode_of(row) == "train mixed" else "pure / LoRA"
    return "all"


def mode_of(row: Dict[str, Any]) -> str:
    return "train mixed" if row["mode"] == "train" and row.get("precision") == "mixed" else row["mode"]


def label(row: Dict[str, Any]) -> str:
    bits = [row["family"], mode_of(row), row["attn"], f"b{row['batch']}xs{row['seq']}"]
    bits += ["ckpt"] if row.get("checkpointing") else []
    bits += [f"logits {row['logits']}"] if row.get("logits") else []
    return " ".join(bits)


def _ratio(phase: Dict[str, Dict[str, int]]) -> float:
    return sum(phase["analytic"].values()) / max(1, sum(phase["trace"].values()))


def term_gaps(phase: Dict[str, Dict[str, int]]) -> Dict[str, int]:
    """analytic - trace per term, in bytes (positive: the analytic counts more)."""
    terms = set(phase["analytic"]) | set(phase["trace"])
    return {t: phase["analytic"].get(t, 0) - phase["trace"].get(t, 0) for t in terms}


def summarise(rows: List[Dict[str, Any]], tolerance: float) -> Tuple[List[str], List[List[Any]]]:
    """Markdown lines of the headline figures, and one CSV row per run and phase."""
    good = [r for r in rows if "error" not in r]
    lines = [f"# Analytic (detailed) vs trace: {len(good)} runs ({len(rows) - len(good)} errors)", "",
             "Phase totals exclude the overhead term (the analytic one in both). ratio = analytic / trace.", "",
             f"| phase | runs | within {100 * tolerance:.0f} % | within 5 % | median | worst under (ratio, run) | worst over (ratio, run) |",
             "|---|---:|---:|---:|---:|---|---|"]
    table: List[List[Any]] = []
    for name in ("load", "backward", "optimizer step", "prefill"):
        got = [(r, _ratio(r["phases"][name])) for r in good if name in r["phases"]]
        if not got:
            continue
        ratios = [x for _, x in got]
        low, high = min(got, key=lambda t: t[1]), max(got, key=lambda t: t[1])
        close = sum(abs(x - 1) <= tolerance for x in ratios)
        near = sum(abs(x - 1) <= 0.05 for x in ratios)
        lines.append(f"| {name} | {len(got)} | {close} ({100 * close / len(got):.0f} %) | {near} ({100 * near / len(got):.0f} %) | "
                     f"{statistics.median(ratios):.3f} | {low[1]:.3f} {label(low[0])} | {high[1]:.3f} {label(high[0])} |")
        for r, x in got:
            ph = r["phases"][name]
            table.append([label(r), r["family"], mode_of(r), r["attn"], r["batch"], r["seq"], r.get("checkpointing"), name,
                          sum(ph["analytic"].values()), sum(ph["trace"].values()), round(x, 4)])
    kinds = family_kinds(sorted({r["family"] for r in good}))
    followed = [r for r in good if r["family"] not in UNFOLLOWED]
    lines += ["", f"## By kind of run ({len(followed)} runs; Mamba and Jamba left out: {', '.join(UNFOLLOWED)} train through the "
              "slow PyTorch scan here, not the mamba-ssm kernels)", "",
              "| phase | kind | runs | within 2 % | lowest | highest |", "|---|---|---:|---:|---:|---:|"]
    bands: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    for r in followed:
        for name, ph in r["phases"].items():
            bands[(name, kind_of(r, name, kinds))].append(_ratio(ph))
    for (name, kind), vals in sorted(bands.items()):
        close = sum(abs(x - 1) <= tolerance for x in vals)
        lines.append(f"| {name} | {kind} | {len(vals)} | {close} | {min(vals):.4f} | {max(vals):.4f} |")
    lines += ["", "## Which term carries the gap (runs outside the tolerance, by the term with the largest |analytic - trace|)", ""]
    for name in ("backward", "optimizer step", "prefill"):
        dominant: Counter = Counter()
        share: Dict[str, List[float]] = defaultdict(list)
        for r in good:
            ph = r["phases"].get(name)
            if not ph or abs(_ratio(ph) - 1) <= tolerance:
                continue
            gaps = term_gaps(ph)
            term = max(gaps, key=lambda t: abs(gaps[t]))
            dominant[(mode_of(r), term, "over" if gaps[term] > 0 else "under")] += 1
            share[term].append(gaps[term] / max(1, sum(ph["trace"].values())))
        if dominant:
            lines.append(f"- {name}: " + "; ".join(f"{mode} {term} {way} x{n}" for (mode, term, way), n in dominant.most_common(8)))
    lines += ["", "## Saved at the end of the forward (what autograd keeps, before backward frees any): analytic / trace", "",
              "| mode | attention | checkpointing | runs | activations median (min - max) | logits + loss median (min - max) |",
              "|---|---|---|---:|---|---|"]
    groups: Dict[Tuple[str, str, bool], List[Dict[str, Any]]] = defaultdict(list)
    for r in good:
        if "forward_end" in r:
            groups[(mode_of(r), r["attn"], bool(r.get("checkpointing")))].append(r)
    for key in sorted(groups):
        cells = []
        for term in ("activations", "logits"):
            vals = [g["forward_end"]["analytic"][term] / g["forward_end"]["trace"][term]
                    for g in groups[key] if g["forward_end"]["trace"].get(term)]
            cells.append(f"{statistics.median(vals):.3f} ({min(vals):.3f} - {max(vals):.3f})" if vals else "-")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(groups[key])} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Saved activations by family (full training, SDPA, no checkpointing): analytic / trace at the end of the forward", ""]
    fam_rows = defaultdict(list)
    for r in good:
        if "forward_end" in r and mode_of(r) == "train" and r["attn"] == "sdpa" and not r.get("checkpointing"):
            t = r["forward_end"]["trace"].get("activations")
            if t:
                fam_rows[r["family"]].append(r["forward_end"]["analytic"]["activations"] / t)
    lines.append(", ".join(f"{f} {min(v):.3f}-{max(v):.3f}" for f, v in sorted(fam_rows.items())))
    errors = Counter(r["error"][:120] for r in rows if "error" in r)
    if errors:
        lines += ["", "## Errors", ""] + [f"- {n} x {e}" for e, n in errors.most_common()]
    return lines, table


def picture(rows: List[Dict[str, Any]], path: Path) -> None:
    """analytic / trace per family (rows) and mode (columns), one dot per run and phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r]
    families = sorted({r["family"] for r in good})
    colours = {"backward": "tab:red", "optimizer step": "tab:blue", "load": "tab:grey", "prefill": "tab:green"}
    fig, axes = plt.subplots(1, len(MODES), figsize=(4 * len(MODES), 0.32 * len(families) + 1.6), sharey=True)
    for ax, mode in zip(axes, MODES):
        for r in good:
            if mode_of(r) != mode:
                continue
            y = families.index(r["family"])
            for name, ph in r["phases"].items():
                if name == "load":
                    continue
                jitter = {"backward": -0.15, "optimizer step": 0.15}.get(name, 0.0)
                ax.scatter(_ratio(ph), y + jitter, s=9, color=colours[name], alpha=0.6, linewidths=0)
        ax.axvspan(0.98, 1.02, color="tab:green", alpha=0.12)
        ax.axvline(1.0, color="black", linewidth=0.6)
        ax.set_title(mode)
        ax.set_xlabel("analytic / trace")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(families)))
    axes[0].set_yticklabels(families, fontsize=8)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=n) for n, c in colours.items() if n != "load"]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"Detailed estimate / trace per phase, {len(good)} runs (green band: within 2 %)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)


def write_report(rows: List[Dict[str, Any]], out: Path, png: Path, tolerance: float) -> str:
    lines, table = summarise(rows, tolerance)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "family", "mode", "attention", "batch", "seq", "checkpointing", "phase",
                         "analytic_bytes", "trace_bytes", "analytic_over_trace"])
        writer.writerows(table)
    picture(rows, png)
    return "\n".join(lines)
