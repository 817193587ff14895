"""One event stream for many connections (avirt.fleet.merge): a local host and one reached over SSH."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import avirt
from avirt import EventKind, LifecycleEvent
from avirt.errors import EventsLostError
from tests.sshd import SSHServer
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


async def test_events_of_two_hosts_arrive_tagged_with_their_connection(
        sshd: SSHServer, tmp_path: Path, xml: XMLFactory) -> None:
    async with avirt.connect("qemu:///session", state_dir=tmp_path / "local") as local, \
            avirt.connect(sshd.uri(tmp_path / "remote")) as remote:
        async with avirt.fleet.merge(local, remote, kinds={EventKind.LIFECYCLE}) as stream:
            here = await local.define_xml(xml("here"))
            there = await remote.define_xml(xml("there"))
            await here.start(paused=True)
            await there.start(paused=True)
            seen: list[tuple[str, str, str]] = []
            with anyio.fail_after(30):
                async for conn, event in stream:
                    assert isinstance(event, LifecycleEvent)
                    seen.append((conn.uri.split(":")[0], event.domain, event.type.name))
                    if len(seen) == 6:
                        break
            await here.destroy()
            await there.destroy()
    # Each domain's own events keep their order; the two hosts' interleave.
    assert [s for s in seen if s[1] == "here"] == [
        ("qemu", "here", "DEFINED"), ("qemu", "here", "STARTED"), ("qemu", "here", "SUSPENDED")]
    assert [s for s in seen if s[1] == "there"] == [
        ("qemu+ssh", "there", "DEFINED"), ("qemu+ssh", "there", "STARTED"),
        ("qemu+ssh", "there", "SUSPENDED")]


async def test_a_slow_reader_is_told_which_connection_lost_events(tmp_path: Path, xml: XMLFactory) -> None:
    async with avirt.connect("qemu:///session", state_dir=tmp_path / "a") as a, \
            avirt.connect("qemu:///session", state_dir=tmp_path / "b") as b:
        async with avirt.fleet.merge(a, b, max_queue=2) as stream:
            for i in range(6):  # six DEFINED events on a, nobody reading: a's queue of two overflows
                await a.define_xml(xml(f"d{i}"))
            with pytest.raises(EventsLostError) as lost:
                with anyio.fail_after(10):
                    async for _ in stream:
                        pass
            assert lost.value.connection is a
            assert lost.value.count >= 3
            conn, event = await anext(stream)  # then the newest events
            assert conn is a and event.domain in {"d4", "d5"}


async def test_the_stream_ends_when_every_connection_has_closed(tmp_path: Path) -> None:
    a = await avirt.connect("qemu:///session", state_dir=tmp_path / "a")
    b = await avirt.connect("qemu:///session", state_dir=tmp_path / "b")
    async with avirt.fleet.merge(a, b) as stream:
        await a.close()
        await b.close()
        with anyio.fail_after(10):
            assert [item async for item in stream] == []


def test_merge_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="at least one"):
        avirt.fleet.merge()
