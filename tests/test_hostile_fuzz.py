"""Generated hostile inputs, a few hundred per CI run (benchmarks/fuzz.py sweeps thousands).

Each category of tests/hostile_cases.py runs through ``llmmem`` in-process in a fresh folder and
must pass hostile_cases.judge: exit 0/1/2, exit 2 as one error paragraph, no traceback, no
internal error, within the CPU bound (a second, plus 1 ms a run for thousands of runs; here
stretched for loaded CI machines), no file written, no network.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.hostile_cases import CATEGORIES, describe_case, run_case

# CPU seconds stretch on a shared 2-core CI machine under load (a 0.1 s case was once measured at
# 1.08 s there); benchmarks/fuzz.py holds every case to the one-second bound on a quiet machine.
CPU_FACTOR = 3.0
# Examples per category: 470 in all, about 30 s on a 2-core machine.
EXAMPLES = {"keys": 100, "toml": 100, "runs": 30, "json": 100, "paths": 60, "front-ends": 80}


@pytest.mark.parametrize("category", sorted(EXAMPLES))
def test_hostile_category(category):
    @settings(max_examples=EXAMPLES[category], deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=CATEGORIES[category])
    def one(case):
        folder = Path(tempfile.mkdtemp(prefix="llmmem-hostile-"))
        try:
            outcome = run_case(case, folder, CPU_FACTOR)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        assert not outcome.problems, f"{describe_case(case)}: {outcome.problems}"

    one()
