"""`pytest --llmmem` as a user sees it, run through pytester."""

import json
import os

import pytest

from pytest_llmmem.report.layout import unfit

FITS_AND_OVER = """
[tool.llmmem]
gpu = "L4"

[tool.llmmem.model]
hidden-size = 2048
num-layers = 22
num-heads = 32
num-kv-heads = 4
intermediate-size = 5632
vocab-size = 32000

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
batch-size = 1
seq-len = 2048

[[tool.llmmem.runs]]
name = "sft"
mode = "train"
batch-size = 8
seq-len = 2048
"""
# TinyLlama-1.1B: serving takes ~4 GiB of an L4; full training needs 16 B/param = 16.4 GiB of
# model states plus activations, over the L4's 22.49 GiB.
# pytester writes the text without its leading newline; "sft"'s [[tool.llmmem.runs]] header is
# the line just above `name = "sft"`, i.e. line number (1-based) = that line's 0-based index.
SFT_LINE = FITS_AND_OVER.lstrip("\n").splitlines().index('name = "sft"')
TYPO_LINE = FITS_AND_OVER.lstrip("\n").splitlines().index("batch-size = 8") + 1

USER_TEST = "def test_user():\n    assert True\n"


@pytest.fixture
def project(pytester):
    pytester.makepyprojecttoml(FITS_AND_OVER)
    pytester.makepyfile(test_user=USER_TEST)
    return pytester


def test_items_are_named_after_runs(project):
    result = project.runpytest("--llmmem", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["pyproject.toml::llmmem::serve", "pyproject.toml::llmmem::sft", "test_user.py::test_user"])


def test_mixed_runs_pass_and_fail_with_a_readable_message(project):
    result = project.runpytest("--llmmem")
    result.assert_outcomes(passed=2, failed=1)
    pytest.LineMatcher(unfit(result.stdout.str()).splitlines()).fnmatch_lines([  # sentences as before the 80-column wrap
        '*llmmem: run "sft" needs * GiB per GPU; the budget is 22.49 GiB (L4): *%, * GiB over',
        "*train | bf16 | mixed precision | adamw | batch 8 x seq 2048*",
        "*optimizer states*GiB*%",
        "*biggest term: *",
        "*ways out:*",
        "*fits with seq-len <= *",
        f"*declared at pyproject.toml:{SFT_LINE}",
    ])
    assert "Traceback" not in result.stdout.str()
    assert result.ret == 1


def test_summary_section_lists_every_run(project):
    result = project.runpytest("--llmmem", "-m", "llmmem")
    result.stdout.fnmatch_lines(["*= llmmem =*", "serve *GiB*22.49 GiB*PASS", "sft *GiB*22.49 GiB*FAIL"])


def test_summary_also_when_all_pass(pytester):
    pytester.makepyprojecttoml(FITS_AND_OVER.replace('gpu = "L4"', 'gpu = "H100-80GB"'))
    result = pytester.runpytest("--llmmem")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= llmmem =*", "serve *PASS", "sft *PASS"])


def test_marker_selects_only_the_checks(project):
    result = project.runpytest("--llmmem", "-m", "llmmem", "--strict-markers")
    result.assert_outcomes(passed=1, failed=1)
    assert "1 deselected" in result.stdout.str()


def test_llmmem_only_collects_nothing_else(project):
    project.makepyfile(test_broken="raise SystemExit('must not be collected')\n")
    result = project.runpytest("--llmmem-only")
    result.assert_outcomes(passed=1, failed=1)


def test_json_report(project):
    result = project.runpytest("--llmmem", "--llmmem-json", "report.json")
    assert result.ret == 1
    doc = json.loads((project.path / "report.json").read_text())
    assert doc["version"] == 1 and doc["file"] == "pyproject.toml"
    assert [(r["name"], r["fits"]) for r in doc["runs"]] == [("serve", True), ("sft", False)]
    assert sum(doc["runs"][1]["breakdown"].values()) == doc["runs"][1]["total_bytes"]


def test_config_error_is_a_collection_error_without_traceback(pytester):
    pytester.makepyprojecttoml(FITS_AND_OVER.replace("batch-size = 8", "batch_szie = 8"))
    result = pytester.runpytest("--llmmem")
    assert result.ret != 0
    result.stdout.fnmatch_lines([
        "*ERROR collecting pyproject.toml*",
        f'llmmem: pyproject.toml:{TYPO_LINE}: tool.llmmem.runs[[]1[]].batch_szie: unknown key "batch_szie". Did you mean "batch-size"?*',
    ])
    assert "Traceback" not in result.stdout.str()


