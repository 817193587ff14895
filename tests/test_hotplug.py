"""Disk hotplug on real QEMU: a booted guest writes to a disk plugged in after boot and lets it go when
asked; a guest that cannot answer (no OS) keeps its PCI disk and the detach says so in time; block jobs
work on a plugged disk as on any other.

The conformance suite (tests/conformance/test_devices.py) covers what every driver shares: SCSI
attach/detach, the refusals, the definitions, cdrom media.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from qemu.qmp import QMPClient

import avirt
from avirt import BlockJobStatus, DeviceRemovedEvent, EventKind
from avirt.connection import Connection
from avirt.errors import DeviceDetachTimeoutError, OperationInvalidError, OperationTimeoutError
from tests.events_help import read_until
from tests.guest import BASE_CMDLINE, GuestImages
from tests.images import GUEST_VIEW, check, make_chain, reads
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

if TYPE_CHECKING:
    from tests.test_cli import CLI

pytestmark = pytest.mark.anyio

ROOT_PORTS = "<controller type='pci' model='pcie-root-port'/>" * 2


def virtio_disk(target: str, path: Path) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{path}'/><target dev='{target}' bus='virtio'/></disk>")


async def test_a_booted_guest_writes_to_a_plugged_disk_and_lets_it_go(
        conn: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages) -> None:
    image = tmp_path / "hot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    serial = tmp_path / "serial.log"
    dom = await conn.define_xml(xml(
        "hotguest", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
        initrd=str(guest_images.initrd), serial_file=str(serial), extra_devices=ROOT_PORTS,
        cmdline=f"{BASE_CMDLINE} avirt.workload=write avirt.count=4 avirt.wait=120"))
    await dom.start()
    await wait_for_serial(serial, "avirt-guest: ready")
    await dom.attach_device(virtio_disk("vda", image))  # the guest's workload waits for /dev/vda
    await wait_for_serial(serial, "avirt-wl: done")
    assert "avirt-wl: error" not in serial.read_text()
    [record] = await conn.all_domain_stats({"block"}, [dom])
    assert record.params["block.0.name"] == "vda" and record.params["block.0.wr.bytes"] >= 4 * 65536
    async with conn.events(kinds={EventKind.DEVICE_REMOVED}, domain=dom) as stream:
        # A detach that does not wait for the guest (timeout 0) times out at once, and finishes by itself
        # when the guest has let go (through ACPI hotplug, QEMU's default on q35).
        with pytest.raises(DeviceDetachTimeoutError):
            await dom.detach_device(virtio_disk("vda", image), timeout=0)
        assert "vda" in await dom.xml()
        [removed] = await read_until(stream, lambda e: True, timeout=60)
    assert isinstance(removed, DeviceRemovedEvent) and removed.alias == "vda"
    with anyio.fail_after(10):
        while "vda" in await dom.xml():  # noqa: ASYNC110 (the finishing task gives no event of its own)
            await anyio.sleep(0.05)
    blocks = await dom.qemu_monitor_command("query-block")
    assert not any("vda" in b.get("qdev", "") for b in blocks)
    # QEMU has closed the image: read what the guest wrote, slot K MiB holding pattern K + 1
    for slot in range(4):
        subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c",
                        f"read -P {slot + 1:#x} {slot}M 64k", str(image)], check=True, capture_output=True)
    await dom.destroy()


async def test_a_booted_guest_writes_to_a_plugged_scsi_disk_which_leaves_at_once(
        conn: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages) -> None:
    image = tmp_path / "hot-sda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    serial = tmp_path / "serial.log"
    scsi = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{image}'/><target dev='sda' bus='scsi'/></disk>")
    dom = await conn.define_xml(xml(
        "hotscsi", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
        initrd=str(guest_images.initrd), serial_file=str(serial),
        extra_devices="<controller type='scsi' model='virtio-scsi'/>",
        cmdline=f"{BASE_CMDLINE} avirt.workload=write avirt.wldev=sda avirt.count=4 avirt.wait=120"))
    await dom.start()
    await wait_for_serial(serial, "avirt-guest: ready")
    await dom.attach_device(scsi)  # the guest's workload waits for /dev/sda
    await wait_for_serial(serial, "avirt-wl: done")
    assert "avirt-wl: error" not in serial.read_text()
    [record] = await conn.all_domain_stats({"block"}, [dom])
    assert record.params["block.0.name"] == "sda" and record.params["block.0.wr.bytes"] >= 4 * 65536
    await dom.detach_device(scsi, timeout=5)  # a SCSI disk needs no word from the guest
    assert 'target dev="sda"' not in await dom.xml()
    for slot in range(4):  # QEMU has closed the image: the guest's writes are in it
        subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {slot + 1:#x} {slot}M 64k",
                        str(image)], check=True, capture_output=True)
    await dom.attach_device(scsi)  # and it comes back
    assert 'target dev="sda"' in await dom.xml()
    await dom.destroy()


async def test_a_guest_without_an_os_keeps_its_pci_disk_and_the_detach_times_out(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    chain = make_chain(tmp_path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "vdc.qcow2"), "8M"], check=True)
    dom = await conn.define_xml(xml("hotpaused", extra_devices=ROOT_PORTS))
    await dom.start(paused=True)
    await dom.attach_device(virtio_disk("vdb", chain.active), config=True)
    # block jobs on the plugged disk: its layers have avirt's node names like any other disk's
    pull = await dom.block_pull("vdb", base=str(chain.snap1))
    assert await pull == BlockJobStatus.COMPLETED
    await dom.set_block_threshold("vdb[1]", 1 << 20)  # a backing layer of a plugged disk has a node too
    commit = await dom.block_commit("vdb", pivot=True)
    assert await commit == BlockJobStatus.COMPLETED
    assert str(chain.base) in await dom.xml(inactive=True)  # the definition follows the job
    with anyio.fail_after(10):
        with pytest.raises(DeviceDetachTimeoutError) as raised:
            await dom.detach_device(virtio_disk("vdb", chain.base), timeout=1)
    assert isinstance(raised.value, OperationTimeoutError) and raised.value.device == "vdb"
    assert "did not release device vdb within 1 s" in str(raised.value)
    assert "vdb" in await dom.xml()  # still there: the guest never let go
    with pytest.raises(OperationInvalidError, match="already waiting for the guest"):
        await dom.detach_device("<disk><target dev='vdb'/></disk>", timeout=1)
    async with avirt.connect(state_dir=state_dir) as client:  # the typed error crosses the wire too
        with pytest.raises(OperationInvalidError, match="already waiting for the guest"):
            await (await client.lookup("hotpaused")).detach_device("<disk><target dev='vdb'/></disk>")
        await dom.attach_device(virtio_disk("vdc", tmp_path / "vdc.qcow2"), live=True)
        with pytest.raises(DeviceDetachTimeoutError) as remote:
            await (await client.lookup("hotpaused")).detach_device("<disk><target dev='vdc'/></disk>",
                                                                    timeout=0.5)
        assert remote.value.device == "vdc" and remote.value.timeout == 0.5
    await dom.destroy()
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    check(chain.base)


async def test_a_device_del_of_anyone_is_followed_watched_or_not(
        xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    """QEMU removes a device whoever asked: avirt's live definition and open nodes follow, whether this
    controller saw it happen (someone's own QMP command) or a later one finds it gone."""
    image = tmp_path / "sdb.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"], check=True)
    scsi_disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                 f"<source file='{image}'/><target dev='sdb' bus='scsi'/></disk>")
    nodes = state_dir / "run" / "anyone" / "nodes.json"
    async with avirt.connect(state_dir=state_dir) as conn:
        dom = await conn.define_xml(xml("anyone", extra_devices="<controller type='scsi'/>"))
        await dom.start(paused=True)
        await dom.attach_device(scsi_disk)
        assert "sdb-1" in json.loads(nodes.read_text())
        await dom.qemu_monitor_command("device_del", {"id": "sdb"})  # not through avirt's API
        with anyio.fail_after(10):
            while "sdb" in await dom.xml():  # noqa: ASYNC110 (the finishing task gives no event of its own)
                await anyio.sleep(0.05)
        assert "sdb-1" not in json.loads(nodes.read_text())  # closed
        await dom.attach_device(scsi_disk)
        assert "sdb-1" in json.loads(nodes.read_text())  # closed names are free again
    client = QMPClient()  # no controller now: someone removes the disk behind avirt's back
    await client.connect(str(state_dir / "run" / "anyone" / "qmp.sock"))
    await client.execute("device_del", {"id": "sdb"})
    with anyio.fail_after(10):  # QEMU finishes the removal a moment after it answered
        while any(b.get("qdev") == "sdb" for b in await client.execute("query-block")):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    await client.disconnect()
    async with avirt.connect(state_dir=state_dir) as conn:
        dom = await conn.lookup("anyone")
        assert "sdb" not in await dom.xml()
        assert json.loads(nodes.read_text()) == {}  # the new controller closed its nodes
        await dom.attach_device(scsi_disk)  # and the target can be used again
        await dom.destroy()


