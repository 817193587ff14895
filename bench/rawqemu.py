"""The benchmarks' baseline: QEMU spawned exactly as avirt spawns it, driven by a bare qemu.qmp client.

Shared by ``lifecycle.py``, ``events.py`` and ``blockjobs.py`` so that all three compare avirt with the
same baseline: a unix socket bound and listening before QEMU starts, handed down as an fd to
``setsid -f qemu-system-x86_64 ...`` (its own session, output to a log file), a ``QMPClient`` on it,
and the end of QEMU learnt from a pidfd, never from ``waitpid``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from qemu.qmp import QMPClient

TIMEOUT = 30.0


@dataclass
class RawGuest:
    name: str
    client: QMPClient
    pid: int
    pidfd: int
    run_dir: Path


async def spawn(name: str, run_dir: Path, argv_for_fd: Callable[[int, str], Sequence[str]], *,
                cont: bool) -> RawGuest:
    """Start QEMU (``argv_for_fd(qmp_fd, pidfile)``) in a fresh ``run_dir`` and connect a QMPClient."""
    run_dir.mkdir(mode=0o700)  # noqa: ASYNC240 (as avirt: local, instant)
    qmp_path, pidfile, log_path = run_dir / "qmp.sock", run_dir / "qemu.pid", run_dir / "qemu.log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(qmp_path))
        sock.listen(16)
        fd = sock.fileno()
        argv = ["setsid", "-f", *argv_for_fd(fd, str(pidfile))]
        with open(log_path, "ab", buffering=0) as log:  # noqa: ASYNC230 (local file, as avirt does)
            proc = await anyio.run_process(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           pass_fds=[fd], start_new_session=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"setsid failed with status {proc.returncode}")
    finally:
        sock.close()
    client = QMPClient(name)
    with anyio.fail_after(TIMEOUT):
        await client.connect(str(qmp_path))
    pid = int(pidfile.read_text())  # written before QEMU answers on the monitor
    guest = RawGuest(name, client, pid, os.pidfd_open(pid), run_dir)
    if cont:
        with anyio.fail_after(TIMEOUT):
            await client.execute("cont")
    return guest


async def stop(guest: RawGuest) -> None:
    """``quit``, wait on the pidfd until QEMU is gone, disconnect, remove the run directory."""
    try:
        with anyio.fail_after(TIMEOUT):
            await guest.client.execute("quit")
            await anyio.wait_readable(guest.pidfd)  # the pidfd turns readable when QEMU is gone
    finally:
        os.close(guest.pidfd)
        with contextlib.suppress(Exception):  # disconnect() re-raises the EOF that ended the session
            await guest.client.disconnect()
    shutil.rmtree(guest.run_dir, ignore_errors=True)


def _qemu_processes() -> list[tuple[int, list[bytes], str]]:
    """(pid, argv, state) of every qemu-system process on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"qemu-system"):
            found.append((int(entry.name), argv, stat[stat.rindex(")") + 2]))
    return found


def count_qemu_processes() -> int:
    """QEMU processes on this machine that are alive (not zombies), e.g. other users' test guests."""
    return sum(1 for _, _, state in _qemu_processes() if state not in "ZX")


def our_qemu_pids(root: Path) -> list[int]:
    """The QEMUs whose command line names a path under ``root``: this run's, not other users'."""
    marker = str(root).rstrip("/").encode() + b"/"
    return [pid for pid, argv, _ in _qemu_processes() if any(marker in a for a in argv)]


def kill_leftovers(root: Path) -> list[int]:
    """Last resort after a failure or Ctrl-C: SIGKILL every QEMU this run started (see our_qemu_pids)."""
    killed = []
    for pid in our_qemu_pids(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed
