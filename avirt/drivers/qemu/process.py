"""Where a QEMU process starts, how the controller re-attaches to one, and how it is stopped.

A :class:`QemuProcess` is one running QEMU: its pid and its :class:`~avirt.qmp.Monitor`. It is created in
one of two ways:

* :meth:`QemuProcess.spawn` starts QEMU detached (its own session, not our child) with the QMP socket
  already listening, connects the monitor and reads the pid. If QEMU dies during start-up the error carries
  the tail of its log.
* :meth:`QemuProcess.attach` re-connects to a QEMU that an earlier controller started, from the pid file and
  socket in its run directory; it returns None if that QEMU is gone.

Its end is learnt from the host (a pidfd on this machine), never by polling and never by waiting for init to
reap it. :meth:`terminate` escalates: ``quit`` over QMP, then SIGTERM, then SIGKILL, each with a deadline.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence

import anyio

from avirt.errors import DomainStartError, HostError, QMPError
from avirt.hosts.base import Host
from avirt.qmp.monitor import CONNECT_TIMEOUT, EventSink, Monitor, MonitorClosedError, NotAGreetingError

log = logging.getLogger(__name__)

#: How long each step of :meth:`QemuProcess.terminate` may take before the next, harsher one.
QUIT_TIMEOUT = 2.0
SIGTERM_TIMEOUT = 2.0
SIGKILL_TIMEOUT = 10.0


class QemuProcess:
    def __init__(self, host: Host, name: str, pid: int, monitor: Monitor, pidfile: str) -> None:
        self.host = host
        self.name = name
        self.pid = pid
        self.monitor = monitor
        self.pidfile = pidfile
        # What statistics would otherwise ask this QEMU each time (drivers/qemu/stats.py): its vCPU
        # threads (fixed while it runs: avirt plugs no vCPUs in or out) and the balloon's size in bytes
        # (kept current by BALLOON_CHANGE events, as libvirt keeps it); None until first asked.
        self.vcpu_threads: list[int] | None = None
        self.balloon_actual: int | None = None

    @classmethod
    async def spawn(
        cls,
        host: Host,
        name: str,
        argv_for_socket: Callable[[str], Sequence[str]],
        *,
        qmp_socket: str,
        pidfile: str,
        log_path: str,
        on_event: EventSink,
        pass_fds: Sequence[int] = (),
    ) -> QemuProcess:
        monitor = Monitor(name, on_event, why_closed=host.connection_error)
        try:
            await host.start_detached(argv_for_socket, listen_path=qmp_socket, log_path=log_path,
                                      pass_fds=pass_fds)
            await _connect(host, monitor, qmp_socket)
        except (HostError, MonitorClosedError) as e:
            await monitor.aclose()
            raise DomainStartError(f"QEMU for domain '{name}' failed to start: {e}",
                                   await _tail(host, log_path)) from None
        pid = await _read_pid(host, pidfile)
        if pid is None:
            await monitor.aclose()
            raise DomainStartError(f"QEMU for domain '{name}' wrote no pid file",
                                   await _tail(host, log_path))
        return cls(host, name, pid, monitor, pidfile)

    @classmethod
    async def attach(cls, host: Host, name: str, *, qmp_socket: str, pidfile: str,
                     on_event: EventSink) -> QemuProcess | None:
        pid = await _read_pid(host, pidfile)
        if pid is None or not await host.pid_alive(pid):
            return None
        monitor = Monitor(name, on_event, why_closed=host.connection_error)
        try:
            await _connect(host, monitor, qmp_socket, timeout=5.0)
        except MonitorClosedError as e:
            # A refused connection is most often a QEMU that is dying right now (killed a moment ago, its
            # threads still exiting): give it a moment to finish before calling it alive but mute.
            with anyio.move_on_after(2.0):
                await host.wait_exit(pid, pidfile=pidfile)
                return None
            log.warning("domain %s: QEMU pid %d lives but its monitor does not answer: %s", name, pid, e)
            return cls(host, name, pid, monitor, pidfile)
        return cls(host, name, pid, monitor, pidfile)

    async def wait_exit(self) -> None:
        await self.host.wait_exit(self.pid, pidfile=self.pidfile)

    async def terminate(self) -> None:
        """Stop QEMU now; returns once the process is gone."""
        if self.monitor.connected:
            with anyio.move_on_after(QUIT_TIMEOUT):
                try:
                    await self.monitor.execute("quit", timeout=QUIT_TIMEOUT)
                except QMPError as e:  # the monitor may close under us as QEMU exits: wait all the same
                    log.debug("domain %s: quit: %s", self.name, e)
                await self.wait_exit()
                return
        await self.host.kill(self.pid, signal.SIGTERM)
        if await self._exited_within(SIGTERM_TIMEOUT):
            return
        log.warning("domain %s: QEMU pid %d ignored SIGTERM, killing it", self.name, self.pid)
        await self.host.kill(self.pid, signal.SIGKILL)
        if not await self._exited_within(SIGKILL_TIMEOUT):
            raise HostError(f"QEMU pid {self.pid} of domain '{self.name}' survived SIGKILL")

    async def _exited_within(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            await self.wait_exit()
            return True
        return False


async def _connect(host: Host, monitor: Monitor, path: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    for attempt in (1, 2):
        try:
            sock = await host.connect_unix(path)
        except OSError as e:
            raise MonitorClosedError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            await monitor.connect(sock, timeout=timeout)
            return
        except NotAGreetingError:
            if attempt == 2:
                raise
            log.debug("monitor %s: its first message was not a greeting; connecting again", path)


async def _read_pid(host: Host, pidfile: str) -> int | None:
    text = await host.read_text(pidfile)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


async def _tail(host: Host, log_path: str, lines: int = 20) -> str:
    text = await host.read_text(log_path) or ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
