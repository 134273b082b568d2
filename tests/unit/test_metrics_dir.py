"""Issue 18, D1: the Prometheus multiprocess directory of `kassa serve` is in memory, one
per run, never on the data disk: metric files are memory-mapped sparse files, and a first
write to one of their pages on a full file system is SIGBUS (the worker dies)."""

from __future__ import annotations

import atexit
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.process import cli


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    monkeypatch.setattr(atexit, "register", lambda fn, *args: calls.append((fn, args)))
    # prepare_metrics_dir sets the variable in os.environ: setenv first, so that monkeypatch
    # records it and puts the variable back as it was (delenv of an unset one records nothing).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    return calls


def test_the_metrics_dir_is_in_memory_and_not_on_the_data_disk(
        tmp_path: Path, registered: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    (tmp_path / "metrics").mkdir()  # where an older version kept it
    (tmp_path / "metrics" / "counter_1.db").write_bytes(b"old")
    cli.prepare_metrics_dir(tmp_path)
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert made.is_dir() and not list(made.iterdir())
        assert tmp_path not in made.parents and not (tmp_path / "metrics").exists()
        assert made.name.startswith(f"{cli.METRICS_PREFIX}{os.getpid()}-")
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            assert made.parent == Path("/dev/shm")
        # Removed at exit, by the process that made it only (workers are forked from it).
        [(remove, args)] = registered
        assert args == (made, os.getpid())
        remove(made, os.getpid() + 1)
        assert made.exists()
        remove(*args)
        assert not made.exists()
    finally:
        cli._remove_metrics_dir(made, os.getpid())


def test_each_run_gets_its_own_directory(
        tmp_path: Path, registered: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    cli.prepare_metrics_dir(tmp_path)
    first = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    cli.prepare_metrics_dir(tmp_path)
    second = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert first != second and first.exists() and second.exists()  # this run is alive
    finally:
        for path in (first, second):
            cli._remove_metrics_dir(path, os.getpid())


def test_directories_of_dead_servers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{cli.METRICS_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{cli.METRICS_PREFIX}{os.getpid()}-def"
    other = tmp_path / "kassa-metrics-notapid-x"
    for path in (stale, live, other):
        path.mkdir()
    cli.remove_stale_metrics_dirs(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()


def test_without_a_memory_file_system_the_temp_dir_is_used(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    assert cli.metrics_base() == tmp_path
