"""The one guarded way this package reads a user's file (pyproject.toml, a model config.json).

A pre-commit hook runs on files anyone can put in a pull request, so a read must neither hang
(a named pipe blocks ``open()``; ``/dev/zero`` never ends), nor exhaust memory (a 200 MB file),
nor crash (a symlink loop, a 5,000-character name, a NUL byte, JSON nested 5,000 deep). Every
such file is refused with a short reason, in well under a second, before its content is trusted.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

# The one place that picks a TOML parser: tomllib on 3.11+, tomli before (formerly io/toml.py: every
# reader of a pyproject reads it through this module, and a module of its own cost llmmem check an import).
if sys.version_info >= (3, 11):
    import tomllib as toml
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as toml

# Size caps, measured on a 2-core machine with CPython 3.11. The largest real pyproject.toml
# files are tens of KB (a big ruff/pylint configuration); 10,000 runs of three keys each take
# 490 KB. tomllib is pure Python: typical TOML parses at about 3 MB/s, its slowest valid input
# ("x = [1,1,1,...]") at about 0.5 MB/s, so 512 KiB bounds a pyproject's parse near one second
# however hostile. The largest Hugging Face config.json files are about 1 MB (ImageNet-21k
# id2label tables; an LLM's is under 10 KB); json parses its slowest 2 MiB in about 0.35 s.
PYPROJECT_LIMIT = 512 * 1024
CONFIG_JSON_LIMIT = 2 * 1024 * 1024

_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


class UnreadableFile(ValueError):
    """A file that exists (or may) but is refused; ``str(err)`` is the reason, e.g. "is a directory"."""


def _kind(mode: int) -> Optional[str]:
    """None for a regular file, else what the file is ("a named pipe (FIFO)")."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _reason(err: OSError) -> str:
    """An OSError as a short clause: "is a symlink loop", "has a name too long for the file system"."""
    if err.errno == errno.ELOOP:
        return "is a symlink loop (or too many levels of symlinks)"
    if err.errno == errno.ENAMETOOLONG:
        return "has a name too long for the file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "is not readable (permission denied)"
    if err.errno == errno.EISDIR:
        return "is a directory"
    return f"cannot be opened ({err.strerror or type(err).__name__})"


def describe(path: Union[str, Path]) -> Optional[str]:
    """Why ``path`` is not a readable regular file, or None when it is one; missing -> FileNotFoundError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except ValueError:  # embedded NUL byte
        return "has a NUL byte in its name"
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            raise FileNotFoundError(errno.ENOENT, "a folder on the path is a file", str(path)) from None
        return _reason(err)
    kind = _kind(mode)
    return f"is {kind}, not a regular file" if kind else None


def read_bytes(path: Union[str, Path], limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes.

    Raises FileNotFoundError when it is missing and :class:`UnreadableFile` for anything else. The
    type is checked before opening (a FIFO would block ``open``) and again on the opened file
    (``O_NONBLOCK``, then ``fstat``), so a swap between the two cannot slip a pipe through; at most
    ``limit + 1`` bytes are read whatever ``st_size`` claims.
    """
    problem = describe(path)
    if problem:
        raise UnreadableFile(problem)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UnreadableFile(_reason(err)) from None
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind:
            raise UnreadableFile(f"is {kind}, not a regular file")
        if info.st_size > limit:
            raise UnreadableFile(f"is {_size(info.st_size)}, more than the {_size(limit)} this reads")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise UnreadableFile(f"grew past the {_size(limit)} this reads")
        return b"".join(chunks)
    except OSError as err:
        raise UnreadableFile(_reason(err)) from None
    finally:
        os.close(fd)


def read_text(path: Union[str, Path], limit: int = PYPROJECT_LIMIT) -> str:
    """A regular file as UTF-8 text (no byte-order mark: TOML and JSON both forbid it)."""
    data = read_bytes(path, limit)
    if data.startswith(b"\xef\xbb\xbf"):
        raise UnreadableFile("starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UnreadableFile(f"is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line})") from None


class InvalidJSON(UnreadableFile):
    """A file that was read but is not JSON this package accepts; ``str(err)`` says where and why."""


def _reject_constant(name: str) -> float:
    raise InvalidJSON(f"{name} is not a JSON number (JSON numbers are finite)")


class _NotFinite(str):
    """NaN / Infinity as parsed, kept until the object holding it names its key."""


