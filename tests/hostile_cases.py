"""Hostile inputs by category, as hypothesis strategies, and the one check every outcome must pass.

Shared by tests/test_hostile_fuzz.py (a few hundred cases in CI) and benchmarks/fuzz.py (a seeded
sweep of thousands). A case is files to write into an empty folder plus an ``llmmem`` command
line run there in-process. Every outcome must be: exit 0, 1 or 2; exit 2 as one
"llmmem: error: " paragraph; no traceback and no "internal error"; done in under a second of CPU;
no file written (but a --json-out target); no network connection tried.
"""

import contextlib
import io
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from hypothesis import strategies as st

from pytest_llmmem.config.load import MODEL_KEYS, RUN_KEYS, TOP_KEYS
from tests.runner_model import foreign_commands

CPU_LIMIT_S = 1.0

# --- values ---------------------------------------------------------------------------------------

EDGE_NUMBERS = [
    2**63, -(2**63), 2**63 - 1, 2**64, 10**30, -(10**30), 1e308, -1e308, math.inf, -math.inf, math.nan,
    0, 0.0, -0.0, -1, -5, 1, 0.4, 0.5, 1.5, 256.0, 256.5, 1e-300, 7e9, True, False,
]
EDGE_STRINGS = [
    "", " ", "\t", "\x00", "a\x00b", "\x1b[2J", "\u202eevil", "é", "💥", "\\", '"', "'''", '"""',
    "7B", "0.4", "-7B", "1e999", "nan", "inf", "80 GiB", "eighty", "10%", "150%", "-3%", "1e308 TiB",
    "A100-80BG", "H100", "bf16", "nf4", "lora", "qlora", "inference", "all-linear", "llama", "gpt2",
    "1" + " " * 20_000 + "x", "x" * 100_000, "[" + " " * 8_000 + "x",
]
# What a CI log, a job summary or a step output would obey (issue 24): workflow commands at a line's
# start (after white space) or the legacy ##[ anywhere, line breaks raw and %-escaped, Markdown and HTML.
INJECTIONS = [
    "::error file=evil.py,line=1::pwned", "::stop-commands::tok", "  ::add-mask::secret", "\t::warning::x",
    "a\r::error::b", "a\n::notice::b", "a%0A::error::b", "%0D%0A::error::x", "x ##[error]legacy", "\u00a0::warning::x",
    "![x](https://evil.example/t.png) <img src=x>", "[click](javascript:alert(1))", "| a | b |", "`code` **b** _i_",
    "<script>alert(1)</script>", "<!-- c -->", "$$x$$", '" : 1\n```', "# h", "&lt;",
]
EDGE_STRINGS += INJECTIONS
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16)
scalars = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.sampled_from(EDGE_STRINGS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.text("abcdefgh-_", min_size=1, max_size=6), inner, max_size=3),
), max_leaves=6)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
              st.floats(allow_nan=False, allow_infinity=False), _text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=10,
)


