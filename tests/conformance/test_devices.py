"""Disks attached to and detached from running and shut-off domains, and cdrom media changed, on every
driver: the same definitions change, the same refusals, the same events.

SCSI and USB disks leave a running QEMU at once (their buses need no word from the guest), so they are
what is detached here from guests without an OS; a PCI device waits for the guest, which tests/test_hotplug.py
covers on QEMU alone (its timeout, and a real guest that lets go).
"""

from __future__ import annotations

import subprocess

import pytest

from avirt import DeviceRemovedEvent, EventKind, TrayChangeEvent
from avirt.errors import InvalidArgumentError, InvalidXMLError, OperationInvalidError, UnsupportedError
from tests.conformance.conftest import World
from tests.events_help import read_until

pytestmark = pytest.mark.anyio

SCSI = "<controller type='scsi' model='virtio-scsi'/>"
ROOT_PORT = "<controller type='pci' model='pcie-root-port'/>"


def image(world: World, name: str, fmt: str = "qcow2") -> str:
    path = world.tmp_path / name
    if world.qemu:
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "8M"], check=True)
    return str(path)


def disk_xml(target: str, source: str, bus: str, *, device: str = "disk", fmt: str = "qcow2") -> str:
    src = f"<source file='{source}'/>" if source else ""
    readonly = "<readonly/>" if device == "cdrom" else ""
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='{fmt}'/>{src}"
            f"<target dev='{target}' bus='{bus}'/>{readonly}</disk>")


def targets(xml: str) -> list[str]:
    from lxml import etree

    return [t.get("dev") for t in etree.fromstring(xml.encode()).iterfind("devices/disk/target")]


@pytest.mark.parametrize(("bus", "controller"), [("scsi", SCSI),
                                                  ("usb", "<controller type='usb' model='qemu-xhci'/>")])
async def test_a_scsi_or_usb_disk_comes_and_goes_on_a_running_domain(
        world: World, bus: str, controller: str) -> None:
    dom = await world.conn.define_xml(world.xml("hp-scsi", extra_devices=controller))
    await dom.start(paused=True)
    added = disk_xml("sdb", image(world, "sdb.qcow2"), bus)
    await dom.attach_device(added, live=True, config=True)
    assert targets(await dom.xml()) == ["sdb"]
    assert targets(await dom.xml(inactive=True)) == ["sdb"]
    [record] = await world.conn.all_domain_stats({"block"}, [dom])
    assert record.params["block.count"] == 1 and record.params["block.0.name"] == "sdb"
    assert record.params["block.0.capacity"] > 0
    with pytest.raises(OperationInvalidError, match="already has a disk sdb"):
        await dom.attach_device(added)
    async with world.conn.events(kinds={EventKind.DEVICE_REMOVED}, domain=dom) as stream:
        await dom.detach_device("<disk><target dev='sdb'/></disk>")  # live only: found by target
        [removed] = await read_until(stream, lambda e: True, timeout=10)
    assert isinstance(removed, DeviceRemovedEvent) and removed.alias == "sdb"
    assert targets(await dom.xml()) == []
    assert targets(await dom.xml(inactive=True)) == ["sdb"]
    await dom.attach_device(added)  # the same target again: fresh node names
    assert targets(await dom.xml()) == ["sdb"]
    await dom.destroy()
    await dom.start(paused=True)  # the definition kept it
    assert targets(await dom.xml()) == ["sdb"]
    await dom.destroy()


async def test_a_virtio_disk_needs_a_spare_root_port_on_q35(world: World) -> None:
    plain = await world.conn.define_xml(world.xml("hp-plain"))
    await plain.start(paused=True)
    added = disk_xml("vdb", image(world, "vdb.qcow2"), "virtio")
    with pytest.raises(OperationInvalidError, match="needs <controller type='pci' index='1' "
                                                    "model='pcie-root-port'/>"):
        await plain.attach_device(added)
    assert targets(await plain.xml()) == []
    spare = await world.conn.define_xml(world.xml("hp-spare", extra_devices=ROOT_PORT))
    await spare.start(paused=True)
    await spare.attach_device(added)
    assert targets(await spare.xml()) == ["vdb"]
    assert "<address type=\"pci\" domain=\"0x0000\" bus=\"0x01\"" in await spare.xml()
    with pytest.raises(OperationInvalidError, match="on bus sata"):
        await spare.attach_device(disk_xml("sdc", image(world, "sdc.qcow2"), "sata"))
    await plain.destroy()
    await spare.destroy()


