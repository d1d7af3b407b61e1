"""Partial and approximate estimates are visible in every output, and ``strict`` refuses them
(issue 10 item 5, issue 9 section 2)."""

import json

import pytest

from pytest_llmmem.config.load import parse
from pytest_llmmem.estimator import estimate
from pytest_llmmem.report.text import as_dict, render_run, strict_refusal
from pytest_llmmem.report.layout import unfit

# 7B known only by its count: weights, gradients, optimizer states and overhead are counted, the
# terms that need the shape are not. serve: 7e9 x 2 B + 800 MiB (768 MiB context + 32 MiB
# cuBLAS) = 14,838,860,800 B = 13.82 GiB of an A100-80GB's 80 GiB (17.3 %).
PARAMS_ONLY = """\
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
params = "7B"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
"""
REASON = "the model is given by params only: activations, logits and KV cache are not counted"
SHAPED = PARAMS_ONLY.replace('params = "7B"', "hidden-size = 512\nnum-layers = 2\nnum-heads = 8\nintermediate-size = 1024\nvocab-size = 1000")


def _estimate(text, **kw):
    return estimate(parse(text, **kw).runs[0])


def test_params_only_is_partial_and_a_shaped_model_is_not():
    est = _estimate(PARAMS_ONLY)
    assert est.partial == (REASON,) and est.approximate == ()
    assert est.total_bytes == 14_838_860_800
    assert _estimate(SHAPED).partial == ()


def test_text_output_says_partial(write_pyproject, run_cli):
    code, out, _ = run_cli("check", write_pyproject(PARAMS_ONLY))
    out = unfit(out)
    assert code == 0
    assert "serve (line 7): FITS (partial): 13.82 GiB of 80.00 GiB budget (17.3 %)" in out
    assert f"  partial: {REASON}" in out


def test_hook_output_says_partial(write_pyproject, run_cli):
    _, out, _ = run_cli("check", "--hook", write_pyproject(PARAMS_ONLY))
    out = unfit(out)
    assert "17.3 %  ok (partial)" in out
    assert f"  serve: partial: {REASON}" in out


def test_json_says_partial_and_approximate_with_reasons(write_pyproject, run_cli):
    _, out, _ = run_cli("check", "--format", "json", write_pyproject(PARAMS_ONLY))
    run = json.loads(out)["runs"][0]
    assert (run["partial"], run["partial_reasons"]) == (True, [REASON])
    assert (run["approximate"], run["approximate_reasons"], run["strict"]) == (False, [], False)


def test_approximate_is_shown_like_partial():
    est = _estimate(SHAPED)._replace(approximate=('unknown family "foo": read as a generic decoder',))
    text = render_run(est)
    assert text.splitlines()[0].startswith("serve (line 11): FITS (approximate): ")
    assert '  approximate: unknown family "foo": read as a generic decoder' in text
    assert as_dict(est)["approximate"] is True


@pytest.mark.parametrize("where", ["top", "run", "flag"])
def test_strict_refuses_a_partial_estimate_with_exit_2(write_pyproject, run_cli, where):
    text = {"top": PARAMS_ONLY.replace('gpu = "A100-80GB"', 'gpu = "A100-80GB"\nstrict = true'),
            "run": PARAMS_ONLY + "strict = true\n", "flag": PARAMS_ONLY}[where]
    path = write_pyproject(text)
    code, out, err = run_cli("check", path, *(["--strict"] if where == "flag" else []))
    assert code == 2
    assert "FITS (partial)" in out  # the report is still printed
    line = 8 if where == "top" else 7
    assert err == (f'llmmem: error: {path}:{line}: run "serve": strict refuses a partial estimate ({REASON}). '
                   "Give the model's config or its architecture keys so every term is counted, "
                   "or drop strict to accept it with a warning.\n")


def test_strict_false_on_a_run_overrides_the_top(write_pyproject, run_cli):
    text = PARAMS_ONLY.replace('gpu = "A100-80GB"', 'gpu = "A100-80GB"\nstrict = true') + "strict = false\n"
    code, _, err = run_cli("check", write_pyproject(text))
    assert (code, err) == (0, "")


