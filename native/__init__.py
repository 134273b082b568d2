"""The hot path: Cython functions with pure-Python twins of identical behaviour.

The compiled module is used when it is installed; KASSA_NO_EXTENSIONS=1 forces the
twins. This package imports nothing of the project.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from native import _py


def _choose() -> tuple[ModuleType, bool]:
    if os.environ.get("KASSA_NO_EXTENSIONS") == "1":
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

__all__ = ["BLOCK_SPAN", "CREDIT", "DEBIT", "USING_EXTENSIONS", "block_codes", "post_batch",
           "receipt_codes"]
