"""Bulk statistics of real QEMU guests: the numbers QEMU gives, a real guest's writes counted, and a
QEMU that does not answer reported as such without holding up the others."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

import avirt
from avirt import BlockThresholdEvent, EventKind
from avirt.connection import Connection
from tests.events_help import read_until
from tests.guest import BASE_CMDLINE, GuestImages
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

if TYPE_CHECKING:
    from tests.test_cli import CLI

pytestmark = pytest.mark.anyio

MiB = 1 << 20


def qcow2(path: Path, size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


async def test_stats_of_paused_guests_match_what_qemu_says(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    doms = []
    for n in range(3):
        disks = [("vda", str(qcow2(tmp_path / f"d{n}a.qcow2")), "qcow2"),
                 ("vdb", str(qcow2(tmp_path / f"d{n}b.qcow2", "32M")), "qcow2")]
        balloon = "<memballoon model='virtio'/>" if n == 0 else ""
        dom = await conn.define_xml(xml(f"many{n}", disks=disks, extra_devices=balloon))
        await dom.start(paused=True)
        doms.append(dom)
    found = await conn.all_domain_stats()
    assert [s.domain for s in found] == doms
    for dom, record in zip(doms, found, strict=True):
        params = record.params
        assert params["state.state"] == 3 and not record.unresponsive
        blockstats = {b["qdev"].split("/")[3]: b["stats"]
                      for b in await dom.qemu_monitor_command("query-blockstats")}
        cpus = await dom.qemu_monitor_command("query-cpus-fast")
        assert params["vcpu.current"] == len(cpus) == 1
        assert params["block.count"] == 2
        for n, (target, size) in enumerate((("vda", 16 * MiB), ("vdb", 32 * MiB))):
            assert params[f"block.{n}.name"] == target
            assert params[f"block.{n}.capacity"] == size
            assert params[f"block.{n}.rd.reqs"] == blockstats[target]["rd_operations"]
            assert params[f"block.{n}.wr.bytes"] == blockstats[target]["wr_bytes"]
            assert params[f"block.{n}.physical"] > 0
        assert params["cpu.time"] > 0  # QEMU itself has run, even with the guest's CPUs stopped
        assert params["balloon.maximum"] == 64 * 1024
    balloon = await doms[0].qemu_monitor_command("query-balloon")
    assert found[0].params["balloon.current"] == balloon["actual"] // 1024


async def test_a_guest_that_writes_shows_its_bytes(
        conn: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages) -> None:
    disk = qcow2(tmp_path / "w.qcow2", "64M")
    serial = tmp_path / "serial.log"
    count = 8  # 64 KiB each, every one fsynced before the guest reports it
    dom = await conn.define_xml(xml(
        "writer", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
        initrd=str(guest_images.initrd), disks=[("vda", str(disk), "qcow2")], serial_file=str(serial),
        cmdline=f"{BASE_CMDLINE} avirt.workload=write avirt.count={count}"))
    await dom.start()
    before = (await conn.all_domain_stats({"block"}, [dom]))[0].params
    await wait_for_serial(serial, "avirt-wl: done")
    after = (await conn.all_domain_stats({"block", "vcpu", "cpu-total"}, [dom]))[0].params
    # Exactly what the guest wrote: dd's blocks, aligned whole pages, nothing else writes to the disk.
    assert after["block.0.wr.bytes"] - before.get("block.0.wr.bytes", 0) == count * 64 * 1024
    assert after["block.0.wr.reqs"] >= count
    assert after["block.0.fl.reqs"] >= 1
    assert after["block.0.allocation"] >= (count - 1) % 4 * MiB  # the guest wrote at slot K MiB
    assert after["vcpu.0.time"] > 0 and after["cpu.time"] >= after["vcpu.0.time"]
    assert (await dom.block_stats("vda"))["wr_bytes"] == after["block.0.wr.bytes"]
    await dom.destroy()


async def test_a_stopped_qemu_is_reported_unresponsive_and_holds_up_no_one(
        conn: Connection, xml: XMLFactory, state_dir: Path) -> None:
    doms = []
    for n in range(3):
        dom = await conn.define_xml(xml(f"stuck{n}"))
        await dom.start(paused=True)
        doms.append(dom)
    pid = int((state_dir / "run" / "stuck1" / "qemu.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # a real QEMU that cannot answer anything
    try:
        with anyio.fail_after(5):
            found = await conn.all_domain_stats(timeout=1.0)
        stuck = found[1].params
        assert found[1].unresponsive and stuck["state.state"] == 3
        assert "vcpu.current" not in stuck and "block.count" not in stuck
        for other in (found[0], found[2]):
            assert not other.unresponsive and other.params["vcpu.current"] == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    again = await conn.all_domain_stats({"vcpu"}, [doms[1]])
    assert not again[0].unresponsive and again[0].params["vcpu.current"] == 1


def test_cli_domstats_and_domblkstat(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    disk = qcow2(tmp_path / "c.qcow2")
    definition = tmp_path / "c.xml"
    definition.write_text(xml("clistats", disks=[("vda", str(disk), "qcow2")]))
    cli.ok("define", str(definition))
    cli.ok("define", str(_write(tmp_path / "off.xml", xml("clioff"))))
    cli.ok("start", "--paused", "clistats")
    out = cli.ok("domstats", "--state", "--block")
    assert out.startswith("Domain: 'clioff'\n  state.state=5\n  state.reason=0\n\nDomain: 'clistats'\n")
    assert "  block.count=1\n  block.0.name=vda\n" in out
    assert "cpu.time" not in out
    one = cli.ok("domstats", "--vcpu", "clistats")
    assert one.startswith("Domain: 'clistats'\n  vcpu.current=1\n") and "clioff" not in one
    lines = cli.ok("domblkstat", "clistats", "vda").splitlines()
    assert [line.split()[:2] for line in lines][:4] == [["vda", "rd_req"], ["vda", "rd_bytes"],
                                                        ["vda", "wr_req"], ["vda", "wr_bytes"]]
    assert "no disk vdz" in cli.fails("domblkstat", "clistats", "vdz")
    cli.ok("destroy", "clistats")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_a_write_threshold_fires_once_and_is_gone(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    base = qcow2(tmp_path / "base.qcow2")
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
                   check=True)
    dom = await conn.define_xml(xml("thr", disks=[("vda", str(top), "qcow2")]))
    await dom.start(paused=True)  # no guest: QEMU itself writes through the disk's node (HMP qemu-io)

    async def write(offset: str, length: str) -> None:
        # Through the disk's own block backend (virtio's is on the device's backend child), as the guest's
        # writes would go; HMP answers with text, empty when all went well.
        answer = await dom.qemu_monitor_command("human-monitor-command", {
            "command-line": f'qemu-io -d /machine/peripheral/vda/virtio-backend '
                            f'"write -P 0xaa {offset} {length}"'})
        assert answer == "", answer

    async with conn.events(kinds={EventKind.BLOCK_THRESHOLD}) as stream:
        await dom.set_block_threshold("vda", 512 * 1024)
        await write("0", "256k")  # below: nothing
        await write("256k", "1M")
        [event] = await read_until(stream, lambda e: True, timeout=10)
        assert isinstance(event, BlockThresholdEvent)
        assert (event.domain, event.disk, event.path) == ("thr", "vda", str(top))
        assert event.threshold == 512 * 1024 and event.excess == 1280 * 1024 - 512 * 1024
        [record] = await conn.all_domain_stats({"block"}, [dom])
        assert record.params["block.0.threshold"] == 0  # one-shot: QEMU disarmed it
        await write("2M", "1M")  # past where the threshold was: no second event
        await dom.set_block_threshold("vda", 8 << 20)
        await write("8M", "64k")
        [again] = await read_until(stream, lambda e: True, timeout=10)
        assert isinstance(again, BlockThresholdEvent) and again.threshold == 8 << 20
    async with avirt.connect(state_dir=state_dir) as client:  # another program: the event crosses the wire
        assert not client.serving
        async with client.events(kinds={EventKind.BLOCK_THRESHOLD}) as stream:
            await (await client.lookup("thr")).set_block_threshold("vda", 12 << 20)
            await write("12M", "64k")
            [event] = await read_until(stream, lambda e: True, timeout=10)
        assert event == replace(again, threshold=12 << 20, excess=64 * 1024, timestamp=event.timestamp,
                                seq=event.seq)
    await dom.destroy()


async def test_a_threshold_on_a_block_copy_target_fires_once_named_after_its_mirror(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    """vdsm's thin-provisioned copy: the destination of a running copy has a threshold of its own, named
    ``vda[N]`` with the index the live XML's ``<mirror>`` shows (one past the deepest layer)."""
    base = qcow2(tmp_path / "base.qcow2")
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
                   check=True)
    dest = tmp_path / "dest.qcow2"
    dom = await conn.define_xml(xml("cpthr", disks=[("vda", str(top), "qcow2")]))
    await dom.start(paused=True)

    async def write(offset: str, length: str) -> None:
        answer = await dom.qemu_monitor_command("human-monitor-command", {
            "command-line": f'qemu-io -d /machine/peripheral/vda/virtio-backend '
                            f'"write -P 0x5c {offset} {length}"'})
        assert answer == "", answer

    async def copied() -> None:
        """Until the mirror has written everything the disk was given (READY jobs copy in the background)."""
        with anyio.fail_after(20):
            while True:
                [info] = await dom.qemu_monitor_command("query-block-jobs")
                if info["ready"] and info["offset"] == info["len"] and not info["busy"]:
                    return
                await anyio.sleep(0.05)

    job = await dom.block_copy("vda", str(dest))
    await job.wait_ready()
    live = await dom.xml()
    assert '<mirror type="file" job="copy" ready="yes" index="2">' in live, live
    with pytest.raises(avirt.errors.OperationInvalidError, match="only 3 layers"):
        await dom.set_block_threshold("vda[3]", MiB)
    async with conn.events(kinds={EventKind.BLOCK_THRESHOLD}) as stream:
        await dom.set_block_threshold("vda[2]", 4 * MiB)
        await write("1M", "64k")  # below: nothing
        await write("6M", "64k")
        [event] = await read_until(stream, lambda e: True, timeout=10)
        assert isinstance(event, BlockThresholdEvent)
        assert (event.domain, event.disk, event.path) == ("cpthr", "vda[2]", str(dest))
        assert event.threshold == 4 * MiB and event.excess >= 2 * MiB
        await write("10M", "64k")  # past it again: the target's threshold is gone, no second event
        await copied()
        await dom.set_block_threshold("vda[2]", 14 * MiB)  # re-armed
        await dom.set_block_threshold("vda", 12 * MiB)
        await write("12M", "64k")
        [top_event] = await read_until(stream, lambda e: True, timeout=10)
        assert (top_event.disk, top_event.threshold) == ("vda", 12 * MiB)  # nothing came in between
        await copied()
        await write("14M", "64k")
        [again] = await read_until(stream, lambda e: True, timeout=10)
        assert (again.disk, again.threshold) == ("vda[2]", 14 * MiB), again
    async with avirt.connect(state_dir=state_dir) as client:  # through the controller: the same names
        await (await client.lookup("cpthr")).set_block_threshold("vda[2]", MiB)
    assert await job.abort() is not None
    await dom.destroy()


