"""A seeded sweep of hostile inputs against the llmmem front-ends (issue 17): cases, outcomes, slowest.

Every category of tests/hostile_cases.py (TOML shapes, every key with every wrong type, run lists,
config.json files, paths, front-ends) draws ``--per-category`` cases from hypothesis with a fixed
seed; each runs in a fresh folder, in-process, and is judged as the CI suite judges it: exit
0/1/2, one error paragraph, no traceback, no internal error, under a second of CPU, no file
written, no network. Prints a tally per category and outcome, the slowest cases, and every
problem; exits 1 if any case had one.

    python benchmarks/fuzz.py [--per-category 400] [--seed 17]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.hostile_cases import CATEGORIES, describe_case, outcome_kind, run_case  # noqa: E402


def sweep(category: str, count: int, seed_value: int, records: list) -> None:
    strategy = CATEGORIES[category]

    @seed(seed_value)
    @settings(max_examples=count, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        folder = Path(tempfile.mkdtemp(prefix="llmmem-fuzz-"))
        try:
            records.append((case, run_case(case, folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    one()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=400)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    records: list = []
    start = time.perf_counter()
    for category in CATEGORIES:
        sweep(category, args.per_category, args.seed, records)
    wall = time.perf_counter() - start
    tally = collections.Counter((case.category, outcome_kind(outcome)) for case, outcome in records)
    internal = sum("internal error" in outcome.err for _, outcome in records)
    problems = [(case, outcome) for case, outcome in records if outcome.problems]
    print(f"python {sys.version.split()[0]}, seed {args.seed}, {len(records)} cases in {wall:.0f} s")
    print(f"internal-error catch-all reached: {internal} times; cases with a problem: {len(problems)}")
    print("\noutcomes by category:")
    for category in CATEGORIES:
        rows = sorted((kind, n) for (cat, kind), n in tally.items() if cat == category)
        print(f"  {category:<11} " + ", ".join(f"{kind}: {n}" for kind, n in rows))
    print("\nslowest case per category (CPU seconds):")
    for category in CATEGORIES:
        mine = [r for r in records if r[0].category == category]
        if mine:
            case, outcome = max(mine, key=lambda r: r[1].cpu_s)
            print(f"  {outcome.cpu_s:6.3f}  exit {outcome.code}  {describe_case(case)}")
    normal = [r for r in records if len(r[0].files.get("pyproject.toml", b"")) < 100_000 or r[0].category != "runs"]
    case, outcome = max(normal, key=lambda r: r[1].cpu_s)
    print(f"slowest apart from thousands of runs: {outcome.cpu_s:.3f} s, exit {outcome.code}, {describe_case(case)}")
    for case, outcome in problems[:30]:
        print(f"\nPROBLEM {describe_case(case)}\n  " + "\n  ".join(outcome.problems))
    return 1 if problems or internal else 0


if __name__ == "__main__":
    sys.exit(main())