def test_cli_attach_detach_and_media(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    image = tmp_path / "data.qcow2"
    iso = tmp_path / "disc.iso"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(iso), "1M"], check=True)
    cdrom = "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>"
    definition = tmp_path / "cli.xml"
    definition.write_text(xml("clihot", extra_devices="<controller type='scsi'/>" + cdrom))
    cli.ok("define", str(definition))
    # shut off, no flag: the definition ("current")
    assert cli.ok("attach-disk", "clihot", str(image), "sdb") == "Disk attached successfully\n"
    assert "sdb" in cli.ok("domblklist", "clihot")
    cli.ok("start", "--paused", "clihot")
    assert cli.ok("detach-disk", "clihot", "sdb", "--persistent") == "Disk detached successfully\n"
    assert "sdb" not in cli.ok("domblklist", "clihot")
    assert "sdb" not in cli.ok("domblklist", "clihot", "--inactive")
    device = tmp_path / "sdc.xml"
    device.write_text(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                      f"<source file='{image}'/><target dev='sdc' bus='scsi'/></disk>")
    assert cli.ok("attach-device", "clihot", str(device)) == "Device attached successfully\n"  # live
    assert "sdc" in cli.ok("domblklist", "clihot") and "sdc" not in cli.ok("domblklist", "clihot",
                                                                             "--inactive")
    assert cli.ok("detach-device", "clihot", str(device)) == "Device detached successfully\n"
    assert cli.ok("change-media", "clihot", "sda", str(iso), "--insert") == "Successfully inserted media.\n"
    assert str(iso) in cli.ok("domblklist", "clihot")
    assert cli.ok("change-media", "clihot", "sda", "--eject") == "Successfully ejected media.\n"
    assert str(iso) not in cli.ok("domblklist", "clihot")
    assert "SOURCE is needed" in cli.fails("change-media", "clihot", "sda")
    assert "already has a disk sda" in cli.fails("attach-disk", "clihot", str(iso), "sda", "--targetbus",
                                                 "sata", "--type", "cdrom")
    cli.ok("destroy", "clihot")
