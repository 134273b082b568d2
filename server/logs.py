"""Log format and level (KASSA_LOG_LEVEL; `warning` silences per-transaction lines)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    # Third-party chatter stays at warning whatever our level is.
    for noisy in ("aiokafka", "asyncio", "pgserver", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