def toml_value(value: Any) -> str:
    """A TOML literal for a value (inline arrays and tables); strings as escaped basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON escapes are valid TOML basic-string escapes (\u0000 included); TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


# --- documents ------------------------------------------------------------------------------------

SMALL_LLAMA = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 4, "intermediate_size": 688, "vocab_size": 1000}
BASE = {
    "top": {"gpu": "A100-80GB"},
    "model": {"hidden-size": 256, "num-layers": 2, "num-heads": 4, "intermediate-size": 688, "vocab-size": 1000},
    "run": {"name": "sft", "seq-len": 128},
}


def toml_key(key: Any) -> str:
    """A bare key when it is one, else a quoted key."""
    text = str(key)
    return text if text and all(c.isascii() and (c.isalnum() or c in "-_") for c in text) else toml_value(text)


def render(doc: Dict[str, Dict[str, Any]], runs: int = 1, inline: bool = False) -> str:
    """A pyproject from BASE-shaped sections; ``runs`` copies of the run (names r1, r2, ... after the first)."""
    lines = ["[tool.llmmem]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc["top"].items()]
    run_docs = [dict(doc["run"], **({"name": f"r{i}"} if i else {})) for i in range(runs)]
    if inline:  # runs = [...] belongs to [tool.llmmem], before any sub-table
        lines += ["runs = ["] + [f"  {toml_value(r)}," for r in run_docs] + ["]"]
    if "model" in doc:
        lines += ["", "[tool.llmmem.model]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc["model"].items()]
    if not inline:
        for run in run_docs:
            lines += ["[[tool.llmmem.runs]]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in run.items()]
    return "\n".join(lines) + "\n"


class Case(NamedTuple):
    """Files to write (name -> bytes, or a special: "fifo", "dir", "loop", "sparse:N") and a command."""

    category: str
    files: Dict[str, Union[bytes, str]]
    argv: Tuple[str, ...]
    cpu_limit_s: float = CPU_LIMIT_S


SECTIONS = [("top", k) for k in TOP_KEYS if k not in ("model", "runs")] + [("model", k) for k in MODEL_KEYS] + [
    ("run", k) for k in RUN_KEYS if k != "name"
]
FRONT_ENDS = [("check", "pyproject.toml"), ("check", "--hook", "pyproject.toml"), ("check", "--format", "json"),
              ("fit", "pyproject.toml"), ("check", "--hook", "config.json")]


@st.composite
def key_cases(draw) -> Case:
    """Every key with every wrong type: 1 to 3 keys of BASE replaced (or added) with hostile values."""
    doc = {section: dict(values_) for section, values_ in BASE.items()}
    for (section, key), value in draw(st.lists(st.tuples(st.sampled_from(SECTIONS), values), min_size=1, max_size=3)):
        doc[section][key] = value
    if draw(st.booleans()):  # keys themselves: odd names, control characters, NUL
        doc[draw(st.sampled_from(["top", "model", "run"]))][draw(st.sampled_from(EDGE_STRINGS[:12] + ["hiden-size", "GPU", "x" * 1000]))] = 1
    files = {"pyproject.toml": render(doc).encode(), "config.json": json.dumps(SMALL_LLAMA).encode()}
    return Case("keys", files, draw(st.sampled_from(FRONT_ENDS)))


_TOML_DAMAGE = [
    "bom", "latin1", "nul", "truncate", "garbage", "duplicate-table", "redos-string", "deep-array", "crlf",
    "header-in-string", "unclosed-string", "huge-string", "over-cap", "control", "empty", "only-table",
]


@st.composite
def toml_cases(draw) -> Case:
    """TOML shapes: syntax errors, encodings, strings that look like headers, nesting, sizes."""
    text = render(BASE, runs=draw(st.integers(1, 3)), inline=draw(st.booleans()))
    damage = draw(st.sampled_from(_TOML_DAMAGE))
    at = draw(st.integers(0, len(text)))
    data: bytes
    if damage == "bom":
        data = b"\xef\xbb\xbf" + text.encode()
    elif damage == "latin1":
        data = text[:at].encode() + b"\xe9\xff" + text[at:].encode()
    elif damage == "nul":
        data = (text[:at] + "\x00" + text[at:]).encode()
    elif damage == "truncate":
        data = text[:at].encode()
    elif damage == "garbage":
        data = (text[:at] + draw(st.sampled_from(["=", "[", "]]", "[[", "{", '"', "'''", "\n= 1\n", "x = \n", "[tool.llmmem]\n"])) + text[at:]).encode()
    elif damage == "duplicate-table":
        data = (text + "\n[tool.llmmem.model]\nparams = \"7B\"\n").encode()
    elif damage == "redos-string":
        data = ('[tool.other]\ndoc = """\n[' + " " * draw(st.sampled_from([100, 8_000, 100_000])) + 'x\n"""\n\n' + text).encode()
    elif damage == "deep-array":
        depth = draw(st.sampled_from([10, 500, 5_000, 50_000]))
        data = (text + "\n[tool.other]\nx = " + "[" * depth + "]" * depth + "\n").encode()
    elif damage == "crlf":
        data = text.replace("\n", "\r\n").encode()
    elif damage == "header-in-string":
        data = text.replace('name = "sft"', 'name = "sft"\nnote = """\n[[tool.llmmem.runs]]\nname = "ghost"\n"""', 1).encode()
    elif damage == "unclosed-string":
        data = (text[:at] + '"""' + text[at:]).encode()
    elif damage == "huge-string":
        data = (text + '\n[tool.other]\nx = "' + "a" * draw(st.sampled_from([1_000, 400_000])) + '"\n').encode()
    elif damage == "over-cap":
        data = (text + '\n[tool.other]\nx = "' + "a" * 1_100_000 + '"\n').encode()  # a megabyte string
    elif damage == "control":
        data = (text[:at] + draw(st.sampled_from(["\x01", "\x1b", "\x7f", "\u2028", "\x0c"])) + text[at:]).encode()
    elif damage == "empty":
        data = b""
    else:
        data = b"[tool.llmmem]\n"
    return Case("toml", {"pyproject.toml": data}, draw(st.sampled_from(FRONT_ENDS[:4])))


@st.composite
def run_cases(draw) -> Case:
    """Run lists: none, duplicates, odd names, many (up to 10,000), inline or as tables."""
    count = draw(st.sampled_from([0, 1, 2, 50, 1_000, 10_000]))
    inline = draw(st.booleans())
    doc = {section: dict(values_) for section, values_ in BASE.items()}
    doc["run"]["name"] = draw(st.sampled_from(["sft", "", " ", "a|b", "x" * 300, "\x1b[31mred", "é", "a\nb"] + INJECTIONS))
    text = render(doc, runs=max(count, 1), inline=inline)
    if count == 0:
        text = render(doc, runs=1, inline=True).replace(f"  {toml_value(doc['run'])},\n", "")  # runs = []
    if draw(st.booleans()) and count >= 2:  # a duplicate name
        text += "\n[[tool.llmmem.runs]]\nname = \"r1\"\n" if not inline else ""
    front = draw(st.sampled_from([("check", "pyproject.toml"), ("check", "--hook", "pyproject.toml")]))
    # `llmmem check` of 10,000 runs used 8.4 s of CPU on a loaded 2-core machine (0.2 ms a run to read,
    # 0.6 ms to estimate and print; at commit 2b231cc), so the one-second bound is for a normal project
    # and grows by 1 ms a run. The speed target itself is benchmarks/parse_scale.py's.
    limit = CPU_LIMIT_S + 0.001 * count
    return Case("runs", {"pyproject.toml": text.encode(), "config.json": json.dumps(SMALL_LLAMA).encode()}, front, limit)


_CONFIG_FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                  "vocab_size", "model_type", "tie_word_embeddings", "num_labels", "head_dim", "num_local_experts",
                  "max_position_embeddings", "hidden_act", "attention_dropout"]
