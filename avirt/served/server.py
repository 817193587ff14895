"""The controller's side: its driver served to other programs on a unix socket in the state directory.

The controller that holds a state directory's lock is the only one that may touch its guests; every
other program that connects to the same directory becomes its client (:mod:`.client`) and reaches the
guests through this server. One :class:`Server` listens on ``<state_dir>/avirt.sock`` (mode 0600, in the
0700 directory) and checks each peer's uid (``SO_PEERCRED``) against its own. Each client connection is a
:class:`~avirt.rpc.Peer` whose handler is a :class:`_Session`:

* the first call must be ``hello``, which compares protocol versions (a mismatch is an error naming both);
* every :class:`~avirt.drivers.base.Driver` method is a call of the same name with keyword arguments,
  answered with :mod:`.wire`'s plain data; nothing outside that table can be called;
* ``events`` streams every domain event of the controller's bus, with the bus's own bounded queue per
  client: a client that falls behind loses its own events (``$lost`` with the count), nobody else's;
* the jobs a client started (or looked up) are its by id: ``job_progress``, ``job_set_speed``,
  ``job_complete``, ``job_cancel`` act on them and ``job_watch`` streams their phases until they end.

A client that breaks the protocol loses its own connection (see :mod:`avirt.rpc.peer`); the server and
its other clients go on.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream

from avirt.drivers.base import Driver
from avirt.drivers.qemu.state import served_socket
from avirt.errors import EventsLostError, OperationInvalidError, ProtocolVersionError
from avirt.events.bus import EventStream
from avirt.hosts.local import LocalHost
from avirt.jobs import BlockJob
from avirt.rpc import Batch, Lost, Peer
from avirt.served import wire
from avirt.tasks import TaskOwner

__all__ = ["PROTOCOL", "Server", "serve_stream"]

log = logging.getLogger(__name__)

#: The served protocol's version: a client and a server speak only the same one.
PROTOCOL = 2  # 2: a migration's source is made ready (migrate_ready) apart from perform

#: How many events a client may fall behind before it loses the oldest (the bus's queue for it).
CLIENT_EVENT_QUEUE = 4096

#: At most this many events queued together go out in one write.
EVENT_BATCH = 256


def _ref(value: Any) -> Any:
    return wire.ref_to(value)


#: Driver methods a client may call, and how each result travels.
_RESULTS: dict[str, Callable[[Any], Any]] = {
    "capabilities": dict,
    "define_xml": _ref, "create_xml": _ref, "lookup": _ref,
    "list_domains": lambda refs: [wire.ref_to(r) for r in refs],
    "undefine": lambda _: None, "start": lambda _: None, "shutdown": lambda _: None,
    "destroy": lambda _: None, "reboot": lambda _: None, "reset": lambda _: None,
    "suspend": lambda _: None, "resume": lambda _: None, "set_metadata": lambda _: None,
    "set_block_threshold": lambda _: None, "attach_device": lambda _: None,
    "detach_device": lambda _: None, "change_media": lambda _: None, "set_vcpus": lambda _: None,
    "qemu_monitor_command": lambda result: result,
    "block_chain": lambda chain: [wire.info_to(i) for i in chain],
    "snapshot_disks": dict,
    "agent_command": lambda result: result, "agent_shutdown": lambda _: None,
    "state": lambda pair: [pair[0].value, pair[1]],
    "info": wire.info_to,
    "xml": str, "metadata": lambda text: text,
    "all_domain_stats": lambda found: [[wire.ref_to(ref), params] for ref, params in found],
    "migrate_begin": list, "migrate_prepare": list, "migrate_ready": lambda _: None,
    "migrate_perform": str,
    "migrate_postcopy": lambda _: None,
    "migrate_progress": wire.info_to, "migrate_cancel": lambda _: None, "migrate_finish": lambda _: None,
    "migrate_confirm": lambda _: None,
    "set_link": lambda _: None, "set_memory": lambda _: None,
    "interface_addresses": lambda found: [wire.addresses_to(a) for a in found],
    "define_network": _ref, "lookup_network": _ref,
    "list_networks": lambda refs: [wire.ref_to(r) for r in refs],
    "network_start": lambda _: None, "network_destroy": lambda _: None, "network_undefine": lambda _: None,
    "network_set_autostart": lambda _: None, "network_xml": str, "network_info": dict,
    "network_dhcp_leases": lambda leases: [wire.lease_to(lease) for lease in leases],
}
_JOB_CALLS = ("block_commit", "block_pull", "block_copy", "block_job")


class Server:
    def __init__(self, driver: Driver, state_dir: str) -> None:
        self.driver = driver
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "avirt.sock")
        self._tasks = TaskOwner()
        self._listener: Any = None
        self._clients = 0

    async def open(self) -> None:
        """Listen (replacing the socket of a controller that ended without removing it)."""
        self.path = await served_socket(LocalHost(), self.state_dir)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._listener = await anyio.create_unix_listener(self.path, mode=0o600)
        await self._tasks.open()
        self._tasks.start_soon(self._accept, name="served-accept")

    async def aclose(self) -> None:
        await self._tasks.aclose()
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _accept(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                stream = await self._listener.accept()
                self._clients += 1
                group.start_soon(self._serve, stream, self._clients, name=f"served-client-{self._clients}")

    async def _serve(self, stream: SocketStream, number: int) -> None:
        uid = _peer_uid(stream)
        if uid != os.geteuid():
            log.warning("refused a client of uid %s on %s (the controller's uid is %d)", uid, self.path,
                        os.geteuid())
            await stream.aclose()
            return
        reason = await serve_stream(self.driver, stream, name=f"client {number}")
        log.debug("client %d: %s", number, reason)


async def serve_stream(driver: Driver, stream: ByteStream, *, name: str = "client") -> str | None:
    """Serve ``driver`` to the one client at the other end of ``stream`` (a socket, or standard input and
    output) until that connection ends; returns why it ended."""
    async with Peer(stream, _Session(driver), name=name) as peer:
        await peer.wait_closed()
    return peer.closed_because


def _peer_uid(stream: SocketStream) -> int | None:
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, anyio.TypedAttributeLookupError):
        return None
    uid: int = struct.unpack("3i", creds)[1]
    return uid


class _Session:
    """One client's calls: ``hello`` first, then the driver's methods, its events, and its jobs."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.greeted = False
        self.jobs: dict[str, BlockJob] = {}
        self._event_stream: EventStream | None = None
        self._in_flight = False  # an event taken from the stream and not yet sent
        self._sent = anyio.Event()
        self._signatures: dict[str, _Arguments] = {}

    def __call__(self, method: str, params: list[Any]) -> Awaitable[Any] | AsyncIterator[Any]:
        kwargs = params[0] if len(params) == 1 and isinstance(params[0], dict) else None
        if kwargs is None:
            return _fail(OperationInvalidError(f"{method}: the parameters are one map of arguments"))
        if method == "hello":
            return self._hello(**kwargs)
        if not self.greeted:
            return _fail(OperationInvalidError("the first call must be hello"))
        if method == "events":
            return self._events()
        if method == "job_watch":
            return self._job_watch(kwargs.get("id"))
        if method.startswith("job_"):
            return self._job_call(method, kwargs)
        if method in _JOB_CALLS:
            return self._start_job(method, kwargs)
        convert = _RESULTS.get(method)
        if convert is None:
            return _fail(OperationInvalidError(f"no call named {method!r}"))
        return self._call(method, kwargs, convert)

    async def _hello(self, protocol: Any = None, **_: Any) -> dict[str, Any]:
        if protocol != PROTOCOL:
            raise ProtocolVersionError(f"the controller speaks protocol version {PROTOCOL}, the client "
                                       f"{protocol}: use the same avirt version on both sides",
                                       server=PROTOCOL,
                                       client=protocol if isinstance(protocol, int) else None)
        self.greeted = True
        return {"protocol": PROTOCOL, "uri": self.driver.uri}

    async def _call(self, method: str, kwargs: dict[str, Any], convert: Callable[[Any], Any]) -> Any:
        function = getattr(self.driver, method)
        arguments = self._signatures.get(method)
        if arguments is None:  # inspect.signature costs tens of microseconds: once per method
            arguments = self._signatures[method] = _Arguments(inspect.signature(function))
        arguments.check(method, kwargs)
        result = convert(await function(**kwargs))
        await self._events_sent()
        return result

    async def _events_sent(self) -> None:
        """Until every event emitted so far is on its way to the client: a call's answer must not overtake
        the events the call caused (a client that subscribes after ``start()`` returned must not then
        receive its STARTED event, as on the controller itself)."""
        while self._event_stream is not None and (self._in_flight or self._event_stream.pending):
            await self._sent.wait()

    async def _start_job(self, method: str, kwargs: dict[str, Any]) -> Any:
        job = await self._call(method, kwargs, lambda job: job)
        if job is None:
            return None
        self.jobs[job.id] = job
        return wire.job_to(job)

    def _job(self, job_id: Any) -> BlockJob:
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise OperationInvalidError(f"no block job {job_id!r} on this connection")
        return job

    async def _job_call(self, method: str, kwargs: dict[str, Any]) -> Any:
        job = self._job(kwargs.get("id"))
        if method == "job_progress":
            info = await job.info()
            return [info.cur, info.end]
        if method == "job_set_speed":
            return await job.set_speed(int(kwargs.get("bandwidth", 0)))
        if method == "job_complete":
            await job.pivot()
            return None
        if method == "job_cancel":
            await job.abort()
            return None
        raise OperationInvalidError(f"no call named {method!r}")

    async def _job_watch(self, job_id: Any) -> AsyncIterator[Any]:
        job = self._job(job_id)
        async for _phase in job.phases():
            yield wire.phase_to(job)
        self.jobs.pop(job.id, None)

    async def _events(self) -> AsyncIterator[Any]:
        if self._event_stream is not None:
            raise OperationInvalidError("this connection already streams the events")
        async with self.driver.bus.stream(None, None, CLIENT_EVENT_QUEUE) as stream:
            self._event_stream = stream
            try:
                # First, word that the subscription exists: the client's connect() returns only then, so
                # no event emitted after it returned can miss this client.
                yield {"subscribed": True}
                while True:
                    batch = await _next_events(stream)
                    if batch is None:
                        return
                    self._in_flight = True
                    yield Batch(batch)  # returns here once the batch has been written
                    self._in_flight = False
                    self._sent.set()
                    self._sent = anyio.Event()
            finally:
                self._event_stream = None
                self._sent.set()


