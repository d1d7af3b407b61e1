"""Output a person reads fits 80 columns (issue 23 part 5), wider when COLUMNS says so, and loses nothing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmmem.report.layout import fit_text, unfit, wrap

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples"
BAR = re.compile(r"  [\u2588-\u258f\u00b7#.]+ +(-?\d+\.\d %)$")  # a breakdown bar: its cell count follows the width

VLLM = """
[tool.llmmem]
gpu = "H100-80GB"
model = "meta-llama/Llama-3.1-8B"

[[tool.llmmem.runs]]
name = "tp2"
mode = "inference"
engine = "vllm"
gpus = 2
tensor-parallel = 2
max-model-len = 8192

[[tool.llmmem.runs]]
name = "refused"
mode = "inference"
engine = "vllm"
gpu = "RTX-3090"
max-model-len = 131072
"""


def too_wide(text: str, width: int = 80):
    """Lines wider than ``width`` as mawk's length() counts them (UTF-8 bytes; Debian's awk), or as
    characters, whichever is more; a line holding a word that fits no line (a URL, a temporary
    folder's path) cannot be wrapped without cutting the word."""
    return [line for line in text.splitlines()
            if max(len(line), len(line.encode())) > width and max(map(len, line.split())) <= width - 8]


def llmmem(*args: str, columns: int = 80):
    env = {**os.environ, "COLUMNS": str(columns)}
    done = subprocess.run([sys.executable, "-m", "pytest_llmmem.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    return done.returncode, done.stdout


def test_the_example_report_fits_80_columns_as_awk_counts_them():
    # the acceptance command: COLUMNS=80 llmmem check examples | awk 'length > 80' | wc -l prints 0
    # (before: 26 of 46 lines; bar rows 82 characters and 106-118 bytes, the run header 137)
    code, out = llmmem("check", "examples")
    assert code == 1 and "full-sft (line 30): OVER" in out
    assert too_wide(out) == []


@pytest.mark.parametrize("args", [
    ("check", "examples"), ("check", "--hook", "examples/pyproject.toml"), ("fit", "examples"), ("catalog",),
    ("estimate", "--model", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--gpu", "A10G"), ("measure", "--help"),
    ("estimate", "--help"), ("--help",),
])
def test_every_command_fits_and_wrapping_loses_nothing(args):
    code, narrow = llmmem(*args)
    assert too_wide(narrow) == [], args
    _, wide = llmmem(*args, columns=100000)
    if "--help" not in args:  # argparse wraps its help itself
        assert [BAR.sub(r"  \1", line) for line in unfit(narrow).splitlines()] == [BAR.sub(r"  \1", line) for line in wide.splitlines()]


def test_serving_report_fits(tmp_path):
    (tmp_path / "pyproject.toml").write_text(VLLM, encoding="utf-8")
    _, out = llmmem("check", str(tmp_path))
    assert "vllm refuses to start" in unfit(out) and too_wide(out) == []


def test_diff_fits(tmp_path):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(llmmem("check", "examples", "--format", "json")[1], encoding="utf-8")
    bigger = tmp_path / "p"
    bigger.mkdir()
    (bigger / "llama2-7b").mkdir()
    (bigger / "llama2-7b" / "config.json").write_text((EXAMPLE / "llama2-7b" / "config.json").read_text())
    (bigger / "pyproject.toml").write_text((EXAMPLE / "pyproject.toml").read_text().replace("batch-size = 4", "batch-size = 16"))
    after.write_text(llmmem("check", str(bigger), "--format", "json")[1], encoding="utf-8")
    code, out = llmmem("diff", str(before), str(after))
    assert "lora-sft: 20.4 -> 40.1 GiB" in out and too_wide(out) == []  # batch 4 -> 16 at the backward's loss instant


def test_a_wider_terminal_gets_wider_lines():
    _, out = llmmem("check", "examples", columns=130)
    assert "  lora | bf16 | adamw | r=16 on all-linear | batch 4 x seq 2048 | checkpointing | 6.74B params |" in out.splitlines()
    assert too_wide(out, 130) == [] and too_wide(out, 80) != []
    bar = next(line for line in out.splitlines() if line.startswith("  weights "))
    assert len(bar.encode()) <= 130 and len(bar) > 80 - 20  # the bar grew with the width


def test_pytest_failure_text_fits(pytester):
    pytester.makepyprojecttoml((EXAMPLE / "pyproject.toml").read_text())
    pytester.mkdir("llama2-7b")
    (pytester.path / "llama2-7b" / "config.json").write_text((EXAMPLE / "llama2-7b" / "config.json").read_text())
    result = pytester.runpytest("--llmmem-only")
    text = result.stdout.str()
    assert "declared at pyproject.toml:30" in text
    failure = text[text.index("= FAILURES ="):text.index("= llmmem =")]
    assert too_wide(failure) == []


def test_wrap_breaks_at_the_coarsest_separator_first():
    # by hand: the " | " parts first, each mark kept at its line's end; at 13 columns the last part fits
    # its own line ("  ccc, dddddd" is 13); at 12 it does not, and is wrapped at its ", "
    assert wrap("aaaa | bbbb | ccc, dddddd", 13, "", "  ") == ["aaaa | bbbb |", "  ccc, dddddd"]
    assert wrap("aaaa | bbbb | ccc, dddddd", 12, "", "  ") == ["aaaa |", "  bbbb |", "  ccc,", "  dddddd"]
    assert wrap("short", 12) == ["short"]
    # one word wider than the line stays whole, on the line it was on
    assert wrap("from https://example.org/a/very/long/url", 20, "  ", "      ") == ["  from https://example.org/a/very/long/url"]
    text = "x: " + ", ".join(f"term{i} {i}.00 GiB" for i in range(12))
    assert unfit(fit_text(text, 40)) == text
