"""Broken and hostile input (issue 17): the reproducers as golden cases, exact message and exit code.

Every case also asserts what a pre-commit hook needs: no traceback, no "internal error", done in
well under a second. The generated sweep over the same categories is tests/test_hostile_fuzz.py
(a few hundred cases) and benchmarks/fuzz.py (thousands).
"""

import os
import time
from pathlib import Path

import pytest

from pytest_llmmem.frontends.cli import main
from pytest_llmmem.config.locate import Locator

MODEL = '[tool.llmmem.model]\nconfig = "{config}"\n\n[[tool.llmmem.runs]]\nname = "sft"\nseq-len = 128\n'
PYPROJECT = '[tool.llmmem]\ngpu = "A100-80GB"\n\n' + MODEL
SMALL_LLAMA = '{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 688, "vocab_size": 1000}'


def run(capsys, *argv):
    """(exit code, stdout, stderr, CPU seconds) of one in-process ``llmmem`` call. CPU time, not
    wall time: the bounds must hold on a loaded 2-core CI machine too."""
    start = time.process_time()
    code = main([str(a) for a in argv])
    seconds = time.process_time() - start
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err, err
    return code, out, err, seconds


# --- 1. the locator: linear, and blind to string bodies -------------------------------------------


def test_redos_reproducer_is_linear(tmp_path, capsys):
    # Issue 17 item 1: a "[" and 8,000 spaces inside a multi-line string took 404 s to locate.
    text = '[tool.other]\ndoc = """\n[' + " " * 8000 + 'x\n"""\n\n' + PYPROJECT.format(config="missing.json")
    (tmp_path / "pyproject.toml").write_text(text, encoding="utf-8")
    code, out, err, seconds = run(capsys, "check", tmp_path / "pyproject.toml")
    assert seconds < 0.5
    assert code == 2
    # Lines: 1 [tool.other], 2-4 the string, 5 blank, 6 [tool.llmmem], 10 config = ...
    assert err == f'llmmem: error: {tmp_path / "pyproject.toml"}:10: tool.llmmem.model.config: "missing.json" does not exist. ' \
                  "The path is relative to the folder of the pyproject.toml (or absolute).\n"


def test_locator_skips_string_bodies_and_counts_lines():
    text = "\n".join([
        "[tool.other]",                 # 1
        'doc = """',                    # 2  a basic multi-line string ...
        "[tool.llmmem]",                # 3  ... whose body looks like a header
        'gpu = "fake"',                 # 4  ... and a key
        '"""',                          # 5
        "lit = '''",                    # 6  a literal one, with an escape that is no escape
        "[[tool.llmmem.runs]] \\",      # 7
        "''' ; x = 1",                  # 8
        "[tool.llmmem]",                # 9  the real table
        'gpu = "A100"  # [not.a.table]',  # 10
        "arr = [",                      # 11 a multi-line array holding strings and a table
        '  "]", { a = 1 },',            # 12
        '  """',                        # 13
        "  name = 3",                   # 14 inside a string inside an array
        '  """,',                       # 15
        "]",                            # 16
        'name = "x"',                   # 17
        "[[tool.llmmem.runs]]",         # 18
        'name = "a\\\\"',               # 19 an escaped backslash ends the string
        "[[ tool . llmmem . runs ]]",   # 20 blanks inside a header
        '"seq-len" = 3',                # 21 a quoted key
        's = """ends here"""""',        # 22 two quotes before the delimiter belong to the string
        "batch-size = 2",               # 23
    ])
    loc = Locator(text)
    assert loc.tables == {("tool.other", 0): 1, ("tool.llmmem", 0): 9, ("tool.llmmem.runs", 0): 18, ("tool.llmmem.runs", 1): 20}
    assert loc.find("tool.other", 0, "lit") == 6
    assert loc.find("tool.llmmem", 0, "gpu") == 10
    assert loc.find("tool.llmmem", 0, "name") == 17
    assert loc.find("tool.llmmem.runs", 0, "name") == 19
    assert loc.find("tool.llmmem.runs", 1, "seq_len") == 21
    assert loc.find("tool.llmmem.runs", 1, "batch-size") == 23


