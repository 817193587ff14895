"""What only the test driver has: its starting world, its simulated data, and its own limits.

Behaviour shared with QEMU is in tests/conformance/. Here the simulated guest data is read back through
the driver's image store: every job must leave the guest's view of its disk unchanged, as the data checks
of the QEMU tests prove for real images.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio
import pytest

import avirt
from avirt import BlockJobStatus, DomainState, EventKind, JobPhase
from avirt.connection import Connection
from avirt.drivers.test import TestDriver
from avirt.drivers.test.images import ImageStore, MiB
from avirt.errors import DomainStartError, OperationInvalidError, UnsupportedError
from avirt.uri import InvalidURIError
from tests.events_help import lifecycle, read_until
from tests.test_cli import CLI

pytestmark = pytest.mark.anyio
S = DomainState
IMAGES = "/var/lib/avirt/images"
ALL = [f"{IMAGES}/test.qcow2", f"{IMAGES}/test-snap2.qcow2", f"{IMAGES}/test-snap1.qcow2",
       f"{IMAGES}/test-base.qcow2"]
#: What the guest reads through the test domain's chain: (pattern, from MiB, to MiB).
VIEW = ((0x11, 0, 128), (0x22, 128, 256), (0x33, 256, 384), (0x44, 384, 640))


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    async with avirt.connect("test:///default") as connection:
        yield connection


def _store(conn: Connection) -> ImageStore:
    driver = conn._driver
    assert isinstance(driver, TestDriver)
    return driver.disks.images


def _view_ok(conn: Connection, path: str) -> bool:
    view = _store(conn).view(path)
    expected = {cluster: pattern for pattern, start, end in VIEW for cluster in range(start, end)}
    return view == expected


async def test_a_connection_starts_with_the_running_test_domain(conn: Connection) -> None:
    (dom,) = await conn.list_domains()
    assert dom.name == "test" and await dom.state() == (S.RUNNING, "booted")
    assert [i.path for i in await dom.block_chain("vda")] == ALL
    assert [i.allocated for i in await dom.block_chain("vda")] == [256 * MiB] * 4
    assert "<backingStore type=\"file\" index=\"3\">" in await dom.xml()
    assert _view_ok(conn, ALL[0])
    caps = await conn.capabilities()
    assert caps["emulator"] == "test"


async def test_each_connection_is_a_world_of_its_own(conn: Connection) -> None:
    await (await conn.lookup("test")).destroy()
    async with avirt.connect("test:///default", state_dir="/nonexistent/ignored") as other:
        assert await (await other.lookup("test")).state() == (S.RUNNING, "booted")
    assert await (await conn.lookup("test")).state() == (S.SHUTOFF, "destroyed")


async def test_other_test_uris_are_refused() -> None:
    with pytest.raises(UnsupportedError, match="only test:///default"):
        await avirt.connect("test:///etc/config.xml")
    with pytest.raises(InvalidURIError):
        await avirt.connect("test:")


async def test_every_job_keeps_the_guests_view(conn: Connection) -> None:
    dom = await conn.lookup("test")
    assert await (await dom.block_commit("vda", top="vda[1]", shallow=True)) == BlockJobStatus.COMPLETED
    assert _view_ok(conn, ALL[0])
    snap1 = (await dom.block_chain("vda"))[1]
    assert (snap1.path, snap1.allocated) == (ALL[2], 384 * MiB)  # 128-512 MiB: its own and snap2's
    await dom.snapshot_disks("s1")
    top = (await dom.block_chain("vda"))[0].path
    assert _view_ok(conn, top)
    assert await (await dom.block_pull("vda", base="vda[2]")) == BlockJobStatus.COMPLETED
    assert _view_ok(conn, top)
    assert await (await dom.block_commit("vda", pivot=True)) == BlockJobStatus.COMPLETED
    (base,) = await dom.block_chain("vda")
    assert (base.path, base.allocated) == (ALL[3], 640 * MiB)
    assert _view_ok(conn, base.path)
    assert await (await dom.block_copy("vda", "/copy.qcow2", pivot=True)) == BlockJobStatus.COMPLETED
    assert _view_ok(conn, "/copy.qcow2")
    await dom.destroy()
    assert await (await dom.block_pull("vda")) == BlockJobStatus.COMPLETED  # offline: nothing to pull
    assert _view_ok(conn, "/copy.qcow2")


async def test_progress_advances_and_bandwidth_holds_a_job_back(conn: Connection) -> None:
    dom = await conn.lookup("test")
    job = await dom.block_commit("vda", top="vda[1]", base="vda[3]", bandwidth=1)
    with anyio.move_on_after(0.1):  # at 1 byte/s, it does not end
        await job
    assert (await job.info()).cur == 0 and not job.ended
    await job.set_speed(1280 * MiB)  # 1 GiB to go: 0.8 s, enough for progress() to sample it
    samples = [sample async for sample in job.progress()]
    assert await job == BlockJobStatus.COMPLETED
    curs = [cur for cur, _ in samples]
    assert curs == sorted(curs) and len(set(curs)) > 1 and {end for _, end in samples} == {1 << 30}


async def test_closing_the_connection_ends_running_jobs() -> None:
    async with avirt.connect("test:///default") as conn:
        job = await (await conn.lookup("test")).block_commit("vda", bandwidth=1)
    assert job.phase is JobPhase.CONCLUDED and job.status is BlockJobStatus.FAILED


async def test_power_button_on_a_paused_guest_acts_once_it_runs(conn: Connection) -> None:
    dom = await conn.lookup("test")
    await dom.suspend()
    async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        await dom.shutdown()
        assert await dom.state() == (S.PAUSED, "user")
        await dom.resume()
        events = await read_until(stream, lambda e: getattr(e, "detail", None) == "shutdown")
    assert lifecycle(events) == [("RESUMED", "unpaused"), ("SHUTDOWN", "guest"), ("STOPPED", "shutdown")]


@pytest.mark.parametrize(("action", "final"), [("restart", (S.RUNNING, "booted")),
                                               ("preserve", (S.SHUTDOWN, "guest"))])
async def test_on_poweroff(conn: Connection, action: str, final: tuple[DomainState, str]) -> None:
    dom = await conn.lookup("test")
    await conn.define_xml((await dom.xml(inactive=True)).replace(
        "<on_poweroff>destroy</on_poweroff>", f"<on_poweroff>{action}</on_poweroff>"))
    await dom.destroy()
    await dom.start()
    async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        await dom.shutdown()
        events = await read_until(stream, lambda e: getattr(e, "detail", None) == final[1])
    assert lifecycle(events)[0] == ("SHUTDOWN", "guest")
    assert await dom.state() == final


async def test_start_refuses_what_qemu_would(conn: Connection) -> None:
    dom = await conn.lookup("test")
    text = re.sub(r"<uuid>.*</uuid>", "", await dom.xml(inactive=True))
    twin = await conn.define_xml(text.replace("<name>test</name>", "<name>twin</name>"))
    with pytest.raises(DomainStartError, match="is locked: domain 'test' has it open"):
        await twin.start()
    await dom.destroy()
    # the twin reads the same chain: committing into its base needs the caller's say-so
    assert await (await dom.block_commit("vda", delete=True, allow_shared_base=True)) == \
        BlockJobStatus.COMPLETED
    with pytest.raises(DomainStartError, match=r"test\.qcow2 does not exist"):
        await twin.start()  # the twin's image was committed and deleted


async def test_no_qemu_monitor(conn: Connection) -> None:
    with pytest.raises(UnsupportedError, match="no QEMU monitor"):
        await (await conn.lookup("test")).qemu_monitor_command("query-status")
    with pytest.raises(OperationInvalidError, match="already has a block job"):
        dom = await conn.lookup("test")
        await dom.block_pull("vda", bandwidth=1)
        await dom.block_pull("vda")


def test_the_command_line_on_the_test_driver(cli: CLI) -> None:
    """Each avirt command is a connection of its own, so each starts from the same fresh world."""
    assert cli.ok("-c", "test:///default", "list").split("\n")[2].split() == ["1", "test", "running"]
    assert cli.ok("-c", "test:///default", "blockcommit", "test", "vda", "--pivot", "--wait") \
        == "Successfully pivoted\n"
    chain = cli.ok("-c", "test:///default", "domblkchain", "test", "vda").splitlines()[2:]
    assert [line.split()[0] for line in chain] == ["vda[0]", "vda[1]", "vda[2]", "vda[3]"]
    assert "no domain" in cli.fails("-c", "test:///default", "start", "web1")


async def test_a_fleet_of_test_connections() -> None:
    """Two connections, two worlds: avirt.fleet.merge follows both, each event tagged with its own."""
    async with avirt.connect("test:///default") as a, avirt.connect("test:///default") as b:
        async with avirt.fleet.merge(a, b, kinds={EventKind.LIFECYCLE}) as stream:
            await (await a.lookup("test")).suspend()
            await (await b.lookup("test")).destroy()
            seen = {}
            with anyio.fail_after(10):
                async for conn, event in stream:
                    seen[conn] = lifecycle([event])[0]
                    if len(seen) == 2:
                        break
    assert seen == {a: ("SUSPENDED", "paused"), b: ("STOPPED", "destroyed")}
