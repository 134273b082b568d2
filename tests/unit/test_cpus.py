"""The usable CPU count (server/process/cpus.py) against fake cgroup trees, and the worker
and database pool sizing within KASSA_DB_CONNECTIONS_MAX (server/process/sizing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.process.cpus import CpuLimit, available_cpus, cgroup_quota
from server.process.settings import ConfigError, load_settings
from server.process.sizing import fit_workers, plan, size_pool

V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n")


def write(root: Path, path: str, text: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def v2_tree(root: Path, cpu_max: str, cgroup: str = "/") -> Path:
    write(root, "proc/self/cgroup", f"0::{cgroup}\n")
    write(root, "proc/self/mountinfo", V2_MOUNTINFO)
    write(root, f"sys/fs/cgroup{cgroup.rstrip('/')}/cpu.max", cpu_max)
    return root


def v1_tree(root: Path, quota: str, period: str = "100000", cgroup: str = "/") -> Path:
    write(root, "proc/self/cgroup", f"4:memory:{cgroup}\n3:cpu,cpuacct:{cgroup}\n0::/\n")
    write(root, "proc/self/mountinfo", V1_MOUNTINFO)
    directory = f"sys/fs/cgroup/cpu,cpuacct{cgroup.rstrip('/')}"
    write(root, f"{directory}/cpu.cfs_quota_us", quota)
    write(root, f"{directory}/cpu.cfs_period_us", period)
    return root


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("150000 100000\n", 2), ("200000 100000", 2), ("50000 100000", 1), ("100000 100000", 1),
    ("1 100000", 1), ("250000 50000", 5),
])
def test_cgroup_v2_quota_is_rounded_up(tmp_path: Path, cpu_max: str, expected: int) -> None:
    limit = available_cpus(v2_tree(tmp_path, cpu_max), affinity=64, cpu_count=64)
    quota, period = cpu_max.split()
    assert limit == CpuLimit(expected, f"cgroup v2 cpu.max {quota}/{period}")


def test_cgroup_v2_max_is_no_limit(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "max 100000\n")
    assert cgroup_quota(root) is None
    assert available_cpus(root, affinity=64, cpu_count=64) == CpuLimit(64, "cpu count 64")


def test_cgroup_v2_limit_on_an_ancestor_counts(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "max 100000", cgroup="/kubepods/pod1/ctr")
    write(root, "sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000")
    write(root, "sys/fs/cgroup/kubepods/cpu.max", "max 100000")
    assert available_cpus(root, affinity=64, cpu_count=64).count == 3


def test_cgroup_v2_without_proc_reads_the_usual_mount(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "150000 100000")
    assert available_cpus(tmp_path, affinity=8, cpu_count=8).count == 2


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("150000", "100000", 2), ("100000", "100000", 1), ("400000\n", "100000\n", 4),
])
def test_cgroup_v1_quota_is_rounded_up(tmp_path: Path, quota: str, period: str,
                                       expected: int) -> None:
    limit = available_cpus(v1_tree(tmp_path, quota, period, cgroup="/docker/abc"),
                           affinity=64, cpu_count=64)
    assert limit == CpuLimit(expected,
                             f"cgroup v1 cpu.cfs_quota_us {quota.strip()}/{period.strip()}")


def test_cgroup_v1_minus_one_is_no_limit(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, "-1")
    assert cgroup_quota(root) is None
    assert available_cpus(root, affinity=16, cpu_count=16) == CpuLimit(16, "cpu count 16")


def test_cgroup_v1_usual_paths_without_proc(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "250000")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    assert available_cpus(tmp_path, affinity=8, cpu_count=8).count == 3


def test_affinity_smaller_than_the_quota_wins(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "400000 100000")
    assert available_cpus(root, affinity=1, cpu_count=2) == CpuLimit(1, "affinity 1 of 2 CPUs")


def test_quota_smaller_than_the_affinity_wins(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, "150000")
    limit = available_cpus(root, affinity=4, cpu_count=64)
    assert limit == CpuLimit(2, "cgroup v1 cpu.cfs_quota_us 150000/100000")


@pytest.mark.parametrize("cpu_max", ["", "garbage", "150000", "abc 100000", "150000 0",
                                     "-5 100000", "150000 x", "\x00\x01"])
def test_garbage_cgroup_v2_files_are_ignored(tmp_path: Path, cpu_max: str) -> None:
    root = v2_tree(tmp_path, cpu_max)
    assert available_cpus(root, affinity=6, cpu_count=6) == CpuLimit(6, "cpu count 6")


def test_garbage_cgroup_v1_and_proc_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "nonsense\n::\n")
    write(tmp_path, "proc/self/mountinfo", "not a mountinfo line\n1 2 - \n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "lots")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert available_cpus(tmp_path, affinity=3, cpu_count=3).count == 3


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert available_cpus(tmp_path, affinity=2, cpu_count=4) == CpuLimit(2, "affinity 2 of 4 CPUs")
    assert available_cpus(tmp_path, affinity=4, cpu_count=4) == CpuLimit(4, "cpu count 4")


def test_at_least_one(tmp_path: Path) -> None:
    assert available_cpus(tmp_path, affinity=0, cpu_count=0).count == 1


def test_this_process() -> None:
    limit = available_cpus()
    assert 1 <= limit.count and limit.source


# Sizing: workers × (pool + relay) + services ≤ KASSA_DB_CONNECTIONS_MAX

def test_pool_keeps_its_ceiling_when_the_budget_allows() -> None:
    budget = size_pool(2, 80, pool_ceiling=10, per_worker_extra=1, fixed_others=14)
    assert (budget.pool, budget.others, budget.total) == (10, 16, 36)
    assert budget.describe() == "database pool: 10 per worker × 2 workers + 16 others ≤ budget 80"


def test_pool_shrinks_to_fit() -> None:
    budget = size_pool(8, 80, pool_ceiling=10, per_worker_extra=1, fixed_others=14)
    assert (budget.pool, budget.others) == (7, 22)  # 8 × 7 + 22 = 78 ≤ 80
    assert budget.total <= 80


@pytest.mark.parametrize(("workers", "budget", "ceiling", "extra", "fixed"), [
    (1, 80, 10, 1, 14), (3, 50, 10, 1, 14), (22, 80, 10, 1, 14), (64, 1000, 10, 1, 14),
    (5, 20, 50, 0, 0), (4, 100, 1, 1, 0),
])
def test_total_never_exceeds_the_budget(workers: int, budget: int, ceiling: int, extra: int,
                                        fixed: int) -> None:
    result = size_pool(workers, budget, pool_ceiling=ceiling, per_worker_extra=extra,
                       fixed_others=fixed)
    assert result.total <= budget and 1 <= result.pool <= ceiling


def test_a_budget_below_two_per_worker_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        size_pool(64, 80, pool_ceiling=10, per_worker_extra=1, fixed_others=14)
    message = str(refused.value)
    assert "KASSA_DB_CONNECTIONS_MAX=80" in message and "KASSA_WORKERS=64" in message
    assert "\n" not in message and "206" in message  # 64 × 3 + 14


def test_fit_workers() -> None:
    assert fit_workers(64, 80, per_worker_extra=1, fixed_others=14) == 22
    assert fit_workers(2, 80, per_worker_extra=1, fixed_others=14) == 2
    assert fit_workers(8, 5, per_worker_extra=1, fixed_others=14) == 1


def test_plan_lowers_cpu_derived_workers_to_the_budget() -> None:
    settings = load_settings({})
    result = plan(settings, {}, per_worker_extra=1, fixed_others=14,
                  cpus=CpuLimit(64, "cpu count 64"))
    assert (result.workers, result.pool.pool) == (22, 2)
    assert result.describe_workers() == (
        "workers: 22 (from cpu count 64, lowered to fit KASSA_DB_CONNECTIONS_MAX=80)")


def test_plan_uses_the_cpus_when_nothing_is_asked() -> None:
    result = plan(load_settings({}), {}, per_worker_extra=1, fixed_others=14,
                  cpus=CpuLimit(2, "cgroup v2 cpu.max 150000/100000"))
    assert result.describe_workers() == "workers: 2 (from cgroup v2 cpu.max 150000/100000)"
    assert result.pool.pool == 10


def test_plan_refuses_an_explicit_count_that_does_not_fit() -> None:
    env = {"KASSA_WORKERS": "64"}
    with pytest.raises(ConfigError, match="KASSA_DB_CONNECTIONS_MAX=80 .*KASSA_WORKERS=64"):
        plan(load_settings(env), env, per_worker_extra=1, fixed_others=14)
    with pytest.raises(ConfigError, match="KASSA_WORKERS=64"):
        plan(load_settings({}), {}, cli_workers=64, per_worker_extra=1, fixed_others=14)


def test_plan_explicit_pool_max_is_a_ceiling() -> None:
    env = {"KASSA_WORKERS": "2", "KASSA_DB_POOL_MAX": "4", "KASSA_DB_CONNECTIONS_MAX": "500"}
    result = plan(load_settings(env), env, per_worker_extra=1, fixed_others=14)
    assert (result.workers, result.pool.pool, result.source) == (2, 4, "KASSA_WORKERS")
