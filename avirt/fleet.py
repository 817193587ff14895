"""Following many connections (many hosts) with one event stream.

A fleet manager holds one :class:`~avirt.connection.Connection` per host. :func:`merge` reads all of their
event streams at once and hands each event on tagged with the connection it came from::

    async with avirt.fleet.merge(conn_a, conn_b, kinds={EventKind.LIFECYCLE}) as stream:
        async for conn, event in stream:
            print(conn.uri, event.domain, event.type)

Each connection keeps its own bounded queue (``max_queue``), exactly as ``conn.events()`` does, and the
merged stream adds no second queue: a reader that falls behind makes the members drop their oldest events,
and the next read raises :class:`~avirt.errors.EventsLostError` with the count (its ``connection``
attribute says which member lost them). Events of one domain keep QEMU's order; events of different hosts
interleave as they arrive. The stream ends when every member's connection has closed, or when the ``async
with`` block ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from avirt.errors import EventsLostError, InvalidArgumentError
from avirt.events.model import Event, EventKind

if TYPE_CHECKING:
    from avirt.connection import Connection
    from avirt.events.bus import EventStream


class FleetEvent(NamedTuple):
    """One event and the connection it came from (unpacks as ``conn, event``)."""

    connection: Connection
    event: Event


class _Lost(NamedTuple):
    connection: Connection
    error: EventsLostError


class FleetStream:
    """The merged stream; use it as ``async with merge(...) as stream: async for conn, event in stream``."""

    def __init__(self, connections: Iterable[Connection], kinds: Iterable[EventKind] | None,
                 domain: str | None, max_queue: int) -> None:
        self._connections = list(connections)
        if not self._connections:
            raise InvalidArgumentError("merge() needs at least one connection")
        self._kinds = set(kinds) if kinds is not None else None
        self._domain = domain
        self._max_queue = max_queue
        self._group: TaskGroup | None = None
        # No buffer: a member hands an event over only when the reader takes it, so the members' own
        # bounded queues are where a slow reader's backlog waits (and is counted when it overflows).
        self._send: MemoryObjectSendStream[FleetEvent | _Lost]
        self._receive: MemoryObjectReceiveStream[FleetEvent | _Lost]
        self._send, self._receive = anyio.create_memory_object_stream[FleetEvent | _Lost](0)

    async def __aenter__(self) -> FleetStream:
        # Subscribed before returning: nothing that happens after merge() is entered can be missed.
        streams = [conn.events(kinds=self._kinds, domain=self._domain, max_queue=self._max_queue)
                   for conn in self._connections]
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        for conn, stream in zip(self._connections, streams, strict=True):
            self._group.start_soon(self._pump, conn, stream, self._send.clone())
        self._send.close()  # the stream ends when the last member's clone closes
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._group is not None
        self._group.cancel_scope.cancel()
        self._receive.close()
        return await self._group.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> FleetStream:
        return self

    async def __anext__(self) -> FleetEvent:
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(item, _Lost):
            item.error.connection = item.connection
            raise item.error
        return item

    @staticmethod
    async def _pump(conn: Connection, stream: EventStream,
                    send: MemoryObjectSendStream[FleetEvent | _Lost]) -> None:
        async with stream, send:
            while True:
                try:
                    event = await anext(stream)
                except EventsLostError as e:
                    await send.send(_Lost(conn, e))
                    continue
                except StopAsyncIteration:
                    return
                try:
                    await send.send(FleetEvent(conn, event))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the reader left


def merge(*connections: Connection, kinds: Iterable[EventKind] | None = None, domain: str | None = None,
          max_queue: int = 1024) -> FleetStream:
    """One stream of ``(connection, event)`` for the events of every connection given.

    ``kinds``, ``domain`` and ``max_queue`` mean what they mean for ``Connection.events()``, applied to
    each connection (``domain`` is a name: the same name may exist on several hosts).
    """
    return FleetStream(connections, kinds, domain, max_queue)
