"""Issue 23 §5 for ``llmmem catalog models``: the listing fits 80 columns (COLUMNS when wider) and loses
nothing: each source as REPOSITORY@COMMIT:PATH where that fits 80 columns, REPOSITORY@COMMIT where not,
``catalog show ID`` and ``catalog models --urls`` giving the whole link (a link cut in two opens nothing)."""

import pytest

from pytest_llmmem.hf import hub

AIC = "ai-dynamo/aiconfigurator"
LLAMA_8B = ("https://github.com/ai-dynamo/aiconfigurator/blob/095f58a51c4ca8e61b66ec108d86f223f8d559ce/"
            "aic-core/src/aiconfigurator_core/model_configs/meta-llama--Meta-Llama-3.1-8B_config.json")


@pytest.fixture
def columns(monkeypatch):
    def set_to(width: int) -> None:
        monkeypatch.setenv("COLUMNS", str(width))
    return set_to


def _entry(lines, model_id):
    """The lines of one id in the listing: its row and the indented lines under it."""
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == [model_id])
    end = next(i for i in range(at + 1, len(lines)) if not lines[i].startswith("    "))
    return lines[at:end]


def test_catalog_models_fits_80_columns(columns, run_cli):
    columns(80)
    code, out, _ = run_cli("catalog", "models")
    lines = out.splitlines()
    assert code == 0 and max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert all(model_id in out for model_id in hub.bundled_index())
    # a path that fits is shown whole: 9 + 73 columns
    assert _entry(lines, "meta-llama/Llama-3.1-8B-Instruct")[1] == \
        "    from mlc-ai/mlc-llm@79d603f085f5:python/mlc_llm/model/model_preset.py#L1427"
    # aiconfigurator's path is 89 characters: the repository and commit, the link in catalog show
    assert _entry(lines, "meta-llama/Llama-3.1-8B")[1] == f"    from {AIC}@095f58a51c4c"
    assert _entry(lines, "meta-llama/Meta-Llama-3.1-70B")[2] == "    the same config.json as meta-llama/Llama-3.1-70B"
    assert "llmmem catalog show ID" in out


def test_a_wider_terminal_gets_the_same_listing(columns, run_cli):
    """What the listing names does not depend on the terminal (tests/test_layout.py: wrapping loses nothing)."""
    columns(80)
    _, narrow, _ = run_cli("catalog", "models")
    columns(140)
    _, wide, _ = run_cli("catalog", "models")
    assert _entry(wide.splitlines(), "meta-llama/Llama-3.1-8B")[1] == f"    from {AIC}@095f58a51c4c"
    assert [line for line in wide.splitlines() if line.startswith("    from ")] == [line for line in narrow.splitlines() if line.startswith("    from ")]


def test_urls_and_show_give_the_whole_link(columns, run_cli):
    columns(80)
    code, out, _ = run_cli("catalog", "models", "--urls")
    assert code == 0 and _entry(out.splitlines(), "meta-llama/Llama-3.1-8B")[1] == f"    from {LLAMA_8B}"
    code, out, _ = run_cli("catalog", "show", "meta-llama/Llama-3.1-8B")
    lines = out.splitlines()
    # 8,030,261,248: transformers' count of this config on the meta device (tests/test_bundle.py's figure)
    assert code == 0 and lines[0] == "meta-llama/Llama-3.1-8B: family llama, 8,030,261,248 parameters,"
    assert lines[1] == "    context 131,072 tokens"
    assert lines[lines.index("  copied from:") + 1] == f"    {LLAMA_8B}"  # whole, on a line of its own
    # package-relative: an absolute site-packages path (CI's non-editable install) ran past 80 columns
    assert lines[lines.index("  bundled file (in the installed package):") + 1] == (
        "    pytest_llmmem/models/meta-llama--Llama-3.1-8B/config.json")
    assert all(len(line) <= 80 for line in lines if "https://" not in line)


def test_show_of_an_unknown_id_is_a_config_error_with_did_you_mean(run_cli):
    code, out, err = run_cli("catalog", "show", "meta-llama/Llama-3.1-8b")
    assert code == 2 and out == ""
    assert err.startswith('llmmem: error: "meta-llama/Llama-3.1-8b" is not a bundled model id. Did you mean "meta-llama/Llama-3.1-8B"?')
    code, _, err = run_cli("catalog", "show")
    assert code == 2 and "catalog show needs a model id" in err


def test_a_key_added_from_the_models_docs_is_listed_with_its_document(columns, run_cli):
    """GLM-4-9B-0414's copy has no context key; its 32,768 comes from THUDM/GLM-4's README, and says so."""
    columns(80)
    _, out, _ = run_cli("catalog", "models")
    assert _entry(out.splitlines(), "zai-org/GLM-4-9B-0414")[2] == \
        "    max_position_embeddings from THUDM/GLM-4@3f79b543647b:README.md#L137"
    _, out, _ = run_cli("catalog", "show", "zai-org/GLM-4-9B-0414")
    lines = out.splitlines()
    at = lines.index("  max_position_embeddings added (its source lacks it), from:")
    assert lines[at + 1] == "    https://github.com/THUDM/GLM-4/blob/3f79b543647b792aa167c712cd327475ec423f7b/README.md#L137"
    assert lines[1] == "    context 32,768 tokens"