def test_locator_worst_lines_are_fast():
    # Each shape that made a backtracking pattern slow, at the size of the largest pyproject read
    # (512 KiB): linear means well under a second each (measured here: 1 to 130 ms).
    n = 60_000
    shapes = [
        "[" + " " * n + "x",
        "[[" + " " * n + "]",
        '["' + "a" * n,
        "a" * n + " " * n + "!",
        'x = "' + "\\\\" * n,
        'x = """' + '\\"' * n,
        "x = [" * n,
        'x = "' + '"' * n,
        "name = " + "'a' " * n,
        "a." * n + "a = 1",  # a dotted key of 60,001 parts
        "a . " * n + "=",
        "'a'." * n + "\"",
    ]
    for shape in shapes:
        start = time.process_time()
        Locator(shape + "\n" + shape)
        assert time.process_time() - start < 0.5, shape[:20]


def test_inline_run_lines_are_indexed_once():
    # 10,000 inline runs: each run's line is looked up once per run; a scan per lookup was quadratic.
    text = "[tool.llmmem]\nruns = [\n" + "".join(f'  {{ name = "r{i}" }},\n' for i in range(10_000)) + "]\n"
    loc = Locator(text)
    start = time.process_time()
    lines = [loc.run_line(i, f"r{i}") for i in range(10_000)]
    assert time.process_time() - start < 0.5
    assert lines[0] == 3 and lines[-1] == 10_002  # r0 on line 3 (after the header and "runs = [")


# --- 3. files: type and size before content -------------------------------------------------------


def _project(tmp_path: Path, config: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT.format(config=config), encoding="utf-8")
    return path


def _config_error(tmp_path, capsys, config, reason):
    path = _project(tmp_path, config)
    code, out, err, seconds = run(capsys, "check", path)
    assert (code, out) == (2, "")
    assert seconds < 0.5
    assert err == f"llmmem: error: {path}:5: tool.llmmem.model.config: {reason}\n"


def test_symlink_loop(tmp_path, capsys):
    os.symlink("loop.json", tmp_path / "loop.json")
    _config_error(tmp_path, capsys, "loop.json", '"loop.json" cannot be read: it is a symlink loop (or too many levels of symlinks).')


def test_fifo_does_not_block(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.json")  # open() on it would wait for a writer forever
    _config_error(tmp_path, capsys, "fifo.json", '"fifo.json" cannot be read: it is a named pipe (FIFO), not a regular file.')


def test_dev_zero(tmp_path, capsys):
    _config_error(tmp_path, capsys, "/dev/zero", '"/dev/zero" cannot be read: it is a character device, not a regular file.')


def test_directory_without_config_json(tmp_path, capsys):
    (tmp_path / "model" / "config.json").mkdir(parents=True)
    _config_error(tmp_path, capsys, "model", '"model" cannot be read: it is a directory, not a regular file.')


def test_200_mb_file_is_not_read(tmp_path, capsys):
    with open(tmp_path / "big.json", "wb") as handle:
        handle.truncate(200 * 2**20)  # sparse: costs no disk
    _config_error(tmp_path, capsys, "big.json", '"big.json" cannot be read: it is 200.0 MiB, more than the 2.0 MiB this reads.')


def test_name_too_long(tmp_path, capsys):
    name = "a" * 5000 + ".json"
    shown = "a" * 120 + "…"  # echoed values are cut
    _config_error(tmp_path, capsys, name, f'"{shown}" cannot be read: it has a name too long for the file system.')


def test_nul_byte_in_name(tmp_path, capsys):
    _config_error(tmp_path, capsys, "a\\u0000b.json", '"a\\x00b.json" cannot be read: it has a NUL byte in its name.')


def test_deep_nesting(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    _config_error(tmp_path, capsys, "deep.json", '"deep.json" is not valid JSON: it is nested too deeply to parse.')


@pytest.mark.parametrize("literal, reason", [
    ("NaN", '"hidden_size" holds NaN, which is not a JSON number (JSON numbers are finite)'),
    ("-Infinity", '"hidden_size" holds -Infinity, which is not a JSON number (JSON numbers are finite)'),
    ("1e400", '"hidden_size" holds a number too large for a floating-point number (1.8e308 or more)'),
])
def test_non_finite_json_numbers(tmp_path, capsys, literal, reason):
    (tmp_path / "config.json").write_text(SMALL_LLAMA.replace("256", literal), encoding="utf-8")
    _config_error(tmp_path, capsys, "config.json", f'"config.json" is not valid JSON: {reason}.')


def test_bom_and_latin1(tmp_path, capsys):
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + SMALL_LLAMA.encode())
    _config_error(tmp_path, capsys, "bom.json",
                  '"bom.json" cannot be read: it starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM.')
    (tmp_path / "latin.json").write_bytes(b'{\n"model_type": "ll\xe9ma"}')
    _config_error(tmp_path, capsys, "latin.json", '"latin.json" cannot be read: it is not UTF-8 text (byte 0xe9 on line 2).')


def test_pyproject_that_is_hostile(tmp_path, capsys):
    (tmp_path / "dir" / "pyproject.toml").mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + PYPROJECT.format(config="x").encode())
    with open(tmp_path / "big.toml", "wb") as handle:
        handle.truncate(200 * 2**20)
    cases = {
        "dir": "it is a directory, not a regular file",
        "fifo.toml": "it is a named pipe (FIFO), not a regular file",
        "bom.toml": "it starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM",
        "big.toml": "it is 200.0 MiB, more than the 512.0 KiB this reads",
    }
    for name, reason in cases.items():
        code, out, err, seconds = run(capsys, "check", tmp_path / name)
        shown = tmp_path / name / "pyproject.toml" if name == "dir" else tmp_path / name
        assert (code, out) == (2, "") and seconds < 0.5
        assert err == f"llmmem: error: {shown}: cannot be read: {reason}.\n"


