"""Events only a real guest OS can cause: the tiny Linux guest (TCG), told what to do on its command line.

``avirt.actions=`` makes the guest's /init set the RTC, suspend to RAM or panic once it is up; the write
workload (``avirt.workload=write``) drives a disk into an I/O error. The watchdog is the one kind left out:
the Debian cloud kernel has no driver for any watchdog QEMU emulates (i6300esb, iTCO, ib700).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from avirt import (
    BalloonChangeEvent,
    Domain,
    DomainState,
    EventKind,
    IOErrorEvent,
    LifecycleEvent,
    LifecycleType,
    PMEvent,
    PMWakeupEvent,
    RTCChangeEvent,
)
from avirt.connection import Connection
from tests.events_help import lifecycle, read_until
from tests.guest import BASE_CMDLINE, GuestImages
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

pytestmark = [pytest.mark.anyio, pytest.mark.guest]
S = DomainState
L = LifecycleType


async def _boot(conn: Connection, xml: XMLFactory, images: GuestImages, tmp_path: Path, name: str, *,
                cmdline: str = "", devices: str = "", **options: object) -> tuple[Domain, Path]:
    serial = tmp_path / f"{name}.serial"
    dom = await conn.define_xml(xml(name, type="qemu", memory_mib=256, kernel=str(images.kernel),
                                    initrd=str(images.initrd), cmdline=f"{BASE_CMDLINE} {cmdline}".strip(),
                                    serial_file=str(serial), extra_devices=devices, **options))  # type: ignore[arg-type]
    await dom.start()
    await wait_for_serial(serial, "avirt-guest: ready")
    return dom, serial


async def test_acpi_shutdown_events(conn: Connection, xml: XMLFactory, tmp_path: Path,
                                    guest_images: GuestImages) -> None:
    dom, _ = await _boot(conn, xml, guest_images, tmp_path, "off1")
    async with conn.events(kinds={EventKind.LIFECYCLE}, domain=dom) as stream:
        await dom.shutdown()
        events = await read_until(stream, lambda e: isinstance(e, LifecycleEvent) and e.type is L.STOPPED)
    assert lifecycle(events) == [("SHUTDOWN", "guest"), ("STOPPED", "shutdown")]


async def test_balloon_change(conn: Connection, xml: XMLFactory, tmp_path: Path,
                              guest_images: GuestImages) -> None:
    dom, _ = await _boot(conn, xml, guest_images, tmp_path, "bal1", devices="<memballoon model='virtio'/>")
    async with conn.events(kinds={EventKind.BALLOON_CHANGE}, domain=dom) as stream:
        await dom.qemu_monitor_command("balloon", {"value": 192 << 20})
        events = await read_until(
            stream, lambda e: isinstance(e, BalloonChangeEvent) and e.actual_kib <= 192 * 1024)
    assert events[-1].actual_kib == 192 * 1024  # type: ignore[attr-defined]
    await dom.destroy()


async def test_rtc_change(conn: Connection, xml: XMLFactory, tmp_path: Path,
                          guest_images: GuestImages) -> None:
    async with conn.events(kinds={EventKind.RTC_CHANGE}) as stream:
        dom, _ = await _boot(conn, xml, guest_images, tmp_path, "rtc1", cmdline="avirt.actions=rtc")
        (event, *_) = await read_until(stream, lambda e: True)
    assert isinstance(event, RTCChangeEvent)
    assert event.offset > 5 * 365 * 86400  # the guest set its clock to 2033
    await dom.destroy()


async def test_pm_suspend_and_wakeup(conn: Connection, xml: XMLFactory, tmp_path: Path,
                                     guest_images: GuestImages) -> None:
    kinds = {EventKind.PMSUSPEND, EventKind.PMWAKEUP, EventKind.LIFECYCLE}
    async with conn.events(kinds=kinds) as stream:
        dom, serial = await _boot(conn, xml, guest_images, tmp_path, "pm1", cmdline="avirt.actions=suspend")
        suspended = await read_until(stream, lambda e: isinstance(e, PMEvent) and e.suspended)
        assert lifecycle(suspended)[-1] == ("PMSUSPENDED", "memory")
        assert await dom.state() == (S.PMSUSPENDED, "unknown")
        await dom.qemu_monitor_command("system_wakeup")
        woken = await read_until(stream, lambda e: isinstance(e, PMWakeupEvent))
    assert lifecycle(woken) == [("STARTED", "wakeup")]
    assert await dom.state() == (S.RUNNING, "wakeup")
    await wait_for_serial(serial, "avirt-guest: woke up")
    await dom.destroy()


@pytest.mark.parametrize(("on_crash", "final"), [("preserve", (S.CRASHED, "panicked")),
                                                 ("destroy", (S.SHUTOFF, "crashed"))])
async def test_guest_panic(conn: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages,
                           on_crash: str, final: tuple[DomainState, str]) -> None:
    xml_text = xml(f"panic-{on_crash}", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
                   initrd=str(guest_images.initrd), cmdline=f"{BASE_CMDLINE} avirt.actions=panic",
                   extra_devices="<panic model='isa'/>").replace(
                       "</on_poweroff>", f"</on_poweroff><on_crash>{on_crash}</on_crash>")
    async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        dom = await conn.define_xml(xml_text)
        await dom.start()
        stop = "panicked" if on_crash == "preserve" else "crashed"
        events = await read_until(stream, lambda e: isinstance(e, LifecycleEvent) and e.detail == stop
                                  and e.type in (L.CRASHED, L.STOPPED))
    expected = [("CRASHED", "panicked")] + ([("STOPPED", "crashed")] if on_crash == "destroy" else [])
    assert lifecycle(events)[-len(expected):] == expected
    assert await dom.state() == final
    if final[0] is not S.SHUTOFF:
        await dom.destroy()


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk image on it runs out of space under the guest's writes."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mountpoint], check=True)
    yield mountpoint
    subprocess.run(["umount", "-l", mountpoint], check=False)


async def test_io_error_pauses_the_guest(conn: Connection, xml: XMLFactory, tmp_path: Path,
                                         guest_images: GuestImages, small_filesystem: Path) -> None:
    image = small_filesystem / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", image, "64M"], check=True)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw' error_policy='stop'/>"
            f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>")
    async with conn.events(kinds={EventKind.IO_ERROR, EventKind.LIFECYCLE}) as stream:
        dom, _ = await _boot(conn, xml, guest_images, tmp_path, "ioerr1", devices=disk,
                             cmdline="avirt.workload=write avirt.slots=60 avirt.count=60")
        events = await read_until(stream, lambda e: isinstance(e, LifecycleEvent) and e.type is L.SUSPENDED)
    errors = [e for e in events if isinstance(e, IOErrorEvent)]
    assert errors and errors[0].disk == "vda" and errors[0].action == "stop"
    assert "space" in errors[0].reason
    assert lifecycle(events)[-1] == ("SUSPENDED", "ioerror")
    assert await dom.state() == (S.PAUSED, "ioerror")
    await dom.destroy()
