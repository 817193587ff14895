"""One end of a served-protocol connection: calls out, calls in, streams, cancellation.

A :class:`Peer` owns one byte stream (a unix socket, or an SSH channel's standard input and output) for
the lifetime of its ``async with`` block, and reads it in one place: on a socket under asyncio, a
callback of the event loop that runs as soon as bytes arrive and hands each message on at once (a call's
answer wakes its caller directly, a request starts its handler's task); on any other stream, one reader
task in a task group of its own. Every message costs a trip through the event loop fewer that way, and
readiness is registered once per connection, not once per message. Both ends are symmetric: either may
call the other; a controller's side answers with its ``handler`` and a client's side usually has none.

* **Calls** (:meth:`Peer.call`) carry a request id; any number may be in flight on one connection and
  their responses may come back in any order. A caller that is cancelled (a timeout, a task group
  unwinding) tells the other side with ``$cancel``, which cancels the handler there: work nobody waits
  for does not go on.
* **Streams** (:meth:`Peer.stream`) are requests whose answer is a sequence: the callee sends ``$item``
  notifications, then the response. The caller's side buffers at most ``max_items`` items per stream and
  drops the oldest beyond that, so a consumer that falls behind never stalls the reader (nor the other
  calls on the connection); it receives a :class:`Lost` marker with the count instead, in order. A
  handler may yield :class:`Lost` itself to report what it dropped upstream.
  A handler may also yield a :class:`Batch` of items that are ready together: they go out as the same
  ``$item`` messages, in one write (one system call here, one wake-up of the other side).
* **Handlers** run one task each. A handler's :class:`~avirt.errors.AvirtError` travels back as its class
  name, message and plain attributes and is raised again, as the same class, in the caller; any other
  exception is logged where it happened and reaches the caller as a bare ``AvirtError``.
* **Failures**: a malformed, oversized or unexpected message ends the connection (the reason is logged
  and kept in :attr:`Peer.closed_because`); every call still waiting then fails with
  :class:`PeerClosedError`, and nothing waits forever.

Writes are serialised by one lock: a slow reader on the other side holds up this connection only.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup

from avirt import errors
from avirt.errors import AvirtError, ControllerGoneError, InvalidArgumentError
from avirt.rpc.messages import (
    MAX_MESSAGE,
    Decoder,
    Message,
    Notification,
    ProtocolError,
    Request,
    Response,
    encode,
)

__all__ = ["Batch", "Handler", "Lost", "Peer", "PeerClosedError"]

log = logging.getLogger(__name__)

#: ``handler(method, params)``: an awaitable for a call, an async iterator for a stream.
Handler = Callable[[str, list[Any]], Awaitable[Any] | AsyncIterator[Any]]

CANCEL, ITEM, LOST = "$cancel", "$item", "$lost"


class PeerClosedError(ControllerGoneError):
    """The connection ended while a call was waiting for its answer (or before it was sent)."""


@dataclass(frozen=True)
class Lost:
    """In a stream, in place of ``count`` items that were dropped because their consumer fell behind
    (0: an unknown number)."""

    count: int


@dataclass(frozen=True)
class Batch:
    """In a stream handler's output: several items (and :class:`Lost` markers), in order, that are ready
    at once and are written together."""

    items: list[Any]


class _Pending:
    """A call or stream of ours, waiting for its response (and, for a stream, collecting items)."""

    def __init__(self, request_id: int, max_items: int | None,
                 on_item: Callable[[Any], None] | None = None) -> None:
        self.id = request_id
        self.on_item = on_item
        self.done = anyio.Event()
        self.error: Any = None  # as the other side sent it
        self.failure: AvirtError | None = None  # this side's own reason (the connection ended)
        self.result: Any = None
        self.items: deque[Any] | None = None if max_items is None else deque()
        self.max_items = max_items or 0
        self.lost = 0
        self._wake: anyio.Event | None = None  # while a stream's consumer waits

    def add(self, item: Any) -> None:
        if self.items is None:
            raise ProtocolError("an item for a request that is not a stream")
        if self.on_item is not None:
            try:
                self.on_item(item)
            except Exception as e:  # what the other side sent cannot be used: as if it were malformed
                raise ProtocolError(f"an unusable stream item: {e}") from None
        elif isinstance(item, Lost):
            self.lost += item.count
        elif len(self.items) >= self.max_items:
            self.items.popleft()
            self.lost += 1
            self.items.append(item)
        else:
            self.items.append(item)
        self.wake()

    def finish(self, error: Any, result: Any) -> None:
        self.error, self.result = error, result
        self.done.set()
        self.wake()

    def fail(self, failure: AvirtError) -> None:
        self.failure = failure
        self.finish(None, None)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def wait(self) -> None:
        self._wake = anyio.Event()
        try:
            await self._wake.wait()
        finally:
            self._wake = None


class Peer:
    def __init__(self, stream: ByteStream, handler: Handler | None = None, *, name: str = "peer",
                 max_message: int = MAX_MESSAGE, max_items: int = 1000) -> None:
        self.name = name
        self.closed_because: str | None = None
        self._stream = stream
        self._handler = handler
        self._max_items = max_items
        self._decoder = Decoder(max_message)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._serving: dict[int, anyio.CancelScope] = {}
        self._handlers: set[asyncio.Task[None]] = set()  # handlers' tasks started by _readable
        # fast_acquire: an uncontended lock costs no trip through the event loop (each one a call's latency).
        self._send_lock = anyio.Lock(fast_acquire=True)
        # A socket is written directly while its buffer has room (the common case); anyio's send, which
        # first yields to the event loop, only takes what is left. None: a stream with no socket below.
        self._socket: socket.socket | None = stream.extra(SocketAttribute.raw_socket, None)
        self._group: TaskGroup | None = None
        self._closed = anyio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # while it calls _readable

    async def __aenter__(self) -> Peer:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        if self._socket is not None and _on_asyncio():
            # The event loop itself reads the socket when it is readable and hands each message on at once:
            # no reader task to wake, and no readiness registration per message (each is a trip through the
            # event loop and two system calls, on every message in both directions).
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._socket, self._readable)
        else:
            self._group.start_soon(self._read, name=f"{self.name}-reader")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._group is not None
        # Closing the stream first lets the reader end by itself: cancelling a receive that is waiting on
        # a unix socket races with its readiness callback in anyio's asyncio backend.
        self._close("closed")
        self._stop_reading()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
            for scope in self._serving.values():
                scope.cancel()
            if self._handlers:
                await asyncio.wait(set(self._handlers))
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(exc_type, exc, tb)

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- our requests -----------------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` on the other side and return its result (or raise its error)."""
        pending = await self._request(method, params, None)
        try:
            await pending.done.wait()
        finally:
            if not pending.done.is_set():
                await self._give_up(pending)
        return _outcome(pending)

    @asynccontextmanager
    async def stream(self, method: str, *params: Any,
                     on_item: Callable[[Any], None] | None = None) -> AsyncIterator[AsyncIterator[Any]]:
        """``async with peer.stream(m) as items: async for item in items``; leaving the block early cancels
        the stream on the other side. Items may include :class:`Lost` markers.

        With ``on_item``, each item is handed to it as it arrives, in the reader's task and in order with
        the responses to other calls (it must not block), and the iterator only waits for the end."""
        pending = await self._request(method, params, self._max_items, on_item)

        async def items() -> AsyncIterator[Any]:
            assert pending.items is not None
            while True:
                if pending.lost:
                    lost, pending.lost = pending.lost, 0
                    yield Lost(lost)
                while pending.items:
                    yield pending.items.popleft()
                    if pending.lost:
                        break
                if pending.lost:
                    continue
                if pending.done.is_set():
                    _outcome(pending)  # raises the stream's error, if it ended with one
                    return
                await pending.wait()

        try:
            yield items()
        finally:
            if not pending.done.is_set():
                await self._give_up(pending)

    async def notify(self, method: str, *params: Any) -> None:
        await self._send(Notification(method, list(params)))

    async def _request(self, method: str, params: tuple[Any, ...], max_items: int | None,
                       on_item: Callable[[Any], None] | None = None) -> _Pending:
        if self.is_closed:
            raise PeerClosedError(f"{self.name}: connection closed ({self.closed_because})")
        request_id = next(self._ids) % 2**32
        pending = self._pending[request_id] = _Pending(request_id, max_items, on_item)
        try:
            await self._send(Request(request_id, method, list(params)))
        except BaseException:
            self._pending.pop(request_id, None)
            raise
        return pending

    async def _give_up(self, pending: _Pending) -> None:
        if self._pending.get(pending.id) is not pending or self.is_closed:
            return
        # The response still comes (a cancelled handler answers too); _pending keeps the id until then.
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await self._send(Notification(CANCEL, [pending.id]))
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    # -- the connection -----------------------------------------------------------------------------------

    async def _send(self, *messages: Message) -> None:
        """Write ``messages`` in order, in one write when the socket takes them all."""
        try:
            data = b"".join([encode(message) for message in messages])
        except (UnicodeEncodeError, TypeError, ValueError, OverflowError) as e:
            # A value msgpack cannot carry: lone surrogates (os.fsdecode's), an integer past 64 bits...
            raise InvalidArgumentError(f"cannot send {_what(messages[0])}: {e}") from None
        async with self._send_lock:
            try:
                if self._socket is not None:
                    try:
                        data = data[self._socket.send(data):]
                    except BlockingIOError:
                        pass
                if data:
                    await self._stream.send(data)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                self._close(f"send failed: {e}")
                raise PeerClosedError(f"{self.name}: connection closed ({self.closed_because})") from None

    async def _read(self) -> None:
        reason = "end of stream"
        try:
            while True:
                try:
                    data = await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                    break
                for message in self._decoder.feed(data):
                    self._dispatch(message)
        except ProtocolError as e:
            reason = f"protocol error: {e}"
            log.warning("%s: closing the connection: %s", self.name, e)
        finally:
            self._ended(reason)

    def _readable(self) -> None:
        """The socket has bytes (or its end): what :meth:`_read` does for one ``receive``, called by the
        event loop itself."""
        assert self._socket is not None
        try:
            data = self._socket.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._ended("end of stream")
            return
        try:
            for message in self._decoder.feed(data):
                self._dispatch(message)
        except ProtocolError as e:
            log.warning("%s: closing the connection: %s", self.name, e)
            self._ended(f"protocol error: {e}")
        except Exception as e:  # a callback of the event loop: nothing above it would end the connection
            log.exception("%s: closing the connection", self.name)
            self._ended(f"failed: {e}")

    def _ended(self, reason: str) -> None:
        self._stop_reading()
        self._close(reason)
        # Calls being served for a peer that is gone have nobody to answer to.
        for scope in self._serving.values():
            scope.cancel()

    def _stop_reading(self) -> None:
        if self._loop is not None and self._socket is not None:
            self._loop.remove_reader(self._socket)  # found by identity even once closed
            self._loop = None

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Response):
            pending = self._pending.pop(message.id, None)
            if pending is None:
                raise ProtocolError(f"a response to request {message.id}, which is not in flight")
            pending.finish(message.error, message.result)
        elif isinstance(message, Request):
            if message.id in self._serving:
                raise ProtocolError(f"request id {message.id} is already in flight")
            scope = self._serving[message.id] = anyio.CancelScope()
            name = f"{self.name}-{message.method}"
            if self._loop is not None:
                # A plain task, which __aexit__ cancels and awaits itself: a task group's task costs a wrapper
                # coroutine, a task state and a cancel scope more, on every call's way.
                task = self._loop.create_task(self._serve(message, scope), name=name)
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
            else:
                assert self._group is not None
                self._group.start_soon(self._serve, message, scope, name=name)
        elif message.method == CANCEL:
            serving = self._serving.get(_request_id(message))
            if serving is not None:  # else it has already finished: its response is on the way
                serving.cancel()
        elif message.method in (ITEM, LOST):
            if len(message.params) != 2:
                raise ProtocolError(f"{message.method} takes [id, value]")
            pending = self._pending.get(_request_id(message))
            if pending is None:
                raise ProtocolError(f"{message.method} for request {message.params[0]}, not in flight")
            value = message.params[1]
            if message.method == LOST:
                if not isinstance(value, int) or value < 0:
                    raise ProtocolError("$lost takes a count (0: unknown)")
                value = Lost(value)
            pending.add(value)
        else:
            log.debug("%s: notification %s ignored", self.name, message.method)

    def _close(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.closed_because = reason
        self._closed.set()
        for pending in self._pending.values():
            pending.fail(PeerClosedError(f"{self.name}: connection closed ({reason})"))
        self._pending.clear()

    # -- their requests -----------------------------------------------------------------------------------

    async def _serve(self, request: Request, scope: anyio.CancelScope) -> None:
        error: Any = None
        result: Any = None
        with scope:
            try:
                if self._handler is None:
                    raise errors.OperationInvalidError("this side serves no calls")
                outcome = self._handler(request.method, request.params)
                if inspect.isawaitable(outcome):
                    result = await outcome
                else:
                    async for item in outcome:
                        items = item.items if isinstance(item, Batch) else [item]
                        await self._send(*[Notification(LOST, [request.id, i.count]) if isinstance(i, Lost)
                                           else Notification(ITEM, [request.id, i]) for i in items])
            except AvirtError as e:
                error = error_to_wire(e)
            except Exception as e:
                log.exception("%s: %s failed", self.name, request.method)
                error = {"type": "AvirtError", "message": f"{request.method} failed in the controller: {e}"}
        if scope.cancelled_caught:
            error = {"type": "OperationInvalidError", "message": f"{request.method} was cancelled"}
        del self._serving[request.id]
        if self.is_closed:
            return
        with anyio.CancelScope(shield=True):
            try:
                try:
                    await self._send(Response(request.id, error, result))
                except InvalidArgumentError as e:  # a result the wire cannot carry: the caller learns why
                    await self._send(Response(request.id, error_to_wire(e), None))
            except PeerClosedError:
                pass


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio)
        return False
    return True


