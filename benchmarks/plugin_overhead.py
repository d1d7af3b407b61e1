"""What the installed plugin costs every pytest run: disabled vs enabled-but-off vs --llmmem.

    python benchmarks/plugin_overhead.py [--repeat 15]

Builds a sample project (20 test files x 10 tests and a pyproject.toml declaring 20 runs) in a
temporary folder and times `pytest --co -q` there three ways, interleaved: with `-p no:llmmem`,
with the plugin loaded but no `--llmmem`, and with `--llmmem`. Reports medians of wall and CPU
time (user + sys of the child). Targets: enabled-but-off within 3 % of disabled; `--llmmem` on
the 20-run pyproject adds under 100 ms.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYPROJECT_HEAD = """\
[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.llmmem]
gpu = "H100-80GB"
headroom = "5%"

[tool.llmmem.model]
hidden-size = 4096
num-layers = 32
num-heads = 32
num-kv-heads = 8
intermediate-size = 14336
vocab-size = 32000
"""


def make_project(root: Path, runs: int = 20, files: int = 20, tests: int = 10) -> None:
    text = PYPROJECT_HEAD
    for i in range(runs):
        mode = ("lora", "inference", "train")[i % 3]
        text += f'\n[[tool.llmmem.runs]]\nname = "run-{i}"\nmode = "{mode}"\nbatch-size = {1 + i % 4}\nseq-len = {1024 * (1 + i % 4)}\n'
        if mode == "train":
            text += "gradient-checkpointing = true\n"
    (root / "pyproject.toml").write_text(text)
    (root / "tests").mkdir()
    for f in range(files):
        body = "".join(f"def test_{t}():\n    assert {t} + 1 > {t}\n\n" for t in range(tests))
        (root / "tests" / f"test_mod{f}.py").write_text(body)


def timed(cmd, cwd):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    base = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]
    variants = {
        "disabled (-p no:llmmem)": base + ["-p", "no:llmmem"],
        "enabled, off": base,
        "--llmmem (20 runs)": base + ["--llmmem"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root)
        for cmd in variants.values():  # warm caches; also checks each command works
            _, _, code = timed(cmd, root)
            if code != 0:
                print(f"command failed with exit {code}: {' '.join(cmd)}", file=sys.stderr)
                return 2
        samples = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.repeat):
            # Rotate the order each round so no variant always pays for going first.
            for name in names[round_ % 3:] + names[:round_ % 3]:
                samples[name].append(timed(variants[name], root)[:2])
    print(f"Python {sys.version.split()[0]}, {args.repeat} interleaved rounds of `pytest --co -q` on 200 tests")
    wall = {n: statistics.median(s[0] for s in v) for n, v in samples.items()}
    cpu = {n: statistics.median(s[1] for s in v) for n, v in samples.items()}
    for name in variants:
        print(f"  {name:<26} wall {1000 * wall[name]:7.1f} ms   cpu {1000 * cpu[name]:7.1f} ms")
    disabled, off, on = variants
    ratio_wall, ratio_cpu = wall[off] / wall[disabled], cpu[off] / cpu[disabled]
    added_wall, added_cpu = wall[on] - wall[off], cpu[on] - cpu[off]
    print(f"enabled-but-off / disabled: wall {ratio_wall:.3f}x, cpu {ratio_cpu:.3f}x (target <= 1.03x)")
    print(f"--llmmem adds: wall {1000 * added_wall:.1f} ms, cpu {1000 * added_cpu:.1f} ms (target < 100 ms)")
    ok = ratio_cpu <= 1.03 and added_cpu < 0.1
    print("targets: " + ("ok" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