_JSON_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "1e200", "-1", "0", "256.5", "10" * 200, '"two"', "null",
                  "true", "[]", "{}", '"false"', "1" * 5000, "1000000000000", "3"]


@st.composite
def json_cases(draw) -> Case:
    """config.json files: wrong top-level types, garbage, edge numbers in each field, encodings, nesting."""
    kind = draw(st.sampled_from(["field", "field", "field", "toplevel", "garbage", "nested", "encoding", "heads"]))
    if kind == "field":
        body = json.dumps(SMALL_LLAMA)
        field, literal = draw(st.sampled_from(_CONFIG_FIELDS)), draw(st.sampled_from(_JSON_LITERALS))
        data = body.replace("{", "{" + json.dumps(field) + ": " + literal + ", ", 1).encode()
        if field in SMALL_LLAMA:  # replace rather than add: the first spelling of a key wins in json
            data = json.dumps({k: v for k, v in SMALL_LLAMA.items() if k != field}).replace("{", "{" + json.dumps(field) + ": " + literal + ", ", 1).encode()
    elif kind == "toplevel":
        data = draw(st.sampled_from([b"[]", b"null", b"1", b'"config"', b"true", b"", b" ", b"[" * 5000 + b"]" * 5000]))
    elif kind == "garbage":
        data = json.dumps(draw(json_values)).encode()
    elif kind == "nested":
        depth = draw(st.sampled_from([10, 900, 5_000, 100_000]))
        data = json.dumps(SMALL_LLAMA).replace("}", ', "x": ' + "[" * depth + "]" * depth + "}").encode()
    elif kind == "encoding":
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xe9"])) + json.dumps(SMALL_LLAMA).encode()
    else:  # shapes that do not divide, or sizes at the edges
        cfg = dict(SMALL_LLAMA, hidden_size=draw(st.sampled_from([250, 257, 1, 10**7])),
                   num_attention_heads=draw(st.sampled_from([3, 0, 7, 10**6])), num_key_value_heads=draw(st.sampled_from([2, 3, 5])),
                   vocab_size=draw(st.sampled_from([10**12, 1, 32000])), num_hidden_layers=draw(st.sampled_from([-2, 0, 1, 10**5])))
        data = json.dumps(cfg).encode()
    pyproject = render(dict(BASE, model={"config": "config.json"}))
    front = draw(st.sampled_from([("check", "pyproject.toml"), ("check", "--hook", "config.json"), ("fit", "pyproject.toml")]))
    return Case("json", {"pyproject.toml": pyproject.encode(), "config.json": data}, front)