def test_hook_on_a_symlink_loop_no_project_uses(tmp_path, capsys, monkeypatch):
    # Issue 17 item 3: `llmmem check --hook loop.json` crashed in owners_of.
    monkeypatch.chdir(tmp_path)
    os.symlink("loop.json", tmp_path / "loop.json")
    code, out, err, _ = run(capsys, "check", "--hook", "loop.json")
    assert (code, err) == (0, "")
    assert out == "llmmem: no pyproject.toml with [tool.llmmem] among the changed files; nothing to check.\n"


def test_hook_on_a_symlink_loop_a_project_uses(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop.json", tmp_path / "loop.json")
    _project(tmp_path, "loop.json")
    code, out, err, _ = run(capsys, "check", "--hook", "loop.json")
    assert (code, out) == (2, "")
    assert err == 'llmmem: error: pyproject.toml:5: tool.llmmem.model.config: "loop.json" cannot be read: it is a symlink loop (or too many levels of symlinks).\n'


# --- 4. every value written is checked, used or not -----------------------------------------------

VALID_GPUS_FOLLOW = " Valid: "  # the catalog's list follows; it grows, so only the part before it is compared


@pytest.mark.parametrize("top, run_keys, line, key, message", [
    # gpu beside gpu-memory at the same level: gpu-memory wins, the gpu typo was never looked at
    ('gpu = "A100-80BG"\ngpu-memory = "80 GiB"', "", 2, "tool.llmmem.gpu", 'unknown gpu "A100-80BG". Did you mean "A100-80GB"?'),
    ('gpu = "A100-80GB"', 'gpu = "H100-80BG"\ngpu-memory = "80 GiB"\n', 9, "tool.llmmem.runs[0].gpu",
     'unknown gpu "H100-80BG". Did you mean "H100-80GB"?'),
    # the top gpu loses to the run's own gpu
    ('gpu = "H10O"', 'gpu = "A100-80GB"\n', 2, "tool.llmmem.gpu", 'unknown gpu "H10O".'),
    # a 100,000-character name is echoed as its first 60 characters and its length
    ('gpu = "' + "A" * 100_000 + '"', "", 2, "tool.llmmem.gpu", 'unknown gpu "' + "A" * 60 + '…" (100,000 characters).'),
    ('gpu = "A100-80GB"', 'dtype = "' + "b" * 100_000 + '"\n', 9, "tool.llmmem.runs[0].dtype",
     'unknown dtype "' + "b" * 60 + '…" (100,000 characters).'),
])
def test_values_behind_precedence_are_checked(tmp_path, capsys, top, run_keys, line, key, message):
    # Lines: 1 [tool.llmmem], then the top keys (1 or 2 lines), a blank, the model table (2 lines), a
    # blank, [[tool.llmmem.runs]], name, then the run's keys.
    path = tmp_path / "pyproject.toml"
    path.write_text(f'[tool.llmmem]\n{top}\n\n[tool.llmmem.model]\nparams = "7B"\n\n[[tool.llmmem.runs]]\nname = "sft"\n{run_keys}', encoding="utf-8")
    code, out, err, seconds = run(capsys, "check", path)
    assert (code, out) == (2, "") and seconds < 0.5
    assert err.startswith(f"llmmem: error: {path}:{line}: {key}: {message}{VALID_GPUS_FOLLOW}"), err
    assert len(err) < 600  # the long value is not in the message


def test_estimate_checks_headroom_without_a_gpu(capsys):
    # Issue 17 item 4: with no --gpu there is no budget, and the headroom was never read.
    code, out, err, _ = run(capsys, "estimate", "--params", "7B", "--headroom", "banana")
    assert (code, out) == (2, "")
    assert err == ("llmmem: error: command line: --headroom: 'banana' is not a size; expected a size with its unit, such as "
                   '"80 GiB", "80GB", "81920MiB", "80G" or "7.5e10 B". headroom also takes a share of the ceiling, such as "10%".\n')


def test_top_model_checked_when_every_run_has_its_own(tmp_path, capsys):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.llmmem]\ngpu = "A100-80GB"\n\n[tool.llmmem.model]\nconfig = "gone.json"\n\n'
                    '[[tool.llmmem.runs]]\nname = "sft"\nmodel = { params = "7B" }\n', encoding="utf-8")
    code, out, err, _ = run(capsys, "check", path)
    assert (code, out) == (2, "")
    assert err.startswith(f'llmmem: error: {path}:5: tool.llmmem.model.config: "gone.json" does not exist.')


