"""`llmmem diff`: every report shape `check` writes, runs matched by project and name, bad reports."""

import json

import pytest

# 7B params known by count only (see tests/test_github.py for the hand computation):
#   serving in bf16 = 7e9 x 2 B + 800 MiB overhead = 14,838,860,800 B = 13.82 GiB.
#   On gpu-memory = "16 GB" (14.90 GiB) that is 92.7 %: fits. On "14.3 GB" it is 103.8 %: over.
SERVE = """\
[tool.llmmem]
gpu-memory = "{budget}"

[tool.llmmem.model]
params = "7B"

[[tool.llmmem.runs]]
name = "{name}"
mode = "inference"
"""


def _project(root, folder, budget="16 GB", name="serve"):
    (root / folder).mkdir(exist_ok=True)
    (root / folder / "pyproject.toml").write_text(SERVE.format(budget=budget, name=name))


def _check_json(run_cli, out, *paths):
    code, text, err = run_cli("check", *paths, "--format", "json")
    assert code in (0, 1), err
    out.write_text(text)
    return out


@pytest.fixture
def two_projects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    _project(tmp_path, "proj-a")
    _project(tmp_path, "proj-b")
    return tmp_path


def test_multi_project_reports_are_diffed_by_project_and_name(two_projects, run_cli):
    base = _check_json(run_cli, two_projects / "base.json", "proj-a", "proj-b")
    assert [p["file"] for p in json.loads(base.read_text())["projects"]] == ["proj-a/pyproject.toml", "proj-b/pyproject.toml"]
    _project(two_projects, "proj-b", budget="14.3 GB")  # 14.84e9 / 14.3e9 = 103.8 %
    head = _check_json(run_cli, two_projects / "head.json", "proj-a", "proj-b")
    code, out, err = run_cli("diff", base, head)
    assert code == 1, err  # before the fix: an empty table and exit 0
    assert out.splitlines() == [
        "serve (proj-a/pyproject.toml): 13.8 -> 13.8 GiB (+0.0) [fits]",
        "serve (proj-b/pyproject.toml): 13.8 -> 13.8 GiB (+0.0) [NO LONGER FITS]",
    ]
    code, out, _ = run_cli("diff", base, head, "--format", "markdown")
    assert code == 1
    assert "| serve (`proj-b/pyproject.toml`) | 13.8 | 13.8 | +0.0 |  | NO LONGER FITS |" in out


def test_added_and_removed_runs_and_projects(two_projects, run_cli):
    base = _check_json(run_cli, two_projects / "base.json", "proj-a", "proj-b")
    _project(two_projects, "proj-b", name="serve-long")
    _project(two_projects, "proj-c", budget="14.3 GB")
    head = _check_json(run_cli, two_projects / "head.json", "proj-a", "proj-b", "proj-c")
    code, out, _ = run_cli("diff", base, head)
    lines = out.splitlines()
    assert "serve-long (proj-b/pyproject.toml): - -> 13.8 GiB [new]" in lines
    assert "serve (proj-b/pyproject.toml): 13.8 -> - GiB [removed]" in lines
    # a run that arrives over budget is a regression as much as one that stops fitting
    assert "serve (proj-c/pyproject.toml): - -> 13.8 GiB [new, OVER]" in lines
    assert code == 1


def test_single_and_multi_project_reports_match_by_file(two_projects, run_cli):
    base = _check_json(run_cli, two_projects / "base.json", "proj-b")  # the single-project shape
    _project(two_projects, "proj-b", budget="14.3 GB")
    head = _check_json(run_cli, two_projects / "head.json", "proj-a", "proj-b")
    code, out, _ = run_cli("diff", base, head)
    assert code == 1
    assert "serve (proj-b/pyproject.toml): 13.8 -> 13.8 GiB (+0.0) [NO LONGER FITS]" in out.splitlines()
    assert "serve (proj-a/pyproject.toml): - -> 13.8 GiB [new]" in out.splitlines()


def test_one_project_each_side_matches_by_run_name(two_projects, run_cli):
    """Base and head written from different checkouts name the file differently; the runs still match."""
    base = _check_json(run_cli, two_projects / "base.json", "proj-a/pyproject.toml")
    _project(two_projects, "proj-a", budget="14.3 GB")
    head = _check_json(run_cli, two_projects / "head.json", str(two_projects / "proj-a" / "pyproject.toml"))
    code, out, _ = run_cli("diff", base, head)
    assert (code, out) == (1, "serve: 13.8 -> 13.8 GiB (+0.0) [NO LONGER FITS]\n")


def test_a_run_name_with_a_pipe_keeps_the_markdown_table(two_projects, run_cli):
    _project(two_projects, "proj-a", name="a|b")
    base = _check_json(run_cli, two_projects / "base.json", "proj-a")
    code, out, _ = run_cli("diff", base, base, "--format", "markdown")
    assert code == 0
    assert out.splitlines()[2] == "| a\\|b | 13.8 | 13.8 | +0.0 |  | fits |"


