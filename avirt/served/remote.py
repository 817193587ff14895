"""A remote state directory through the avirt on that host: ``qemu+ssh://`` in its default mode.

Instead of driving QEMU from here over many SSH channels (one per guest's monitor, commands, SFTP; see
:mod:`avirt.hosts.ssh`), the connection runs ``avirt serve --stdio`` on the remote host in ONE session
channel (:class:`~avirt.hosts.sshcommand.RemoteCommand`) and is a :class:`~avirt.served.client.ClientDriver`
of it: every call, every event and every block job's phases travel over that channel, with the
protocol of docs/protocol.md. The remote avirt holds the state directory (or relays to the program on
the host that does), so guests, state files and jobs behave as for any local client.

:class:`RemoteDriver` is a :class:`~avirt.served.shared.SharedDriver` that is always a client; what it
changes is how a controller is found and what a lost one means:

* first connect: one try; the remote command missing (exit 127) is a
  :class:`~avirt.errors.CommandNotFoundError` (the connection layer then falls back to the direct mode),
  another protocol version a :class:`~avirt.errors.ProtocolVersionError` naming both;
* a lost channel (the SSH connection dropped, or the remote avirt died) is a lost host: calls in flight
  and new calls fail at once with :class:`~avirt.errors.HostError`, event streams raise
  ``EventsLostError`` once, and the connection reconnects in the background with backoff (0.1 s up to
  5 s). Once back, block jobs are found again by domain, disk and id and go on to their real end, as
  after a local hand-over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from avirt.drivers.base import Driver
from avirt.errors import HostError, ProtocolVersionError
from avirt.hosts.ssh import BACKOFF_MAX, SSHTarget
from avirt.hosts.sshcommand import RemoteCommand
from avirt.rpc import PeerClosedError
from avirt.served.client import ClientDriver
from avirt.served.server import PROTOCOL
from avirt.served.shared import SharedDriver

__all__ = ["RemoteDriver"]

log = logging.getLogger(__name__)


class RemoteDriver(SharedDriver):
    def __init__(self, uri: str, target: SSHTarget, argv: Sequence[str], state_dir: str) -> None:
        super().__init__(uri, state_dir)
        self.target = target
        self.argv = list(argv)
        self.name = target.label
        self._connected_once = False

    @property
    def serving(self) -> bool:
        return False  # the remote avirt controls the directory, never this program

    async def _attach(self) -> None:
        if not self._connected_once:
            await self._connect()
            self._connected_once = True
            return
        delay = 0.1
        while not self._closing:
            try:
                await self._connect()
                log.warning("%s: reconnected to the remote avirt", self.name)
                return
            except HostError as e:
                log.info("%s: reconnect failed (%s); next try in %.1f s", self.name, e, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        command = await RemoteCommand.start(self.target, self.argv)

        def lost() -> None:
            if self._inner is client and not self._closing:
                log.warning("%s: the connection to the remote avirt is lost; reconnecting", self.name)
                self._lost()

        client = ClientDriver(self.uri, self.state_dir, bus=self.bus, on_lost=lost,
                              lost_error=self._lost_error)
        try:
            await client.open_stream(command)
        except (PeerClosedError, HostError):
            error = await command.failure()  # before closing: the exit status says why
            await client.close()
            raise error from None
        except ProtocolVersionError as e:
            await client.close()
            raise ProtocolVersionError(
                f"{self.name}: the remote avirt ({' '.join(self.argv[:1])}) speaks protocol version "
                f"{e.server}, this avirt {PROTOCOL}: install the same avirt version on both sides",
                server=e.server, client=PROTOCOL) from None
        except BaseException:
            await client.close()
            raise
        self._inner = client
        self._ready.set()

    def _lost_error(self, method: str) -> HostError:
        return HostError(f"{self.name}: the connection to the remote avirt was lost during {method}")

    async def _driver(self) -> Driver:
        # Between a lost channel and the next one, nothing waits: as for a host reached directly.
        if self._inner is None:
            raise HostError(f"{self.name}: the SSH connection is lost (reconnecting)")
        return self._inner