def _not_finite(value: Any) -> Optional[str]:
    """What is wrong with ``value`` (or an item of a list in it), if it is not a finite number."""
    if isinstance(value, _NotFinite):
        return f"holds {value}, which is not a JSON number (JSON numbers are finite)"
    if isinstance(value, float) and value in (math.inf, -math.inf):
        return "holds a number too large for a floating-point number (1.8e308 or more)"
    if isinstance(value, list):  # iterative: a list nested thousands deep must not recurse
        stack = list(value)
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif not isinstance(item, dict):
                why = _not_finite(item)
                if why:
                    return why
    return None


# Deeper than any real config.json; Python 3.12+ parses thousands of levels that 3.11 refuses, and
# later code (repr in messages) would recurse through them, so the limit is ours, not the parser's.
MAX_JSON_DEPTH = 100


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _checked_object(pairs: Any) -> dict:
    """object_pairs_hook: a NaN, Infinity or 1e400 is refused with the key that holds it."""
    for key, value in pairs:
        why = _not_finite(value)
        if why:
            raise InvalidJSON(f'"{key}" {why}')
    return dict(pairs)


def _has_infinity(value: Any) -> bool:
    """Whether a parsed JSON value holds a float that overflowed to infinity (1e400 parses so)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item in (math.inf, -math.inf):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_json(path: Union[str, Path], limit: int = CONFIG_JSON_LIMIT) -> Any:
    """A JSON file through :func:`read_text`. Raises FileNotFoundError, :class:`InvalidJSON`
    (syntax, NaN/Infinity, floats past 1.8e308, nesting too deep to parse) or :class:`UnreadableFile`."""
    return _loads(read_text(path, limit))


def read_json_lines(path: Union[str, Path], limit: int = CONFIG_JSON_LIMIT) -> Tuple[Any, Dict[str, int]]:
    """:func:`read_json`, and the line each key is written on ("section.key" for a nested one), for
    errors that name the file and line of a value (json_lines.key_lines)."""
    from .json_lines import key_lines  # only a reader that reports lines asks (start-up: a check reads config.json without)

    text = read_text(path, limit)
    return _loads(text), key_lines(text)


def _loads(text: str) -> Any:
    """The JSON document ``text`` with read_json's checks."""
    try:
        value = json.loads(text, parse_constant=_NotFinite, object_pairs_hook=_checked_object)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON("it is nested too deeply to parse") from None
    except ValueError as err:  # JSONDecodeError, or an integer of over 4,300 digits
        raise InvalidJSON(str(err)) from None
    if _too_deep(value):
        raise InvalidJSON("it is nested too deeply to parse")
    why = _not_finite(value)  # a top-level NaN or [1e400] has no key to name
    if why:
        raise InvalidJSON(f"a value in it {why}")
    if _has_infinity(value):
        raise InvalidJSON("a number in it is too large for a floating-point number (1.8e308 or more)")
    return value


def resolve(path: Union[str, Path]) -> Path:
    """``Path(path).resolve()`` that never raises: a loop, a NUL byte or a too-long name leaves the
    path as given (absolute), so that reading it reports the problem in words."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(path)) if "\0" not in str(path) else Path(path)


def within(path: Union[str, Path], root: Union[str, Path]) -> bool:
    """Whether ``path`` lies in the folder ``root`` once every symlink is followed: a file a pull request
    names (or links to) must not lead the reader to a file of the machine outside the checkout."""
    try:
        resolve(path).relative_to(resolve(root))
        return True
    except ValueError:
        return False


def is_dir(path: Union[str, Path]) -> bool:
    """``Path.is_dir`` without its exceptions (ENAMETOOLONG escapes it)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_file(path: Union[str, Path]) -> bool:
    """Whether ``path`` names something that exists and is not a directory (a FIFO counts: reading
    it then says what it is, rather than pretending it is missing)."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n:,} bytes"


def write_problem(path: str) -> Optional[str]:
    """Why the JSON report cannot be written to ``path`` (checked before any work), or None."""
    folder = os.path.dirname(os.path.abspath(path)) if "\0" not in path else ""
    if not folder or not is_dir(folder):
        return f"the folder {folder or path!r} does not exist; create it first"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"it cannot be written ({getattr(err, 'strerror', None) or err})"
    if stat.S_ISDIR(mode):
        return "it is a directory; give a file path such as llmmem-report.json inside it"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "it is a named pipe or a socket, not a file (writing would wait for a reader)"
    return None
