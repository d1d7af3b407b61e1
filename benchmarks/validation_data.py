"""Where the benchmark scripts find ../shared/validation, and the one message when it is missing."""

import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT.parent / "shared" / "validation"


def missing(directory: Path, names: Sequence[str], script: str) -> bool:
    """Print a clear error (never a traceback) and return True when a needed file is absent."""
    for name in names:
        if not (directory / name).is_file():
            print(f"{script}: error: no validation data: {directory / name} does not exist. The data lives "
                  "beside the repository in shared/validation (see its README.md); point at a copy with "
                  "--validation DIR.", file=sys.stderr)
            return True
    return False
