"""Byte and count quantities: parse what people write, print what they can compare.

GB, MB, KB, TB are decimal (1 GB = 10**9 bytes, SI); GiB, MiB, KiB, TiB are binary
(1 GiB = 1024**3 bytes, IEC 80000-13). A bare "G" or "80G" follows nvidia-smi and PyTorch
habit and means GiB. A size always carries its unit ("7.5e10 B" for a byte count): headroom = "10"
could mean bytes, GiB or percent, so a number without one is refused (zero needs none). Output
defaults to GiB and always prints its unit.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

from .errors import shown

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_BYTE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "k": KiB,
    "m": MiB,
    "g": GiB,
    "t": TiB,
}

# Parameter counts: "7B", "6.74B", "350M", "1.5T", "7e9"; B = billion (10**9), not bytes.
_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}

# A number, then an optional unit. No two adjacent quantifiers can match the same characters, so
# matching is linear (a pattern with "\s*([a-zA-Z]*)\s*" took seconds on 20,000 spaces).
_QUANTITY = re.compile(r"((?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t]*([a-zA-Z]*)")
_MAX_TEXT = 64  # longer than any quantity people write; refused before any matching


def _quantity(text: str) -> "Optional[re.Match[str]]":
    """(number, unit) of "80 GiB", "7.5e10", "350M", or None."""
    text = text.strip()
    return _QUANTITY.fullmatch(text) if len(text) <= _MAX_TEXT else None


Number = Union[int, float]

BYTE_UNITS_HELP = "a size with its unit, such as \"80 GiB\", \"80GB\", \"81920MiB\", \"80G\" or \"7.5e10 B\""
COUNT_HELP = "a count such as \"7B\", \"6.74B\", \"350M\", \"7e9\" or 7000000000"


class UnitError(ValueError):
    """A quantity could not be read; the message says what would be valid."""

def _finite_positive(value: float, text: object, what: str, allow_zero: bool) -> float:
    if math.isnan(value) or math.isinf(value):
        raise UnitError(f"{shown(text)} is not a finite number; expected {what}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UnitError(f"{shown(text)} must be {'zero or more' if allow_zero else 'greater than zero'}; expected {what}")
    return value


def parse_bytes(text: object, *, allow_zero: bool = False) -> int:
    """Read a memory size into bytes ("80 GiB" -> 85899345920, "80GB" -> 80000000000). A number
    without a unit (10, "10") is refused: it is a slip for GiB or % far more often than a byte count."""
    if isinstance(text, bool):
        raise UnitError(f"{shown(text)} is a boolean; expected {BYTE_UNITS_HELP}")
    if isinstance(text, (int, float)):
        value, unit = _finite_positive(float(text), text, BYTE_UNITS_HELP, allow_zero), ""
    elif isinstance(text, str):
        match = _quantity(text)
        unit = match.group(2).lower() if match else ""
        if not match or (unit and unit not in _BYTE_UNITS):
            raise UnitError(f"{shown(text)} is not a size; expected {BYTE_UNITS_HELP}")
        value = _finite_positive(float(match.group(1)), text, BYTE_UNITS_HELP, allow_zero)
    else:
        raise UnitError(f"{shown(text)} is a {type(text).__name__}; expected {BYTE_UNITS_HELP}")
    if not unit:
        if value == 0 and allow_zero:  # nothing is nothing in any unit
            return 0
        raise UnitError(f"{shown(text)} has no unit, so it could be bytes, GiB or GB; expected {BYTE_UNITS_HELP}")
    scaled = value * _BYTE_UNITS[unit]
    if math.isinf(scaled):  # "1e308 TiB": finite number, infinite product
        raise UnitError(f"{shown(text)} is too large; expected {BYTE_UNITS_HELP}")
    result = int(round(scaled))
    if result == 0 and not allow_zero:
        raise UnitError(f"{shown(text)} is less than one byte; expected {BYTE_UNITS_HELP}")
    return result


def parse_count(text: object) -> int:
    """Read a parameter count ("7B" -> 7_000_000_000, "350M", "7e9", 6738415616)."""
    if isinstance(text, bool):
        raise UnitError(f"{shown(text)} is a boolean; expected {COUNT_HELP}")
    if isinstance(text, (int, float)):
        count = int(_finite_positive(float(text), text, COUNT_HELP, False))
        if count < 1:
            raise UnitError(f"{shown(text)} is less than one parameter; expected {COUNT_HELP}")
        return count
    if not isinstance(text, str):
        raise UnitError(f"{shown(text)} is a {type(text).__name__}; expected {COUNT_HELP}")
    match = _quantity(text.replace("_", "").replace(",", ""))
    suffix = match.group(2).lower() if match else ""
    if not match or suffix not in _COUNT_SUFFIX:
        raise UnitError(f"{shown(text)} is not a parameter count; expected {COUNT_HELP}")
    value = _finite_positive(float(match.group(1)), text, COUNT_HELP, False)
    scaled = value * _COUNT_SUFFIX[suffix]
    if math.isinf(scaled):
        raise UnitError(f"{shown(text)} is too large; expected {COUNT_HELP}")
    count = int(round(scaled))
    if count < 1:
        raise UnitError(f"{shown(text)} is less than one parameter; expected {COUNT_HELP}")
    return count


def format_bytes(n: float, units: str = "gib", digits: int = 2) -> str:
    """Print bytes in GiB (default) or decimal GB; the unit is always shown."""
    if units == "gb":
        return f"{n / 1e9:.{digits}f} GB"
    return f"{n / GiB:.{digits}f} GiB"


def format_count(n: int) -> str:
    """A parameter count people recognise: 6,738,415,616 -> "6.74B"."""
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)
