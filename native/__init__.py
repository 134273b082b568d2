"""The hot path: Cython functions with pure-Python twins of identical behaviour.

The compiled module is used when it is installed; KASSA_NO_EXTENSIONS=1 forces the
twins. This package imports nothing of the project.

KASSA_NO_EXTENSIONS is a setting like the others: server/process/settings.py defines it
(`no_extensions`, "0" or "1", validated and documented with the rest). The choice has to
be made when this package is first imported, before any settings are loaded, and native/
may not import server/, so `twins_forced` applies the same rule to the environment here;
tests/unit/test_settings.py checks the two agree.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType

from native import _py

NO_EXTENSIONS_VARIABLE = "KASSA_NO_EXTENSIONS"


def twins_forced(environ: Mapping[str, str]) -> bool:
    """Whether this environment forces the pure-Python twins (settings' `no_extensions`)."""
    return environ.get(NO_EXTENSIONS_VARIABLE, "").strip() == "1"


def _choose() -> tuple[ModuleType, bool]:
    if twins_forced(os.environ):
        return _py, False
    try:
        return importlib.import_module("native._speedups"), True
    except ImportError:
        return _py, False


_impl, USING_EXTENSIONS = _choose()

receipt_codes = _impl.receipt_codes
block_codes = _impl.block_codes
post_batch = _impl.post_batch
DEBIT, CREDIT = _py.DEBIT, _py.CREDIT
BLOCK_SPAN = _py.BLOCK_SPAN

__all__ = ["BLOCK_SPAN", "CREDIT", "DEBIT", "NO_EXTENSIONS_VARIABLE", "USING_EXTENSIONS",
           "block_codes", "post_batch", "receipt_codes", "twins_forced"]
