"""The line each key of a JSON document is written on, so an error about a value in a JSON file (a
DeepSpeed config, a trainer's arguments file) names ``ds.json:4`` as an error in a YAML file names its
line. The json module keeps no positions; this scans the text json.loads has already accepted.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Optional, Tuple

# A string literal (JSON strings hold no raw newline) or one of the marks that open, close or pair.
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{}\[\]:]')


def key_lines(text: str, depth: int = 3) -> Dict[str, int]:
    """1-based line of each key, dotted by the objects that hold it ("zero_optimization.stage"), to
    ``depth`` levels; the first occurrence wins (as json.loads keeps the last value, a repeated key is
    rare). Keys inside arrays are left out: "a.b" could not say which element."""
    lines: Dict[str, int] = {}
    stack: List[List[Optional[str]]] = []  # per open container: ["{", its current key] or ["[", None]
    pending: Optional[Tuple[str, int]] = None  # the last string read: a key when ":" follows
    line, seen = 1, 0
    for match in _TOKEN.finditer(text):
        line += text.count("\n", seen, match.start())
        seen = match.start()
        token = match.group()
        if token in ("{", "["):
            stack.append([token, None])
        elif token in ("}", "]"):
            if stack:
                stack.pop()
        elif token == ":":
            if pending and stack and stack[-1][0] == "{":
                stack[-1][1] = pending[0]
                if all(kind == "{" for kind, _ in stack) and len(stack) <= depth:
                    lines.setdefault(".".join(str(key) for _, key in stack), pending[1])
        else:
            pending = (json.loads(token), line)
            continue
        pending = None
    return lines


def line_of(key: str, lines: Dict[str, int]) -> Optional[int]:
    """The line of a dotted key, else of the nearest section holding it (a YAML file's lines go two
    levels down: an inline DeepSpeed table's zero_optimization.stage is found at its section)."""
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return None


__all__ = ["key_lines", "line_of"]
