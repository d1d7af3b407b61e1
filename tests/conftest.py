"""Shared helpers: write a pyproject with a [tool.llmmem] table and run the CLI in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

LLAMA2_7B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000, "tie_word_embeddings": False,
}


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch):
    """Every test sees the width a pipe or CI log gets (80 columns, text_layout.py), whatever the
    terminal the suite runs in: wrapped output must not depend on it."""
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture
def write_pyproject(tmp_path: Path):
    """Write ``tmp_path/pyproject.toml`` from dedented text; returns its path."""

    def write(text: str, name: str = "pyproject.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_cli(capsys):
    """Run ``llmmem`` in-process; returns (exit code, stdout, stderr)."""
    from pytest_llmmem.frontends.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
