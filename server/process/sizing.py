"""Workers and the database pool per worker, within the instance's connection budget.

One instance may open `KASSA_DB_CONNECTIONS_MAX` connections to PostgreSQL in all:

    workers × (pool + per-worker extras, the relay's dedicated connection)
    + fixed others (the receipt and notification services' pools, when this instance runs them)
    ≤ budget

The pool per worker is the largest that fits, at most `KASSA_DB_POOL_MAX` (the ceiling) and
never below POOL_MIN. A worker count that came from the CPUs (not asked for) is lowered to
what the budget fits; an explicit one that does not fit is refused with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.process.cpus import CpuLimit, available_cpus
from server.process.settings import ConfigError, Settings, is_given

__all__ = ["POOL_MIN", "Plan", "PoolBudget", "fit_workers", "plan", "size_pool"]

POOL_MIN = 2  # per worker: below this, one slow query stalls the worker's accept path


@dataclass(frozen=True)
class PoolBudget:
    pool: int  # asyncpg pool max per worker
    workers: int
    others: int  # every connection not in the workers' pools (relays, services)
    budget: int

    @property
    def total(self) -> int:
        return self.pool * self.workers + self.others

    def describe(self) -> str:
        return (f"database pool: {self.pool} per worker × {self.workers} workers + "
                f"{self.others} others ≤ budget {self.budget}")


def fit_workers(workers: int, budget: int, *, per_worker_extra: int, fixed_others: int) -> int:
    """The most workers (at most `workers`, at least 1) that fit with POOL_MIN each."""
    fits = (budget - fixed_others) // (POOL_MIN + per_worker_extra)
    return max(1, min(workers, fits))


def size_pool(workers: int, budget: int, *, pool_ceiling: int, per_worker_extra: int,
              fixed_others: int) -> PoolBudget:
    """The pool per worker; ConfigError if even POOL_MIN per worker does not fit."""
    if workers < 1:
        raise ConfigError(f"KASSA_WORKERS={workers}: at least 1")
    others = workers * per_worker_extra + fixed_others
    pool = min(pool_ceiling, (budget - others) // workers)
    if pool < min(POOL_MIN, pool_ceiling):  # an explicit KASSA_DB_POOL_MAX=1 is obeyed
        needed = workers * (POOL_MIN + per_worker_extra) + fixed_others
        raise ConfigError(
            f"KASSA_DB_CONNECTIONS_MAX={budget} cannot fit KASSA_WORKERS={workers} workers: "
            f"{POOL_MIN} pooled + {per_worker_extra} relay connection(s) each plus "
            f"{fixed_others} for the services need {needed}; raise KASSA_DB_CONNECTIONS_MAX "
            f"or lower KASSA_WORKERS")
    return PoolBudget(pool=pool, workers=workers, others=others, budget=budget)


@dataclass(frozen=True)
class Plan:
    workers: int
    source: str  # "KASSA_WORKERS", "--workers", or the CPU limit's source
    pool: PoolBudget

    def describe_workers(self) -> str:
        return f"workers: {self.workers} (from {self.source})"


def plan(settings: Settings, environ: Mapping[str, str], *, cli_workers: int | None = None,
         per_worker_extra: int, fixed_others: int, cpus: CpuLimit | None = None) -> Plan:
    """Workers (--workers, else KASSA_WORKERS, else the usable CPUs lowered to what the
    budget fits) and the pool per worker. ConfigError if an explicit count does not fit."""
    if cli_workers is not None:
        workers, source = cli_workers, "--workers"
    elif is_given("workers", environ):
        workers, source = settings.workers, "KASSA_WORKERS"
    else:
        cpus = cpus or available_cpus()
        workers, source = cpus.count, cpus.source
        fitted = fit_workers(workers, settings.db_connections_max,
                             per_worker_extra=per_worker_extra, fixed_others=fixed_others)
        if fitted < workers:
            source += f", lowered to fit KASSA_DB_CONNECTIONS_MAX={settings.db_connections_max}"
            workers = fitted
    budget = size_pool(workers, settings.db_connections_max, pool_ceiling=settings.db_pool_max,
                       per_worker_extra=per_worker_extra, fixed_others=fixed_others)
    return Plan(workers, source, budget)
