"""Lifecycle calls whose outcome depends on a real guest OS: the tiny Linux guest, booted under TCG.

TCG because on some hosts (PVM-based /dev/kvm) KVM starts QEMU but cannot boot Linux; the domain type says so.
The guest prints markers on its serial port (a file here): ``avirt-guest: ready`` once it listens for the
ACPI power button, which it answers by powering off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avirt import Domain, DomainState
from avirt.connection import Connection
from tests.guest import BASE_CMDLINE, GuestImages
from tests.waiting import wait_for_serial, wait_for_state
from tests.xmls import XMLFactory

pytestmark = [pytest.mark.anyio, pytest.mark.guest]
S = DomainState
READY = "avirt-guest: ready"


async def _boot(conn: Connection, xml: XMLFactory, images: GuestImages, serial: Path, name: str,
                **options: str) -> Domain:
    dom = await conn.define_xml(xml(name, type="qemu", memory_mib=256, kernel=str(images.kernel),
                                    initrd=str(images.initrd), cmdline=BASE_CMDLINE,
                                    serial_file=str(serial), **options))
    await dom.start()
    await wait_for_serial(serial, READY, count=1)
    return dom


async def test_acpi_shutdown_waits_until_shut_off(conn: Connection, xml: XMLFactory, tmp_path: Path,
                                                  guest_images: GuestImages, state_dir: Path) -> None:
    serial = tmp_path / "serial.log"
    dom = await _boot(conn, xml, guest_images, serial, "acpi1")
    assert await dom.state() == (S.RUNNING, "booted")
    await dom.shutdown(wait=60)
    assert await dom.state() == (S.SHUTOFF, "shutdown")
    assert "avirt-guest: poweroff" in serial.read_text()
    assert not (state_dir / "run/acpi1").exists()


async def test_reboot_restarts_the_guest_in_the_same_qemu(conn: Connection, xml: XMLFactory,
                                                          tmp_path: Path, guest_images: GuestImages,
                                                          state_dir: Path) -> None:
    serial = tmp_path / "serial.log"
    dom = await _boot(conn, xml, guest_images, serial, "reboot1")
    pid = (state_dir / "run/reboot1/qemu.pid").read_text()
    await dom.reboot()
    await wait_for_serial(serial, READY, count=2)
    assert await dom.state() == (S.RUNNING, "booted")
    assert (state_dir / "run/reboot1/qemu.pid").read_text() == pid
    await dom.destroy()


async def test_on_poweroff_restart_boots_again(conn: Connection, xml: XMLFactory, tmp_path: Path,
                                               guest_images: GuestImages) -> None:
    serial = tmp_path / "serial.log"
    dom = await _boot(conn, xml, guest_images, serial, "again1", on_poweroff="restart")
    await dom.shutdown()
    await wait_for_serial(serial, READY, count=2)
    assert (await dom.state())[0] is S.RUNNING
    await dom.destroy()
    assert await dom.state() == (S.SHUTOFF, "destroyed")


async def test_guest_that_powers_off_unwatched_is_shut_off_on_reconnect(
        xml: XMLFactory, tmp_path: Path, guest_images: GuestImages, state_dir: Path) -> None:
    import avirt

    serial = tmp_path / "serial.log"
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await _boot(conn, xml, guest_images, serial, "alone1")
        await dom.shutdown()  # press the button, and leave at once
    await wait_for_serial(serial, "avirt-guest: poweroff")
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("alone1")
        # Found in runstate 'shutdown' (or reaching it right now): the new controller quits that QEMU.
        await wait_for_state(dom, S.SHUTOFF)
        assert await dom.state() == (S.SHUTOFF, "shutdown")


async def test_a_reboot_asked_of_one_controller_is_carried_out_by_the_next(
        xml: XMLFactory, tmp_path: Path, guest_images: GuestImages, state_dir: Path) -> None:
    import avirt

    serial = tmp_path / "serial.log"
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await _boot(conn, xml, guest_images, serial, "reboot2")
        pid = (state_dir / "run/reboot2/qemu.pid").read_text()
        await dom.reboot()  # press the button, and leave at once
    # The guest powers off while no controller watches: QEMU waits in runstate 'shutdown'.
    await wait_for_serial(serial, "avirt-guest: poweroff")
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("reboot2")
        await wait_for_serial(serial, READY, count=2)  # booted again, as the reboot() asked
        await wait_for_state(dom, S.RUNNING)
        assert await dom.state() == (S.RUNNING, "booted")
        assert (state_dir / "run/reboot2/qemu.pid").read_text() == pid
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:  # the reboot is done
        dom = await conn.lookup("reboot2")
        assert await dom.state() == (S.RUNNING, "booted")
        await dom.shutdown(wait=60)  # a plain power-off now: no reboot is pending any more
        assert await dom.state() == (S.SHUTOFF, "shutdown")


async def test_on_poweroff_preserve_keeps_qemu_until_destroy(conn: Connection, xml: XMLFactory,
                                                             tmp_path: Path, guest_images: GuestImages,
                                                             state_dir: Path) -> None:
    serial = tmp_path / "serial.log"
    dom = await _boot(conn, xml, guest_images, serial, "keep1", on_poweroff="preserve")
    await dom.shutdown()
    await wait_for_serial(serial, "avirt-guest: poweroff")
    await wait_for_state(dom, S.SHUTDOWN)
    assert await dom.state() == (S.SHUTDOWN, "guest")
    assert (state_dir / "run/keep1/qemu.pid").exists()  # QEMU is still there, holding the guest
    await dom.destroy()
    assert await dom.state() == (S.SHUTOFF, "destroyed")