# --- 6. report files that cannot be written ------------------------------------------------------


def test_json_out_to_a_missing_folder_or_a_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "A100-80GB"\n\n[tool.llmmem.model]\nparams = "1B"\n\n'
                                             '[[tool.llmmem.runs]]\nname = "sft"\n', encoding="utf-8")
    (tmp_path / "reports").mkdir()
    os.mkfifo(tmp_path / "pipe")
    cases = {
        "missing/r.json": f"the folder '{tmp_path / 'missing'}' does not exist; create it first",
        "reports": "it is a directory; give a file path such as llmmem-report.json inside it",
        "pipe": "it is a named pipe or a socket, not a file (writing would wait for a reader)",
    }
    for target, problem in cases.items():
        code, out, err, _ = run(capsys, "check", "--json-out", target)
        assert (code, out) == (2, ""), target  # refused before any work: nothing printed as if reported
        assert err == f"llmmem: error: --json-out {target}: {problem}.\n"
    code, out, err, _ = run(capsys, "check", "--json-out", "reports/r.json")
    assert code == 0 and (tmp_path / "reports" / "r.json").is_file()
    code, out, err, _ = run(capsys, "estimate", "--params", "1B", "--json-out", "reports")
    assert (code, out) == (2, "")


# --- 7. smaller ones ----------------------------------------------------------------------------


def _many_runs(folder: Path, count: int) -> Path:
    """A pyproject of ``count`` runs over one small config.json (run i on line 7 + 3 i)."""
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(SMALL_LLAMA, encoding="utf-8")
    runs = "".join(f'[[tool.llmmem.runs]]\nname = "r{i}"\nseq-len = 128\n' for i in range(count))
    path = folder / "pyproject.toml"
    path.write_text('[tool.llmmem]\ngpu = "A100-80GB"\n\n[tool.llmmem.model]\nconfig = "config.json"\n\n' + runs, encoding="utf-8")
    return path