async def test_attach_and_detach_on_a_shut_off_domain_change_the_definition(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("hp-off", extra_devices=SCSI))
    added = disk_xml("sdb", image(world, "off.qcow2"), "scsi")
    with pytest.raises(OperationInvalidError, match="not running"):
        await dom.attach_device(added)
    await dom.attach_device(added, config=True)  # live and config on a shut-off domain: the definition
    assert targets(await dom.xml(inactive=True)) == ["sdb"]
    await dom.detach_device(f"<disk><source file='{world.tmp_path / 'off.qcow2'}'/></disk>", config=True)
    assert targets(await dom.xml(inactive=True)) == []
    with pytest.raises(OperationInvalidError, match="no disk sdz"):
        await dom.detach_device("<disk><target dev='sdz'/></disk>", live=False, config=True)
    with pytest.raises(UnsupportedError, match="<disk> and <interface> devices only"):
        await dom.attach_device("<sound model='ich9'/>", config=True)
    with pytest.raises(InvalidXMLError):
        await dom.attach_device("<disk>", config=True)
    with pytest.raises(InvalidArgumentError):
        await dom.attach_device(added, live=False)


async def test_cdrom_media_change_with_tray_events(world: World) -> None:
    cdrom = disk_xml("sda", "", "sata", device="cdrom", fmt="raw")
    dom = await world.conn.define_xml(world.xml("hp-cd", extra_devices=cdrom))
    await dom.start(paused=True)
    iso = image(world, "disc.iso", "raw")
    async with world.conn.events(kinds={EventKind.TRAY_CHANGE}, domain=dom) as stream:
        await dom.change_media("sda", iso)
        moved = await read_until(stream, lambda e: isinstance(e, TrayChangeEvent) and not e.open, timeout=10)
        assert [(e.device, e.open) for e in moved if isinstance(e, TrayChangeEvent)] == [("sda", True),
                                                                                      ("sda", False)]
        assert iso in await dom.xml()
        await dom.change_media("sda", None)
        [ejected] = await read_until(stream, lambda e: True, timeout=10)
        assert isinstance(ejected, TrayChangeEvent) and ejected.open
    assert iso not in await dom.xml()
    assert targets(await dom.xml()) == ["sda"]
    with pytest.raises(OperationInvalidError, match="no disk vdz"):
        await dom.change_media("vdz", iso)
    await dom.destroy()
    with pytest.raises(OperationInvalidError, match="not running"):
        await dom.change_media("sda", iso)
    await dom.change_media("sda", iso, config=True)  # shut off: the definition's drive
    assert iso in await dom.xml(inactive=True)
    await dom.start(paused=True)  # and the next run has the medium in
    assert iso in await dom.xml()
    await dom.destroy()
    disk = await world.conn.define_xml(world.xml("hp-hd", disks=[("vda", image(world, "hd.qcow2"), "qcow2")]))
    await disk.start(paused=True)
    with pytest.raises(OperationInvalidError, match="vda of 'hp-hd' is a disk, not a cdrom or floppy"):
        await disk.change_media("vda", iso)
    await disk.destroy()


def vcpus_of(xml: str) -> tuple[str, str | None]:
    from lxml import etree

    vcpu = etree.fromstring(xml.encode()).find("vcpu")
    assert vcpu is not None
    return vcpu.text or "", vcpu.get("current")


