"""A pull request cannot write workflow commands into the CI log (issue 24, part 1).

Every surface a runner parses (stdout and stderr of ``llmmem check`` in text, ``--format github``,
``--hook`` and json, ``llmmem diff``, pytest's terminal summary and failure text under Actions) is
fed names and values that would inject, and the exact escaped output is asserted. tests/runner_model.py
says which lines a runner would take for a command; the only ones allowed are the tool's own annotations.

Figures: 7B params known by count only (tests/test_github.py): train bf16 mixed AdamW is 7e9 x 18 B
at the optimizer step (fp32 gradients on the masters) + 800 MiB = 118.13 GiB of the 80 GiB A100-80GB (147.7 %); inference 7e9 x 2 B + 800 MiB = 13.82 GiB (17.3 %).
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmmem.report.layout import unfit
from pytest_llmmem.untrusted import json_text, log_line, log_text
from tests.hostile_cases import INJECTIONS
from tests.runner_model import commands, foreign_commands

FORGED = "::error file=evil.py,line=1::pwned"
STOP = "  ::stop-commands::tok ##[add-mask]x"
PROJECT = f"""\
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
params = "7B"

[[tool.llmmem.runs]]
name = "{FORGED}"
dtype = "bf16"

[[tool.llmmem.runs]]
name = "{STOP}"
mode = "inference"
"""
PARTIAL = "the model is given by params only: activations, logits and KV cache are not counted"


@pytest.mark.parametrize("raw, safe", [
    (FORGED + " (line 7): OVER", "\\" + FORGED + " (line 7): OVER"),  # a run's header line
    ("    ::stop-commands::tok", "    \\::stop-commands::tok"),  # TrimStart(): indentation does not hide it
    ("\t::add-mask::secret", "\\t::add-mask::secret"),
    ("\u00a0::warning::x", "\\xa0::warning::x"),  # a no-break space is .NET white space too
    ("\u0301::warning::x", "\\\u0301::warning::x"),  # a mark a culture-aware comparison may skip
    ("sft ##[error]legacy", "sft ##\\[error]legacy"),  # the legacy form is found anywhere in a line
    ("a\r::error::b", "a\\r::error::b"),  # the runner cuts lines at \r as well
    ("##\u0300[]", "##\u0300\\[]"),  # marks a culture-aware IndexOf may skip (hypothesis found it)
    ("#\u20dd#[x]", "#\u20dd#\\[x]"),  # an enclosing mark between the two '#'
])
def test_a_line_that_would_be_a_command_is_neutralised(raw, safe):
    assert commands(raw), "the model must see the raw line as a command, or this row proves nothing"
    assert log_line(raw) == safe
    assert commands(safe) == []


def test_one_leading_colon_is_escaped_too():
    """Conservative: a line opening with ':' is one ':' away from a command, whatever sits between."""
    assert log_line(":x") == "\\:x" and log_line("  \u034f:x") == "  \\\u034f:x"


@settings(deadline=None)  # string code: an example past 200 ms on a loaded runner is noise, not a finding
@given(st.one_of(st.text(), st.lists(st.sampled_from(INJECTIONS + [" ", "\n", ":", "#", "[", "\u034f", "\u3000"])).map("".join)))
def test_no_text_survives_as_a_command(text):
    assert commands(log_text(text)) == []


@pytest.mark.parametrize("plain", [
    "sft (line 5): FITS: 61.20 GiB of 76.00 GiB budget (80.5 %)", "  weights    13.04 GiB  \u2588\u2588\u00b7\u00b7  12.3 %",
    "a%0A::error::b", "# heading [link](x)", "",
])
def test_plain_text_is_unchanged(plain):
    assert log_line(plain) == plain and log_text(plain + "\n" + plain) == plain + "\n" + plain


def test_json_keeps_the_string_and_loses_the_legacy_command():
    text = json_text(json.dumps({"name": "a ##[error]b"}))
    assert text == '{"name": "a ##\\u005berror]b"}' and json.loads(text) == {"name": "a ##[error]b"}
    assert commands(text) == []


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    (tmp_path / "pyproject.toml").write_text(PROJECT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_text_report(hostile, run_cli):
    code, out, err = run_cli("check")
    lines = unfit(out).splitlines()  # each line whole, as before the 80-column wrap (report/layout.py)
    assert code == 1 and err == ""
    assert lines[2] == f"\\{FORGED} (line 7): OVER (partial): 118.13 GiB of 80.00 GiB budget (147.7 %), 38.13 GiB over"
    assert "  \\::stop-commands::tok ##\\[add-mask]x (line 11): FITS (partial): 13.82 GiB of 80.00 GiB budget (17.3 %)" in lines
    assert lines[-1] == f"1 of 2 runs fit; over budget: {FORGED}."
    assert commands(out) == []


def test_github_format_prints_only_its_own_escaped_annotations(hostile, run_cli, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(hostile))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(hostile / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(hostile / "output.txt"))
    monkeypatch.setenv("RUNNER_TEMP", str(hostile))
    code, out, err = run_cli("check")
    assert code == 1
    assert commands(out + err) == [
        "::error file=pyproject.toml,line=7,title=llmmem%3A %3A%3Aerror file=evil.py%2Cline=1%3A%3Apwned::"
        f"{FORGED} needs 118.13 GiB per GPU, over its 80.00 GiB budget (147.7 %25); biggest term: optimizer states "
        f"52.15 GiB. The estimate is partial: {PARTIAL}.",
        "::warning file=pyproject.toml,line=11,title=llmmem%3A   %3A%3Astop-commands%3A%3Atok ##[add-mask]x::"
        f"{STOP} fits (13.82 GiB of 80.00 GiB, 17.3 %25), but the estimate is partial: {PARTIAL}.",
    ]


def test_pre_commit_output(hostile, run_cli):
    code, out, _ = run_cli("check", "--hook", "pyproject.toml")
    lines = unfit(out).splitlines()
    assert code == 1
    assert lines[1] == f"  \\{FORGED}      118.13 / 80.00 GiB  147.7 %  OVER (partial)"
    assert lines[2] == "    \\::stop-commands::tok ##\\[add-mask]x     13.82 / 80.00 GiB   17.3 %  ok (partial)"
    assert lines[3] == f"    \\::stop-commands::tok ##\\[add-mask]x: partial: {PARTIAL}"
    assert commands(out) == []


def test_json_format_on_stdout(hostile, run_cli):
    code, out, _ = run_cli("check", "--format", "json")
    assert code == 1 and commands(out) == []
    assert [run["name"] for run in json.loads(out)["runs"]] == [FORGED, STOP]  # the names, unchanged


def test_stderr_error_quoting_a_value(hostile, run_cli):
    code, _, err = run_cli("check", "--run", "x\n::error::y")
    assert code == 2
    assert err == (f'llmmem: error: pyproject.toml: no run named "x\\n::error::y". Runs: "{FORGED}", '
                   '"  ::stop-commands::tok ##\\[add-mask]x".\n')
    assert commands(err) == []


def test_a_file_name_with_a_line_break_stays_on_its_line(tmp_path, run_cli, monkeypatch):
    """from = "a\\n::error...yml": the name reaches "settings from:"; its newline is shown, not obeyed."""
    pytest.importorskip("yaml")
    name = "a\n::error file=x::pwned.yml"
    try:
        (tmp_path / name).write_text("base_model: meta-llama/Llama-3.1-8B\nmicro_batch_size: 2\nsequence_len: 512\n")
    except OSError:
        pytest.skip("this file system refuses a newline in a file name")
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "A100-80GB"\n[[tool.llmmem.runs]]\nname = "sft"\n'
                                             'from = "a\\n::error file=x::pwned.yml"\n')
    monkeypatch.chdir(tmp_path)
    _, out, _ = run_cli("check")
    assert "    batch-size             a\\n::error file=x::pwned.yml: micro_batch_size" in out.splitlines()
    assert commands(out) == []


def test_diff_text(tmp_path, run_cli):
    """Reports are files a pull request can write: a name holding a newline and a command."""
    def report(path, total):
        run = {"name": "::error file=a::b\n::warning::c", "fits": True, "total_bytes": total, "budget_bytes": 80 * 2**30,
               "settings": {"batch-size": str(total // 2**30)}, "settings_from": {"batch-size": "t.yml\n::error::d"}}
        path.write_text(json.dumps({"version": 1, "file": "pyproject.toml", "runs": [run]}))
        return path

    code, out, _ = run_cli("diff", report(tmp_path / "base.json", 2**30), report(tmp_path / "head.json", 2 * 2**30))
    assert code == 0
    assert out.splitlines() == ["\\::error file=a::b\\n::warning::c: 1.0 -> 2.0 GiB (+1.0) [fits]",
                                "  settings changed: batch-size 1 -> 2 (t.yml\\n::error::d)"]


def test_pytest_summary_and_failure_under_actions(pytester, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    pytester.makepyprojecttoml(PROJECT)
    result = pytester.runpytest("--llmmem", "-rA")
    out = "\n".join(result.outlines + result.errlines)
    # the names are padded to the longest (36 characters) before the backslash goes in
    assert f"\\{FORGED}      118.13 GiB     80.00 GiB   147.7%  FAIL (partial)" in result.outlines
    assert foreign_commands(out) == []
    assert len(commands(out)) == 2  # the two annotations, exact in test_github_format_prints_only_its_own_escaped_annotations


def test_every_print_goes_through_the_log_filter():
    """A new print() of a name or a value would bypass log_text: the only writes to stdout or stderr are
    say's (log_text), the JSON's (json_text), the pytest summary's (log_text) and the tool's own annotations."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "pytest_llmmem"
    found = sorted(f"{path.relative_to(package).as_posix()}: {line.strip()}" for path in package.rglob("*.py")
                   for line in path.read_text(encoding="utf-8").splitlines()
                   if re.search(r"(?<![\w.])_?print\(|\.write_line\(|std(out|err)\.write\(", line)
                   and not line.lstrip().startswith(("#", "def ")))
    assert found == [  # output._print is the one print() of the CLI; each of its callers filters what it passes
        "frontends/output.py: _print(json_text(json.dumps(combined, indent=2)), sys.stdout)  # a log may show it: no \"##[\" command",
        "frontends/output.py: _print(line, sys.stdout)  # the runner's commands: not log_text, which would defuse them",
        "frontends/output.py: _print(log_text(text), sys.stderr if error else sys.stdout)",
        "frontends/output.py: print(text, file=stream)",
        "frontends/pytest_checks.py: terminalreporter.write_line(annotation)",
        "frontends/pytest_checks.py: terminalreporter.write_line(f\"{'run':<{width}}  {'total':>12}  {'budget':>12}  {'used':>7}  verdict   (GiB = 1024^3 bytes)\")",
        "frontends/pytest_checks.py: terminalreporter.write_line(log_text(line), red=verdict.startswith(\"FAIL\"), green=verdict == \"PASS\")",
        "frontends/pytest_checks.py: terminalreporter.write_line(log_text(message), red=True)",
    ]
