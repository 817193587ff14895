"""The QMP monitor on a real QEMU: typed errors, events to one sink, and no memory growth per event."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from avirt.drivers.qemu.process import QemuProcess
from avirt.errors import QMPError
from avirt.hosts.local import LocalHost
from avirt.qmp import Monitor, MonitorClosedError
from tests.fakeqmp import recorded_greeting

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


async def test_a_stale_reply_before_the_greeting_is_survived(tmp_path: Path) -> None:
    """Fault injection (a peer with QEMU's exact bytes): a re-attach once met a reply ahead of the
    greeting, after the previous controller was killed mid-command. Re-attaching connects again
    instead of taking that QEMU for mute."""
    greeting = recorded_greeting()
    stale = b'{"return": {}, "id": "__qmp#00042"}\r\n'
    connections = 0

    async def serve(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                if connections == 1:  # the client hangs up on a first message that is no greeting
                    await stream.send(stale + greeting)
                    await stream.receive()
                    raise AssertionError("the client went on past a reply it never asked for")
                await stream.send(greeting)
                assert b"qmp_capabilities" in await stream.receive()
                await stream.send(b'{"return": {}}\r\n')
                await stream.receive()

    sock = tmp_path / "qmp.sock"
    (tmp_path / "qemu.pid").write_text(f"{os.getpid()}\n")  # a live pid: the "QEMU" is this process
    listener = await anyio.create_unix_listener(sock)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        proc = await QemuProcess.attach(LocalHost(), "stale", qmp_socket=str(sock),
                                        pidfile=str(tmp_path / "qemu.pid"), on_event=lambda _e: None)
        assert proc is not None and proc.monitor.connected
        assert proc.monitor.greeting["QMP"]["version"]["qemu"]["major"] == 7
        assert connections == 2
        await proc.monitor.aclose()
        tg.cancel_scope.cancel()
