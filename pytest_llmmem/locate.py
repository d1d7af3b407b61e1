"""Line numbers of tables and keys in a TOML text, for error messages (tomllib reports none).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import re
from typing import Dict, Optional, Tuple


def canonical(key: str) -> str:
    return key.replace("_", "-")


TABLE = "tool.llmmem"

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_\-]+|"[^"]*"|'[^']*')\s*=""")


class Locator:
    """Line numbers of tables and keys in a TOML text (tomllib reports none for valid files)."""

    def __init__(self, text: str) -> None:
        self.keys: Dict[Tuple[str, int, str], int] = {}
        self.tables: Dict[Tuple[str, int], int] = {}
        self.lines = text.splitlines()
        counts: Dict[str, int] = {}
        table, index, depth = "", 0, 0
        for number, line in enumerate(self.lines, start=1):
            header = _HEADER.match(line) if depth == 0 else None
            if header:
                table = re.sub(r"\s|\"|'", "", header.group(2))
                if header.group(1) == "[[":
                    counts[table] = counts.get(table, -1) + 1
                index = counts.get(table, 0) if header.group(1) == "[[" else 0
                self.tables.setdefault((table, index), number)
                continue
            key = _KEY.match(line) if depth == 0 else None
            if key:
                name = canonical(key.group(1).strip("\"'"))
                self.keys.setdefault((table, index, name), number)
            depth = max(0, depth + _bracket_balance(line))

    def find(self, table: str, index: int = 0, key: Optional[str] = None) -> Optional[int]:
        if key is not None:
            line = self.keys.get((table, index, canonical(key)))
            if line:
                return line
        return self.tables.get((table, index))

    def run_line(self, index: int, name: Optional[str], key: Optional[str] = None) -> Optional[int]:
        line = self.find(f"{TABLE}.runs", index, key)
        if line or not name:
            return line
        # Inline tables (runs = [{ name = "x", ... }]): the line that names the run.
        pattern = re.compile(r"""name\s*=\s*["']""" + re.escape(name) + r"""["']""")
        return next((n for n, text in enumerate(self.lines, 1) if pattern.search(text)), None)


def _bracket_balance(line: str) -> int:
    """Net open brackets on a line, ignoring strings and comments (multi-line arrays)."""
    balance, quote = 0, ""
    for ch in line:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            balance += 1
        elif ch in "]}":
            balance -= 1
    return balance

