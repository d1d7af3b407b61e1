"""The benchmark scripts as a contributor runs them in a fresh clone."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_accuracy_without_validation_data_is_a_clear_error(tmp_path):
    # A clone without ../shared/validation: one message naming the folder and how to point at one,
    # exit 2 as for any usage error, and no traceback.
    missing = tmp_path / "validation"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--validation", str(missing)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"accuracy.py: error: no validation data: {missing / 'groundtruth.jsonl'} does not exist.")
    assert "--validation" in result.stderr
