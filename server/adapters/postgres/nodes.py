"""Node id leases: a live process holds its node id alone, on any host sharing the database.

Receipt codes made in-process carry a 10-bit node id and the process id. A node id derived
from the host name can collide between hosts; a leased one cannot while its holder renews
it (`renew` every few seconds, the lease lasting several times that). A crashed holder's
id becomes free when its lease expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from core.ledger.errors import KassaError, Unavailable
from server.adapters.postgres.pool import converted_errors

NODE_ID_MAX = 1023

# Take `node_id` unless a live process other than `owner` holds it.
LEASE_GIVEN = """
INSERT INTO node_leases (node_id, owner, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (node_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE node_leases.expires_at < now() OR node_leases.owner = excluded.owner
RETURNING node_id
"""

# Take the lowest free (or expired) id; a racing process may win it: the caller tries again.
LEASE_ANY = """
INSERT INTO node_leases (node_id, owner, expires_at)
SELECT n, $1, now() + make_interval(secs => $2) FROM generate_series(0, 1023) AS n
WHERE NOT EXISTS (SELECT 1 FROM node_leases l WHERE l.node_id = n AND l.expires_at >= now())
ORDER BY n LIMIT 1
ON CONFLICT (node_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE node_leases.expires_at < now()
RETURNING node_id
"""

RENEW = """
UPDATE node_leases SET expires_at = now() + make_interval(secs => $3)
WHERE node_id = $1 AND owner = $2
"""

ATTEMPTS = 5
log = logging.getLogger("kassa.nodes")


class NodeIdTaken(KassaError):
    code = "node_id_taken"


async def lease_node_id(pool: asyncpg.Pool, owner: str, lease_s: float,
                        wanted: int | None = None) -> int:
    """A node id for `owner`: `wanted` if no other live process holds it, else the lowest free.

    Raises NodeIdTaken when `wanted` is held by a live process or all 1,024 are.
    """
    async with converted_errors():
        if wanted is not None:
            if await pool.fetchval(LEASE_GIVEN, wanted, owner, lease_s) is None:
                raise NodeIdTaken(f"KASSA_NODE_ID={wanted} is held by another live process")
            return wanted
        for _ in range(ATTEMPTS):
            node_id = await pool.fetchval(LEASE_ANY, owner, lease_s)
            if node_id is not None:
                return int(node_id)
    raise NodeIdTaken(f"no free node id (0..{NODE_ID_MAX}) after {ATTEMPTS} attempts")


async def renew_node_id(pool: asyncpg.Pool, node_id: int, owner: str, lease_s: float) -> bool:
    """Extend the lease; False when it was lost (expired and taken by another process)."""
    async with converted_errors():
        done = await pool.execute(RENEW, node_id, owner, lease_s)
    return done.endswith(" 1")


async def release_node_ids(pool: asyncpg.Pool, owner: str) -> None:
    """On a clean stop: free the id at once instead of when the lease expires."""
    async with converted_errors():
        await pool.execute("DELETE FROM node_leases WHERE owner = $1", owner)


async def keep_node_id(pool: asyncpg.Pool, node_id: int, owner: str, lease_s: float,
                       on_change: Callable[[int], None]) -> None:
    """Renew the lease every third of its length until cancelled; when it was lost (the
    database was unreachable for longer than the lease and another process took the id),
    lease a new one and hand it to `on_change` before any further code is made."""
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            if await renew_node_id(pool, node_id, owner, lease_s):
                continue
            log.critical("node id %d lease lost; leasing another", node_id)
            node_id = await lease_node_id(pool, owner, lease_s)
            on_change(node_id)
        except Unavailable as exc:  # an outage: no traceback, one line per renewal at most
            log.warning("node id %d lease not renewed: %s", node_id, exc.message)
        except KassaError as exc:
            log.error("node id %d lease not renewed: %s", node_id, exc.message)
