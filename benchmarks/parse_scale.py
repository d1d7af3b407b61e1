"""CPU time of reading a pyproject with many runs: the hostile-input bound of `llmmem check`.

The hook reads files anyone can put in a pull request, so a pyproject of 10,000 runs must be
answered in seconds and the cost must grow linearly (a duplicate-name check that compared every
pair took 10.7 s at 10,000 runs). Targets: 10,000 runs under 3 s of CPU, and 10x the runs at most
12x the CPU. tests/test_hostile.py holds only the shape (linear), with a margin for slow CI.

    python benchmarks/parse_scale.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pytest_llmmem.config.load import load

CONFIG = '{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 688, "vocab_size": 1000}'
TARGET_SECONDS, TARGET_RATIO = 3.0, 12.0


def write(folder: Path, count: int) -> Path:
    """A pyproject of ``count`` runs over one small config.json."""
    folder.mkdir()
    (folder / "config.json").write_text(CONFIG, encoding="utf-8")
    runs = "".join(f'[[tool.llmmem.runs]]\nname = "r{i}"\nseq-len = 128\n' for i in range(count))
    path = folder / "pyproject.toml"
    path.write_text('[tool.llmmem]\ngpu = "A100-80GB"\n\n[tool.llmmem.model]\nconfig = "config.json"\n\n' + runs, encoding="utf-8")
    return path


def cpu_seconds(path: Path, repeat: int) -> float:
    """The least CPU time of ``repeat`` loads (the least is the one least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        load(path)
        best = min(best, time.process_time() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = cpu_seconds(write(Path(tmp) / "small", 1_000), args.repeat)
        large = cpu_seconds(write(Path(tmp) / "large", 10_000), args.repeat)
    ratio = large / small
    print(f"1,000 runs: {small:.3f} s CPU; 10,000 runs: {large:.3f} s CPU ({large / 10_000 * 1e6:.0f} us a run); ratio {ratio:.1f}x")
    ok = large <= TARGET_SECONDS and ratio <= TARGET_RATIO
    print(f"targets: 10,000 runs <= {TARGET_SECONDS:.0f} s, ratio <= {TARGET_RATIO:.0f}x: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
