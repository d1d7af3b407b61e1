"""Check the bundled configs (pytest_llmmem/models/) against the GitHub sources index.json names.

Each entry's ``taken_from`` (and ``checked_against``) may be ``github:OWNER/REPO@COMMIT:PATH#NAME['key']``:
the dict literal ``NAME['key']`` in PATH at COMMIT. This script reads that file from a local clone
(``git show COMMIT:PATH``, nothing runs: the dict is read with ``ast.literal_eval``) and checks that
every key of the bundled config.json holds the same value there. The other locators
(``validation:FILE#ROW``, ``index:ID``) are listed as not checkable here.

    python benchmarks/check_bundle_sources.py --clone mlc-ai/mlc-llm=/path/to/mlc-llm

Exit 0 when every checkable locator agrees, 1 when one does not, 2 for a usage error.
"""

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

MODELS = Path(__file__).resolve().parents[1] / "pytest_llmmem" / "models"
GITHUB = re.compile(r"^github:(?P<repo>[\w.-]+/[\w.-]+)@(?P<commit>[0-9a-f]{7,40}):(?P<path>[^#]+)#(?P<name>\w+)\['(?P<key>[^']+)'\]$")


def _literal(source: str, name: str, key: str) -> Optional[Dict[str, Any]]:
    """``name[key]`` of a module-level dict literal, read without running the module."""
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if getattr(target, "id", None) == name and isinstance(node.value, ast.Dict):
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(k, ast.Constant) and k.value == key:
                    return ast.literal_eval(v)
    return None


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="check_bundle_sources.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clone", action="append", default=[], metavar="OWNER/REPO=PATH", help="a local git clone of a source repository")
    args = parser.parse_args(argv)
    clones = {}
    for item in args.clone:
        repo, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            parser.error(f"--clone {item!r}: expected OWNER/REPO=PATH of an existing clone")
        clones[repo] = path
    index = json.loads((MODELS / "index.json").read_text(encoding="utf-8"))
    bad = 0
    for model_id, entry in sorted(index.items()):
        config = json.loads((MODELS / entry["folder"] / "config.json").read_text(encoding="utf-8"))
        for field in ("taken_from", "checked_against"):
            where = entry.get(field)
            match = GITHUB.match(where or "")
            if not where:
                continue
            if not match or match["repo"] not in clones:
                print(f"{model_id}: {field} {where}: not checkable here")
                continue
            shown = subprocess.run(["git", "-C", clones[match["repo"]], "show", f"{match['commit']}:{match['path']}"],
                                   capture_output=True, text=True)
            found = _literal(shown.stdout, match["name"], match["key"]) if shown.returncode == 0 else None
            if found is None:
                print(f"{model_id}: {field} {where}: MISSING ({shown.stderr.strip() or 'no such entry'})")
                bad += 1
                continue
            differ = sorted(key for key in config if found.get(key, KeyError) != config[key])
            print(f"{model_id}: {field}: " + ("every key equal" if not differ else f"DIFFERS in {', '.join(differ)}"))
            bad += bool(differ)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