async def test_vcpus_are_plugged_in_and_the_definitions_follow(world: World) -> None:
    text = world.xml("cpus").replace("<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>")
    dom = await world.conn.define_xml(text)
    with pytest.raises(OperationInvalidError, match="not running"):
        await dom.set_vcpus(2)
    await dom.start(paused=True)
    assert vcpus_of(await dom.xml()) == ("2", "1")
    await dom.set_vcpus(2)  # a new vCPU needs no word from the guest
    assert vcpus_of(await dom.xml()) == ("2", None)
    assert vcpus_of(await dom.xml(inactive=True)) == ("2", "1")  # live only
    [record] = await world.conn.all_domain_stats({"vcpu"}, [dom])
    assert record.params["vcpu.current"] == 2 and record.params["vcpu.maximum"] == 2
    for wrong in (0, 3):
        with pytest.raises(InvalidArgumentError, match="1 to 2 vCPUs"):
            await dom.set_vcpus(wrong)
    assert vcpus_of(await dom.xml()) == ("2", None)
    if world.qemu:  # a guest without an OS has not taken over CPU hotplug: QEMU cannot ask it
        with pytest.raises(OperationInvalidError, match="cannot let one go"):
            await dom.set_vcpus(1, timeout=0.2)
        assert vcpus_of(await dom.xml()) == ("2", None)
    await dom.set_vcpus(2, live=False, config=True)
    assert vcpus_of(await dom.xml(inactive=True)) == ("2", None)
    await dom.destroy()
    await dom.start(paused=True)  # the definition now starts both
    [record] = await world.conn.all_domain_stats({"vcpu"}, [dom])
    assert record.params["vcpu.current"] == 2
    await dom.destroy()
    await dom.set_vcpus(1, config=True)  # shut off: the definition
    assert vcpus_of(await dom.xml(inactive=True)) == ("2", "1")


async def test_a_nic_joins_a_running_domain_and_its_definition(world: World) -> None:
    """A user-mode NIC (no host network needed: every world can run it) plugged into a running domain:
    both definitions get it with one MAC, a second with that MAC is refused; the definition's copy goes
    again by MAC. (Its live detach waits for the guest's consent: tests/netns_scenarios.py.)"""
    dom = await world.conn.define_xml(world.xml("hp-nic", extra_devices=ROOT_PORT * 2))
    await dom.start(paused=True)
    nic = "<interface type='user'><model type='virtio'/></interface>"
    await dom.attach_device(nic, live=True, config=True)
    live, persistent = await dom.xml(), await dom.xml(inactive=True)
    [mac] = [line.split("'")[1] if "'" in line else line.split('"')[1]
             for line in live.splitlines() if "<mac address" in line]
    assert mac.startswith("52:54:00:") and mac in persistent
    with pytest.raises(OperationInvalidError, match=f"already has an interface with MAC {mac}"):
        await dom.attach_device(f"<interface type='user'><mac address='{mac}'/></interface>")
    await dom.detach_device(f"<interface type='user'><mac address='{mac}'/></interface>", live=False,
                            config=True)
    assert mac not in await dom.xml(inactive=True) and mac in await dom.xml()
    with pytest.raises(OperationInvalidError, match="no interface with MAC"):
        await dom.detach_device(f"<interface type='user'><mac address='{mac}'/></interface>", live=False,
                                config=True)


async def test_memory_changes_through_the_balloon(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("mem", extra_devices="<memballoon model='virtio'/>"))
    await dom.start(paused=True)
    await dom.set_memory(32 * 1024, live=True, config=True)  # the target; a guest OS would follow it
    assert '<currentMemory unit="KiB">32768</currentMemory>' in await dom.xml()
    assert '<currentMemory unit="KiB">32768</currentMemory>' in await dom.xml(inactive=True)
    with pytest.raises(InvalidArgumentError, match="more than its maximum memory"):
        await dom.set_memory(1 << 30)
    bare = await world.conn.define_xml(world.xml("mem-bare"))
    await bare.start(paused=True)
    with pytest.raises(OperationInvalidError, match="no balloon device"):
        await bare.set_memory(32 * 1024)
