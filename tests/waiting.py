"""Waiting, in tests, for something that offers no event to wait on: always against a deadline.

Both helpers re-check a condition until it holds or the deadline passes. ``wait_for_state`` covers the
moment between QEMU's exit and the supervisor settling the domain's state (the events API replaces it);
``wait_for_serial`` reads a guest's serial log, a plain file.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from avirt import Domain, DomainState


async def wait_for_state(dom: Domain, wanted: DomainState, *, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while (await dom.state())[0] is not wanted:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def wait_for_serial(path: Path, marker: str, *, count: int = 1, timeout: float = 90) -> None:
    """Until ``marker`` has appeared ``count`` times; TCG boots take seconds, hence the default."""
    with anyio.fail_after(timeout):
        while True:
            text = await anyio.Path(path).read_text() if path.exists() else ""
            if text.count(marker) >= count:
                return
            await anyio.sleep(0.05)