async def test_fifty_guests_in_one_call_match_each_guests_own_queries(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    """One ``all_domain_stats()`` over 50 paused guests says of each what that guest's own queries say
    (the per-guest call, ``block_stats``, QEMU's own answers), and each answer is that guest's: guest n
    has a disk of (n % 5 + 1) x 4 MiB. (Bytes a guest writes are counted by the disk's device, so a
    booted guest shows them: test_a_guest_that_writes_shows_its_bytes.)"""
    count = 50
    limit = anyio.CapacityLimiter(4)  # a few QEMUs starting at once, not fifty
    doms: dict[int, avirt.Domain] = {}

    async def one(n: int) -> None:
        async with limit:
            disk = qcow2(tmp_path / f"f{n}.qcow2", f"{(n % 5 + 1) * 4}M")
            dom = await conn.define_xml(xml(f"fifty{n:02d}", disks=[("vda", str(disk), "qcow2")]))
            await dom.start(paused=True)
            doms[n] = dom

    async with anyio.create_task_group() as group:
        for n in range(count):
            group.start_soon(one, n)
    found = await conn.all_domain_stats(timeout=30)
    by_name = {record.domain.name: record for record in found}
    assert set(by_name) == {dom.name for dom in doms.values()}

    def steady(params: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in params.items() if "time" not in k}  # CPU times move on (QEMU's own)

    for n, dom in sorted(doms.items()):
        record = by_name[dom.name]
        assert not record.unresponsive, dom.name
        params = record.params
        assert params["block.0.capacity"] == (n % 5 + 1) * 4 * MiB, dom.name
        assert params["block.0.path"] == str(tmp_path / f"f{n}.qcow2")
        [alone] = await conn.all_domain_stats(domains=[dom])
        assert steady(alone.params) == steady(params), dom.name
        counters = await dom.block_stats("vda")
        assert (counters["rd_bytes"], counters["wr_bytes"]) == (params["block.0.rd.bytes"],
                                                                params["block.0.wr.bytes"])
        [qemu] = await dom.qemu_monitor_command("query-blockstats")
        assert qemu["stats"]["rd_operations"] == params["block.0.rd.reqs"]
        [cpu] = await dom.qemu_monitor_command("query-cpus-fast")
        assert params["vcpu.current"] == 1 and params["state.state"] == 3 and cpu["cpu-index"] == 0
    for dom in doms.values():
        await dom.destroy()
