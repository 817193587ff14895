"""The :class:`Connection`: one driver, the domains it manages, and the way in for users.

``avirt.connect(uri)`` returns a connection that is already usable with ``await`` and is also an async
context manager; closing it leaves running guests running (they outlive the controller).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shlex
from collections.abc import AsyncIterator, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from anyio.abc import ByteStream

from avirt.domain import Domain
from avirt.drivers.base import DomainRef, Driver
from avirt.drivers.qemu.driver import QemuDriver
from avirt.drivers.stats import DEFAULT_TIMEOUT as DEFAULT_STATS_TIMEOUT
from avirt.drivers.stats import check_groups
from avirt.drivers.test import TestDriver
from avirt.errors import InvalidArgumentError, UnsupportedError
from avirt.events.bus import Callback, EventStream, Subscription
from avirt.events.model import EventKind
from avirt.hosts.base import Host
from avirt.models import DomainState, DomainStats
from avirt.network import Network
from avirt.served.server import serve_stream
from avirt.served.shared import SharedDriver
from avirt.uri import ConnectionURI

if TYPE_CHECKING:
    from avirt.hosts.ssh import SSHTarget

D = TypeVar("D", bound=Driver)

log = logging.getLogger(__name__)


class Connection:
    def __init__(self, uri: str, driver: Driver) -> None:
        self.uri = uri
        self._driver = driver

    @property
    def serving(self) -> bool:
        """Whether this program holds the connection's state directory now and serves it to the others
        (False while it is a client of the program that does, over SSH, and for ``test://``)."""
        return isinstance(self._driver, SharedDriver) and self._driver.serving

    async def close(self) -> None:
        """Detach from the hypervisor. Running guests keep running; a later connection finds them."""
        await self._driver.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _domain(self, ref: DomainRef) -> Domain:
        return Domain(self._driver, ref.name, ref.uuid)

    async def define_xml(self, xml: str) -> Domain:
        """Define (or redefine) a persistent domain from libvirt domain XML; it starts shut off."""
        return self._domain(await self._driver.define_xml(xml))

    async def create_xml(self, xml: str, *, paused: bool = False) -> Domain:
        """Create and start a transient domain; it disappears when it stops."""
        return self._domain(await self._driver.create_xml(xml, paused=paused))

    async def lookup(self, name_or_uuid: str) -> Domain:
        return self._domain(await self._driver.lookup(name_or_uuid))

    async def list_domains(self, *, state: DomainState | None = None) -> list[Domain]:
        domains = [self._domain(ref) for ref in await self._driver.list_domains()]
        if state is None:
            return domains
        return [d for d in domains if (await d.state())[0] is state]

    async def define_network_xml(self, xml: str) -> Network:
        """Define (or redefine) a virtual network from libvirt network XML; it starts inactive. A missing
        uuid is generated and a missing bridge name picked (``avirbrN``); a bridge or subnet another
        network has is refused (:class:`~avirt.errors.NetworkConflictError`)."""
        ref = await self._driver.define_network(xml)
        return Network(self._driver, ref.name, ref.uuid)

    async def lookup_network(self, name_or_uuid: str) -> Network:
        ref = await self._driver.lookup_network(name_or_uuid)
        return Network(self._driver, ref.name, ref.uuid)

    async def list_networks(self) -> list[Network]:
        return [Network(self._driver, ref.name, ref.uuid) for ref in await self._driver.list_networks()]

    async def all_domain_stats(self, groups: Iterable[str] | None = None,
                               domains: Iterable[Domain | str] | None = None, *,
                               timeout: float = DEFAULT_STATS_TIMEOUT) -> list[DomainStats]:
        """Statistics of many domains at once (virConnectGetAllDomainStats / virDomainListGetStats).

        ``groups`` picks libvirt's groups: ``state``, ``cpu-total``, ``balloon``, ``vcpu``, ``interface``
        (``net.*``), ``block`` (all if None); ``domains`` the domains (handles or names; every domain, by
        name, if None). Running domains are asked concurrently and each gets ``timeout`` seconds: one whose
        QEMU does not answer in time is reported with its state and ``stats.unresponsive`` instead of holding
        up the others.
        A shut-off domain reports its state only. See docs/API.md for the fields.
        """
        if timeout < 0:
            raise InvalidArgumentError("timeout must be >= 0 seconds")
        names = None if domains is None else [_domain_name(d) or "" for d in domains]
        found = await self._driver.all_domain_stats(check_groups(groups), names, timeout)
        return [DomainStats(self._domain(ref), params) for ref, params in found]

    def subscribe(self, callback: Callback, *, kinds: Iterable[EventKind] | None = None,
                  domain: Domain | str | None = None, max_queue: int = 1024) -> Subscription:
        """Call ``callback(event)`` (a function or a coroutine function) for each matching event.

        The callback runs in a task of its own: a slow one never delays other subscribers or the
        monitors; past ``max_queue`` waiting events the oldest are dropped and counted in
        ``Subscription.lost``. ``cancel()`` on the subscription ends it.
        """
        return self._driver.bus.subscribe(callback, kinds, _domain_name(domain), max_queue)

    def events(self, *, kinds: Iterable[EventKind] | None = None, domain: Domain | str | None = None,
               max_queue: int = 1024) -> EventStream:
        """A stream of matching events: ``async with conn.events(...) as stream: async for ev in stream``.

        If the reader falls more than ``max_queue`` events behind, the next read raises
        ``EventsLostError(count)`` and the stream then goes on with the newest events. Closing the
        connection ends the stream.
        """
        return self._driver.bus.stream(kinds, _domain_name(domain), max_queue)

    async def capabilities(self) -> dict[str, Any]:
        """QEMU's version, whether KVM is usable, and which accelerator each domain type gets."""
        return await self._driver.capabilities()

    async def serve_stream(self, stream: ByteStream) -> None:
        """Serve this connection to the one client at the other end of ``stream`` (the served protocol,
        docs/protocol.md) until that client hangs up; ``avirt serve --stdio`` runs it on its standard
        input and output. The client sees what this connection sees: this program's guests when it holds
        the state directory, else those of the program it is a client of."""
        await serve_stream(self._driver, stream, name="stdio client")


def _domain_name(domain: Domain | str | None) -> str | None:
    return domain.name if isinstance(domain, Domain) else domain


class _Connecting:
    """What ``connect()`` returns: awaitable (``conn = await connect()``) and an async context manager."""

    def __init__(self, uri: str, state_dir: str | os.PathLike[str] | None) -> None:
        self._uri = uri
        self._state_dir = os.fspath(state_dir) if state_dir else None
        # A relative local state directory means the one relative to where connect() was called.
        self._local_state_dir = os.path.abspath(state_dir) if state_dir else None
        self._conn: Connection | None = None

    async def _open(self) -> Connection:
        parsed = ConnectionURI.parse(self._uri)
        parsed.check_supported()
        if parsed.scheme == "test":
            # In memory: a fresh world per connection, no state directory.
            return Connection(self._uri, await _opened(TestDriver(self._uri)))
        if parsed.transport == "ssh":
            return Connection(self._uri, await _open_ssh(self._uri, parsed, self._state_dir))
        # A local state directory: this program holds it, or is a client of the one that does.
        state_dir = self._local_state_dir or parsed.default_state_dir()
        return Connection(self._uri, await _opened(SharedDriver(self._uri, state_dir)))

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._open().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._open()
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._conn is not None:
            await self._conn.close()


@contextlib.asynccontextmanager
async def _peer(uri: str) -> AsyncIterator[Driver]:
    async with connect(uri) as conn:
        yield conn._driver


async def _opened(driver: D) -> D:
    driver.peers = _peer
    try:
        await driver.open()
    except BaseException:
        await driver.close()
        raise
    return driver


async def _open_ssh(text: str, uri: ConnectionURI, state_dir: str | None) -> Driver:
    """WHERE A REMOTE HOST'S MODE IS CHOSEN: through the avirt on the host (``mode=serve``; one SSH
    channel to its ``avirt serve --stdio``), or directly (``mode=direct``; QEMU driven from here, a
    channel per guest). The default, ``auto``, is the first unless the host has no avirt command."""
    try:
        from avirt.hosts.ssh import SSHTarget
    except ImportError as e:  # asyncssh is an optional dependency
        raise UnsupportedError([f"qemu+ssh://{uri.host}/"], f"SSH hosts need asyncssh ({e}): "
                               "pip install 'avirt[ssh]'") from None
    target = SSHTarget(uri.host or "", uri.port or 22, uri.user, uri.options.get("keyfile"),
                       uri.options.get("known_hosts") or "~/.ssh/known_hosts")
    # Relative to the remote home: both modes start there (an SSH command's working directory).
    state_dir = state_dir or uri.options.get("state_dir") or uri.default_state_dir()
    mode = uri.options.get("mode", "auto")
    if mode != "direct":
        from avirt.errors import CommandNotFoundError
        from avirt.served.remote import RemoteDriver

        argv = [*shlex.split(uri.options.get("avirt") or "avirt"), "-c", f"qemu:///{uri.path}",
                "--state-dir", state_dir, "serve", "--stdio"]
        try:
            return await _opened(RemoteDriver(text, target, argv, state_dir))
        except CommandNotFoundError as e:
            if mode == "serve":
                raise
            log.info("%s; driving the host directly instead", e)
    host, remote_dir = await _open_ssh_host(target, state_dir)
    return await _opened(QemuDriver(text, host, remote_dir))


async def _open_ssh_host(target: SSHTarget, state_dir: str) -> tuple[Host, str]:
    """The connected SSH host and the state directory on it (a relative one is in the remote home)."""
    from avirt.hosts.ssh import SSHHost

    host = SSHHost(target)
    try:
        await host.open()
        return host, posixpath.join(await host.home(), state_dir)  # join keeps an absolute one as it is
    except BaseException:
        await host.aclose()
        raise


def connect(uri: str = "qemu:///session", *, state_dir: str | os.PathLike[str] | None = None) -> _Connecting:
    """Open a connection: ``conn = await avirt.connect(uri)`` or ``async with avirt.connect(uri) as conn``."""
    return _Connecting(uri, state_dir)
