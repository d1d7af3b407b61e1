"""One measurement scenario in a child process of its own (a clean CUDA allocator and context each).

The child prints ``RESULT {json}`` as its last such line; a crash, an import error or a timeout becomes
a row with an ``error`` field, so one bad scenario never stops a device run that costs minutes.
"""

import json
import subprocess
from typing import Any, Dict, List


def run_child(cmd: List[str], scenario: Dict[str, Any], timeout: int) -> Dict[str, Any]:
    """Run ``cmd`` and return the JSON its child printed after ``RESULT ``, or an error row."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"scenario": scenario, "error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else {"scenario": scenario, "error": proc.stderr[-800:]}
