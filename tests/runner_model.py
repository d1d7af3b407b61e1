"""What a GitHub runner would take for a workflow command in a step's output, modelled from
actions/runner src/Runner.Common/ActionCommand.cs (read, not copied):

- the stream is cut into lines at "\\r", "\\n" and "\\r\\n" (.NET StreamReader.ReadLine);
- TryParseV2: the line, after ``TrimStart()`` (every .NET white-space character), starts with "::"
  and holds a second "::";
- TryParse (legacy): "##[" anywhere in the line, with a "]" after it.

The .NET comparisons are culture-aware, so the model is stricter than the runner: marks and
format characters (which a culture-aware comparison may skip) are dropped before it looks.
"""

import re
import unicodedata
from typing import List

# .NET Char.IsWhiteSpace: Zs, Zl, Zp, U+0009..U+000D, U+0085 (System.Char documentation).
_DOTNET_SPACE = re.compile("^[\t\n\x0b\x0c\r\x85\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000 ]+")

# The tool's own annotation: a level, escaped properties (no ':' or ',' inside one), a title
# naming llmmem, then the escaped message (no line break, no raw '%' left unescaped).
OWN_ANNOTATION = re.compile(r"^::(error|warning|notice) (file=[^:,\r\n]*,(line=\d+,)?)?title=llmmem[^:,\r\n]*::[^\r\n]*$")


def _skeleton(line: str) -> str:
    return "".join(c for c in line if unicodedata.category(c) not in ("Mn", "Me", "Cf"))


def lines(text: str) -> List[str]:
    """``text`` cut where the runner cuts it."""
    return re.split(r"\r\n|\r|\n", text)


def commands(text: str) -> List[str]:
    """Every line of ``text`` the runner could parse as a workflow command."""
    found = []
    for line in lines(text):
        bare = _skeleton(_DOTNET_SPACE.sub("", line))
        v2 = bare.startswith("::") and bare.find("::", 2) >= 0
        legacy = "##[" in _skeleton(line) and "]" in _skeleton(line).split("##[", 1)[1]
        if v2 or legacy:
            found.append(line)
    return found


def foreign_commands(text: str) -> List[str]:
    """The command lines that are not the tool's own, escaped annotations."""
    return [line for line in commands(text) if not OWN_ANNOTATION.match(line)]


def outputs(text: str) -> dict:
    """$GITHUB_OUTPUT as the runner reads it (GitHub docs, "Setting an output parameter" and
    "Multiline strings"): ``name=value`` lines, or ``name<<DELIMITER`` up to a line that is the delimiter."""
    found, rows, index = {}, text.split("\n"), 0
    while index < len(rows):
        row = rows[index]
        index += 1
        if not row:
            continue
        equals, heredoc = row.find("="), row.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            found[row[:equals]] = row[equals + 1:]
            continue
        name, delimiter = row[:heredoc], row[heredoc + 2:]
        end = rows.index(delimiter, index)
        found[name] = "\n".join(rows[index:end])
        index = end + 1
    return found
