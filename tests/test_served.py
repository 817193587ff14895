"""Many programs on one state directory (avirt/served/): real processes, real QEMU.

The program that holds a state directory serves it; the others are its clients, and when it goes away
(closed, or killed with SIGKILL) one of them takes over. The holder here is a separate Python process, so
that killing it is what it would be in real life; the clients are connections of the test process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

import avirt
from avirt.errors import AvirtError, EventsLostError, OperationInvalidError
from avirt.events.model import BlockJobStatus, EventKind, LifecycleEvent, LifecycleType
from avirt.rpc import Peer
from avirt.served.server import PROTOCOL
from tests.conformance.conftest import chain_disk
from tests.images import GUEST_VIEW, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

HOLDER = textwrap.dedent("""
    import sys, anyio, avirt
    async def main():
        async with avirt.connect("qemu:///session", state_dir=sys.argv[1]) as conn:
            assert conn.serving
            print("serving", flush=True)
            await anyio.sleep_forever()
    anyio.run(main)
""")


@pytest.fixture
def holder(state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another program holding ``state_dir`` (until the test kills it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "serving"
    yield process
    process.kill()
    process.wait(timeout=30)


async def test_a_client_takes_over_a_killed_holder_and_reports_its_jobs_real_result(
        state_dir: Path, tmp_path: Path, xml: XMLFactory, holder: subprocess.Popen[str]) -> None:
    chain = make_chain(tmp_path)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        assert not conn.serving
        dom = await conn.define_xml(xml("ho1", extra_devices=chain_disk("vda", chain)))
        await dom.start(paused=True)
        async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
            # Slow enough to be running when the holder dies: 6 MiB of data at 1 MiB/s.
            job = await dom.block_commit("vda", bandwidth=1 << 20)
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            with anyio.fail_after(60):
                await job.wait_ready()  # followed from the job on the new controller: this program
                assert conn.serving
                assert await job.pivot() is BlockJobStatus.COMPLETED
            # The hand-over is a gap in the events, said once; then they go on.
            with pytest.raises(EventsLostError) as lost:
                await stream.__anext__()
            assert lost.value.count is None
            await dom.resume()
            with anyio.fail_after(10):
                event = await stream.__anext__()
            assert isinstance(event, LifecycleEvent) and event.type is LifecycleType.RESUMED
        source = etree.fromstring(await dom.xml()).find("devices/disk/source")
        assert source is not None and source.get("file") == str(chain.base)  # the pivot is in the definition
        await dom.destroy()
    assert reads(chain.base, GUEST_VIEW) == []  # everything the guest saw is in the base now


async def test_fifty_clients_each_see_every_event(state_dir: Path, xml: XMLFactory,
                                                  holder: subprocess.Popen[str]) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as first:
        dom = await first.define_xml(xml("many1"))
        await dom.start(paused=True)
        seen: list[list[LifecycleType]] = []

        async def client(ready: anyio.Event, index: int) -> None:
            async with avirt.connect("qemu:///session", state_dir=state_dir) as conn, \
                    conn.events(kinds={EventKind.LIFECYCLE}, domain="many1") as stream:
                ready.set()
                types = []
                with anyio.fail_after(60):
                    async for event in stream:
                        assert isinstance(event, LifecycleEvent)
                        types.append(event.type)
                        if event.type is LifecycleType.STOPPED:
                            break
                seen.append(types)

        async with anyio.create_task_group() as group:
            for i in range(50):
                ready = anyio.Event()
                group.start_soon(client, ready, i)
                await ready.wait()
            await dom.resume()
            await dom.suspend()
            await dom.destroy()
        assert len(seen) == 50
        assert all(types == [LifecycleType.RESUMED, LifecycleType.SUSPENDED, LifecycleType.STOPPED]
                   for types in seen)


async def test_a_client_of_another_protocol_version_is_told_both_versions(
        state_dir: Path, holder: subprocess.Popen[str]) -> None:
    stream = await anyio.connect_unix(str(state_dir / "avirt.sock"))
    async with Peer(stream, name="old client") as peer:
        with pytest.raises(AvirtError, match=f"protocol version {PROTOCOL}, the client 99"):
            await peer.call("hello", {"protocol": 99})
        with pytest.raises(AvirtError, match="the first call must be hello"):
            await peer.call("list_domains", {})


async def test_a_call_with_the_wrong_arguments_is_refused_by_name(
        state_dir: Path, holder: subprocess.Popen[str]) -> None:
    stream = await anyio.connect_unix(str(state_dir / "avirt.sock"))
    async with Peer(stream, name="client") as peer:
        await peer.call("hello", {"protocol": PROTOCOL})
        with pytest.raises(OperationInvalidError, match="lookup: missing a required argument: 'name_or_"):
            await peer.call("lookup", {"name": "web"})
        with pytest.raises(OperationInvalidError, match="lookup: got an unexpected keyword argument 'extra'"):
            await peer.call("lookup", {"name_or_uuid": "web", "extra": 1})
        with pytest.raises(OperationInvalidError, match="start: missing a required argument: 'paused'"):
            await peer.call("start", {"name": "web"})
        assert await peer.call("list_domains", {}) == []


_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=20)
                       | st.binary(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4),
                       max_leaves=12)
_methods = st.sampled_from(["hello", "list_domains", "lookup", "start", "events", "job_watch", "job_cancel",
                            "define_xml", "$cancel", "$item", "nonsense", ""])
_messages = st.one_of(
    st.tuples(st.just(0), st.integers(-5, 2**33), _methods, _values).map(list),
    st.tuples(st.just(1), st.integers(0, 50), _values, _values).map(list),
    st.tuples(st.just(2), _methods, _values).map(list),
    _values,
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_messages, min_size=1, max_size=5), garbage=st.binary(max_size=32))
def test_random_and_broken_messages_never_stop_the_holder(
        state_dir: Path, holder: subprocess.Popen[str], messages: list[object], garbage: bytes) -> None:
    async def attack_then_use() -> None:
        stream = await anyio.connect_unix(str(state_dir / "avirt.sock"))
        data = b"".join(msgpack.packb(m, use_bin_type=True) for m in messages) + garbage
        await stream.send(data)
        await stream.send_eof()
        with anyio.move_on_after(2):
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        await stream.aclose()
        # The holder still serves everyone else.
        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            assert not conn.serving
            assert isinstance(await conn.list_domains(), list)

    anyio.run(attack_then_use)
    assert holder.poll() is None


def test_state_directory_socket_is_the_owners_alone(state_dir: Path, holder: subprocess.Popen[str]) -> None:
    mode = os.stat(state_dir / "avirt.sock").st_mode & 0o777
    assert mode == 0o600
    assert os.stat(state_dir).st_mode & 0o777 == 0o700