_PATHS = ["/dev/zero", "/dev/null", "/dev/stdin", "/proc/self/mem", "fifo.json", "dir", "loop.json", "big.json", "@ABS@/config.json", "@ABS@/dir",
          "../../../../../../../../etc/hostname", "../outside/config.json", "a" * 5000 + ".json", "a\x00b.json", "",
          " ", "missing.json", "config.json/", ".", "..", "~/config.json", "C:\\model\\config.json", "nested/link.json"]


@st.composite
def path_cases(draw) -> Case:
    """Model config paths that are devices, pipes, folders, loops, huge, absolute or outside the repository."""
    path = draw(st.sampled_from(_PATHS))
    files: Dict[str, Union[bytes, str]] = {"config.json": json.dumps(SMALL_LLAMA).encode(), "fifo.json": "fifo",
                                           "dir/config.json": "dir", "loop.json": "loop", "big.json": "sparse:209715200",
                                           "nested/link.json": "loop"}
    doc = dict(BASE, model={"config": path})
    files["pyproject.toml"] = render(doc).encode()
    hook_path = path if path and "\x00" not in path and "@ABS@" not in path else "config.json"
    front = draw(st.sampled_from([("check", "pyproject.toml"), ("check", "--hook", hook_path), ("check", "--hook", "loop.json", "fifo.json", "big.json")]))
    return Case("paths", files, front)


_FLAG_VALUES = ["7B", "0.4", "-1", "0", "1e308", "1e999", "nan", "inf", str(10**12), str(2**63), "banana", "", "x" * 100_000,
                "80 GiB", "10%", "A100-80BG", "H100-80GB", "bf16", "lora", "\x1b[2J"]
_FLAGS = ["params", "config", "family", "hidden-size", "num-layers", "num-heads", "num-kv-heads", "intermediate-size",
          "vocab-size", "mode", "dtype", "precision", "optimizer", "batch-size", "seq-len", "lora-rank", "gpus", "gpu",
          "gpu-memory", "headroom", "method", "overhead", "zero-stage", "fsdp", "tensor-parallel", "offload", "host-memory"]


