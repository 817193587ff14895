"""The event bus: from one publisher (the driver) to many subscribers, none of which can slow the others.

Each subscription has its own bounded queue. :meth:`EventBus.emit` never blocks and never waits for a
subscriber: it appends to the queue of every subscription whose filter matches, and wakes the reader if
it sleeps. A full queue drops its *oldest* event and counts it, so a subscriber that falls behind learns
exactly how many it missed and then goes on with the newest ones:

* a stream (:class:`EventStream`, an async iterator) raises :class:`~avirt.errors.EventsLostError` with that
  count at its next read, then continues;
* a callback subscription (:class:`Subscription`) has its own consumer task, counts losses in
  :attr:`Subscription.lost` and logs the first loss once.

An event object is only built when some subscription wants its kind (``wants``), so a controller that
watches thousands of quiet guests with no subscriber pays nothing per QMP event. Events of one domain reach
each subscriber in the order they were emitted, because each queue is FIFO and a single publisher fills them.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio

from avirt.errors import EventsLostError, InvalidArgumentError
from avirt.events.model import Event, EventKind
from avirt.tasks import TaskOwner

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Callback = Callable[[Event], Awaitable[None] | None]


class _Queue:
    """One subscription's bounded FIFO with loss accounting and a wake-up for its single reader."""

    def __init__(self, kinds: frozenset[EventKind] | None, domain: str | None, max_queue: int) -> None:
        if max_queue < 1:
            raise InvalidArgumentError("max_queue must be at least 1")
        self.kinds = kinds
        self.domain = domain
        self.items: deque[Event] = deque(maxlen=max_queue)
        self.lost = 0
        self.gap = False  # events were lost upstream, how many is not known
        self.closed = False
        self._wakeup: anyio.Event | None = None

    def matches(self, event: Event) -> bool:
        return (self.kinds is None or event.kind in self.kinds) and (
            self.domain is None or event.domain == self.domain)

    def put(self, event: Event) -> None:
        if len(self.items) == self.items.maxlen:
            self.lost += 1  # the deque drops the oldest as the newest goes in
        self.items.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def get(self) -> Event:
        """The next event; EventsLostError first if some were dropped; StopAsyncIteration at the end."""
        while True:
            if self.gap:
                self.gap, self.lost = False, 0
                raise EventsLostError(None)
            if self.lost:
                lost, self.lost = self.lost, 0
                raise EventsLostError(lost)
            if self.items:
                return self.items.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            await self._wakeup.wait()


class EventBus:
    def __init__(self, tasks: TaskOwner) -> None:
        self._tasks = tasks
        self._queues: list[_Queue] = []
        self._seq = 0
        self._kind_counts: dict[EventKind, int] = {}
        self._all_kinds = 0  # subscriptions without a kind filter

    # -- publishing -----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether anyone subscribes at all."""
        return bool(self._queues)

    def wants(self, kind: EventKind) -> bool:
        """Whether any subscription would receive an event of ``kind`` (else do not even build it)."""
        return self._all_kinds > 0 or self._kind_counts.get(kind, 0) > 0

    def emit(self, cls: type[E], domain: str, uuid: str, timestamp: float | None = None,
             **fields: Any) -> E | None:
        """Build an event of ``cls`` (with the next ``seq``) and queue it for every matching subscription."""
        if not self.wants(cls.kind):
            return None
        self._seq += 1
        event = cls(domain=domain, uuid=uuid, timestamp=timestamp if timestamp is not None else time.time(),
                    seq=self._seq, **fields)
        self.forward(event)
        return event

    def forward(self, event: Event) -> None:
        """Queue a built event for every matching subscription (also one another controller built: a
        served client's copy of its controller's events)."""
        for queue in self._queues:
            if queue.matches(event):
                queue.put(event)

    def lose(self, count: int | None) -> None:
        """Tell every subscriber that ``count`` events (None: an unknown number) were lost before they
        reached this bus."""
        for queue in self._queues:
            if count is None:
                queue.gap = True
            else:
                queue.lost += count
            queue._wake()

    # -- subscribing ----------------------------------------------------------------------------------

    def _add(self, kinds: Iterable[EventKind] | None, domain: str | None, max_queue: int) -> _Queue:
        queue = _Queue(frozenset(kinds) if kinds is not None else None, domain, max_queue)
        self._queues.append(queue)
        if queue.kinds is None:
            self._all_kinds += 1
        else:
            for kind in queue.kinds:
                self._kind_counts[kind] = self._kind_counts.get(kind, 0) + 1
        return queue

    def _remove(self, queue: _Queue) -> None:
        if queue not in self._queues:
            return
        self._queues.remove(queue)
        if queue.kinds is None:
            self._all_kinds -= 1
        else:
            for kind in queue.kinds:
                self._kind_counts[kind] -= 1
        queue.close()

    def stream(self, kinds: Iterable[EventKind] | None, domain: str | None, max_queue: int) -> EventStream:
        return EventStream(self, self._add(kinds, domain, max_queue))

    def subscribe(self, callback: Callback, kinds: Iterable[EventKind] | None, domain: str | None,
                  max_queue: int) -> Subscription:
        subscription = Subscription(self, self._add(kinds, domain, max_queue), callback)
        self._tasks.start_soon(subscription._consume, name=f"subscription-{id(subscription):x}")
        return subscription

    def close(self) -> None:
        """End every stream and subscription (their readers see the end, not an error)."""
        for queue in list(self._queues):
            self._remove(queue)


class EventStream:
    """An async iterator of events; also an async context manager that ends the subscription on exit."""

    def __init__(self, bus: EventBus, queue: _Queue) -> None:
        self._bus = bus
        self._queue = queue

    @property
    def pending(self) -> int:
        """Events queued for this stream and not read yet."""
        return len(self._queue.items)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self._queue.get()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._bus._remove(self._queue)


class Subscription:
    """A callback subscription: its own queue and its own consumer task. ``cancel()`` ends it."""

    def __init__(self, bus: EventBus, queue: _Queue, callback: Callback) -> None:
        self._bus = bus
        self._queue = queue
        self._callback = callback
        #: How many events were dropped because the callback did not keep up.
        self.lost = 0

    @property
    def active(self) -> bool:
        return not self._queue.closed

    def cancel(self) -> None:
        self._bus._remove(self._queue)

    async def _consume(self) -> None:
        while True:
            try:
                event = await self._queue.get()
            except EventsLostError as e:
                if e.count is None:
                    log.warning("event subscription %r: %s", self._callback, e)
                    continue
                if not self.lost:
                    log.warning("event subscription %r is too slow: %d events dropped (counting on in "
                                "Subscription.lost)", self._callback, e.count)
                self.lost += e.count
                continue
            except StopAsyncIteration:
                return
            try:
                result = self._callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # One bad callback must not end the subscription, nor touch anyone else's.
                log.exception("event callback %r failed on %r", self._callback, event)
