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
* a lost channel (the SSH connection dropped, or the remote avirt died) is a lost host, and behaves as
  in the direct mode (docs/remote-hosts.md): each guest that has a QEMU gets a ``CONTROL_ERROR`` event,
  calls in flight and new calls fail at once with :class:`~avirt.errors.HostError`, and the connection
  reconnects in the background with backoff (0.1 s up to 5 s). Once back, what changed during the gap
  is re-derived: a guest whose QEMU ended gets its ``STOPPED`` event, a changed run state its lifecycle
  event; block jobs are found again by domain, disk and id and go on to their real end, as after a
  local hand-over.

To know which guests to announce, the driver keeps the run state of every guest that has a QEMU: read
once per connection (``list_domains`` and a ``state`` call per domain) and then kept current by the
lifecycle events that pass through. The server sends a call's answer only after the events that
preceded it, so an answer is never older than an event already applied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import asyncssh

from avirt.drivers.base import Driver
from avirt.errors import DomainNotFoundError, HostError, ProtocolVersionError
from avirt.events.model import ControlErrorEvent, Event, LifecycleEvent, LifecycleType
from avirt.events.translate import lifecycle_for
from avirt.hosts.forwarding import Forwarder, SSHForwarder
from avirt.hosts.ssh import BACKOFF_MAX, SSHTarget
from avirt.hosts.sshcommand import RemoteCommand
from avirt.models import DomainState
from avirt.rpc import PeerClosedError
from avirt.served.client import ClientDriver
from avirt.served.server import PROTOCOL
from avirt.served.shared import SharedDriver

__all__ = ["RemoteDriver"]

log = logging.getLogger(__name__)

#: State calls at once while the driver reads which guests run (after each connect).
SURVEY_CALLS = 16

L, S = LifecycleType, DomainState
#: The run state a lifecycle event leaves a guest in (STOPPED and UNDEFINED: no QEMU any more).
_STATE_AFTER = {L.STARTED: S.RUNNING, L.RESUMED: S.RUNNING, L.SUSPENDED: S.PAUSED, L.SHUTDOWN: S.SHUTDOWN,
                L.PMSUSPENDED: S.PMSUSPENDED, L.CRASHED: S.CRASHED}


@dataclass
class _Seen:
    """A guest with a QEMU, as the last event or state call showed it."""

    uuid: str
    state: DomainState


class RemoteDriver(SharedDriver):
    def __init__(self, uri: str, target: SSHTarget, argv: Sequence[str], state_dir: str) -> None:
        super().__init__(uri, state_dir)
        self.target = target
        self.argv = list(argv)
        self.name = target.label
        self._connected_once = False
        self._seen: dict[str, _Seen] = {}
        self._before_gap: dict[str, _Seen] = {}
        self._command: RemoteCommand | None = None

    #: A lost channel is announced per guest (CONTROL_ERROR) and its outcome re-derived, as in the direct
    #: mode, rather than reported as lost events.
    gap_loses_events = False

    def forwarder(self) -> Forwarder:
        def connection() -> asyncssh.SSHClientConnection:
            command = self._command
            if command is None or command.connection is None or command.lost:
                raise HostError(f"{self.name}: the SSH connection is lost (reconnecting)")
            return command.connection

        return SSHForwarder(f"ssh://{self.name}", self.target.host, connection)

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
                self._rederive()
                return
            except HostError as e:
                log.info("%s: reconnect failed (%s); next try in %.1f s", self.name, e, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        command = self._command = await RemoteCommand.start(self.target, self.argv)

        def lost() -> None:
            if self._inner is client and not self._closing:
                log.warning("%s: the connection to the remote avirt is lost; reconnecting", self.name)
                self._announce_loss()
                self._lost()

        client = ClientDriver(self.uri, self.state_dir, bus=self.bus, on_lost=lost,
                              lost_error=self._lost_error, on_event=self._note)
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
        try:
            await self._survey(client)
        except BaseException:
            await client.close()
            raise
        self._inner = client
        self._ready.set()

    # -- which guests run: what a lost connection announces, and re-derives once back -------------------

    def _note(self, event: Event) -> None:
        if not isinstance(event, LifecycleEvent):
            return
        if event.type in (L.STOPPED, L.UNDEFINED):
            self._seen.pop(event.domain, None)
        elif event.type in _STATE_AFTER:
            self._seen[event.domain] = _Seen(event.uuid, _STATE_AFTER[event.type])

    async def _survey(self, client: ClientDriver) -> None:
        """Read the state of every guest on this new connection (events already flow meanwhile: each
        answer is newer than the events applied before it)."""
        self._seen = {}
        limit = anyio.Semaphore(SURVEY_CALLS)

        async def one(name: str, uuid: str) -> None:
            async with limit:
                try:
                    state, _ = await client.state(name)
                except DomainNotFoundError:
                    state = S.SHUTOFF
            if state is S.SHUTOFF:
                self._seen.pop(name, None)
            else:
                self._seen[name] = _Seen(uuid, state)

        async with anyio.create_task_group() as group:
            for ref in await client.list_domains():
                group.start_soon(one, ref.name, ref.uuid)

    def _announce_loss(self) -> None:
        self._before_gap = dict(self._seen)
        for name, seen in self._before_gap.items():
            self.bus.emit(ControlErrorEvent, name, seen.uuid,
                          reason=f"the connection to {self.name} was lost")

    def _rederive(self) -> None:
        """After the gap: the events its outcome calls for (those sent during it are not replayed)."""
        before, self._before_gap = self._before_gap, {}
        for name, old in before.items():
            new = self._seen.get(name)
            if new is None:  # no QEMU any more: the remote controller may know why, we do not
                self.bus.emit(LifecycleEvent, name, old.uuid, type=L.STOPPED, detail="failed")
            elif new.state is not old.state:
                change = (L.RESUMED, "unpaused") if new.state is S.RUNNING else \
                    lifecycle_for(new.state, "user" if new.state is S.PAUSED else "unknown")
                if change is not None:
                    self.bus.emit(LifecycleEvent, name, new.uuid, type=change[0], detail=change[1])

    def _lost_error(self, method: str) -> HostError:
        return HostError(f"{self.name}: the connection to the remote avirt was lost during {method}")

    async def _driver(self) -> Driver:
        # Between a lost channel and the next one, nothing waits: as for a host reached directly.
        if self._inner is None:
            raise HostError(f"{self.name}: the SSH connection is lost (reconnecting)")
        return self._inner