def _report(fits: Any, total: Any, name: Any = "sft") -> Dict[str, Any]:
    return {"version": 1, "file": "pyproject.toml", "runs": [{"name": name, "fits": fits, "total_bytes": total, "budget_bytes": 80 * 2**30}]}


@st.composite
def front_end_cases(draw) -> Case:
    """estimate with hostile flags, diff on hostile reports, fit at the edges, the hook on thousands of paths."""
    kind = draw(st.sampled_from(["estimate", "estimate", "diff", "fit", "hook-many"]))
    files: Dict[str, Union[bytes, str]] = {"config.json": json.dumps(SMALL_LLAMA).encode()}
    if kind == "estimate":
        argv: List[str] = ["estimate"]
        base = draw(st.sampled_from([["--params", "7B"], ["--config", "config.json"], []]))
        argv += base
        for flag, value in draw(st.lists(st.tuples(st.sampled_from(_FLAGS), st.sampled_from(_FLAG_VALUES)), max_size=3)):
            argv += [f"--{flag}", value]
        return Case("front-ends", files, tuple(argv))
    if kind == "diff":
        shapes = [_report(True, 10), _report(False, 10**30), _report("yes", "big"), _report(None, None), {"version": 1},
                  {"version": 1, "projects": [_report(True, 1)]}, {"version": 1, "projects": "x"}, [], None, {"version": 2},
                  _report(True, math.inf), _report(True, -5), _report(True, 1, name=["x"])]
        for name in ("base.json", "head.json"):
            shape = draw(st.one_of(st.sampled_from(shapes), json_values))
            files[name] = json.dumps(shape, allow_nan=True).encode()
        if draw(st.booleans()):
            files["head.json"] = draw(st.sampled_from(["fifo", "dir", "loop", "sparse:209715200"]))
        return Case("front-ends", files, ("diff", "base.json", "head.json"))
    if kind == "fit":
        doc = {section: dict(values_) for section, values_ in BASE.items()}
        doc["run"]["seq-len"] = draw(st.sampled_from([1, 128, 10**6, 10**8, 10**12]))
        doc["run"]["batch-size"] = draw(st.sampled_from([1, 10**6, 10**12]))
        doc["top"]["gpu"] = draw(st.sampled_from(["A100-80GB", "T4"]))
        files["pyproject.toml"] = render(doc).encode()
        return Case("front-ends", files, ("fit", "pyproject.toml"))
    files["pyproject.toml"] = render(dict(BASE, model={"config": "config.json"})).encode()
    count = draw(st.sampled_from([10, 1_000, 5_000]))
    names = [f"m{i}/config.json" if i % 2 else f"p{i}/pyproject.toml" for i in range(count)]
    return Case("front-ends", files, ("check", "--hook", "config.json", *names))


CATEGORIES = {"keys": key_cases(), "toml": toml_cases(), "runs": run_cases(), "json": json_cases(),
              "paths": path_cases(), "front-ends": front_end_cases()}


# --- running and judging --------------------------------------------------------------------------


class Outcome(NamedTuple):
    code: int
    out: str
    err: str
    cpu_s: float
    problems: Tuple[str, ...]


def write_files(folder: Path, files: Dict[str, Union[bytes, str]]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "fifo":
            os.mkfifo(path)
        elif content == "dir":
            path.mkdir(parents=True, exist_ok=True)
        elif content == "loop":
            os.symlink(path.name, path)
        elif isinstance(content, str) and content.startswith("sparse:"):
            with open(path, "wb") as handle:
                handle.truncate(int(content.split(":")[1]))
        else:  # "@ABS@" stands for the folder's absolute path (absolute config paths)
            path.write_bytes(content.replace(b"@ABS@", str(folder).encode()))  # type: ignore[union-attr]


def _snapshot(folder: Path) -> List[Tuple[str, int]]:
    found = []
    for root, dirs, names in os.walk(folder):
        for name in names + dirs:
            full = os.path.join(root, name)
            found.append((os.path.relpath(full, folder), os.lstat(full).st_size if name in names else -1))
    return sorted(found)


@contextlib.contextmanager
def _no_network(attempts: List[str]):
    """Any connection attempt is recorded and refused."""
    original_connect, original_create = socket.socket.connect, socket.create_connection

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[1:] if args else kwargs)[:80])
        raise OSError("network disabled by the hostile-input harness")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect = original_connect  # type: ignore[method-assign]
        socket.create_connection = original_create  # type: ignore[assignment]


