"""What `pip install .` ships: every subpackage and every bundled model config.

An editable install imports straight from the checkout, so a subpackage missing from
``[tool.setuptools] packages`` passes every local test and breaks every real install
(``llmmem: internal error: No module named 'pytest_llmmem.readers'``). This reads the
declaration instead of trusting the import.
"""

import fnmatch
from pathlib import Path

from pytest_llmmem.io.files import toml

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = toml.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_subpackage_is_declared():
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "pytest_llmmem").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk == set(SETUPTOOLS["packages"])


def test_every_data_file_is_declared():
    package = ROOT / "pytest_llmmem"
    patterns = SETUPTOOLS.get("package-data", {}).get("pytest_llmmem", [])
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "the bundled model configs are package data"
    missing = [f for f in data if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert missing == []


def test_pyyaml_is_a_dependency_not_an_extra():
    """pre-commit's hook environment and the Action's venv install no extras (issue 23 §1): a run with
    from = "train.yaml" must find PyYAML there, so it is in [project] dependencies."""
    project = toml.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(dep.split(">")[0].strip() == "PyYAML" for dep in project["dependencies"])