def test_pyproject_without_table(pytester):
    # Given by name, a pyproject without [tool.llmmem] is an error; met during collection, it is skipped
    # (see test_no_llmmem_pyproject_anywhere_is_a_usage_error).
    pytester.makepyprojecttoml("[project]\nname = 'x'\n")
    result = pytester.runpytest("--llmmem", "--llmmem-config=pyproject.toml")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*llmmem: pyproject.toml: has no [[]tool.llmmem[]] table, so there is nothing to check.*"])


def test_missing_pyproject_is_a_usage_error(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest("--llmmem", "--llmmem-config", "nope/pyproject.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmmem: nope/pyproject.toml does not exist*"])


def test_off_by_default_and_no_file_io(project):
    # Without --llmmem: no items, and a bad --llmmem-config is never even looked at.
    result = project.runpytest("--llmmem-config", "does/not/exist.toml")
    result.assert_outcomes(passed=1)
    assert "pyproject.toml" not in result.stdout.str().split("collected")[1]
    assert "= llmmem =" not in result.stdout.str()


def test_disabled_with_p_no(project):
    result = project.runpytest("-p", "no:llmmem")
    result.assert_outcomes(passed=1)
    result = project.runpytest("-p", "no:llmmem", "--llmmem")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_testpaths_elsewhere_still_finds_the_root_pyproject(pytester):
    pytester.makepyprojecttoml(FITS_AND_OVER + '\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_x.py").write_text(USER_TEST)
    result = pytester.runpytest("--llmmem")
    result.assert_outcomes(passed=2, failed=1)


def test_config_option_picks_another_file(pytester):
    pytester.mkdir("training")
    (pytester.path / "training" / "pyproject.toml").write_text(FITS_AND_OVER.lstrip("\n"))
    # The "=" form: plugin options are not known yet when pytest picks the rootdir from the arguments.
    result = pytester.runpytest("--llmmem-only", "--llmmem-config=training/pyproject.toml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*declared at training/pyproject.toml:{SFT_LINE}"])


def test_reportinfo_points_at_the_run_line(project):
    reprec = project.inline_run("--llmmem-only")
    failed = reprec.getfailures()
    assert [r.location for r in failed] == [("pyproject.toml", SFT_LINE - 1, "llmmem run sft")]  # locations are 0-based


def test_fixture(project):
    project.makepyfile(test_budget="""
        def test_estimate(llmmem):
            small = llmmem.estimate(run="sft", batch_size=1)
            big = llmmem.estimate(run="sft")
            assert small.total_bytes < big.total_bytes
            assert llmmem.estimate(params="7B", mode="inference", dtype="bf16").breakdown["weights"] == 14 * 10**9

        def test_fits(llmmem):
            llmmem.assert_fits(run="serve")

        def test_sweep_over(llmmem):
            llmmem.assert_fits(run="sft", batch_size=16)

        def test_typo(llmmem):
            llmmem.estimate(run="sft", batch_szie=2)
    """)
    result = project.runpytest("test_budget.py")
    result.assert_outcomes(passed=2, failed=2)
    pytest.LineMatcher(unfit(result.stdout.str()).splitlines()).fnmatch_lines([
        '*llmmem: run "sft" needs * GiB per GPU; the budget is 22.49 GiB*',
        '*llmmem: *batch_szie: unknown key "batch_szie". Did you mean "batch-size"?*',
    ])


def test_xdist_checks_each_run_once_and_summarises_once(project):
    pytest.importorskip("xdist")
    result = project.runpytest_subprocess("--llmmem", "-n", "2", "--llmmem-json", "report.json")
    result.assert_outcomes(passed=2, failed=1)
    assert result.stdout.str().count("= llmmem =") == 1
    assert [r["name"] for r in json.loads((project.path / "report.json").read_text())["runs"]] == ["serve", "sft"]


# --- monorepos, several configs, GitHub outputs, report errors (issue 10 items 7-8, issue 17 items 6-7) ---


def _monorepo(pytester):
    """A repository root without [tool.llmmem] (pytest configured from it) and two projects below."""
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\naddopts = "-ra"\n')
    for name in ("proj-a", "proj-b"):
        pytester.mkdir(name)
        (pytester.path / name / "pyproject.toml").write_text(FITS_AND_OVER.lstrip("\n").replace('name = "s', f'name = "{name}-s'))
        (pytester.path / name / f"test_{name[-1]}.py").write_text(USER_TEST)


