"""Text a pull request controls, made inert for each surface that parses what llmmem writes.

Run names, paths, trainer-config values, model ids and report fields come from files a pull
request can change. On a GitHub runner every line of a step's stdout and stderr is parsed for
workflow commands (actions/runner src/Runner.Common/ActionCommand.cs): ``::name props::data`` once
leading whitespace is trimmed (TryParseV2, after ``TrimStart()``), and the legacy ``##[name]data``
anywhere in a line (TryParse, ``IndexOf("##[")``). The job summary is GitHub-flavoured Markdown with
HTML, maths and mermaid; ``$GITHUB_OUTPUT`` is ``name=value`` lines. One function per surface below;
the tool's own ``::error`` annotations are built apart from them (github.py).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import re

# Categories a culture-aware .NET string comparison may skip or TrimStart may trim before "::":
# marks, format and control characters, separators (Python's str.isprintable() is False for all but Mn, Me).
_SKIPPED = ("Mn", "Me", "Cf", "Cc", "Zs", "Zl", "Zp")


def visible(text: str) -> str:
    """``text`` with each non-printable character (control, format, separator: a newline, ``\\r``,
    an escape sequence, a zero-width or right-to-left mark, a no-break space) written as repr() writes it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _leads_with_colon(line: str) -> bool:
    """Whether the first character that is not a space or a mark is ':' (a runner could read '::')."""
    for char in line:
        if char == " ":
            continue
        if char == ":":
            return True
        if char.isascii():
            return False
        import unicodedata  # only for a line that opens with a non-ASCII character

        if unicodedata.category(char) not in _SKIPPED:
            return False
    return False


def log_line(line: str) -> str:
    """One line of output that no runner takes for a workflow command: non-printable characters
    escaped (a ``\\r`` would end the line there), ``##[`` written ``##\\[``, and a backslash before
    a line whose first visible character is ':' (after its indentation). Plain text is unchanged."""
    line = visible(line)
    if "##[" in line:
        line = line.replace("##[", "##\\[")
    if not line.isascii() and "#" in line and "[" in line:
        line = _defuse_marked_legacy(line)
    if _leads_with_colon(line):
        indent = len(line) - len(line.lstrip(" "))
        line = line[:indent] + "\\" + line[indent:]
    return line


def _defuse_marked_legacy(line: str) -> str:
    """``##[`` with combining marks between its characters (``#\\u0300#[``): a culture-aware ``IndexOf``
    may skip the marks, so each ``[`` whose two preceding non-mark characters are ``#`` gets a backslash."""
    import unicodedata  # only for a non-ASCII line that holds both '#' and '['

    out = []
    for index, char in enumerate(line):
        if char == "[":
            hashes, back = 0, index - 1
            while back >= 0 and hashes < 2:
                if line[back] == "#":
                    hashes += 1
                elif unicodedata.category(line[back]) not in ("Mn", "Me"):
                    break
                back -= 1
            if hashes == 2:
                out.append("\\")
        out.append(char)
    return "".join(out)


def log_text(text: str) -> str:
    """Text for stdout or stderr (llmmem's own line breaks kept): :func:`log_line` on each line."""
    return "\n".join(log_line(line) for line in text.split("\n"))


def json_text(text: str) -> str:
    """A ``json.dumps`` document (ASCII, so no control or exotic space survives) that a log may show:
    ``##[`` inside a string is written ``##\\u005b``, the same string to any JSON reader; outside
    strings JSON has no ``#``, and an indented document has no line that starts with ':'."""
    return text.replace("##[", "##\\u005b")


# ASCII punctuation that means something to GitHub's Markdown inside a line (CommonMark escapes, GFM
# tables, strikethrough, emoji shortcodes and autolinks after ':', maths between '$', a heading's closing
# '#'); each is backslash-escaped. '+', '-', '.' and '=' mean something only where a line starts, and
# untrusted text never starts a Markdown line here.
_MARKDOWN = r"([\\`*_{}\[\]()#!|~:$])"  # compiled on first use (re's cache): start-up
_ENTITIES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))  # HTML: no tag, comment or entity of the user's


def markdown_text(text: str) -> str:
    """``text`` shown as itself in Markdown: in a table cell, a heading, a quote or a paragraph.
    A line break becomes its escape, so it ends no row; ``![x](url)``, ``<img>`` and ``$$`` stay text."""
    text = visible(text)
    for raw, entity in _ENTITIES:
        text = text.replace(raw, entity)
    return re.sub(_MARKDOWN, r"\\\1", text)


_PLAIN = r"[A-Za-z0-9 ._/=+,@%-]*"


def markdown_code(text: str) -> str:
    """``text`` as a code span when it is plain (letters, digits, ``._/=+,@%-``), else as escaped text:
    a backtick would close the span, and escapes do not work inside one."""
    return f"`{text}`" if re.fullmatch(_PLAIN, text) else markdown_text(text)


_MERMAID = r"[^A-Za-z0-9 .,+%/()-]"


def mermaid_label(text: str) -> str:
    """A label inside a quoted mermaid pie slice: anything but letters, digits, spaces and ``.,+%/()-``
    becomes '_' (a quote, a newline or a '#' entity could end the label or the block)."""
    return re.sub(_MERMAID, "_", text)


def output_entry(name: str, value: str) -> str:
    """One ``$GITHUB_OUTPUT`` entry. A value holding a line break uses the multi-line form with a random
    delimiter, as @actions/core's file-command.ts prepareKeyValueMessage does, so it cannot start an output of its own."""
    if "\n" not in value and "\r" not in value:
        return f"{name}={value}\n"
    import uuid

    delimiter = f"ghadelimiter_{uuid.uuid4()}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"
