"""Third-party plugins: found through the `llmmem` entry point, blocked by LLMMEM_DISABLE_PLUGINS."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from pytest_llmmem.catalog import GPU, Catalog, Optimizer, Reader  # the documented import paths (README, Plugins)
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.hookspecs import hookimpl

PLUGIN = '''
from pytest_llmmem.catalog import GPU, Optimizer
from pytest_llmmem.hookspecs import hookimpl

@hookimpl
def llmmem_register_optimizers(register):
    register(Optimizer("sophia", 2, doc="Sophia: momentum and a Hessian estimate"))

@hookimpl
def llmmem_register_gpus(register):
    register(GPU("Gaudi3", 128 * 1024**3, aliases=("intel-gaudi3",)))
'''

PYPROJECT = '''
[tool.llmmem]
gpu = "gaudi3"

[tool.llmmem.model]
params = "7B"

[[tool.llmmem.runs]]
name = "sft"
dtype = "bf16"
optimizer = "Sophia"
'''


def _install(tmp_path, name, code):
    """A distribution on sys.path that declares an `llmmem` entry point, as pip would leave it."""
    site = tmp_path / "site"
    (site / f"llmmem_{name}-1.0.dist-info").mkdir(parents=True)
    (site / f"llmmem_{name}.py").write_text(code)
    (site / f"llmmem_{name}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llmmem-{name}\nVersion: 1.0\n")
    (site / f"llmmem_{name}-1.0.dist-info" / "entry_points.txt").write_text(f"[llmmem]\n{name} = llmmem_{name}\n")
    return site


@pytest.fixture
def installed_plugin(tmp_path):
    site = _install(tmp_path, "sophia", PLUGIN)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    return tmp_path, site


def _check(tmp_path, site, **env):
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "pytest_llmmem.cli", "check", str(tmp_path / "pyproject.toml")],
                          capture_output=True, text=True, env=environ)


def test_entry_point_plugin_adds_gpu_and_optimizer(installed_plugin):
    proc = _check(*installed_plugin)
    assert proc.returncode == 0, proc.stderr
    # 7e9 x (2 weights + 4 master + 2 grads + 2 x 4 Sophia states) = 112e9 B = 104.31 GiB, under 128 GiB
    assert "sft (line 8): FITS" in proc.stdout
    assert "budget: Gaudi3" in proc.stdout
    assert "sophia" in proc.stdout


@pytest.mark.parametrize("blocked", ["sophia", "all", "other,sophia"])
def test_disable_plugins(installed_plugin, blocked):
    proc = _check(*installed_plugin, LLMMEM_DISABLE_PLUGINS=blocked)
    assert proc.returncode == 2
    assert 'unknown optimizer "Sophia"' in proc.stderr  # the run's optimizer is resolved before the budget
    assert "Traceback" not in proc.stderr


def test_broken_plugin_is_a_clear_error(installed_plugin):
    tmp_path, site = installed_plugin
    (site / "llmmem_sophia.py").write_text("raise ImportError('needs torch')\n")
    proc = _check(tmp_path, site)
    assert proc.returncode == 2
    assert "an llmmem plugin failed to load: ImportError: needs torch" in proc.stderr
    assert "LLMMEM_DISABLE_PLUGINS" in proc.stderr


def test_plugin_object_in_process():
    plugin = types.SimpleNamespace(
        llmmem_register_gpus=hookimpl(lambda register: register(GPU("TPU-v5e", 16 * 1024**3))),
    )
    catalog = Catalog(extra_plugins=[plugin])
    assert catalog.gpu("tpu v5e").memory_bytes == 16 * 1024**3
    assert catalog.gpu("A100-80GB").name == "A100-80GB"  # built-ins are still there


def test_a_name_registered_twice_is_an_error():
    plugin = types.SimpleNamespace(
        llmmem_register_optimizers=hookimpl(lambda register: register(Optimizer("AdamW", 3))),
    )
    with pytest.raises(ConfigError, match='optimizer "AdamW" is registered twice, by plugin "builtin"'):
        Catalog(extra_plugins=[plugin])


def test_builtins_called_directly_equal_builtins_through_pluggy():
    # Without a plugin the catalog calls the built-ins' hook implementations itself (pluggy and the
    # inspect module it imports cost every `llmmem check` ~7 ms); once a plugin is in play the same
    # built-ins are registered with pluggy. Both ways must give the same tables, entry for entry.
    direct = Catalog()
    through_pluggy = Catalog(extra_plugins=[types.SimpleNamespace()])  # a plugin with no hooks
    assert direct._pm is None and through_pluggy._pm is not None
    for table in ("dtypes", "optimizers", "gpus", "families", "engines", "adapters", "profiles", "readers"):
        mine, theirs = getattr(direct, table), getattr(through_pluggy, table)
        assert (mine.names, mine.entries, mine.owners) == (theirs.names, theirs.entries, theirs.owners), table
    assert "A100-80GB" in direct.gpus.names and set(direct.gpus.owners.values()) == {"builtin"}


def test_an_unknown_name_loads_pluggy_and_still_finds_the_builtins(monkeypatch):
    monkeypatch.setenv("LLMMEM_DISABLE_PLUGINS", "")
    catalog = Catalog()
    with pytest.raises(ConfigError, match='unknown gpu "Gaudi9"'):
        catalog.gpu("Gaudi9")  # a miss loads the entry points, through pluggy
    assert catalog._pm is not None and catalog._pm.get_plugin("builtin") is not None
    assert catalog.gpu("A100-80GB").memory_bytes == 81920 * 1024**2  # nvidia-smi's 81920 MiB (builtin.py)


TOY_ENGINE_RUN = '''
[tool.llmmem]
gpu = "A100-80GB"
[tool.llmmem.model]
hidden-size = 4096
num-layers = 32
num-heads = 32
num-kv-heads = 8
intermediate-size = 14336
vocab-size = 128256
max-position-embeddings = 131072
[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
engine = "toy"
'''


def test_a_plugin_engine_is_one_entry_and_serves_like_a_builtin(tmp_path, monkeypatch):
    # The plugin touches nothing but its entry: an Engine whose start-up is its own function. Here it is
    # vLLM's with a 10 % smaller KV pool, so the figures can be checked against the built-in engine.
    from pytest_llmmem.catalog import registry
    from pytest_llmmem.catalog.entries import Engine
    from pytest_llmmem.config.load import load
    from pytest_llmmem.estimator import estimate
    from pytest_llmmem.serving import vllm_engine

    def toy_startup(run):
        s = vllm_engine.startup(run)
        return s._replace(engine="toy", kv_pool_bytes=round(s.kv_pool_bytes * 0.9))

    plugin = types.SimpleNamespace(llmmem_register_engines=hookimpl(lambda register: register(Engine("toy", toy_startup))))
    monkeypatch.setattr(registry, "_DEFAULT", Catalog(extra_plugins=[plugin]))
    (tmp_path / "pyproject.toml").write_text(TOY_ENGINE_RUN)
    toy = estimate(load(tmp_path / "pyproject.toml").runs[0])
    (tmp_path / "pyproject.toml").write_text(TOY_ENGINE_RUN.replace('engine = "toy"', 'engine = "vllm"'))
    vllm = estimate(load(tmp_path / "pyproject.toml").runs[0])
    assert toy.serving.engine == "toy" and vllm.serving.engine == "vllm"
    assert toy.breakdown["kv_cache"] == round(vllm.breakdown["kv_cache"] * 0.9)
    assert toy.breakdown["weights"] == vllm.breakdown["weights"]


def test_an_unknown_engine_names_the_registered_ones(tmp_path):
    from pytest_llmmem.config.load import load

    (tmp_path / "pyproject.toml").write_text(TOY_ENGINE_RUN.replace('engine = "toy"', 'engine = "vlm"'))
    with pytest.raises(ConfigError, match='"vlm" is not valid. Did you mean "vllm"'):
        load(tmp_path / "pyproject.toml")


TOY_TRAINING_RUN = TOY_ENGINE_RUN.replace('mode = "inference"\nengine = "toy"', 'mode = "lora"\nseq-len = 4096\nframework = "acme"')


def _estimate_with(plugin, tmp_path, monkeypatch, text):
    """One run of ``text`` estimated with ``plugin`` registered beside the built-ins (nothing else changed)."""
    from pytest_llmmem.catalog import registry
    from pytest_llmmem.config.load import load
    from pytest_llmmem.estimator import estimate

    monkeypatch.setattr(registry, "_DEFAULT", Catalog(extra_plugins=[plugin]))
    (tmp_path / "pyproject.toml").write_text(text)
    return estimate(load(tmp_path / "pyproject.toml").runs[0])


def test_a_plugin_profile_is_one_entry_and_sets_its_trainers_defaults(tmp_path, monkeypatch):
    # The plugin's only code is its Profile: the HF Trainer's defaults with Liger's fused loss. So a run
    # with framework = "acme" must price exactly as framework = "transformers" with loss = "fused" set
    # by hand (same knobs, the loss's logits never materialised), and below the stock upcast loss.
    from pytest_llmmem.catalog.profiles import PROFILES

    acme = PROFILES["transformers"]._replace(name="acme", loss="fused", keeps_logits=False, describes="Acme (Liger fused CE)")
    plugin = types.SimpleNamespace(llmmem_register_profiles=hookimpl(lambda register: register(acme)))
    toy = _estimate_with(plugin, tmp_path, monkeypatch, TOY_TRAINING_RUN)
    by_hand = _estimate_with(plugin, tmp_path, monkeypatch, TOY_TRAINING_RUN.replace('framework = "acme"', 'loss = "fused"'))
    stock = _estimate_with(plugin, tmp_path, monkeypatch, TOY_TRAINING_RUN.replace('framework = "acme"', ""))
    assert toy.run.knobs.framework == "acme" and toy.run.knobs.loss == "fused"
    assert toy.breakdown == by_hand.breakdown and toy.phases == by_hand.phases
    assert toy.total_bytes < stock.total_bytes
    assert toy.run.job == stock.run.job  # no phase defaults given: the HF Trainer's (phase_keys._HF)


def test_an_unknown_framework_names_the_registered_profiles(tmp_path):
    from pytest_llmmem.config.load import load

    (tmp_path / "pyproject.toml").write_text(TOY_TRAINING_RUN.replace('"acme"', '"torchtun"'))
    with pytest.raises(ConfigError, match='"torchtun" is not valid. Did you mean "torchtune"'):
        load(tmp_path / "pyproject.toml")


def _acme_read(m, base_dir):
    """The toy trainer's three keys as run keys (what a built-in reader does, keys/<format>.txt aside)."""
    m.put("model", {"params": m.get("model_size")}, "model_size")
    m.put("batch-size", m.get("per_gpu_batch", 1), "per_gpu_batch")
    m.put("seq-len", m.get("max_tokens", 2048), "max_tokens")