def run_case(case: Case, folder: Path, cpu_factor: float = 1.0) -> Outcome:
    """Write the case's files into the empty ``folder``, run ``llmmem`` there in-process, judge it
    (``cpu_factor`` widens the time bound on a loaded CI machine)."""
    from pytest_llmmem.frontends.cli import main

    write_files(folder, case.files)
    before = _snapshot(folder)
    out, err, attempts = io.StringIO(), io.StringIO(), []  # type: ignore[var-annotated]
    cwd = os.getcwd()
    os.chdir(folder)
    start = time.process_time()
    try:
        with _no_network(attempts), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(case.argv))
            except SystemExit as exit_:  # argparse usage errors
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        cpu = time.process_time() - start
        os.chdir(cwd)
    return judge(case._replace(cpu_limit_s=case.cpu_limit_s * cpu_factor), code, out.getvalue(), err.getvalue(), cpu,
                 before, _snapshot(folder), attempts)


def judge(case: Case, code: int, out: str, err: str, cpu: float, before: list, after: list, attempts: List[str]) -> Outcome:
    problems = []
    if code not in (0, 1, 2):
        problems.append(f"exit code {code}")
    if "Traceback" in out + err or "INTERNALERROR" in out + err:
        problems.append("a traceback")
    if "internal error" in err:
        problems.append("internal error: " + err.strip()[:300])
    errors = [line for line in err.splitlines() if not line.startswith("llmmem: warning: ")]
    if code == 2 and not (len(errors) == 1 and errors[0].startswith(("llmmem: error: ", "usage: llmmem")) or err.startswith("usage: ")):
        problems.append("exit 2 without one error paragraph: " + err[:300])
    if code in (0, 1) and errors:
        problems.append(f"exit {code} with an error: " + err[:300])
    if cpu > case.cpu_limit_s:
        problems.append(f"took {cpu:.2f} s of CPU")
    if after != before:
        problems.append(f"files changed: {sorted(set(after) ^ set(before))[:3]}")
    if attempts:
        problems.append(f"network: {attempts[:2]}")
    forged = foreign_commands(out + err)
    if forged:
        problems.append(f"a workflow command in the output: {forged[0][:200]!r}")
    return Outcome(code, out, err, cpu, tuple(problems))


def outcome_kind(outcome: Outcome) -> str:
    """A short label for tallies: "exit 0", "exit 2: cannot be read", ..."""
    if outcome.problems:
        return "PROBLEM"
    if outcome.code != 2:
        return f"exit {outcome.code}"
    message = outcome.err
    for label in ("cannot be read", "is not valid JSON", "is not valid TOML", "does not exist", "unknown", "expected",
                  "out of range", "is used twice", "usage:"):
        if label in message:
            return f"exit 2: {label}"
    return "exit 2: other"


def describe_case(case: Case) -> str:
    """One line naming a case (file sizes, not contents)."""
    files = ", ".join(f"{k}={v if isinstance(v, str) else f'{len(v):,} B'}" for k, v in list(case.files.items())[:4])
    argv = " ".join(a if len(a) < 40 else a[:37] + "..." for a in case.argv[:6]) + (" ..." if len(case.argv) > 6 else "")
    return f"[{case.category}] llmmem {argv} ({files})"