GOOD_RUN = {"name": "serve", "fits": True, "total_bytes": 10, "budget_bytes": 20, "breakdown": {"weights": 10}}


@pytest.mark.parametrize("document, where, what", [
    ({"version": 1, "runs": 5}, "runs", "expected a list of runs, got int"),
    ({"version": 1}, "runs", 'has neither "runs" nor "projects"'),
    ({"version": 1, "runs": [5]}, "runs[0]", "expected a run (an object), got int"),
    ({"version": 1, "runs": [{"name": "x"}]}, "runs[0].total_bytes", "missing"),
    ({"version": 1, "runs": [{**GOOD_RUN, "total_bytes": "10"}]}, "runs[0].total_bytes", "expected a number of bytes, got str '10'"),
    ({"version": 1, "runs": [{**GOOD_RUN, "total_bytes": True}]}, "runs[0].total_bytes", "expected a number of bytes, got bool True"),
    ({"version": 1, "runs": [{**GOOD_RUN, "name": None}]}, "runs[0].name", "expected a run name, got None"),
    ({"version": 1, "runs": [{**GOOD_RUN, "fits": "yes"}]}, "runs[0].fits", "expected true, false or null, got str 'yes'"),
    ({"version": 1, "runs": [{**GOOD_RUN, "breakdown": [1]}]}, "runs[0].breakdown", "expected an object of term: bytes, got list"),
    ({"version": 1, "runs": [{**GOOD_RUN, "breakdown": {"weights": "a"}}]}, "runs[0].breakdown.weights", "expected a number of bytes, got str 'a'"),
    ({"version": 1, "runs": [GOOD_RUN, GOOD_RUN]}, "runs[1].name", 'run "serve" appears twice'),
    ({"version": 1, "projects": {}}, "projects", "expected a list of project reports, got dict"),
    ({"version": 1, "projects": [5]}, "projects[0]", "expected a project report (an object), got int"),
    ({"version": 1, "projects": [{"file": "a", "runs": [{**GOOD_RUN, "budget_bytes": "x"}]}]},
     "projects[0].runs[0].budget_bytes", "expected a number of bytes or null, got str 'x'"),
    ({"version": 1, "projects": [{"file": 3, "runs": []}]}, "projects[0].file", "expected a path, got int"),
    ({"version": 1, "runs": [{**GOOD_RUN, "settings": ["a"]}]}, "runs[0].settings", "expected an object of setting: text, got list"),
    ({"version": 1, "runs": [{**GOOD_RUN, "settings_from": {"seq-len": 4}}]}, "runs[0].settings_from.seq-len", "expected text, got int 4"),
])
def test_malformed_reports_exit_2_with_the_key(tmp_path, run_cli, document, where, what):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"version": 1, "file": "a", "runs": [GOOD_RUN]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    code, out, err = run_cli("diff", good, bad)  # before the fix: KeyError / TypeError (internal error)
    assert code == 2 and out == ""
    assert err.startswith(f"llmmem: error: {bad}: {where}: ") and what in err, err
    assert "internal error" not in err


@pytest.mark.parametrize("text, what", [
    ("[1, 2]", "is not an llmmem JSON report (version 1)"),
    ('{"version": 2, "runs": []}', "is not an llmmem JSON report (version 1)"),
    ("{", "cannot read the JSON report"),
    ("[" * 100_000 + "]" * 100_000, "cannot read the JSON report"),
    ('{"version": 1, "runs": [{"name": "a", "total_bytes": NaN, "fits": true}]}', "cannot read the JSON report"),
])
def test_unreadable_reports_exit_2(tmp_path, run_cli, text, what):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    code, _, err = run_cli("diff", bad, bad)
    assert code == 2 and what in err and "internal error" not in err, err


def test_a_directory_or_missing_file(tmp_path, run_cli):
    code, _, err = run_cli("diff", tmp_path, tmp_path / "missing.json")
    assert code == 2 and "cannot read the JSON report" in err and "internal error" not in err


def test_a_report_from_before_settings_compares_no_settings(tmp_path, run_cli):
    """A base report written by an llmmem without "settings" diffs as before; the head's settings are not news."""
    base, head = tmp_path / "base.json", tmp_path / "head.json"
    base.write_text(json.dumps({"version": 1, "file": "a", "runs": [GOOD_RUN]}))
    head.write_text(json.dumps({"version": 1, "file": "a", "runs": [{**GOOD_RUN, "settings": {"batch-size": "8"},
                                                                      "settings_from": {"batch-size": "t.yml: micro_batch_size"}}]}))
    code, out, _ = run_cli("diff", base, head)
    assert (code, out) == (0, "serve: 0.0 -> 0.0 GiB (+0.0) [fits]\n")