class _Arguments:
    """What a driver method accepts by keyword. Checking a call's names against two sets costs a
    microsecond where ``Signature.bind`` costs several, on every call; only a call that fails the check
    is bound, for the error's wording."""

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        params = signature.parameters.values()
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.names = frozenset(p.name for p in params if p.kind in keyword)
        self.required = frozenset(p.name for p in params if p.kind in keyword and p.default is p.empty)
        self.simple = all(p.kind in keyword for p in params)  # else let bind() decide every time

    def check(self, method: str, kwargs: dict[str, Any]) -> None:
        if self.simple and self.required <= kwargs.keys() <= self.names:
            return
        try:
            self.signature.bind(**kwargs)
        except TypeError as e:
            raise OperationInvalidError(f"{method}: {e}") from None


async def _next_events(stream: EventStream) -> list[Any] | None:
    """The next event (waiting for it) and every one queued behind it, as the wire carries them: a burst
    (one QMP event and the lifecycle event it means, a hundred guests paused at once) goes out in one write,
    and the client wakes once for it. None once the stream has ended."""
    batch: list[Any] = []
    while not batch or (stream.pending and len(batch) < EVENT_BATCH):
        try:
            event = await stream.__anext__()  # returns at once while events are queued
        except StopAsyncIteration:
            return batch or None
        except EventsLostError as e:
            batch.append(Lost(e.count or 0))  # 0: an unknown number
        else:
            batch.append(wire.event_to(event))
    return batch


async def _fail(error: Exception) -> Any:
    raise error
