"""Golden corpus: every bad config in tests/invalid gives its exact one-paragraph message.

Each NAME.toml has NAME.expected, the message the Python API raises; the CLI prints the same
paragraph after "llmmem: error: " on stderr, no traceback, exit code 2.
"""

from pathlib import Path

import pytest

from pytest_llmmem.config.load import load
from pytest_llmmem.errors import ConfigError

CORPUS = Path(__file__).parent / "invalid"
CASES = sorted(p.stem for p in CORPUS.glob("*.toml"))


def test_corpus_is_complete():
    assert len(CASES) >= 30
    assert CASES == sorted(p.stem for p in CORPUS.glob("*.expected"))


@pytest.mark.parametrize("case", CASES)
def test_api_message(case, monkeypatch):
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent/hf-cache")  # a Hub-id message names the cache folder
    with pytest.raises(ConfigError) as info:
        load(f"{case}.toml")
    message = str(info.value)
    assert message == (CORPUS / f"{case}.expected").read_text(encoding="utf-8").rstrip("\n")
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize("case", CASES)
def test_cli_message(case, monkeypatch, run_cli):
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent/hf-cache")
    code, out, err = run_cli("check", f"{case}.toml")
    assert code == 2
    assert out == ""
    assert err == "llmmem: error: " + (CORPUS / f"{case}.expected").read_text(encoding="utf-8")
    assert "Traceback" not in err
