"""The hot path: Cython functions with pure-Python twins of identical behaviour.

The compiled module is used when it is installed; KASSA_NO_EXTENSIONS=1 forces the
twins. This package imports nothing of the project.
"""

from __future__ import annotations

import os

from native import _py

if os.environ.get("KASSA_NO_EXTENSIONS") == "1":
    _impl = _py
    USING_EXTENSIONS = False
else:
    try:
        from native import _speedups as _impl  # type: ignore[no-redef]
    except ImportError:
        _impl = _py
        USING_EXTENSIONS = False
    else:
        USING_EXTENSIONS = True

receipt_codes = _impl.receipt_codes
post_batch = _impl.post_batch
DEBIT, CREDIT = _py.DEBIT, _py.CREDIT

__all__ = ["CREDIT", "DEBIT", "USING_EXTENSIONS", "post_batch", "receipt_codes"]
