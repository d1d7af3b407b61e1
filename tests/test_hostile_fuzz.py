"""Generated hostile inputs, a few hundred per CI run (benchmarks/fuzz.py sweeps thousands).

Each category of tests/hostile_cases.py runs through ``llmmem`` in-process in a fresh folder and
must pass hostile_cases.judge: exit 0/1/2, exit 2 as one error paragraph, no traceback, no
internal error, under a second of CPU (plus 0.2 ms a run past that for thousands of runs), no
file written, no network.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.hostile_cases import CATEGORIES, describe_case, run_case

# Examples per category: 470 in all, about 30 s on a 2-core machine.
EXAMPLES = {"keys": 100, "toml": 100, "runs": 30, "json": 100, "paths": 60, "front-ends": 80}


@pytest.mark.parametrize("category", sorted(EXAMPLES))
def test_hostile_category(category):
    @settings(max_examples=EXAMPLES[category], deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=CATEGORIES[category])
    def one(case):
        folder = Path(tempfile.mkdtemp(prefix="llmmem-hostile-"))
        try:
            outcome = run_case(case, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        assert not outcome.problems, f"{describe_case(case)}: {outcome.problems}"

    one()
