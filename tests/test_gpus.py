"""GPU names: an ambiguous one is an error listing the cards it could mean, and each card's
capacity is what its driver reports (issue 10 item 4)."""

import pytest

from pytest_llmmem.catalog.registry import default_catalog
from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError

MiB = 2**20


@pytest.mark.parametrize("name, choices", [
    ("A100", "A100-40GB (40.00 GiB) or A100-80GB (80.00 GiB)"),
    ("a100", "A100-40GB (40.00 GiB) or A100-80GB (80.00 GiB)"),
    ("V100", "V100-16GB (15.78 GiB) or V100-32GB (32.00 GiB)"),
    ("H100", "H100-80GB (79.65 GiB) or H100-NVL (93.58 GiB)"),
    ("NVIDIA H100", "H100-80GB (79.65 GiB) or H100-NVL (93.58 GiB)"),
    ("A6000", "RTX-A6000 (47.99 GiB) or RTX-6000-Ada (47.99 GiB)"),
    ("GH200", "GH200-96GB (95.58 GiB) or GH200-144GB (143.39 GiB)"),
])
def test_an_ambiguous_name_lists_the_choices(name, choices):
    with pytest.raises(ConfigError) as info:
        default_catalog().gpu(name)
    assert str(info.value) == (f'gpu "{name}" is ambiguous: it could be {choices}. '
                               f"Name the card you have, as nvidia-smi or rocm-smi prints it or as listed by llmmem catalog gpus.")


def test_ambiguous_gpu_in_a_pyproject_names_the_key_and_line():
    text = '[tool.llmmem]\ngpu = "A100"\n\n[tool.llmmem.model]\nparams = "7B"\n\n[[tool.llmmem.runs]]\nname = "sft"\n'
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith('pyproject.toml:2: tool.llmmem.gpu: gpu "A100" is ambiguous: it could be A100-40GB')


# Capacities as the driver reports them (nvidia-smi "MiB" total; rocm-smi bytes); each figure's
# source is in the comment beside its entry in pytest_llmmem/catalog/builtin.py.
@pytest.mark.parametrize("spelling, total", [
    ("NVIDIA RTX A6000", 49140 * MiB),
    ("RTX A6000", 49140 * MiB),
    ("NVIDIA RTX 6000 Ada Generation", 49140 * MiB),
    ("A6000 Ada", 49140 * MiB),
    ("NVIDIA A10", 23028 * MiB),
    ("NVIDIA A40", 46068 * MiB),
    ("NVIDIA L40", 46068 * MiB),
    ("NVIDIA GH200 480GB", 97871 * MiB),
    ("NVIDIA GH200 144G HBM3e", 146831 * MiB),
    ("NVIDIA H20", 97871 * MiB),
    ("NVIDIA GB200", 189471 * MiB),
    ("AMD Instinct MI250X", 68702699520),
    ("MI325X", 256 * 10**9),
    ("B100", 192 * 10**9),
    ("H100 SXM", 81559 * MiB),
    ("H100 PCIe", 81559 * MiB),
    ("H100 NVL", 95830 * MiB),
])
def test_new_cards_report_the_driver_total(spelling, total):
    assert default_catalog().gpu(spelling).memory_bytes == total


def test_catalog_lists_cards_not_ambiguous_names(run_cli):
    code, out, _ = run_cli("catalog", "gpus")
    assert code == 0
    assert "RTX-A6000" in out and "GB200" in out
    assert "\n  A100 " not in out and "\n  GH200 " not in out


@pytest.mark.parametrize("name, capability", [
    # NVIDIA's CUDA GPUs table (developer.nvidia.com/cuda-gpus).
    ("T4", (7, 5)), ("V100-16GB", (7, 0)), ("V100-32GB", (7, 0)), ("A100-80GB", (8, 0)), ("A10G", (8, 6)),
    ("RTX-3090", (8, 6)), ("L4", (8, 9)), ("RTX-4090", (8, 9)), ("H100-80GB", (9, 0)), ("GH200-96GB", (9, 0)),
    ("B200", (10, 0)), ("RTX-5090", (12, 0)), ("GB10", (12, 1)),
])
def test_cards_know_their_compute_capability(name, capability):
    assert default_catalog().gpu(name).compute_capability == capability


def test_every_nvidia_card_has_a_compute_capability_and_no_amd_card_has_one():
    cat = default_catalog()
    cards = [cat.gpu(name) for name in cat.gpus.names]
    assert [c.name for c in cards if c.kind.startswith("nvidia") and c.compute_capability is None] == []
    assert [c.name for c in cards if c.kind.startswith("amd") and c.compute_capability is not None] == []


def test_names_normalise_alike_on_the_fast_path_and_the_slow_one():
    # registry.normalize_name skips its regular expressions when removing - _ . and spaces leaves only
    # letters and digits; any other separator (a tab, a no-break space, an em space) still goes through
    # them. Each expected key below is the input lower-cased, vendor prefixes and separators removed by hand.
    from pytest_llmmem.catalog.registry import normalize_name

    assert normalize_name("NVIDIA A100-SXM4-80GB") == "a100sxm480gb"
    assert normalize_name("nvidia nvidia H100") == "h100"
    assert normalize_name("Tesla V100-16GB") == "v10016gb"
    assert normalize_name("amdx-1") == "amdx1"  # no separator after "amd": not a vendor prefix
    assert normalize_name("a100\t80gb") == normalize_name("a100\u00a080gb") == normalize_name("a100\u200380gb") == "a10080gb"
    assert normalize_name("x+y") == "x+y" and normalize_name(" - ") == ""
