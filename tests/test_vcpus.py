"""vCPU hotplug on real QEMU with the test guest: a vCPU plugged in comes online in the guest, one taken
away is let go by the guest's OS (ACPI eject), and a new controller finds the live definition agreeing
with QEMU after a vCPU came while no controller recorded it.

The conformance suite (tests/conformance/test_devices.py) covers what every driver shares: the counts
allowed, the definitions, a guest without an OS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

import avirt
from avirt.connection import Connection
from avirt.errors import OperationInvalidError
from tests.guest import BASE_CMDLINE, GuestImages
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


def current(xml: str) -> str | None:
    vcpu = etree.fromstring(xml.encode()).find("vcpu")
    assert vcpu is not None and vcpu.text == "3"
    return vcpu.get("current")


async def test_the_guest_brings_plugged_vcpus_online_and_lets_one_go(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path,
        guest_images: GuestImages) -> None:
    serial = tmp_path / "serial.log"
    dom = await conn.define_xml(xml(
        "cpus", type="qemu", memory_mib=256, kernel=str(guest_images.kernel), initrd=str(guest_images.initrd),
        serial_file=str(serial), cmdline=f"{BASE_CMDLINE} avirt.cpus=1",
    ).replace("<vcpu>1</vcpu>", "<vcpu current='1'>3</vcpu>"))
    await dom.start()
    await wait_for_serial(serial, "avirt-guest: cpus online=0\n")
    await dom.set_vcpus(2)
    await wait_for_serial(serial, "avirt-guest: cpus online=0-1\n")
    assert current(await dom.xml()) == "2" and len(await dom.qemu_monitor_command("query-cpus-fast")) == 2

    # A vCPU plugged in behind the controller's back (its own QMP), then a new controller: the live
    # definition it reports is QEMU's.
    slot = next(s for s in await dom.qemu_monitor_command("query-hotpluggable-cpus") if "qom-path" not in s)
    await dom.qemu_monitor_command("device_add", {"driver": slot["type"], "id": "other", **slot["props"]})
    await wait_for_serial(serial, "avirt-guest: cpus online=0-2")
    await conn.close()
    async with avirt.connect(state_dir=state_dir) as again:
        dom = await again.lookup("cpus")
        assert current(await dom.xml()) is None  # all three
        [record] = await again.all_domain_stats({"vcpu"}, [dom])
        assert record.params["vcpu.current"] == 3 and record.params["vcpu.2.time"] >= 0

        await dom.set_vcpus(2, timeout=60)  # the guest's kernel offlines the last one and ACPI ejects it
        assert current(await dom.xml()) == "2"
        assert len(await dom.qemu_monitor_command("query-cpus-fast")) == 2
        await wait_for_serial(serial, "avirt-guest: cpus online=0-1\n", count=2)  # the guest says so too
        [record] = await again.all_domain_stats({"vcpu"}, [dom])
        assert record.params["vcpu.current"] == 2
        # QEMU 7.2 under TCG would crash plugging a vCPU in now: refused, and the guest runs on.
        with pytest.raises(OperationInvalidError, match="restart the domain"):
            await dom.set_vcpus(3)
        assert (await dom.state())[0] is avirt.DomainState.RUNNING
        await dom.destroy()
