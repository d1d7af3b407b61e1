"""The one error type a user sees: a paragraph naming the file, the key, the line and the fix.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union


class ConfigError(Exception):
    """A configuration or usage problem. Front-ends print ``str(err)`` and exit 2."""

    def __init__(
        self,
        message: str,
        *,
        path: Optional[Union[str, Path]] = None,
        key: Optional[str] = None,
        line: Optional[int] = None,
        hint: Optional[str] = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.key = key
        self.line = line
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path:
            where = self.path + (f":{self.line}" if self.line else "")
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text = f"{text} {self.hint}"
        return text


SHOWN = 60  # characters of a user's value echoed in a message; the rest is cut to "…"


def shown(value: object, limit: int = SHOWN) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters (plus "…"): a 100,000-character
    gpu name, a megabyte string or a list nested 5,000 deep must not become the message."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length():,} bits"
    elif isinstance(value, (list, dict)):
        import reprlib  # only on this error path

        short = reprlib.Repr()
        short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
        text = short.repr(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def shown_name(name: object, limit: int = SHOWN) -> str:
    """A name (key, path, value) without quotes, cut like :func:`shown`; control characters are
    escaped as repr() would, so a name cannot move the cursor or clear the terminal."""
    from .untrusted import visible

    text = str(name)
    cut = visible(text[:limit])
    return cut if len(text) <= limit else cut + "…"


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' Did you mean "x"?' for a near miss, else ''. difflib is imported only on this error path.
    A near miss of another size or release is another model: "Llama-3.1-70B-Instruct" is not a typo of
    "Llama-3.1-8B-Instruct" nor "gemma-3-27b-it" of "gemma-2-27b", so for a name with a size token (70B,
    0.5B, 4k) a candidate whose size tokens or digits differ is never offered ("Llama-31-8B" keeps its
    "Llama-3.1-8B")."""
    if len(str(word)) > 100:  # no near miss is this long; difflib would index every character
        return ""
    import difflib

    options = list(options)
    sizes = size_tokens(str(word))
    matches = difflib.get_close_matches(str(word).lower(), [o.lower() for o in options], n=10, cutoff=0.6)
    digits = _digits(str(word))
    match = next((m for m in matches if not sizes or (size_tokens(m) == sizes and _digits(m) == digits)), None)
    if match is None:
        return ""
    original = {o.lower(): o for o in options}[match]
    return f' Did you mean "{original}"?'


def nearest(word: str, options: Sequence[str], n: int = 3) -> List[str]:
    """The ``n`` options most like ``word`` (difflib's ratio), best first: an unknown-key error names
    these, not all ninety keys of a run table."""
    import difflib  # only on this error path

    return difflib.get_close_matches(str(word)[:100].lower(), list(options), n=n, cutoff=0.0)


# A size in a model name: 70B, 0.5B, 8x7B's 7B, 30B-A3B's 3B, 350M, Phi-3-mini-4k's context 4k. Compiled
# by re on first use (its cache): only a did-you-mean on a model name asks, never a run that loads.
_SIZE = r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)([bmkt])(?![a-z0-9])"


def size_tokens(name: str) -> Tuple[str, ...]:
    """The size tokens of a model name, lower case, in order ("Qwen3-30B-A3B" -> ("30b", "3b"))."""
    return tuple(number + unit for number, unit in re.findall(_SIZE, name.lower()))


def _digits(name: str) -> str:
    """The digits of a name in order: a release (gemma-3, v0.2, Qwen2.5) is one of them."""
    return "".join(ch for ch in name if ch.isdigit())


def one_of(options: Sequence[str]) -> str:
    return ", ".join(f'"{o}"' for o in options)
