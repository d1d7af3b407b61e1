"""Golden corpus: every bad config in tests/invalid gives its exact one-paragraph message.

Each NAME.toml has NAME.expected, the message the Python API raises; the CLI prints the same
paragraph after "llmmem: error: " on stderr, no traceback, exit code 2.
"""

from pathlib import Path

import pytest

from pytest_llmmem.config.load import load
from pytest_llmmem.errors import ConfigError

CORPUS = Path(__file__).parent / "invalid"
ROOT = Path(__file__).resolve().parents[1]
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


def test_unknown_key_names_the_three_nearest_keys_not_all(monkeypatch, run_cli):
    """Issue 23: the error listed all 81 run keys; it names the three most like the typo and where the rest are."""
    monkeypatch.chdir(CORPUS)
    code, _, err = run_cli("check", "unknown_run_key.toml")
    assert code == 2
    named = err.split("The nearest valid keys here: ")[1].split(" (all ")[0].split(", ")
    assert named == ["batch-size", "eval-batch-size", "block-size"]  # difflib's ratio to "batch-szie", best first
    assert "(all 109: docs/configuration.md)" in err and (ROOT / "docs" / "configuration.md").is_file()
