"""Line numbers of tables and keys in a TOML text, for error messages (tomllib reports none).

The text comes from files anyone can put in a pull request, so the scan is linear: one pass over
the characters, each regular expression a single character class or a literal (nothing that can
backtrack), and string bodies (basic and literal, single- and multi-line) are skipped, so a
``[section]`` or ``key =`` inside a string is never taken for a header or a key.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple


def canonical(key: str) -> str:
    return key.replace("_", "-")


TABLE = "tool.llmmem"

_SPECIAL = re.compile(r"[\"'#\[\]{}]")  # what changes the scanner's state inside a value
_BASIC_STOP = re.compile(r'[\\"]')  # inside a basic string: an escape or a quote
_HEADER_STOP = re.compile(r"[\]\"']")  # inside a header: its end or a quoted part
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_BLANK = re.compile(r"[ \t]*")
_RUN_NAME = re.compile(r"""["']?name["']?[ \t]*=[ \t]*(?:"([^"]*)"|'([^']*)')""")

_Scan = Tuple[str, int]  # (open multi-line delimiter: '"""', "'''" or "", bracket depth)


class Locator:
    """Line numbers of tables and keys in a TOML text (tomllib reports none for valid files)."""

    def __init__(self, text: str) -> None:
        self.keys: Dict[Tuple[str, int, str], int] = {}
        self.tables: Dict[Tuple[str, int], int] = {}
        self.lines: List[str] = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        self._names: Optional[Dict[str, int]] = None
        counts: Dict[str, int] = {}
        table, index = "", 0
        array = ""  # the last [[array]] header: a [array.sub] table after it belongs to its last element
        state: _Scan = ("", 0)
        for number, line in enumerate(self.lines, start=1):
            start = 0
            if state[0]:  # inside a multi-line string: find where it ends
                start, state = _skip_multiline(line, 0, state)
                if state[0]:
                    continue
            elif state[1] == 0:
                pos = _BLANK.match(line).end()
                if line.startswith("[", pos):
                    header = _header(line, pos)
                    if header is not None:
                        name, is_array = header
                        if is_array:
                            counts[name] = counts.get(name, -1) + 1
                            array, index = name, counts[name]
                        elif array and name.startswith(array + "."):
                            index = counts[array]  # [tool.llmmem.runs.model] under the last [[tool.llmmem.runs]]
                        else:
                            array, index = "", 0
                        table = name
                        self.tables.setdefault((table, index), number)
                        continue
                parts, start = _key(line, pos)
                if parts:
                    # model.id = "x" in a run: the run's "model" key and the key "id" of its model table.
                    self.keys.setdefault((table, index, canonical(parts[0])), number)
                    if len(parts) > 1:
                        inner = ".".join(([table] if table else []) + parts[:-1])
                        self.keys.setdefault((inner, index, canonical(parts[-1])), number)
            state = _scan_value(line, start, state)

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
        # Inline tables (runs = [{ name = "x", ... }]): the line that names the run, indexed once.
        if self._names is None:
            self._names = {}
            for number, text in enumerate(self.lines, 1):
                if "name" in text:
                    for match in _RUN_NAME.finditer(text):
                        self._names.setdefault(match.group(1) if match.group(1) is not None else match.group(2), number)
        return self._names.get(name)


def _header(line: str, pos: int) -> Optional[Tuple[str, bool]]:
    """``[a.b]`` or ``[[a.b]]`` starting at ``pos``: (the dotted name without quotes or blanks, is
    an array of tables), or None when the line is not a complete header."""
    array = line.startswith("[[", pos)
    i = pos + (2 if array else 1)
    parts = []
    while True:
        match = _HEADER_STOP.search(line, i)
        if match is None:
            return None
        parts.append(line[i:match.start()])
        ch, i = match.group(), match.end()
        if ch == "]":
            break
        end = line.find(ch, i)  # a quoted key: up to the matching quote
        if end < 0:
            return None
        parts.append(line[i:end])
        i = end + 1
    if array and not line.startswith("]", i):
        return None
    name = "".join(parts)
    return "".join(name.split()), array


def _key(line: str, pos: int) -> Tuple[List[str], int]:
    """A key at ``pos`` followed by ``=``, bare, quoted or dotted (``model.id``): (its parts, where
    its value starts), else ([], ``pos``)."""
    parts: List[str] = []
    i = pos
    while True:
        if line.startswith(('"', "'"), i):
            end = line.find(line[i], i + 1)
            if end < 0:
                return [], pos
            parts.append(line[i + 1:end])
            i = end + 1
        else:
            match = _BARE_KEY.match(line, i)
            if match is None:
                return [], pos
            parts.append(match.group())
            i = match.end()
        i = _BLANK.match(line, i).end()
        if line.startswith("=", i):
            return parts, i + 1
        if not line.startswith(".", i):
            return [], pos
        i = _BLANK.match(line, i + 1).end()


def _skip_multiline(line: str, i: int, state: _Scan) -> Tuple[int, _Scan]:
    """Inside a multi-line string from ``i``: (where it ends on this line, the state after it); the
    state keeps the delimiter when the string goes on past this line."""
    delimiter, depth = state
    if delimiter == "'''":  # literal: no escapes
        end = line.find("'''", i)
    else:
        end = -1
        while True:
            match = _BASIC_STOP.search(line, i)
            if match is None:
                break
            if match.group() == "\\":
                i = match.end() + 1  # the escaped character (a line-ending backslash leaves i past the end)
                continue
            if line.startswith('"""', match.start()):
                end = match.start()
                break
            i = match.end()
    if end < 0:
        return len(line), state
    end += 3
    quote = delimiter[0]
    for _ in range(2):  # up to two quotes right before the delimiter belong to the string
        if line.startswith(quote, end):
            end += 1
    return end, ("", depth)


def _scan_value(line: str, i: int, state: _Scan) -> _Scan:
    """The state after the rest of ``line`` from ``i``: strings skipped, brackets counted, comments
    dropped (multi-line arrays and inline tables keep later lines from being read as keys)."""
    depth = state[1]
    while True:
        match = _SPECIAL.search(line, i)
        if match is None or match.group() == "#":
            return ("", depth)
        ch, i = match.group(), match.end()
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif line.startswith(ch * 3, match.start()):
            i, state = _skip_multiline(line, match.start() + 3, (ch * 3, depth))
            if state[0]:
                return state
        elif ch == "'":
            end = line.find("'", i)
            i = len(line) if end < 0 else end + 1
        else:
            i = _end_of_basic(line, i)


def _end_of_basic(line: str, i: int) -> int:
    """Just past the closing quote of a one-line basic string whose body starts at ``i``."""
    while True:
        match = _BASIC_STOP.search(line, i)
        if match is None:
            return len(line)
        if match.group() == '"':
            return match.end()
        i = match.end() + 1