def test_ten_thousand_runs_parse_in_linear_time(tmp_path, capsys):
    # The duplicate-name check compared each run with every earlier one (10,000 runs: 10.7 s). The
    # bound is on the shape, not the speed (that target is benchmarks/parse_scale.py): ten times the
    # runs must cost about ten times the CPU (measured 9-13x here, with other jobs on the machine); the quadratic check cost 100x.
    from pytest_llmmem.config.load import load

    small, large = _many_runs(tmp_path / "small", 1_000), _many_runs(tmp_path / "large", 10_000)
    start = time.process_time()
    load(small)
    small_seconds = time.process_time() - start
    start = time.process_time()
    project = load(large)
    large_seconds = time.process_time() - start
    assert len(project.runs) == 10_000 and project.runs[-1].line == 6 + 3 * 9_999 + 1
    assert large_seconds < 25 * small_seconds, (small_seconds, large_seconds)
    large.write_text(large.read_text(encoding="utf-8") + '[[tool.llmmem.runs]]\nname = "r5"\n', encoding="utf-8")
    code, out, err, _ = run(capsys, "check", large)
    assert code == 2 and err.startswith(f'llmmem: error: {large}:30007: tool.llmmem.runs[10000].name: run name "r5" is used twice.')


def test_long_family_name_is_cut(tmp_path, capsys):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.llmmem]\ngpu = "A100-80GB"\n\n[tool.llmmem.model]\nfamily = "' + "l" * 100_000 + '"\nhidden-size = 64\n'
                    'num-layers = 1\nnum-heads = 1\nintermediate-size = 64\nvocab-size = 10\n\n[[tool.llmmem.runs]]\nname = "sft"\n', encoding="utf-8")
    code, out, err, seconds = run(capsys, "check", path)
    assert (code, out) == (2, "") and seconds < 0.5
    assert err.startswith(f'llmmem: error: {path}:5: tool.llmmem.model.family: unknown model family "{"l" * 60}…" (100,000 characters).')
    assert len(err) < 1000


# --- pytest --llmmem on the same inputs ----------------------------------------------------------


@pytest.mark.parametrize("setup, config, message", [
    ("fifo", "fifo.json", '"fifo.json" cannot be read: it is a named pipe (FIFO), not a regular file.'),
    ("nan", "config.json", '"config.json" is not valid JSON: "hidden_size" holds NaN, which is not a JSON number (JSON numbers are finite).'),
    ("loop", "loop.json", '"loop.json" cannot be read: it is a symlink loop (or too many levels of symlinks).'),
    ("redos", "missing.json", '"missing.json" does not exist.'),
])
def test_pytest_plugin_reports_hostile_input_cleanly(pytester, setup, config, message):
    text = PYPROJECT.format(config=config)
    if setup == "redos":
        text = '[tool.other]\ndoc = """\n[' + " " * 8000 + 'x\n"""\n\n' + text
    (pytester.path / "pyproject.toml").write_text(text, encoding="utf-8")
    if setup == "fifo":
        os.mkfifo(pytester.path / "fifo.json")
    elif setup == "nan":
        (pytester.path / "config.json").write_text(SMALL_LLAMA.replace("256", "NaN"), encoding="utf-8")
    elif setup == "loop":
        os.symlink("loop.json", pytester.path / "loop.json")
    start = time.perf_counter()
    result = pytester.runpytest_subprocess("--llmmem", "-p", "no:cacheprovider")  # a real run, own imports
    assert time.perf_counter() - start < 120  # wall time of a whole pytest run on a loaded box; a FIFO blocked forever
    text_out = result.stdout.str()
    assert "INTERNALERROR" not in text_out and "Traceback" not in text_out
    assert result.ret == 2  # a collection error: pytest's "interrupted" exit
    line = 10 if setup == "redos" else 5
    assert f"llmmem: pyproject.toml:{line}: tool.llmmem.model.config: {message}" in text_out


def test_deeply_nested_toml(tmp_path, capsys):
    # Found by the generated sweep: tomllib recursed 5,000 levels deep and the catch-all reported it.
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT.format(config="x.json") + "\n[tool.other]\nx = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    code, out, err, _ = run(capsys, "check", path)
    assert (code, out) == (2, "")
    assert err == f"llmmem: error: {path}: is not valid TOML here: an array or inline table is nested too deeply to parse.\n"


def test_nesting_past_the_limit_any_python(tmp_path, capsys):
    """101 levels parse on every Python (3.11 refuses ~1,000, 3.13 parses 5,000), so the refusal is ours."""
    (tmp_path / "deep.json").write_text('{"a": ' + "[" * 100 + "]" * 100 + "}", encoding="utf-8")
    _config_error(tmp_path, capsys, "deep.json", '"deep.json" is not valid JSON: it is nested too deeply to parse.')
