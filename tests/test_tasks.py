"""alongside(): two awaits at once, the first error raised as itself."""

from __future__ import annotations

import anyio
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


async def test_an_error_of_either_is_raised_as_itself_and_stops_the_other() -> None:
    stopped = anyio.Event()

    async def failing() -> None:
        raise QMPError("GenericError", "no")

    async def waiting() -> None:
        try:
            await anyio.Event().wait()
        finally:
            stopped.set()

    with anyio.fail_after(5):
        with pytest.raises(QMPError, match="no"):
            await alongside(failing(), waiting())
        assert stopped.is_set()
        with pytest.raises(OSError, match="disk full"):
            await alongside(waiting(), _raise(OSError("disk full")))


async def _raise(error: Exception) -> None:
    raise error
