"""Random values of random types at every key: exit 0, 1 or 2, never a traceback, errors name the key."""

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llmmem.config.load import MODEL_KEYS, RUN_KEYS, TOP_KEYS
from tests.hostile_cases import INJECTIONS
from tests.runner_model import commands

BASE = {
    "top": {"gpu": "A100-80GB"},
    "model": {"hidden-size": 256, "num-layers": 2, "num-heads": 4, "intermediate-size": 688, "vocab-size": 1000},
    "run": {"name": "sft", "seq-len": 128},
}
SECTIONS = [("top", k) for k in TOP_KEYS if k not in ("model", "runs")] + [("model", k) for k in MODEL_KEYS] + [
    ("run", k) for k in RUN_KEYS if k != "name"
]

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalar = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.sampled_from(INJECTIONS),  # workflow commands, %0A, \r, Markdown and HTML (issue 24)
    st.sampled_from(["7B", "80 GiB", "10%", "bf16", "nf4", "lora", "qlora", "inference", "all-linear", "gpt2", "adafactor", "H100", "0", "1e30"]),
)
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.text("abcdefgh-_", min_size=1, max_size=6), inner, max_size=3),
), max_leaves=5)


def toml_value(value) -> str:
    """A tiny TOML writer for the test's values (inline arrays and tables)."""
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
        # JSON's escapes are valid TOML basic-string escapes; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"


def render(doc) -> str:
    lines = ["[tool.llmmem]"] + [f"{k} = {toml_value(v)}" for k, v in doc["top"].items()]
    lines += ["", "[tool.llmmem.model]"] + [f"{k} = {toml_value(v)}" for k, v in doc["model"].items()]
    lines += ["", "[[tool.llmmem.runs]]"] + [f"{k} = {toml_value(v)}" for k, v in doc["run"].items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(SECTIONS), _value), min_size=1, max_size=3),
       name=st.one_of(st.just("sft"), st.sampled_from(INJECTIONS)))
def test_random_values_never_crash(changes, name, tmp_path, capsys, monkeypatch):
    from pytest_llmmem.frontends.cli import main

    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)  # text output: no annotation is the tool's own either
    doc = {section: dict(values) for section, values in BASE.items()}
    doc["run"]["name"] = name
    for (section, key), value in changes:
        doc[section][key] = value
    path = tmp_path / "pyproject.toml"
    path.write_text(render(doc), encoding="utf-8")
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2)
    assert "Traceback" not in err and "internal error" not in err, err
    assert commands(out + err) == [], (name, changes)  # nothing a CI runner would obey
    if code == 2:
        assert err.startswith("llmmem: error: ") and err.count("\n") == 1, err
        touched = {key for (_, key), _ in changes} | ({"name"} if name != "sft" else set())
        assert any(k in err or k.replace("-", "_") in err for k in touched), (touched, err)
    else:
        assert "runs fit" in out
