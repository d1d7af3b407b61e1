"""Time `llmmem check` on the bundled example against a bare TOML + argparse script.

pre-commit runs `llmmem check` on every commit that touches the config, so its start-up is what
users feel. The baseline imports what any such tool needs (tomllib, json, argparse, dataclasses,
pathlib), parses the same pyproject and exits. Runs are interleaved so machine noise hits both.
Both wall time and the child's CPU time (user + sys, from wait4) are reported: on a shared
two-core machine wall time swings by 20 %, CPU time much less. Target: median ratio <= 1.3.

    python benchmarks/cli_startup.py [--repeat 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pyproject.toml"
BASELINE = """
import sys, json, argparse, dataclasses, pathlib
try:
    import tomllib
except ImportError:
    import tomli as tomllib
parser = argparse.ArgumentParser()
parser.add_argument("path")
args = parser.parse_args()
data = tomllib.loads(pathlib.Path(args.path).read_text())
print(json.dumps(sorted(data.get("tool", {}).get("llmmem", {}))))
"""


def _time(cmd: list) -> "tuple[float, float]":
    """(wall seconds, CPU seconds) of one run of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = 0  # reaped by wait4 above
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    script = shutil.which("llmmem", path=os.path.dirname(sys.executable)) or shutil.which("llmmem")
    llmmem = [script] if script else [sys.executable, "-m", "pytest_llmmem.cli"]
    # The baseline script gets a directory of its own: Python puts a script's directory first on
    # sys.path, and a failed import (pathlib probes for ``nt``) lists it, so a script in a crowded
    # /tmp (700 entries here) paid 60 ms that the console script, run from bin/, does not.
    workdir = tempfile.mkdtemp(prefix="llmmem-startup-")
    script_path = os.path.join(workdir, "baseline.py")
    with open(script_path, "w") as handle:
        handle.write(BASELINE)
    baseline = [sys.executable, script_path, str(EXAMPLE)]
    check = llmmem + ["check", str(EXAMPLE)]
    for cmd in (baseline, check):  # warm the file cache and .pyc files
        _time(cmd)
    pairs = [(_time(baseline), _time(check)) for _ in range(args.repeat)]
    shutil.rmtree(workdir)
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]})")
    print(f"runs: {args.repeat} interleaved pairs")
    verdicts = []
    for label, i in (("wall", 0), ("cpu", 1)):
        base = [b[i] for b, _ in pairs]
        mine = [c[i] for _, c in pairs]
        ratio = statistics.median(c / b for b, c in zip(base, mine))
        verdicts.append(ratio)
        print(f"{label:4s}: baseline median {1000 * statistics.median(base):6.1f} ms, llmmem check median "
              f"{1000 * statistics.median(mine):6.1f} ms, median ratio {ratio:.2f}x")
    ok = verdicts[1] <= 1.3  # CPU time: the steadier of the two
    print(f"target <= 1.30x (CPU-time ratio): {'ok' if ok else 'OVER TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