def test_monorepo_collects_every_llmmem_pyproject_under_the_collected_paths(pytester):
    _monorepo(pytester)
    result = pytester.runpytest("--llmmem", "--llmmem-json", "report.json")
    result.assert_outcomes(passed=4, failed=2)  # two user tests, proj-a-serve and proj-b-serve pass; the sfts are over
    doc = json.loads((pytester.path / "report.json").read_text())
    # several projects: the shape `llmmem check A B --format json` writes
    assert [p["file"] for p in doc["projects"]] == ["proj-a/pyproject.toml", "proj-b/pyproject.toml"]
    assert [r["name"] for r in doc["projects"][1]["runs"]] == ["proj-b-serve", "proj-b-sft"]


def test_monorepo_from_a_subfolder_checks_that_project(pytester, monkeypatch):
    _monorepo(pytester)
    monkeypatch.chdir(pytester.path / "proj-b")
    result = pytester.runpytest("--llmmem-only")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*proj-b-sft*"])
    assert "proj-a" not in result.stdout.str()


def test_several_config_options(pytester):
    _monorepo(pytester)
    result = pytester.runpytest("--llmmem-only", "--llmmem-config=proj-a/pyproject.toml", "--llmmem-config=proj-b/pyproject.toml")
    result.assert_outcomes(passed=2, failed=2)


def test_no_llmmem_pyproject_anywhere_is_a_usage_error(pytester):
    pytester.makepyprojecttoml("[project]\nname = 'x'\n")
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest("--llmmem")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmmem: no pyproject.toml with [[]tool.llmmem[]] under *; pass --llmmem-config PATH*"])


def test_config_error_writes_no_report_that_looks_clean(pytester):
    pytester.makepyprojecttoml(FITS_AND_OVER.replace("batch-size = 8", "batch_szie = 8"))
    result = pytester.runpytest("--llmmem", "--llmmem-json", "report.json")
    assert result.ret != 0
    assert not (pytester.path / "report.json").exists()
    result.stdout.fnmatch_lines(["*llmmem: no JSON report written to report.json: 1 pyproject.toml could not be checked (pyproject.toml)*"])


def test_unwritable_json_report_is_a_usage_error_worded_as_the_cli(project, tmp_path):
    # The same refusals, in the same words, as `llmmem check --json-out` (tests/test_hostile.py,
    # files.write_problem): a missing folder, a directory, and a FIFO (writing would wait for a reader).
    (project.path / "reports").mkdir()
    os.mkfifo(project.path / "pipe")
    missing = tmp_path / "missing-dir" / "r.json"
    cases = {
        str(missing): f"the folder '{missing.parent}' does not exist; create it first",
        "reports": "it is a directory; give a file path such as llmmem-report.json inside it",
        "pipe": "it is a named pipe or a socket, not a file (writing would wait for a reader)",
    }
    for target, problem in cases.items():
        result = project.runpytest("--llmmem", "--llmmem-json", target)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, target
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
        assert f"ERROR: --llmmem-json {target}: {problem}." in result.stderr.lines, result.stderr.lines


def test_github_output_from_pytest(project, monkeypatch, tmp_path):
    # The README promises fits= and json= step outputs from `pytest --llmmem` too.
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(project.path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output.txt"))
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    project.runpytest("--llmmem")
    report = tmp_path / "llmmem-report.json"
    assert (tmp_path / "output.txt").read_text() == f"fits=false\njson={report}\n"
    assert [r["name"] for r in json.loads(report.read_text())["runs"]] == ["serve", "sft"]
    project.runpytest("--llmmem", "-k", "serve", "--llmmem-json", "mine.json")
    assert (tmp_path / "output.txt").read_text().endswith(f"fits=true\njson={project.path / 'mine.json'}\n")


def test_fixture_errors_are_clear(project):
    project.makepyfile(test_budget="""
        def test_none(llmmem):
            llmmem.estimate(run="sft", gpu=None)

        def test_none_adhoc(llmmem):
            llmmem.estimate(params="7B", gpu=None)

        def test_rename(llmmem):
            assert llmmem.estimate(run="sft", name="sft-big", batch_size=16).run.name == "sft-big"
    """)
    result = project.runpytest("test_budget.py")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "AttributeError" not in out and "TypeError" not in out and "Traceback" not in out
    result.stdout.fnmatch_lines(["*llmmem: gpu=None: a key cannot be None; leave it out to keep the declared value.*"])


def test_collection_reads_other_pyprojects_only_through_the_guarded_reader(pytester):
    # A vendored 600 KiB pyproject.toml (over the 512 KiB a pyproject may be) is not ours: skipped, no error.
    _monorepo(pytester)
    pytester.mkdir("vendored")
    (pytester.path / "vendored" / "pyproject.toml").write_text("# " + "x" * 600 * 1024 + "\n[tool.llmmem]\n")
    result = pytester.runpytest("--llmmem-only")
    result.assert_outcomes(passed=2, failed=2)
