"""Reading event streams in tests: until a predicate holds, against a deadline."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from avirt import Event, EventStream, LifecycleEvent


async def read_until(stream: EventStream, done: Callable[[Event], bool], *,
                     timeout: float = 30) -> list[Event]:
    """Every event up to and including the first one for which ``done`` is true."""
    seen: list[Event] = []
    with anyio.fail_after(timeout):
        async for event in stream:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"stream ended before the awaited event; saw {seen}")


def lifecycle(events: list[Event]) -> list[tuple[str, str]]:
    """(type, detail) of each lifecycle event, for compact assertions."""
    return [(e.type.name, e.detail) for e in events if isinstance(e, LifecycleEvent)]
