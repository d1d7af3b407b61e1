"""Tables that name the same things in different modules agree: a trainer profile has its phase defaults,
every value a trainer-config reader maps to is one the TOML accepts, the recipe names are one list, and
each shared key tuple is defined once. A mismatch used to surface as an internal error (a KeyError at
phase_keys.PHASE_DEFAULTS[framework]) for the first user of the missing entry.
"""

import ast
from pathlib import Path

import pytest

from pytest_llmmem.catalog.profiles import FRAMEWORKS, OPTIMIZER_IMPLS, PROFILES
from pytest_llmmem.catalog.trainer_knobs import TRAINER_KEYS
from pytest_llmmem.catalog.registry import default_catalog, loaded
from pytest_llmmem.config import keys
from pytest_llmmem.config.phase_keys import PHASE_DEFAULTS
from pytest_llmmem.config.readers import hf_args, litgpt, llama_factory, torchtune
from pytest_llmmem.catalog.entries import RECIPE_GENERATIONS, RECIPE_HEADS, RECIPE_MODELS
from pytest_llmmem.core.run import FSDP_MODES, SFT
from pytest_llmmem.fit.recipes import SWITCHES

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_llmmem"
READERS = sorted((PACKAGE / "config" / "readers").glob("*.py"))


def test_every_profile_has_phase_defaults_and_back():
    assert set(PROFILES) == set(PHASE_DEFAULTS) == set(FRAMEWORKS)


def test_trainer_keys_are_the_profile_knobs_and_toml_keys():
    assert keys.TRAINER_KEYS is TRAINER_KEYS  # one tuple, imported, not a second copy
    assert set(TRAINER_KEYS) <= set(keys.RUN_KEYS) and set(TRAINER_KEYS) <= set(keys.TOP_KEYS)


@pytest.mark.parametrize("name", ["TRAINER_KEYS", "PHASE_KEYS", "RECIPE_KEYS", "FRAMEWORKS"])
def test_a_shared_key_table_is_assigned_in_one_module(name):
    owners = [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
              for node in ast.parse(path.read_text(encoding="utf-8")).body
              if isinstance(node, (ast.Assign, ast.AnnAssign))
              and any(isinstance(t, ast.Name) and t.id == name for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert len(set(owners)) == 1, owners


def _puts(path: Path):
    """(our key, the constant value or None) of each ``m.put(...)`` / ``m.assume(...)`` in a reader."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("put", "assume") \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            value = node.args[1] if len(node.args) > 1 else None
            yield node.args[0].value, value.value if isinstance(value, ast.Constant) else None


@pytest.mark.parametrize("path", READERS, ids=lambda p: p.stem)
def test_a_reader_maps_only_to_keys_a_run_takes(path):
    assert sorted({key for key, _ in _puts(path)} - set(keys.RUN_KEYS)) == []


def test_the_framework_a_reader_names_is_a_profile():
    named = {value for path in READERS for key, value in _puts(path) if key == "framework"}
    assert named == {"litgpt", "torchtune"}  # the two readers whose trainer is not transformers
    assert named <= set(PROFILES)


def test_every_optimizer_a_reader_maps_to_is_in_the_catalog():
    catalog = default_catalog()
    names = {ours for ours, _ in hf_args.OPTIMIZERS.values()} | set(litgpt._OPTIMIZERS.values()) | set(torchtune._OPTIMIZERS.values())
    for name in sorted(names):
        assert catalog.optimizer(name).name  # an unknown name raises ConfigError
    impls = {impl for _, impl in hf_args.OPTIMIZERS.values() if impl}
    assert impls <= set(OPTIMIZER_IMPLS)


def test_recipe_and_fsdp_mappings_name_known_entries():
    recipes = default_catalog().recipes.names  # the built-in recipes, registered in catalog/builtin.py
    assert recipes == ["dpo", "grpo", "ppo", "reward"]
    assert set(llama_factory._STAGES.values()) <= {SFT} | set(recipes)
    assert set(hf_args._FSDP.values()) <= set(FSDP_MODES)
    formats = default_catalog().readers.names  # the built-in readers, registered in catalog/builtin.py
    assert formats == ["axolotl", "llama-factory", "torchtune", "trl", "litgpt"]
    for name in formats:  # each names a module of config/readers/ that has its read(mapper, base_dir)
        assert callable(loaded(default_catalog().reader(name).read)), name


def test_every_recipe_declares_what_the_estimate_and_fit_know():
    # A recipe's entry is all its keys, models, head, generation and fit's switches say; each must
    # name something config/recipe_keys.py, recipes/recipes.py and fit/recipes.py know, and every
    # recipe key must belong to some recipe (else no run could give it).
    catalog = default_catalog()
    entries = [catalog.recipe(name) for name in catalog.recipes.names]
    for recipe in entries:
        assert set(recipe.keys) <= set(keys.RECIPE_KEYS) - {"recipe"}, recipe.name
        assert recipe.models[0] == "policy" and set(recipe.models) <= set(RECIPE_MODELS), recipe.name
        assert recipe.head in RECIPE_HEADS and recipe.generation in RECIPE_GENERATIONS, recipe.name
        assert set(recipe.ways_out) <= set(SWITCHES), recipe.name
        assert set(recipe.ways_out) - {"mode"} <= set(recipe.keys), recipe.name  # fit changes only a key the recipe reads
    assert {key for r in entries for key in r.keys} == set(keys.RECIPE_KEYS) - {"recipe"}
