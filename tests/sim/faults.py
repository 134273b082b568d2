"""Where and how the simulator injects faults: every awaited port method is an await point,
and at each the seed chooses nothing, a delay, or the death of the calling process (before
the call, or after it returned: its effect stands, the process never learns of it). At a
commit point it may also lose the COMMIT's acknowledgement, the commit landing or not.
Dependencies go down for a while on the outage schedule the seed drew (`Outages`).

Every fault injected is counted as (fault, point): `make sim` reports which pairs the
seeds reached.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

CRASH_BEFORE, CRASH_AFTER, SLOW = "crash-before", "crash-after", "slow"
LOST_ACK_LANDED, LOST_ACK_NOT_LANDED, DOWN = "lost-ack-landed", "lost-ack-not-landed", "down"
DEPENDENCIES = ("db", "redis", "receipts", "broker")


@dataclass
class Profile:
    """A seed's fault rates (per await point) and outage count: drawn once per seed, so
    some seeds are calm and some are storms."""

    crash: float
    lost_ack: float
    slow: float
    outages: int

    @classmethod
    def draw(cls, rng: random.Random) -> Profile:
        return cls(crash=rng.choice((0.0, 0.002, 0.005, 0.01)),
                   lost_ack=rng.choice((0.0, 0.02, 0.05)),
                   slow=rng.choice((0.0, 0.02, 0.1)),
                   outages=rng.choice((0, 0, 1, 2, 3)))


class Killed(asyncio.CancelledError):
    """The calling process died at this await point (a CancelledError: nothing in the
    process catches it, as nothing runs in a dead process)."""


@dataclass
class Faults:
    rng: random.Random
    profile: Profile
    enabled: bool = True
    reached: Counter[tuple[str, str]] = field(default_factory=Counter)
    trace: list[str] | None = None

    def choose(self, point: str, *, commit: bool) -> str | None:
        """The fault at this await point, if any (only while faults are enabled)."""
        if not self.enabled:
            return None
        p, r = self.profile, self.rng.random()
        if r < p.crash:
            return CRASH_BEFORE if self.rng.random() < 0.5 else CRASH_AFTER
        r -= p.crash
        if commit and r < p.lost_ack:
            return LOST_ACK_LANDED if self.rng.random() < 0.5 else LOST_ACK_NOT_LANDED
        r -= p.lost_ack
        if r < p.slow:
            return SLOW
        return None

    def count(self, fault: str, point: str) -> None:
        self.reached[(fault, point)] += 1

    def delay_s(self) -> float:
        """A slow call: mostly tens of milliseconds, sometimes seconds (past the timeouts)."""
        return self.rng.choice((0.01, 0.05, 0.2, 1.0, 3.0))

    def log(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(line)
