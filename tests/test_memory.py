"""A domain's current memory changed through its balloon (``Domain.set_memory``, ``avirt setmem``).

The real guest's balloon driver (virtio_balloon, in the tiny test guest) gives memory back in its own
time: the test waits for ``balloon.current`` in the statistics, against a deadline. The same rules and
refusals are checked on the test driver.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import avirt
from avirt import EventKind
from avirt.connection import Connection
from avirt.errors import InvalidArgumentError, OperationInvalidError
from tests.guest import BASE_CMDLINE, GuestImages
from tests.test_cli import CLI, avirt_executable, clean_env
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio
BALLOON = "<memballoon model='virtio'/>"


async def balloon_current(conn: Connection, dom: avirt.Domain) -> int:
    [record] = await conn.all_domain_stats(["balloon"], [dom])
    return int(record.params["balloon.current"])


async def wait_balloon(conn: Connection, dom: avirt.Domain, kib: int, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while await balloon_current(conn, dom) != kib:  # noqa: ASYNC110 (the guest moves in its own time)
            await anyio.sleep(0.1)


@pytest.mark.guest
async def test_the_balloon_gives_memory_back_and_takes_it_again(
        conn: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages, cli: CLI) -> None:
    serial = tmp_path / "serial.log"
    dom = await conn.define_xml(xml(
        "ballooned", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
        initrd=str(guest_images.initrd), serial_file=str(serial), cmdline=BASE_CMDLINE,
        extra_devices=BALLOON))
    changes: list[avirt.Event] = []
    conn.subscribe(changes.append, kinds={EventKind.BALLOON_CHANGE})
    await dom.start()
    await wait_for_serial(serial, "avirt-guest: ready")
    await dom.set_memory(160 * 1024)
    await wait_balloon(conn, dom, 160 * 1024)
    assert (await dom.info()).memory_kib == 160 * 1024
    assert "<currentMemory unit=\"KiB\">163840</currentMemory>" in await dom.xml()
    assert "163840" not in await dom.xml(inactive=True)  # live only
    with anyio.fail_after(10):  # QEMU's BALLOON_CHANGE, through the subscription's consumer task
        while not any(getattr(e, "actual_kib", 0) == 160 * 1024 for e in changes):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    # Back up through the command line, a client of this controller (run without blocking the loop that
    # serves it); the definition too.
    done = await anyio.run_process([avirt_executable(), "--state-dir", str(cli.state_dir), "setmem",
                                    "ballooned", "256M", "--live", "--config"], env=clean_env(), check=False)
    assert done.returncode == 0 and b"set to 262144 KiB" in done.stdout, done.stderr
    await wait_balloon(conn, dom, 256 * 1024)
    assert "<currentMemory unit=\"KiB\">262144</currentMemory>" in await dom.xml(inactive=True)
    with pytest.raises(InvalidArgumentError, match="more than its maximum memory"):
        await dom.set_memory(512 * 1024)
    done = await anyio.run_process([avirt_executable(), "setmem", "ballooned", "lots"], check=False)
    assert done.returncode == 2 and b"not a memory size" in done.stderr  # refused before connecting
    await dom.destroy()


async def test_the_rules_are_the_same_on_the_test_driver() -> None:
    async with avirt.connect("test:///default") as conn:
        test = await conn.lookup("test")
        with pytest.raises(OperationInvalidError, match="no balloon device"):
            await test.set_memory(256 * 1024)
        await test.set_memory(256 * 1024, live=False, config=True)  # the definition needs no balloon
        assert "<currentMemory unit=\"KiB\">262144</currentMemory>" in await test.xml(inactive=True)
        with pytest.raises(InvalidArgumentError, match="positive number of KiB"):
            await test.set_memory(0)
        with pytest.raises(InvalidArgumentError, match="more than its maximum memory"):
            await test.set_memory(1 << 30, live=False, config=True)
        dom = await conn.define_xml(f"""<domain type='qemu'><name>b</name><memory unit='MiB'>128</memory>
          <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{BALLOON}</devices></domain>""")
        await dom.start()
        changes: list[avirt.Event] = []
        conn.subscribe(changes.append, kinds={EventKind.BALLOON_CHANGE})
        await dom.set_memory(64 * 1024)
        assert await balloon_current(conn, dom) == 64 * 1024
        assert (await dom.info()).memory_kib == 64 * 1024
        with anyio.fail_after(5):
            while not changes:  # noqa: ASYNC110 (the subscription's consumer task delivers it)
                await anyio.sleep(0.01)
        assert getattr(changes[0], "actual_kib", None) == 64 * 1024
