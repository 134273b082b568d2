"""Wall-clock time as the ledger writes it: UTC, microseconds, ISO 8601 with a Z."""

from __future__ import annotations

import datetime as dt


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
