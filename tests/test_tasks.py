"""alongside(): two awaits at once, each let finish, the step's error first and as itself."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from avirt.errors import QMPError
from avirt.tasks import alongside

pytestmark = pytest.mark.anyio


async def test_both_run_at_once_and_the_steps_result_is_returned() -> None:
    # Each waits for the other to have started: run one after the other, this would never end.
    first, second = anyio.Event(), anyio.Event()

    async def step() -> str:
        first.set()
        await second.wait()
        return "step"

    async def other() -> None:
        second.set()
        await first.wait()

    with anyio.fail_after(5):
        assert await alongside(step(), other()) == "step"


async def test_an_error_of_either_is_raised_as_itself_once_the_other_has_finished() -> None:
    # A failure at one end must not cut short what the other is half-way through (a QEMU being started,
    # a record being written): the other runs to its end, then the error is raised.
    finished: list[str] = []
    release = anyio.Event()

    async def failing() -> None:
        release.set()
        raise QMPError("GenericError", "no")

    async def working() -> None:
        await release.wait()
        await anyio.lowlevel.checkpoint()  # a checkpoint at which a cancellation would land
        finished.append("other")

    with anyio.fail_after(5):
        with pytest.raises(QMPError, match="no"):
            await alongside(failing(), working())
        assert finished == ["other"]
        release = anyio.Event()
        with pytest.raises(OSError, match="disk full"):
            await alongside(working(), _fail_after(release, OSError("disk full")))
        assert finished == ["other", "other"]


async def test_when_both_fail_the_steps_error_is_raised() -> None:
    with anyio.fail_after(5), pytest.raises(QMPError, match="step"):
        await alongside(_raise(QMPError("GenericError", "step")), _raise(OSError("other")))


async def test_a_cancellation_from_outside_cancels_both() -> None:
    started, stopped = anyio.Event(), []

    async def waiting(name: str) -> None:
        try:
            if name == "other":
                started.set()
            await anyio.Event().wait()
        finally:
            stopped.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(alongside, waiting("step"), waiting("other"))
            await started.wait()
            group.cancel_scope.cancel()
    assert sorted(stopped) == ["other", "step"]


async def _fail_after(event: anyio.Event, error: Exception) -> None:
    event.set()
    raise error


async def _raise(error: Exception) -> None:
    raise error
