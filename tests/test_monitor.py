"""The QMP monitor on a real QEMU: typed errors, events to one sink, and no memory growth per event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from avirt.errors import QMPError
from avirt.hosts.local import LocalHost
from avirt.qmp import Monitor, MonitorClosedError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def qemu(tmp_path: Path) -> AsyncIterator[tuple[Monitor, list[dict[str, Any]]]]:
    """A bare `-machine none` QEMU (no guest at all) and a monitor on it that records every event."""
    host = LocalHost()
    sock = str(tmp_path / "qmp.sock")
    await host.start_detached(
        lambda fd: ["qemu-system-x86_64", "-machine", "none", "-accel", "tcg", "-nodefaults", "-display",
                    "none", "-S", "-pidfile", str(tmp_path / "pid"),
                    "-chardev", f"socket,id=m,{fd},server=on,wait=off", "-mon", "chardev=m,mode=control"],
        listen_path=sock, log_path=str(tmp_path / "log"))
    events: list[dict[str, Any]] = []
    monitor = Monitor("bare", events.append)
    await monitor.connect(sock)
    pid = int((tmp_path / "pid").read_text())
    yield monitor, events
    if monitor.connected:
        await monitor.execute("quit")
    await host.wait_exit(pid)
    await monitor.aclose()


async def test_greeting_and_commands(qemu: tuple[Monitor, list[dict[str, Any]]]) -> None:
    monitor, _ = qemu
    assert monitor.greeting["QMP"]["version"]["qemu"]["major"] >= 7
    status = await monitor.execute("query-status")
    assert status["status"] == "prelaunch"


async def test_error_replies_are_typed(qemu: tuple[Monitor, list[dict[str, Any]]]) -> None:
    monitor, _ = qemu
    with pytest.raises(QMPError) as caught:
        await monitor.execute("no-such-command")
    assert caught.value.error_class == "CommandNotFound"
    with pytest.raises(QMPError, match="GenericError"):
        await monitor.execute("query-status", {"bogus": 1})


async def test_events_reach_the_sink_and_nothing_accumulates(
        qemu: tuple[Monitor, list[dict[str, Any]]]) -> None:
    monitor, events = qemu
    cycles = 500
    for _ in range(cycles):
        await monitor.execute("cont")
        await monitor.execute("stop")
    names = [e["event"] for e in events]
    assert names.count("RESUME") == cycles and names.count("STOP") == cycles
    assert all("seconds" in e["timestamp"] for e in events)
    # qemu.qmp's own listeners would queue and remember every one of those events forever.
    client = monitor._client
    assert client.events.empty()
    assert len(client.events.history) == 0


async def test_end_of_session_is_seen_and_later_calls_fail_typed(
        qemu: tuple[Monitor, list[dict[str, Any]]]) -> None:
    monitor, events = qemu
    await monitor.execute("quit")
    await monitor.closed()
    assert not monitor.connected
    assert events[-1]["event"] == "SHUTDOWN"
    with pytest.raises(MonitorClosedError):
        await monitor.execute("query-status")


async def test_connect_to_nothing_fails_typed(tmp_path: Path) -> None:
    with pytest.raises(MonitorClosedError, match="cannot connect"):
        await Monitor("none").connect(str(tmp_path / "missing.sock"))
