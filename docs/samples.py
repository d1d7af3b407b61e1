"""Every sample output in README.md and docs/*.md, regenerated from the code.

A sample is a fenced block right after a marker naming what produced it:

    <!-- generated: llmmem check examples -->
    ```text
    ...
    ```

``llmmem ARGS`` runs the command from the repository root, as a user would, at 80 columns, with
no Hugging Face cache (so only bundled configs resolve) and outside GitHub Actions; the block holds
what it prints on stdout and stderr. A few samples are not one command's output; their names are
in SPECIAL below. tests/test_readme.py fails when a block differs from what the code prints now;

    python docs/samples.py --update

rewrites the blocks (and ``python docs/samples.py`` lists the ones that drifted).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
# the fence may be longer than three backticks, for a sample that holds fences itself (the job summary)
MARKER = re.compile(r"<!-- generated: (?P<name>.+?) -->\n(?P<fence>```+)(?P<lang>[a-z]*)\n(?P<body>.*?)(?P=fence)\n", re.S)


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "PYTEST_"))}
    env.update(COLUMNS="80", HF_HUB_CACHE="/nonexistent/hf-cache", HF_HUB_OFFLINE="1", LLMMEM_DISABLE_PLUGINS="1", **extra)
    return env


def _run(argv: List[str], cwd: Path = ROOT, **env: str) -> str:
    done = subprocess.run(argv, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def llmmem(args: str) -> str:
    """``llmmem ARGS`` as a user types it in the repository root."""
    return _run([sys.executable, "-m", "pytest_llmmem.cli", *shlex.split(args)])


def _keys() -> str:
    """Every key of each [tool.llmmem] table (config/keys.py), as the unknown-key error counts them."""
    from pytest_llmmem.config import keys
    from pytest_llmmem.report.layout import wrap

    tables = (("[tool.llmmem]", keys.TOP_KEYS), ("[tool.llmmem.model] (and a run's model, reward-model, value-model)", keys.MODEL_KEYS),
              ("[[tool.llmmem.runs]]", keys.RUN_KEYS))
    lines = []
    for title, names in tables:
        lines += [f"{title}: {len(names)} keys", *wrap(", ".join(names), 80, "  ", "  "), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _pytest_failure() -> str:
    """`pytest --llmmem-only` in examples/: its failure and the llmmem summary. The platform header
    and the timings vary from machine to machine, so the sample runs from FAILURES to the llmmem
    summary's end, before pytest's own short summary."""
    out = _run([sys.executable, "-m", "pytest", "--llmmem-only", "-p", "no:cacheprovider"], cwd=ROOT / "examples")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if " FAILURES " in line)
    end = next(i for i, line in enumerate(lines) if " short test summary info " in line)
    return "\n".join(lines[start:end]) + "\n"


def _github_summary() -> str:
    """The job summary the Action writes for the example ($GITHUB_STEP_SUMMARY)."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp, "summary.md")
        _run([sys.executable, "-m", "pytest_llmmem.cli", "check", "examples", "--format", "github"],
             GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary), GITHUB_WORKSPACE=str(ROOT), RUNNER_TEMP=tmp)
        return summary.read_text(encoding="utf-8")


def _github_annotations() -> str:
    """The workflow commands among what `llmmem check --format github` prints for the example."""
    with tempfile.TemporaryDirectory() as tmp:
        out = _run([sys.executable, "-m", "pytest_llmmem.cli", "check", "examples", "--format", "github"],
                   GITHUB_ACTIONS="true", GITHUB_WORKSPACE=str(ROOT), RUNNER_TEMP=tmp, GITHUB_OUTPUT=str(Path(tmp, "out")))
    return "".join(line + "\n" for line in out.splitlines() if line.startswith("::"))


SPECIAL: Dict[str, Callable[[], str]] = {
    "keys": _keys,
    "pytest --llmmem (examples)": _pytest_failure,
    "github job summary (examples)": _github_summary,
    "github annotations (examples)": _github_annotations,
}


def produce(name: str) -> str:
    """What the sample called ``name`` holds today."""
    if name in SPECIAL:
        return SPECIAL[name]()
    if name.startswith("llmmem "):
        return llmmem(name[len("llmmem "):])
    raise ValueError(f"unknown sample {name!r}: expected 'llmmem ARGS' or one of {sorted(SPECIAL)}")


def documents() -> List[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def samples(text: str) -> List[Tuple[str, str]]:
    """(name, body) of each marked block in ``text``."""
    return [(m["name"], m["body"]) for m in MARKER.finditer(text)]


def refreshed(text: str) -> str:
    """``text`` with every marked block replaced by what its command prints now."""
    return MARKER.sub(lambda m: f"<!-- generated: {m['name']} -->\n{m['fence']}{m['lang']}\n{produce(m['name'])}{m['fence']}\n", text)


def main(argv: List[str]) -> int:
    update = "--update" in argv
    stale = 0
    for path in documents():
        text = path.read_text(encoding="utf-8")
        new = refreshed(text)
        if new != text:
            stale += 1
            print(f"{path.relative_to(ROOT)}: {'updated' if update else 'samples differ from the code'}")
            if update:
                path.write_text(new, encoding="utf-8")
    return 0 if update or not stale else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
