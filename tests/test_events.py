"""Typed domain events from real QEMU (firmware-only guests; no guest OS needed for these)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import avirt
from avirt import (
    BlockJobEvent,
    BlockJobStatus,
    BlockThresholdEvent,
    DeviceRemovedEvent,
    Event,
    EventKind,
    JobKind,
    LifecycleEvent,
    LifecycleType,
    QMPEvent,
    RebootEvent,
    TrayChangeEvent,
)
from avirt.connection import Connection
from avirt.errors import EventsLostError
from tests.events_help import lifecycle, read_until
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")
L = LifecycleType


def _is(type: LifecycleType, detail: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, LifecycleEvent) and (e.type, e.detail) == (type, detail)


async def test_events_from_qemu_carry_qemus_timestamp(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("ts1"))
    await dom.start()
    async with conn.events(kinds={EventKind.LIFECYCLE, EventKind.QMP}) as stream:
        await dom.suspend()
        events = await read_until(stream, _is(L.SUSPENDED, "paused"))
    raw = next(e for e in events if isinstance(e, QMPEvent) and e.name == "STOP")
    typed = events[-1]
    assert typed.timestamp == raw.timestamp  # both QEMU's own, to the microsecond
    assert raw.timestamp != int(raw.timestamp)
    await dom.destroy()


async def test_reset_is_a_reboot_event(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("rb1"))
    await dom.start()
    async with conn.events(kinds={EventKind.REBOOT}, domain=dom) as stream:
        await dom.reset()
        (event,) = await read_until(stream, lambda e: True)
    assert isinstance(event, RebootEvent) and event.domain == "rb1"
    await dom.destroy()


async def test_killed_from_outside_is_stopped_failed(conn: Connection, xml: XMLFactory,
                                                     state_dir: Path) -> None:
    dom = await conn.define_xml(xml("kill1"))
    await dom.start()
    async with conn.events(kinds={EventKind.LIFECYCLE}, domain="kill1") as stream:
        os.kill(int((state_dir / "run/kill1/qemu.pid").read_text()), signal.SIGKILL)
        events = await read_until(stream, lambda e: isinstance(e, LifecycleEvent) and e.type is L.STOPPED)
    assert lifecycle(events) == [("STOPPED", "failed")]
    assert await dom.state() == (avirt.DomainState.SHUTOFF, "crashed")


async def test_write_threshold(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
    dom = await conn.define_xml(xml("thr1", disks=[("vda", str(disk), "qcow2")]))
    await dom.start()
    await dom.qemu_monitor_command("block-set-write-threshold",
                                   {"node-name": "vda-1", "write-threshold": 1 << 20})
    async with conn.events(kinds={EventKind.BLOCK_THRESHOLD}) as stream:
        # No guest OS: HMP's qemu-io writes through the device, as a guest would.
        await dom.qemu_monitor_command("human-monitor-command", {
            "command-line": 'qemu-io -d /machine/peripheral/vda/virtio-backend "write -P 0x5a 2M 64k"'})
        (event,) = await read_until(stream, lambda e: True)
    assert isinstance(event, BlockThresholdEvent)
    assert (event.disk, event.threshold) == ("vda", 1 << 20)
    assert event.excess > 0
    await dom.destroy()


async def test_tray_moves_and_device_removal(conn: Connection, xml: XMLFactory) -> None:
    # The pc machine hot-plugs PCI devices with no guest help; USB unplug needs none either.
    dom = await conn.define_xml(xml("dev1", machine="pc"))
    await dom.start()
    run = dom.qemu_monitor_command
    await run("device_add", {"driver": "virtio-scsi-pci", "id": "scsi0"})
    await run("device_add", {"driver": "scsi-cd", "id": "cd0", "bus": "scsi0.0"})
    await run("device_add", {"driver": "qemu-xhci", "id": "usb0"})
    await run("device_add", {"driver": "usb-tablet", "id": "tablet0", "bus": "usb0.0"})
    async with conn.events(kinds={EventKind.TRAY_CHANGE, EventKind.DEVICE_REMOVED}) as stream:
        await run("blockdev-open-tray", {"id": "cd0"})
        await run("blockdev-close-tray", {"id": "cd0"})
        await run("device_del", {"id": "tablet0"})
        events = await read_until(stream, lambda e: isinstance(e, DeviceRemovedEvent))
    trays = [(e.device, e.open) for e in events if isinstance(e, TrayChangeEvent)]
    assert trays == [("cd0", True), ("cd0", False)]
    assert isinstance(events[-1], DeviceRemovedEvent) and events[-1].alias == "tablet0"
    await dom.destroy()


async def test_block_job_events(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    base, mid, top = tmp_path / "base.qcow2", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, mid], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", mid, top], check=True)
    dom = await conn.define_xml(xml("job1", disks=[("vda", str(top), "qcow2")]))
    await dom.start()
    async with conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        # Intermediate commit (mid into base): it ends by itself.
        await dom.qemu_monitor_command("block-commit", {
            "job-id": "commit-vda-1", "device": "vda-3", "top-node": "vda-2", "base-node": "vda-1",
            "backing-file": str(base)})
        (completed,) = await read_until(stream, lambda e: True)
        assert isinstance(completed, BlockJobEvent)
        assert (completed.disk, completed.job_kind, completed.status) == (
            "vda", JobKind.COMMIT, BlockJobStatus.COMPLETED)
        # Active commit (top into base): READY, then cancelled.
        await dom.qemu_monitor_command("block-commit", {
            "job-id": "active-commit-vda-1", "device": "vda-3", "base-node": "vda-1"})
        ready = await read_until(stream, lambda e: True)
        await dom.qemu_monitor_command("block-job-cancel", {"device": "active-commit-vda-1", "force": True})
        cancelled = await read_until(stream, lambda e: True)
    assert ready == [BlockJobEvent(domain="job1", uuid=dom.uuid, timestamp=ready[0].timestamp,
                                   seq=ready[0].seq, disk="vda", job_kind=JobKind.ACTIVE_COMMIT,
                                   status=BlockJobStatus.READY)]
    assert isinstance(cancelled[0], BlockJobEvent) and cancelled[0].status is BlockJobStatus.CANCELED
    await dom.destroy()


async def test_filters_by_kind_and_domain(conn: Connection, xml: XMLFactory) -> None:
    a = await conn.define_xml(xml("fa"))
    b = await conn.define_xml(xml("fb"))
    await a.start()
    await b.start()
    async with conn.events(domain=b, kinds={EventKind.LIFECYCLE}) as only_b, \
            conn.events(kinds={EventKind.REBOOT}) as reboots:
        await a.suspend()
        await a.reset()
        await b.suspend()
        got_b = await read_until(only_b, lambda e: True)
        got_reboot = await read_until(reboots, lambda e: True)
    assert lifecycle(got_b) == [("SUSPENDED", "paused")] and got_b[0].domain == "fb"
    assert isinstance(got_reboot[0], RebootEvent) and got_reboot[0].domain == "fa"
    await a.destroy()
    await b.destroy()


async def test_stalled_stream_loses_exactly_what_overflowed_and_others_get_all(
        conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("burst1"))
    await dom.start()
    rounds = 40
    async with conn.events(kinds={EventKind.LIFECYCLE}, max_queue=10) as stalled, \
            conn.events(kinds={EventKind.LIFECYCLE}) as keeping_up:
        for _ in range(rounds):
            await dom.suspend()
            await dom.resume()
        everything: list[Event] = []
        with anyio.fail_after(10):
            while len(everything) < 2 * rounds:
                everything.append(await anext(keeping_up))
        with pytest.raises(EventsLostError) as lost:
            await anext(stalled)
        assert lost.value.count == 2 * rounds - 10
        rest = [await anext(stalled) for _ in range(10)]
    assert [e.seq for e in rest] == [e.seq for e in everything[-10:]]  # it goes on with the newest
    assert lifecycle(everything) == [("SUSPENDED", "paused"), ("RESUMED", "unpaused")] * rounds
    await dom.destroy()


async def test_callbacks_sync_async_failing_and_slow(conn: Connection, xml: XMLFactory) -> None:
    plain: list[Event] = []
    awaited: list[Event] = []
    plain_done, awaited_done = anyio.Event(), anyio.Event()
    slow_done = anyio.Event()
    gate = anyio.Event()
    last = _is(L.STOPPED, "destroyed")

    def sync_cb(event: Event) -> None:
        plain.append(event)
        if last(event):
            plain_done.set()

    async def async_cb(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        awaited.append(event)
        if last(event):
            awaited_done.set()

    def failing_cb(event: Event) -> None:
        raise RuntimeError("a subscriber's bug")

    async def slow_cb(event: Event) -> None:
        await gate.wait()
        slow_done.set()

    subs = [conn.subscribe(sync_cb, kinds={EventKind.LIFECYCLE}),
            conn.subscribe(async_cb, kinds={EventKind.LIFECYCLE}),
            conn.subscribe(failing_cb, kinds={EventKind.LIFECYCLE})]
    slow = conn.subscribe(slow_cb, kinds={EventKind.LIFECYCLE}, max_queue=2)
    async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        dom = await conn.define_xml(xml("cb1"))
        await dom.start()
        await dom.suspend()
        await dom.resume()
        await dom.destroy()
        seen = await read_until(stream, _is(L.STOPPED, "destroyed"))
    with anyio.fail_after(10):  # callbacks run in tasks of their own
        await plain_done.wait()
        await awaited_done.wait()
    assert plain == seen and awaited == seen
    assert subs[2].active  # the failing callback's subscription lives on
    gate.set()
    with anyio.fail_after(10):
        await slow_done.wait()
    # 5 events for a queue of 2, with the first already taken by the stalled callback
    assert slow.lost == len(seen) - 1 - 2
    for sub in [*subs, slow]:
        sub.cancel()
        assert not sub.active


async def test_closing_the_connection_ends_every_stream(state_dir: Path) -> None:
    ended = anyio.Event()
    conn = await avirt.connect("qemu:///session", state_dir=state_dir)

    async def reader() -> None:
        async with conn.events() as stream:
            async for _ in stream:
                pass
        ended.set()

    async with anyio.create_task_group() as group:
        group.start_soon(reader)
        await anyio.lowlevel.checkpoint()
        await conn.close()
        with anyio.fail_after(5):
            await ended.wait()
