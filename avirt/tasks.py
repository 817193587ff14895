"""An owner for background tasks whose lifetime is an object's, not a ``with`` block's.

A connection lives from ``connect()`` to ``close()``, which may be called from different tasks, while an
anyio task group must be entered and left by one task. :class:`TaskOwner` therefore runs its task group in
a task of its own: ``start_soon`` may be called from anywhere, and ``aclose`` cancels every task it owns
and waits for them all. Nothing is fire-and-forget.

:func:`alongside` is the short-lived case: two awaits at once, inside one call, each let finish, errors
as themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

log = logging.getLogger(__name__)


class TaskOwner:
    def __init__(self) -> None:
        self._group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = anyio.Event()

    async def open(self) -> None:
        ready = anyio.Event()

        async def run() -> None:
            async with anyio.create_task_group() as group:
                self._group = group
                ready.set()
                await self._closing.wait()
                group.cancel_scope.cancel()

        self._runner = asyncio.get_running_loop().create_task(run(), name="avirt-task-owner")
        await ready.wait()

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        if self._group is None or self._closing.is_set():
            raise RuntimeError("the task owner is closed")

        async def guarded() -> None:
            # One task's failure must not cancel its siblings (other guests' supervisors).
            try:
                await func(*args)
            except Exception:
                log.exception("background task %s failed", name or getattr(func, "__name__", func))

        self._group.start_soon(guarded, name=name)

    async def aclose(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner
            self._runner = None
        self._group = None


T = TypeVar("T")


async def alongside(step: Awaitable[T], other: Awaitable[object]) -> T:
    """``step``'s result, ``other`` awaited at the same time; both are done on return.

    For two waits that do not depend on each other (a file's write and a QMP command, two checks, a
    migration's prepare at one end and its ready step at the other): the caller waits for the longer
    one, not for both in turn. Neither is cut short by the other's failure, as either may be half-way
    through something that only its own end unwinds (a QEMU being started, a record being written):
    an error is raised once both have ended, ``step``'s first, and as itself, not as an exception
    group, so callers catch what they caught when the two ran one after the other. A cancellation
    from outside still cancels both."""
    errors: list[Exception] = []
    result: list[T] = []

    async def run_other() -> None:
        try:
            await other
        except Exception as e:
            errors.append(e)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run_other)
            try:
                result.append(await step)
            except Exception as e:
                errors.insert(0, e)
    except BaseExceptionGroup as e:
        raise _first_error(e) from None
    if errors:
        raise errors[0]
    return result[0]


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of ``group`` that is not a cancellation (the one that cancelled the rest)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    cancelled = anyio.get_cancelled_exc_class()
    return next((exc for exc in leaves if not isinstance(exc, cancelled)), leaves[0])