def test_strict_passes_a_complete_estimate(write_pyproject, run_cli):
    code, _, _ = run_cli("check", "--strict", write_pyproject(SHAPED))
    assert code == 0


def test_estimate_strict_flag(run_cli):
    code, _, err = run_cli("estimate", "--params", "7B", "--mode", "inference", "--gpu", "A100-80GB", "--strict")
    assert code == 2 and 'run "estimate": strict refuses a partial estimate' in err
    code, _, _ = run_cli("estimate", "--params", "7B", "--mode", "inference", "--gpu", "A100-80GB")
    assert code == 0


def test_strict_refusal_names_approximate_reasons():
    est = _estimate(SHAPED)._replace(approximate=("x",))
    assert strict_refusal(est) is None  # not strict: a warning, not a refusal
    message = strict_refusal(est._replace(run=est.run._replace(strict=True)))
    assert message.startswith('pyproject.toml:11: run "serve": strict refuses an approximate estimate (x). Declare a family')


def test_strict_must_be_a_boolean(write_pyproject, run_cli):
    code, _, err = run_cli("check", write_pyproject(PARAMS_ONLY + 'strict = "yes"\n'))
    assert code == 2 and "tool.llmmem.runs[0].strict: expected true or false, got a string 'yes'." in err


# --- GitHub --------------------------------------------------------------------------------------


def test_github_annotation_and_summary_say_partial(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    (tmp_path / "pyproject.toml").write_text(PARAMS_ONLY)
    _, out, _ = run_cli("check", tmp_path)
    assert ("::warning file=pyproject.toml,line=7,title=llmmem%3A serve::serve fits (13.82 GiB of 80.00 GiB, 17.3 %25), "
            f"but the estimate is partial: {REASON}.") in out.splitlines()
    summary = (tmp_path / "summary.md").read_text()
    assert "| serve | 13.82 GiB | 80.00 GiB | 17.3 % | :warning: fits (partial) |" in summary
    escaped = REASON.replace(":", "\\:")  # Markdown-escaped: a ':' could start an emoji code or an autolink
    assert f"> **partial:** {escaped}" in summary
    (tmp_path / "pyproject.toml").write_text(PARAMS_ONLY + "strict = true\n")
    code, out, _ = run_cli("check", tmp_path)
    assert code == 2
    assert (f"::error file=pyproject.toml,line=7,title=llmmem%3A serve::serve: strict refuses a partial estimate: {REASON}.") in out.splitlines()
    assert "| serve | 13.82 GiB | 80.00 GiB | 17.3 % | :x: refused (strict, partial) |" in (tmp_path / "summary.md").read_text()


# --- pytest --------------------------------------------------------------------------------------


def test_pytest_item_warns_when_partial(pytester):
    pytester.makepyprojecttoml(PARAMS_ONLY)
    result = pytester.runpytest("--llmmem-only", "-W", "default")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([f"*LlmmemEstimateCaveat: run \"serve\": the estimate is partial: {REASON}*",
                                 "serve * 17.3%  PASS (partial)"])
    # the warning points at the run in pyproject.toml (its [[tool.llmmem.runs]] line 7), not at the plugin's source
    result.stdout.fnmatch_lines(["  *pyproject.toml:7: LlmmemEstimateCaveat: run \"serve\"*", "    [[tool.llmmem.runs]]"])
    assert "pytest_checks.py" not in result.stdout.str()


@pytest.mark.parametrize("how", ["option", "ini", "toml"])
def test_pytest_strict_fails_the_item(pytester, how):
    text = PARAMS_ONLY + ("strict = true\n" if how == "toml" else "")
    if how == "ini":
        text += "\n[tool.pytest.ini_options]\nllmmem_strict = true\n"
    pytester.makepyprojecttoml(text)
    result = pytester.runpytest("--llmmem-only", *(["--llmmem-strict"] if how == "option" else []))
    result.assert_outcomes(failed=1)
    pytest.LineMatcher(unfit(result.stdout.str()).splitlines()).fnmatch_lines([f'*pyproject.toml:7: run "serve": strict refuses a partial estimate ({REASON}).*',
                                 "serve * 17.3%  FAIL (strict, partial)"])
    assert "Traceback" not in result.stdout.str()
