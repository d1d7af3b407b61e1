"""A pull request cannot put Markdown, HTML, maths or mermaid into the job summary (issue 24, part 2).

A run name, a path, a reason or a setting is shown as itself: no image is fetched when a maintainer
opens the summary, no link or tag is made, no table cell or mermaid block is ended. Figures as in
tests/test_github.py: 7B params by count, bf16 mixed AdamW = 118.13 GiB of 80 GiB (147.7 %).
"""

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmmem.untrusted import markdown_code, markdown_text, mermaid_label, visible
from tests.hostile_cases import INJECTIONS

IMAGE = "![x](https://evil.example/t.png) <img src=x>"


def _unescape(markdown: str) -> str:
    """What a CommonMark renderer shows for escaped text: backslash escapes, then entities."""
    return html.unescape(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown))


def test_markdown_text_is_exact():
    assert markdown_text(IMAGE) == "\\!\\[x\\]\\(https\\://evil.example/t.png\\) &lt;img src=x&gt;"
    assert markdown_text("a | b\n`c` **d** $$e$$ #") == "a \\| b\\\\n\\`c\\` \\*\\*d\\*\\* \\$\\$e\\$\\$ \\#"
    assert markdown_text("sft-7b v1.2 (lora)") == "sft-7b v1.2 \\(lora\\)"


@settings(deadline=None)  # string code: an example past 200 ms on a loaded runner is noise, not a finding
@given(st.one_of(st.text(), st.sampled_from(INJECTIONS)))
def test_markdown_text_shows_any_text_as_itself_and_nothing_more(text):
    shown = markdown_text(text)
    assert not any(raw in shown for raw in ("<", ">", "![", "](", "\n", "\r", "\u2028"))
    assert re.search(r"(?<!\\)(\\\\)*[|`*_\[\]$]", shown) is None  # every one of these escaped
    assert _unescape(shown) == visible(text)


def test_code_spans_only_for_plain_text():
    assert markdown_code("proj-a/pyproject.toml") == "`proj-a/pyproject.toml`"
    assert markdown_code("a`b<i>") == "a\\`b&lt;i&gt;"  # no span: a backtick would close it


def test_mermaid_label_keeps_plain_characters_only():
    assert mermaid_label('CUDA context + allocator') == "CUDA context + allocator"
    assert mermaid_label('x" : 99\n```\n<img src=x>') == "x_ _ 99______img src_x_"


PROJECT = f"""\
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
params = "7B"

[[tool.llmmem.runs]]
name = "{IMAGE} | $$x$$"
dtype = "bf16"
"""


def test_job_summary_of_a_hostile_project(tmp_path, run_cli, monkeypatch):
    folder = tmp_path / "<b>x"  # a folder name is the pull request's too
    folder.mkdir()
    (folder / "pyproject.toml").write_text(PROJECT)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    monkeypatch.delenv("RUNNER_TEMP", raising=False)
    assert run_cli("check", folder)[0] == 1
    summary = (tmp_path / "summary.md").read_text()
    lines = summary.splitlines()
    name = "\\!\\[x\\]\\(https\\://evil.example/t.png\\) &lt;img src=x&gt; \\| \\$\\$x\\$\\$"
    assert lines[0] == "## llmmem: &lt;b&gt;x/pyproject.toml"
    assert f"| {name} | 118.13 GiB | 80.00 GiB | 147.7 % | :x: over (partial) |" in lines
    assert f"### {name}" in lines
    assert "pie showData title GiB per GPU (total 118.13)" in lines  # a fixed title: the name is the heading
    assert not any(raw in summary for raw in ("![", "<", "](", "$$"))


def test_diff_markdown_of_hostile_reports(tmp_path, run_cli):
    import json

    def report(path, total):
        run = {"name": IMAGE, "fits": True, "total_bytes": total, "budget_bytes": 80 * 2**30,
               "breakdown": {"<img src=y>": total}}
        other = {"file": "ok/pyproject.toml", "runs": [dict(run, name="sft")]}  # two projects: runs named with their file
        path.write_text(json.dumps({"version": 1, "projects": [{"file": "a`b/pyproject.toml", "runs": [run]}, other]}))
        return path

    code, out, _ = run_cli("diff", report(tmp_path / "b.json", 2**30), report(tmp_path / "h.json", 2 * 2**30), "--format", "markdown")
    assert code == 0
    assert out.splitlines()[2] == ("| \\!\\[x\\]\\(https\\://evil.example/t.png\\) &lt;img src=x&gt; (a\\`b/pyproject.toml) | 1.0 | 2.0 "
                                   "| +1.0 | &lt;img src=y&gt; +1.0 | fits |")
    assert not any(raw in out for raw in ("![", "<", "]("))