ACME_READER = types.SimpleNamespace(llmmem_register_readers=hookimpl(lambda register: register(
    Reader("acme", _acme_read, detect=lambda data: "model_size" in data, keys=("model_size", "per_gpu_batch", "max_tokens")))))


def test_a_plugin_reader_is_one_entry_and_reads_like_the_run_keys_it_maps_to(tmp_path, monkeypatch):
    # The plugin's only code is its Reader; a file it detects (no format = ...) must estimate exactly
    # as the same three settings written as run keys in pyproject.toml.
    (tmp_path / "acme.yaml").write_text("model_size: 7B\nper_gpu_batch: 2\nmax_tokens: 1024\n")
    head = '[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\n'
    read = _estimate_with(ACME_READER, tmp_path, monkeypatch, head + f'from = "{tmp_path / "acme.yaml"}"\n')
    written = _estimate_with(ACME_READER, tmp_path, monkeypatch, head + 'name = "acme"\nbatch-size = 2\nseq-len = 1024\n'
                                                                        '[tool.llmmem.runs.model]\nparams = "7B"\n')
    assert (read.run.batch_size, read.run.seq_len) == (2, 1024)
    assert read.breakdown == written.breakdown and read.params == written.params


def test_a_plugin_readers_keys_catch_a_typo(tmp_path, monkeypatch):
    from pytest_llmmem.catalog import registry
    from pytest_llmmem.config.load import load

    monkeypatch.setattr(registry, "_DEFAULT", Catalog(extra_plugins=[ACME_READER]))
    (tmp_path / "acme.yaml").write_text("model_size: 7B\nper_gpu_bach: 2\n")
    (tmp_path / "pyproject.toml").write_text(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "acme.yaml"\nformat = "acme"\n')
    with pytest.raises(ConfigError, match='unknown acme key "per_gpu_bach". Did you mean "per_gpu_batch"'):
        load(tmp_path / "pyproject.toml")


# A recipe a plugin adds with its entry alone: DPO with a frozen reward model scoring beside the reference
# (the hookspecs.py example). Every other module reads what it declares; nothing names it.
JUDGED_DPO_PLUGIN = '''
from pytest_llmmem.catalog import Recipe
from pytest_llmmem.hookspecs import hookimpl

JUDGED_DPO = Recipe("judged-dpo", keys=("beta", "reference-model", "max-length", "max-prompt-length"),
                    models=("policy", "reference", "reward"), rows_per_example=2, head="fused", beta=0.1,
                    ways_out=("mode",), doc="DPO scored by a frozen reward model")

@hookimpl
def llmmem_register_recipes(register):
    register(JUDGED_DPO)
'''
TOY_RECIPE_RUN = TOY_ENGINE_RUN.replace('name = "serve"\nmode = "inference"\nengine = "toy"',
                                        'name = "judged"\nrecipe = "judged-dpo"\nbeta = 0.2\nmax-length = 1024')
# By hand: the toy model is Llama-3-8B's shape, 8,030,261,248 params. Its reward model is the policy's
# sequence-classification twin (recipes.score_model_params): less the untied 128,256 x 4,096 LM head,
# plus a 4,096 x 1 score, 7,504,928,768 params, frozen in bf16 on the one GPU: 15,009,857,536 B.
REWARD_MODEL_BYTES = (8_030_261_248 - 128_256 * 4_096 + 4_096) * 2


def _judged_dpo_plugin():
    module = types.ModuleType("llmmem_judged_dpo")
    exec(JUDGED_DPO_PLUGIN, module.__dict__)
    return module


def test_a_plugin_recipe_is_one_entry_and_prices_the_models_it_declares(tmp_path, monkeypatch):
    from pytest_llmmem.fit.recipes import recipe_changes

    plugin = _judged_dpo_plugin()
    toy = _estimate_with(plugin, tmp_path, monkeypatch, TOY_RECIPE_RUN)
    dpo = _estimate_with(plugin, tmp_path, monkeypatch, TOY_RECIPE_RUN.replace('"judged-dpo"', '"dpo"'))
    assert toy.run.recipe.beta == 0.2 and toy.run.recipe.reference  # its keys read as it declares them
    assert toy.breakdown["reward_model"] == REWARD_MODEL_BYTES == 15_009_857_536 and dpo.breakdown["reward_model"] == 0
    assert {k: v for k, v in toy.breakdown.items() if k != "reward_model"} == {k: v for k, v in dpo.breakdown.items() if k != "reward_model"}
    assert toy.total_bytes == dpo.total_bytes + REWARD_MODEL_BYTES
    assert toy.notes[0] == "judged-dpo: chosen and rejected run in one forward: 2 rows of 1024 tokens"
    # fit offers only the ways out it names: a LoRA policy, which also drops the reference copy
    assert [(key, changed.recipe.reference) for key, _, _, changed in recipe_changes(toy.run)] == [("mode", False)]


def test_a_plugin_recipe_declared_in_a_pyproject_is_checked_and_reported(tmp_path):
    # Found through the entry point like any plugin: the built-ins lack "judged-dpo", so the plugins load.
    site = _install(tmp_path, "judged_dpo", JUDGED_DPO_PLUGIN)
    (tmp_path / "pyproject.toml").write_text(TOY_RECIPE_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("LLMMEM_DISABLE_PLUGINS", None)
    check = [sys.executable, "-m", "pytest_llmmem.cli", "check", str(tmp_path / "pyproject.toml")]
    report = subprocess.run(check + ["--format", "json"], capture_output=True, text=True, env=env)
    assert report.returncode == 1, report.stderr  # about 181 GB for the full fine-tune, over the A100's 80 GiB
    run = json.loads(report.stdout)["runs"][0]
    assert run["breakdown"]["reward_model"] == REWARD_MODEL_BYTES and run["breakdown"]["reference_model"] > 0
    text = subprocess.run(check, capture_output=True, text=True, env=env)
    assert "train (judged-dpo)" in text.stdout and "reward model" in text.stdout
    # A recipe key it does not declare is the same contradiction as on a built-in, its name among the valid ones.
    (tmp_path / "pyproject.toml").write_text(TOY_RECIPE_RUN + "num-generations = 4\n")
    wrong = subprocess.run(check, capture_output=True, text=True, env=env)
    assert wrong.returncode == 2
    assert 'only applies to recipe = "grpo"; run "judged" has recipe = "judged-dpo"' in wrong.stderr + wrong.stdout
    assert '"ppo", "reward" or "judged-dpo" on the run' in wrong.stderr + wrong.stdout
