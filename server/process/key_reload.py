"""API keys from KASSA_API_KEYS_FILE, read again while the server runs: no restart, no
connection closed (docs/operations.md, Secrets).

Each worker looks at the file's identity (device, inode, modification time, size: one
stat) every KASSA_API_KEYS_POLL_INTERVAL_MS and reads it again when that changed, which
sees an edit in place, a rename over it and a Kubernetes secret update (its symlink
swapped). SIGHUP to `kassa serve` makes every worker read it at once: the master forwards
the signal (gunicorn_app.KassaArbiter) instead of gunicorn's reload, which replaces every
worker and so closes every keep-alive connection and every pool. The new keys apply from
each worker's next request, on connections already open too. A file that cannot be read or
parsed keeps the keys in use, and the error is logged: a bad edit never locks clients out.

The master runs the same watch without serving (each pass of its loop, and on SIGHUP), so
that a worker it forks later starts with the last valid keys even if the file is bad then
(settings.api_keys_from_file).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from server.process.settings import ConfigError, api_keys_from_file, parse_api_keys

log = logging.getLogger("kassa.keys")

Identity = tuple[int, int, int, int]


class KeyFileWatch:
    def __init__(self, path: str, apply: Callable[[dict[str, str]], None],
                 current: dict[str, str] | None = None) -> None:
        self.path = path
        self._apply = apply
        self._current = current
        self._seen = self._identity()
        self._wake = asyncio.Event()

    def _identity(self) -> Identity | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size

    def check(self, *, force: bool = False) -> bool:
        """Read the file again if it changed since the last look (or `force`); True when
        other keys were applied."""
        identity = self._identity()
        if identity == self._seen and not force:
            return False
        self._seen = identity
        try:
            keys = parse_api_keys(api_keys_from_file(self.path))
        except ConfigError as exc:  # invalid, and no valid text read before in this process
            log.error("%s; keeping the API keys in use", exc)
            return False
        if keys == self._current:
            return False
        self._current = keys
        self._apply(keys)
        log.info("API keys read again from %s: %d keys", self.path, len(keys))
        return True

    def wake(self) -> None:
        """Read the file at once (SIGHUP), whether it looks changed or not."""
        self._wake.set()

    async def run(self, interval_s: float) -> None:
        """Check every `interval_s`, and when woken, until cancelled."""
        _WATCHES.add(self)
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), interval_s)
                except TimeoutError:
                    self.check()
                else:
                    self._wake.clear()
                    self.check(force=True)
        finally:
            _WATCHES.discard(self)


# The watches running in this process, for the SIGHUP handler of a worker.
_WATCHES: set[KeyFileWatch] = set()


def reload_requested() -> None:
    """SIGHUP in a worker: every key file is read again now."""
    for watch in list(_WATCHES):
        watch.wake()
