"""Check the bundled configs (pytest_llmmem/models/) against the GitHub sources index.json names.

Each entry's ``taken_from`` (and ``checked_against``) may name a GitHub file at a commit, in three forms:
``github:OWNER/REPO@COMMIT:PATH`` (PATH is the JSON config itself), ``...:PATH#L<n>`` (the JSON object, or
Python dict literal, that opens on line n of PATH: a config quoted in a test or a README) and
``...:PATH#NAME['key']`` (the module-level dict literal ``NAME['key']``). This script reads that file from a
local clone (``git show COMMIT:PATH``; nothing runs: JSON is parsed, Python with ``ast.literal_eval``) and
checks that every key of the bundled config.json holds the same value there, and says how many keys the
source has beyond them (a bundled config may be trimmed to the keys the estimator reads); a key the entry's
``added`` names (taken from another document, such as a context limit the model's README states) is left
out of the comparison and printed with its document. A locator in a clone
that lacks its commit (a snapshot older than the source) is listed as not checkable, never as agreeing.

Every bundled config must name a public file a user can open (issue 23): an entry whose ``taken_from`` is
not a GitHub file at a commit (``validation:FILE#ROW``, a row of the shared validation data; ``index:ID``, a
code-search id) is listed under "no public URL", and the run fails until none is left.

    python benchmarks/check_bundle_sources.py --clone mlc-ai/mlc-llm=/path/to/mlc-llm

Exit 0 when every checkable locator agrees and every entry names a public file, 1 when a locator differs
or an entry names none, 2 for a usage error.
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
GITHUB = re.compile(r"^github:(?P<repo>[\w.-]+/[\w.-]+)@(?P<commit>[0-9a-f]{7,40}):(?P<path>[^#]+)"
                    r"(?:#L(?P<line>\d+)|#(?P<name>\w+)\['(?P<key>[^']+)'\])?$")


def _literal(source: str, name: str, key: str) -> Optional[Dict[str, Any]]:
    """``name[key]`` of a module-level dict literal, read without running the module."""
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if getattr(target, "id", None) == name and isinstance(node.value, ast.Dict):
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(k, ast.Constant) and k.value == key:
                    return ast.literal_eval(v)
    return None


def _opening_on_line(source: str, line: int) -> Optional[Dict[str, Any]]:
    """The JSON object whose ``{`` is the first on ``line`` (1-based), else a Python dict literal or call
    with keyword arguments that starts on that line; None when neither is there."""
    lines = source.splitlines(keepends=True)
    if not 1 <= line <= len(lines) or "{" not in lines[line - 1]:
        found = None
    else:
        start = sum(len(text) for text in lines[: line - 1]) + lines[line - 1].index("{")
        try:
            found = json.JSONDecoder().raw_decode(source, start)[0]
        except ValueError:
            found = None
    if found is None:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return None
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) != line:
                continue
            if isinstance(node, ast.Dict):
                found = ast.literal_eval(node)
            elif isinstance(node, ast.Call) and node.keywords and all(k.arg for k in node.keywords):
                found = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            if found is not None:
                break
    return found if isinstance(found, dict) else None


def read_source(source: str, match: "re.Match[str]") -> Optional[Dict[str, Any]]:
    """The config a matched github: locator names inside the file text ``source``."""
    if match["name"]:
        return _literal(source, match["name"], match["key"])
    if match["line"]:
        return _opening_on_line(source, int(match["line"]))
    try:
        found = json.loads(source)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def compare(config: Dict[str, Any], found: Dict[str, Any], added: Any = ()) -> str:
    """"every key equal" (with the count of the source's further keys) or the keys that differ; ``added``
    names keys the index says were added from another document (index.json "added"), not compared."""
    differ = sorted(key for key in config if key not in added and found.get(key, KeyError) != config[key])
    if differ:
        return f"DIFFERS in {', '.join(differ)}"
    extra = len(set(found) - set(config))
    return "every key equal" + (f" (the source has {extra} more keys)" if extra else "")


def without_public_url(index: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """The bundled ids whose ``taken_from`` is no GitHub file at a commit, with what they name instead."""
    return {model_id: entry["taken_from"] for model_id, entry in sorted(index.items()) if not GITHUB.match(entry["taken_from"])}


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
            if not match:  # no GitHub file: listed below, under "no public URL"
                continue
            if match["repo"] not in clones:
                print(f"{model_id}: {field} {where}: not checkable here")
                continue
            has_commit = subprocess.run(["git", "-C", clones[match["repo"]], "cat-file", "-e", f"{match['commit']}^{{commit}}"],
                                        capture_output=True)
            if has_commit.returncode:
                print(f"{model_id}: {field} {where}: not checkable here (the clone lacks commit {match['commit'][:12]})")
                continue
            shown = subprocess.run(["git", "-C", clones[match["repo"]], "show", f"{match['commit']}:{match['path']}"],
                                   capture_output=True, text=True)
            found = read_source(shown.stdout, match) if shown.returncode == 0 else None
            if found is None:
                print(f"{model_id}: {field} {where}: MISSING ({shown.stderr.strip() or 'no such entry'})")
                bad += 1
                continue
            verdict = compare(config, found, entry.get("added", {}))
            print(f"{model_id}: {field}: {verdict}")
            bad += verdict.startswith("DIFFERS")
        for key, where in sorted(entry.get("added", {}).items()):
            print(f"{model_id}: {key} = {config.get(key)!r} added, from {where}")
    unlinked = without_public_url(index)
    for model_id, where in unlinked.items():
        print(f"{model_id}: no public URL (taken_from {where})")
    if unlinked:
        print(f"{len(unlinked)} bundled configs name no public file: find a GitHub copy of each at a commit")
    return 1 if bad or unlinked else 0


if __name__ == "__main__":
    sys.exit(main())
