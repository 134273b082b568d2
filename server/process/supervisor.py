"""`kassa serve` keeps the children it started running: a receipt or notification service,
the embedded PostgreSQL, Redis or broker that dies is started again, on the same address
(its port or socket), so the workers' clients reconnect by themselves.

    running ──(dies)──▶ waiting (backoff) ──(due)──▶ restart ──ok──▶ running
                                 ▲                        │
                                 └─────────(fails)────────┘

The wait starts at KASSA_RESTART_BACKOFF_MIN_MS (0.5 s) and doubles for each death or
failed start that follows quickly, up to KASSA_RESTART_BACKOFF_MAX_S (30 s); a child that
ran STABLE_S (60 s) starts again from the minimum. Every death and restart is logged
(`[SUPERVISOR]`) and counted in kassa_child_restarts_total{child}.

One thread in the gunicorn master checks the children every POLL_S. The decisions
(`Backoff`, `Supervisor.check`) take the time as an argument, so they are tested with fake
children and no sleeping; the children themselves are server/process/embedded.py's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter

log = logging.getLogger("kassa.supervisor")

# Counted in the gunicorn master: import this module only after PROMETHEUS_MULTIPROC_DIR is
# set (cmd_serve's prepare_metrics_dir), so the count lands in the directory the workers'
# /metrics aggregates.
RESTARTS = Counter("kassa_child_restarts", "Children of kassa serve restarted after they died",
                   ["child"])

POLL_S = 0.2
STABLE_S = 60.0


class Child(Protocol):
    """One supervised child: what it is, whether it still runs, how to start it again."""

    name: str

    def pid(self) -> int | None: ...

    def exited(self) -> str | None:
        """None while it runs; else how it ended, for the log ("killed by SIGKILL")."""

    def restart(self) -> None:
        """Start it again on the same address and return once it serves; raise if not."""


@dataclass
class Backoff:
    """The waits before restarting one child."""

    min_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = STABLE_S
    _next_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        assert 0 < self.min_s <= self.max_s
        self._next_s = self.min_s

    def delay(self, ran_for_s: float) -> float:
        """The wait before the next start of a child that ran `ran_for_s` (0: it failed to
        start): the minimum after a stable run, else the last wait doubled."""
        if ran_for_s >= self.stable_s:
            self._next_s = self.min_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


@dataclass
class _Watch:
    child: Child
    backoff: Backoff
    started_at: float
    due: float | None = None  # when it is to be started again; None while it runs
    restarts: int = 0


class Supervisor:
    def __init__(self, children: Sequence[Child], *, backoff_min_s: float = 0.5,
                 backoff_max_s: float = 30.0, stable_s: float = STABLE_S,
                 clock: Callable[[], float] = time.monotonic,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self._clock = clock
        self._on_restart = on_restart
        now = clock()
        self._watches = [_Watch(c, Backoff(backoff_min_s, backoff_max_s, stable_s), now)
                         for c in children]
        for child in children:  # each child's count exists from the start, at 0
            RESTARTS.labels(child=child.name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def restarts(self) -> dict[str, int]:
        return {w.child.name: w.restarts for w in self._watches}

    def check(self) -> None:
        """One pass: note the children that died, restart those whose wait is over."""
        for watch in self._watches:
            if self._stop.is_set():
                return
            if watch.due is None:
                how = watch.child.exited()
                if how is None:
                    continue
                now = self._clock()
                delay = watch.backoff.delay(now - watch.started_at)
                watch.due = now + delay
                log.warning("[SUPERVISOR] %s (pid %s) %s after %.1f s; restarting in %.1f s",
                            watch.child.name, watch.child.pid(), how, now - watch.started_at,
                            delay)
            if watch.due is not None and self._clock() >= watch.due:
                self._restart(watch)

    def _restart(self, watch: _Watch) -> None:
        name = watch.child.name
        try:
            watch.child.restart()
        except Exception as exc:  # noqa: BLE001 - whatever it was, try again later
            delay = watch.backoff.delay(0.0)
            watch.due = self._clock() + delay
            log.error("[SUPERVISOR] %s could not be restarted (%s); next try in %.1f s",
                      name, exc, delay)
            return
        watch.due = None
        watch.started_at = self._clock()
        watch.restarts += 1
        log.warning("[SUPERVISOR] restarted %s (pid %s; restart %d)", name, watch.child.pid(),
                    watch.restarts)
        RESTARTS.labels(child=name).inc()
        if self._on_restart is not None:
            self._on_restart(name)

    def start(self, poll_s: float = POLL_S) -> None:
        def run() -> None:
            while not self._stop.wait(poll_s):
                try:
                    self.check()
                except Exception:  # a bug here must not end supervision
                    log.exception("[SUPERVISOR] check failed")

        self._thread = threading.Thread(target=run, name="kassa-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """No restart after this returns (a restart under way is finished first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