def error_to_wire(error: AvirtError) -> dict[str, Any]:
    """An avirt error as data: its class name, message, and those attributes that are plain data."""
    attrs = {k: v for k, v in vars(error).items() if _plain(v)}
    return {"type": type(error).__name__, "message": str(error), "attrs": attrs}


def error_from_wire(error: Any) -> AvirtError:
    """The error a handler raised, as the same :mod:`avirt.errors` class (never any other class)."""
    if not isinstance(error, dict):
        return AvirtError(f"malformed error from the controller: {str(error)[:200]}")
    cls = getattr(errors, str(error.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, AvirtError)):
        cls = AvirtError
    instance: AvirtError = cls.__new__(cls)
    Exception.__init__(instance, str(error.get("message", "")))
    attrs = error.get("attrs")
    if isinstance(attrs, dict):
        instance.__dict__.update({k: v for k, v in attrs.items() if isinstance(k, str)})
    return instance


def _what(message: Message) -> str:
    if isinstance(message, Response):
        return f"the answer to request {message.id}"
    return f"{message.method}'s arguments"


def _request_id(message: Notification) -> int:
    if not message.params or not isinstance(message.params[0], int):
        raise ProtocolError(f"{message.method} needs a request id first")
    return message.params[0]


def _outcome(pending: _Pending) -> Any:
    if pending.failure is not None:
        raise pending.failure
    if pending.error is not None:
        raise error_from_wire(pending.error)
    return pending.result


def _plain(value: object) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
