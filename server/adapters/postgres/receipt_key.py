"""The secret of the receipt code permutation (core/kit/code_cipher.py): one row of
receipt_code_key, made by migration 012, the same for every process sharing the database."""

from __future__ import annotations

import asyncpg

from server.adapters.postgres.pool import converted_errors

READ_SECRET = "SELECT secret FROM receipt_code_key"


async def receipt_code_secret(pool: asyncpg.Pool) -> bytes:
    """Raises Unavailable when the database cannot be reached."""
    async with converted_errors():
        secret: bytes | None = await pool.fetchval(READ_SECRET)
    assert secret is not None, "receipt_code_key is empty: migration 012 makes its row"
    return secret
