"""Fitting text a person reads into the terminal's width: 80 columns, or more when COLUMNS says so.

Lines are wrapped, never cut: a long line breaks at its coarsest separator first (" | " between the
parts of a run's description, then "; ", then ", ", then spaces), and its continuation lines are
indented four columns deeper than the line itself. A single word longer than the width (a URL, a
path) stays whole where it is, since cutting it would lose it.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import shutil
from typing import Iterable, List, Sequence

MIN_WIDTH = 80  # what the output is laid out for; a wider terminal (COLUMNS) gets wider lines
SEPARATORS = (" | ", "; ", ", ", " ")
HANG = "    "  # extra indent of a wrapped line's continuation


def terminal_width() -> int:
    """The columns to fill: the terminal's width (``COLUMNS`` first, as shutil.get_terminal_size reads
    it), never below 80; 80 when the output is a pipe or a CI log and COLUMNS is unset."""
    return max(MIN_WIDTH, shutil.get_terminal_size((MIN_WIDTH, 24)).columns)


def wrap(text: str, width: int, indent: str = "", hang: str = "", separators: Sequence[str] = SEPARATORS) -> List[str]:
    """``indent + text`` as lines of at most ``width`` characters, continuation lines prefixed ``hang``.

    Each separator's mark stays at the end of the line it ends ("a |", "b,"), so a reader sees that
    the line goes on. A part too long for a line of its own is wrapped at the next finer separator."""
    if len(indent) + len(text) <= width:
        return [indent + text]
    sep = next((s for s in separators if s in text), None)
    if sep is None:  # one word: it stays whole
        return [indent + text]
    finer = separators[separators.index(sep) + 1:]
    pieces = text.split(sep)
    mark = sep.rstrip()
    tokens = [piece + mark for piece in pieces[:-1]] + [pieces[-1]]
    lines: List[str] = []
    current = ""
    for token in tokens:
        prefix = hang if lines else indent
        if current and (len(prefix) + len(current) + 1 + len(token) <= width or (sep == " " and len(hang) + len(token) > width)):
            current += " " + token  # fits; or a word that fits no line, which a break would only move
            continue
        if current:
            lines.append(prefix + current)
            current, prefix = "", hang
        if len(prefix) + len(token) <= width:
            current = token
            continue
        parts = wrap(token, width, prefix, hang, finer)
        if len(parts) == 1:  # a word wider than the line: on a line of its own
            lines += parts
        else:  # the next token may still fit after the last part
            lines += parts[:-1]
            current = parts[-1][len(hang):]
    if current:
        lines.append((hang if lines else indent) + current)
    if sep == "; ":  # prose: a break at a clause that saves no line is only a ragged edge; fill the lines
        words = wrap(text, width, indent, hang, (" ",))
        if len(words) <= len(lines):
            return words
    return lines


def fit_lines(lines: Iterable[str], width: int) -> List[str]:
    """Every line wrapped to ``width``; a continuation is indented 4 columns past its line's own indent."""
    out: List[str] = []
    for line in lines:
        body = line.lstrip(" ")
        indent = line[: len(line) - len(body)]
        out += wrap(body, width, indent, indent + HANG)
    return out


def fit_text(text: str, width: int) -> str:
    """:func:`fit_lines` over a block of text."""
    return "\n".join(fit_lines(text.split("\n"), width))


def unfit(text: str) -> str:
    """The inverse of :func:`fit_text`: each continuation line (indented 4 or more columns past the
    line it continues) joined back onto it. For scripts and tests that look for a whole sentence."""
    out: List[str] = []
    base = -1  # indent of the line being continued
    for line in text.split("\n"):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if out and body and base >= 0 and indent >= base + len(HANG):
            out[-1] += " " + body
            continue
        out.append(line)
        base = indent if body else -1
    return "\n".join(out)


__all__ = ["MIN_WIDTH", "fit_lines", "fit_text", "terminal_width", "unfit", "wrap"]
