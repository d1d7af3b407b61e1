import math

import pytest

from pytest_llmmem.units import GiB, UnitError, format_bytes, format_count, parse_bytes, parse_count


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80GB", 80 * 10**9),  # GB is decimal
        ("80 GiB", 80 * 1024**3),  # GiB is binary
        ("80G", 80 * 1024**3),  # bare G follows nvidia-smi / PyTorch: binary
        ("81920MiB", 81920 * 1024**2),  # = 80 GiB, what nvidia-smi shows for an A100-80GB
        ("7.5e10 B", 75_000_000_000),  # a byte count says so
        ("1.5 TB", 1_500_000_000_000),
        ("512 kib", 512 * 1024),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_81920_mib_is_80_gib():
    assert parse_bytes("81920MiB") == parse_bytes("80 GiB")


@pytest.mark.parametrize("text", ["80 GiBs", "eighty", "", "-1 GiB", "0 GB", "nan", "inf GB", True, [80], math.nan, math.inf, 0.5, "0.4 B"])
def test_parse_bytes_rejects(text):
    with pytest.raises(UnitError):
        parse_bytes(text)


def test_zero_allowed_where_asked():
    assert parse_bytes("0 GiB", allow_zero=True) == 0
    assert parse_bytes(0, allow_zero=True) == parse_bytes("0", allow_zero=True) == 0  # zero needs no unit


@pytest.mark.parametrize("text", ["10", 10, 1024, "7.5e10", 7.5e10, " 80 "])
def test_a_number_without_a_unit_is_refused(text):
    """headroom = "10" was 10 bytes (issue 23 §3): bytes, GiB and % are all plausible, so none is guessed."""
    with pytest.raises(UnitError, match="has no unit, so it could be bytes, GiB or GB"):
        parse_bytes(text)


@pytest.mark.parametrize(
    "text, expected",
    [("7B", 7 * 10**9), ("6.74B", 6_740_000_000), ("350M", 350_000_000), ("7e9", 7 * 10**9), (7000000000, 7 * 10**9), ("1.5T", 1_500_000_000_000)],
)
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["7 GB", "seven", "-7B", 0, "inf", True])
def test_parse_count_rejects(text):
    with pytest.raises(UnitError):
        parse_count(text)


def test_format_bytes_units_are_always_printed():
    # 14e9 bytes (the seed's 7B bf16 weights) / 1024^3 = 13.0385 GiB
    assert format_bytes(14e9) == "13.04 GiB"
    assert format_bytes(14e9, "gb") == "14.00 GB"
    assert format_bytes(GiB) == "1.00 GiB"


def test_format_count():
    assert format_count(6_738_415_616) == "6.74B"
    assert format_count(124_439_808) == "124.44M"
