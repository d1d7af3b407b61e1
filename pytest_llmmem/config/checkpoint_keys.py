"""The gradient-checkpointing and selective-ac keys: true / false / "full" / "selective", and torchtitan's
selective option ("op" or a layer period). What each keeps is core/terms/checkpointing.py.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Tuple

from ..errors import did_you_mean, shown
from ..core.terms.checkpointing import DEFAULT_SELECTIVE

CHECKPOINTING = ("true", "false", "full", "selective")


def checkpoint_setting(table: Any, default: bool, mode: str) -> Tuple[bool, str]:
    """(checkpointing on, selective option: "" for none or full, "op", or a layer period as digits)."""
    value = table.values.get("gradient-checkpointing", default)
    if isinstance(value, str) and value.strip().lower() in CHECKPOINTING:
        value = {"true": True, "false": False, "full": True}.get(value.strip().lower(), "selective")
    if not isinstance(value, bool) and value != "selective":
        raise table.fail("gradient-checkpointing", f"expected true, false or \"selective\", got {shown(value)}.{did_you_mean(str(value), CHECKPOINTING)}",
                         hint='true (or "full") checkpoints every layer; "selective" follows selective-ac = "op" or a layer period (torchtitan).')
    if "selective-ac" in table and value != "selective":
        raise table.fail("selective-ac", 'only applies to gradient-checkpointing = "selective".',
                         hint='Add gradient-checkpointing = "selective", or drop selective-ac.')
    if value != "selective":
        return value, ""
    option = table.values.get("selective-ac", DEFAULT_SELECTIVE)
    if isinstance(option, int) and not isinstance(option, bool):
        option = str(option)
    if not isinstance(option, str) or not (option == "op" or (option.isdigit() and int(option) >= 1)):
        raise table.fail("selective-ac", f"expected \"op\" or a layer period (a whole number from 1), got {shown(option)}.{did_you_mean(str(option), ('op',))}",
                         hint='"op" saves the matmul and attention outputs of every layer; 2 checkpoints every second layer (torchtitan).')
    return True, str(int(option)) if option.isdigit() else option
