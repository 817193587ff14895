"""The tiny guest boots on the wider hardware model: disks on virtio-scsi and SATA, cdroms, UEFI.

Each test boots real QEMU under TCG and proves what the guest saw from inside it: with
``avirt.blocks=...`` the guest's /init waits for the named block devices and reports, per device, the
MD5 of its whole content and its sysfs path (which names the PCI slots, the SCSI address or the ATA
port). The host writes known patterns into the images, so a report can only match when the guest
read the right image through the right bus; the sysfs path must match the addresses avirt wrote into
the definition. Every definition is also checked for a stable ABI: defining its own inactive XML
again changes nothing, and a second start shows the guest the same PCI devices and block devices.

The cloud kernel of the usual test guest has no AHCI driver, so the SATA test boots the same guest
built from Debian's generic kernel (``linux-image-amd64``, fetched once into the guest cache).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from lxml import etree

from avirt import Domain, DomainState
from avirt.connection import Connection
from avirt.errors import DomainStartError
from tests.guest import BASE_CMDLINE, GuestImages, build_guest
from tests.waiting import wait_for_serial

pytestmark = [pytest.mark.anyio]

MIB = 1 << 20
DONE = "avirt-guest: blocks done: "
BLOCK = re.compile(r"avirt-guest: block (\w+) sectors=(\d+) ro=(\d) md5=(\w+) path=(\S+)")


# -- images ---------------------------------------------------------------------------------------------


def patterned_disk(path: Path, pattern: int, size: int = MIB) -> str:
    """A qcow2 disk of ``size`` bytes whose first 64 KiB are ``pattern``; the MD5 the guest must read."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 0 64k", path], check=True,
                   capture_output=True)
    return hashlib.md5(bytes([pattern]) * 65536 + bytes(size - 65536)).hexdigest()


def cdrom_media(tmp_path: Path) -> tuple[Path, str]:
    """An ISO 9660 image holding a patterned file (a raw patterned image without xorriso/genisoimage)."""
    tool = shutil.which("xorriso") or shutil.which("genisoimage")
    iso = tmp_path / "media.iso"
    if tool is None:
        iso.write_bytes(bytes([0xC3]) * (200 * 2048))
    else:
        content = tmp_path / "iso"
        content.mkdir()
        (content / "pattern.bin").write_bytes(bytes([0xC3]) * 65536)
        prefix = [tool, "-as", "mkisofs"] if tool.endswith("xorriso") else [tool]
        subprocess.run([*prefix, "-quiet", "-V", "AVIRT_TEST", "-o", iso, content], check=True,
                       capture_output=True)
    return iso, hashlib.md5(iso.read_bytes()).hexdigest()


# -- domain XML and what the guest reports ----------------------------------------------------------------


def guest_xml(name: str, images: GuestImages, serial: Path, devices: str, *, blocks: str = "",
              shares: str = "", os_attrs: str = "", os_extra: str = "", memory_extra: str = "") -> str:
    cmdline = BASE_CMDLINE + "".join(f" avirt.{knob}={value}" for knob, value in
                                     (("blocks", blocks), ("shares", shares)) if value)
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>{memory_extra}
  <vcpu>1</vcpu>
  <os{os_attrs}><type arch='x86_64' machine='q35'>hvm</type>{os_extra}<kernel>{images.kernel}</kernel>
    <initrd>{images.initrd}</initrd><cmdline>{cmdline}</cmdline></os>
  <features><acpi/></features>
  <devices>{devices}<serial type='file'><source path='{serial}'/></serial></devices>
</domain>"""


def blocks_reported(serial: Path) -> dict[str, dict[str, str]]:
    text = serial.read_text()
    reported = {m[0]: {"sectors": m[1], "ro": m[2], "md5": m[3], "path": m[4]} for m in BLOCK.findall(text)}
    listed = text.split(DONE, 1)[1].split("\n", 1)[0].split()
    assert sorted(reported) == sorted(listed), text  # every block device was expected, and reported
    return reported


def one(definition: etree._Element, xpath: str) -> etree._Element:
    found = definition.xpath(xpath)
    assert isinstance(found, list) and len(found) == 1, f"{xpath}: {found!r}"
    element = found[0]
    assert isinstance(element, etree._Element)
    return element


def address(definition: etree._Element, xpath: str) -> dict[str, int]:
    """The ``<address>`` of the element at ``xpath``, as integers (libvirt writes 0x.. and decimals)."""
    return {str(k): int(v, 0) for k, v in one(definition, f"{xpath}/address").attrib.items()
            if k not in ("type", "multifunction")}


def pci_slot(definition: etree._Element, xpath: str) -> str:
    """``0000:BB:SS.F`` of a PCI device of the definition as the guest sees it (the firmware numbers the
    buses; in these guests each root port's bus gets the number of the port's index)."""
    a = address(definition, xpath)
    return f"0000:{a['bus']:02x}:{a['slot']:02x}.{a['function']:x}"


# -- PCI layout as QEMU reports it ------------------------------------------------------------------------


def pci_layout(buses: list[dict[str, Any]]) -> list[Any]:
    """``query-pci`` without what the firmware assigns (bus numbers, BARs, IRQs): every device as slot,
    function, ids, class and QEMU id, with the devices behind a bridge nested under it."""
    def devices(entries: list[dict[str, Any]]) -> list[Any]:
        return sorted([d["slot"], d["function"], d["id"]["vendor"], d["id"]["device"],
                       d["class_info"]["class"], d.get("qdev_id", ""),
                       devices(d.get("pci_bridge", {}).get("devices", []))] for d in entries)
    return [devices(bus["devices"]) for bus in buses]


def pci_path(buses: list[dict[str, Any]], qdev_id: str) -> list[tuple[str, int, int]]:
    """(QEMU id, slot, function) of each device from the root bus down to the device ``qdev_id``."""
    def search(entries: list[dict[str, Any]]) -> Iterator[list[tuple[str, int, int]]]:
        for d in entries:
            here = (d.get("qdev_id", ""), d["slot"], d["function"])
            if here[0] == qdev_id:
                yield [here]
            for rest in search(d.get("pci_bridge", {}).get("devices", [])):
                yield [here, *rest]
    found = [path for bus in buses for path in search(bus["devices"])]
    assert len(found) == 1, f"{qdev_id} found {len(found)} times in query-pci"
    return found[0]


# -- the steps every test repeats -------------------------------------------------------------------------


async def defined_stably(conn: Connection, xml: str) -> tuple[Domain, str]:
    """Define ``xml``; defining the definition it reads back must change nothing."""
    dom = await conn.define_xml(xml)
    stable = await dom.xml(inactive=True)
    again = await conn.define_xml(stable)
    assert again == dom
    assert await dom.xml(inactive=True) == stable
    return dom, stable


async def boot(dom: Domain, serial: Path, marker: str) -> None:
    """Start ``dom`` and wait for ``marker`` on its serial port."""
    await start_fresh(dom, serial)
    await wait_for_serial(serial, marker)


async def start_fresh(dom: Domain, serial: Path, *, paused: bool = False) -> None:
    """Start ``dom``, first removing the serial log of an earlier run (QEMU makes a new one)."""
    serial.unlink(missing_ok=True)
    await dom.start(paused=paused)


async def power_off(dom: Domain) -> None:
    """Power the guest off through ACPI (proving it answers) before the next start."""
    await dom.shutdown(wait=60)
    assert await dom.state() == (DomainState.SHUTOFF, "shutdown")


# -- the tests --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generic_guest_images() -> GuestImages:
    """The test guest on Debian's generic kernel, which has the AHCI driver (SATA) the cloud kernel lacks."""
    return build_guest(kernel_meta="linux-image-amd64")


@pytest.mark.guest
async def test_guest_boots_with_its_disk_and_a_cdrom_on_virtio_scsi(
        conn: Connection, tmp_path: Path, guest_images: GuestImages) -> None:
    disk = tmp_path / "sda.qcow2"
    disk_md5 = patterned_disk(disk, 0x5A)
    iso, iso_md5 = cdrom_media(tmp_path)
    serial = tmp_path / "serial.log"
    devices = f"""
    <controller type='scsi' model='virtio-scsi'/>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='sda' bus='scsi'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{iso}'/>
      <target dev='sdb' bus='scsi'/><readonly/></disk>"""
    dom, stable = await defined_stably(
        conn, guest_xml("scsi", guest_images, serial, devices, blocks="sda,sr0"))
    definition = etree.fromstring(stable)
    # The one SCSI controller sits behind a root port of its own; the disks have libvirt's drive addresses.
    one(definition, "devices/controller[@type='scsi'][@model='virtio-scsi']")
    assert address(definition, "devices/disk[target/@dev='sda']") == {"controller": 0, "bus": 0, "target": 0,
                                                                      "unit": 0}
    assert address(definition, "devices/disk[target/@dev='sdb']")["unit"] == 1
    port = one(definition, "devices/controller[@model='pcie-root-port']")
    port_xpath = f"devices/controller[@type='pci'][@index='{port.get('index')}']"
    assert address(definition, "devices/controller[@type='scsi']")["bus"] == int(port.get("index", "-1"))

    await boot(dom, serial, DONE)
    first = blocks_reported(serial)
    # The guest read the patterned disk and the ISO whole, through the virtio-scsi HBA at the addresses of
    # the definition: root port, then the controller behind it, then SCSI id 0 and LUNs 0 and 1.
    scsi_xpath = "devices/controller[@type='scsi']"
    hba = f"/devices/pci0000:00/{pci_slot(definition, port_xpath)}/{pci_slot(definition, scsi_xpath)}/virtio"
    assert first["sda"]["md5"] == disk_md5 and first["sda"]["ro"] == "0"
    assert first["sda"]["path"].startswith(hba) and first["sda"]["path"].endswith(":0:0:0/block/sda")
    assert first["sr0"]["md5"] == iso_md5 and first["sr0"]["ro"] == "1"
    assert first["sr0"]["path"].startswith(hba) and first["sr0"]["path"].endswith(":0:0:1/block/sr0")
    buses = await dom.qemu_monitor_command("query-pci")
    scsi = address(definition, scsi_xpath)
    port_address = address(definition, port_xpath)
    assert pci_path(buses, "scsi0") == [(f"pci.{port.get('index')}", port_address["slot"],
                                         port_address["function"]), ("scsi0", scsi["slot"], scsi["function"])]
    await power_off(dom)

    await boot(dom, serial, DONE)
    assert blocks_reported(serial) == first
    assert pci_layout(await dom.qemu_monitor_command("query-pci")) == pci_layout(buses)
    await power_off(dom)
    assert await dom.xml(inactive=True) == stable


@pytest.mark.guest
async def test_guest_boots_from_sata_with_a_cdrom_and_an_empty_cdrom_drive(
        conn: Connection, tmp_path: Path, generic_guest_images: GuestImages) -> None:
    disk = tmp_path / "sda.qcow2"
    disk_md5 = patterned_disk(disk, 0xA5)
    iso, iso_md5 = cdrom_media(tmp_path)
    serial = tmp_path / "serial.log"
    devices = f"""
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='sda' bus='sata'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{iso}'/>
      <target dev='sdb' bus='sata'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdc' bus='sata'/></disk>"""
    dom, stable = await defined_stably(
        conn, guest_xml("sata", generic_guest_images, serial, devices, blocks="sda,sr0,sr1"))
    definition = etree.fromstring(stable)
    one(definition, "devices/controller[@type='sata'][@index='0']")
    units = {d: address(definition, f"devices/disk[target/@dev='{d}']")["unit"]
             for d in ("sda", "sdb", "sdc")}
    assert units == {"sda": 0, "sdb": 1, "sdc": 2}

    await boot(dom, serial, DONE)
    first = blocks_reported(serial)
    # q35's own AHCI controller (00:1f.2); ATA port N+1 is unit N.
    ahci = "/devices/pci0000:00/0000:00:1f.2/"
    assert first["sda"]["md5"] == disk_md5
    assert first["sda"]["path"].startswith(f"{ahci}ata{units['sda'] + 1}/")
    # The cdrom drives probe in parallel, so which one is sr0 is the kernel's choice: find each by its port.
    by_port = {int(re.match(rf"{ahci}ata(\d+)/", b["path"])[1]) - 1: b  # type: ignore[index]
               for name, b in first.items() if name.startswith("sr")}
    assert sorted(by_port) == [units["sdb"], units["sdc"]]
    assert by_port[units["sdb"]]["md5"] == iso_md5 and by_port[units["sdb"]]["ro"] == "1"
    assert by_port[units["sdc"]]["md5"] == "none"  # the drive is there, with no media to read
    buses = await dom.qemu_monitor_command("query-pci")
    await power_off(dom)

    await boot(dom, serial, DONE)
    again = blocks_reported(serial)
    assert sorted((b["path"], b["md5"]) for b in again.values()) == sorted(
        (b["path"], b["md5"]) for b in first.values())
    assert pci_layout(await dom.qemu_monitor_command("query-pci")) == pci_layout(buses)
    await power_off(dom)
    assert await dom.xml(inactive=True) == stable


@pytest.mark.guest
async def test_guest_boots_under_uefi_with_variables_of_its_own(
        conn: Connection, tmp_path: Path, state_dir: Path, guest_images: GuestImages) -> None:
    disk = tmp_path / "vda.qcow2"
    disk_md5 = patterned_disk(disk, 0x3C)
    serial = tmp_path / "serial.log"
    devices = f"""
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>"""
    dom, stable = await defined_stably(
        conn, guest_xml("efi", guest_images, serial, devices, blocks="vda", os_attrs=" firmware='efi'"))
    definition = etree.fromstring(stable)
    loader, nvram = definition.find("os/loader"), definition.find("os/nvram")
    assert loader is not None and loader.text == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert loader.get("type") == "pflash" and loader.get("readonly") == "yes"
    assert nvram is not None and nvram.text is not None and nvram.get("template") is not None
    variables, template = Path(nvram.text), Path(nvram.get("template", ""))
    assert template == Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert variables.parent == state_dir / "nvram"
    assert not variables.exists()  # made on the first start, not at define time

    await boot(dom, serial, DONE)
    assert "avirt-guest: firmware efi" in serial.read_text()
    # The firmware numbered the buses and the guest found its disk behind the root port of the definition.
    first = blocks_reported(serial)
    disk_xpath = "devices/disk[target/@dev='vda']"
    port_xpath = f"devices/controller[@type='pci'][@index='{address(definition, disk_xpath)['bus']}']"
    assert one(definition, port_xpath).get("model") == "pcie-root-port"
    assert first["vda"]["md5"] == disk_md5
    assert first["vda"]["path"].startswith(
        f"/devices/pci0000:00/{pci_slot(definition, port_xpath)}/{pci_slot(definition, disk_xpath)}/virtio")
    buses = await dom.qemu_monitor_command("query-pci")
    await power_off(dom)
    # The firmware kept its variables in the domain's own file, made from the template.
    assert variables.stat().st_size == template.stat().st_size
    kept = variables.read_bytes()
    assert kept != template.read_bytes()

    await start_fresh(dom, serial, paused=True)
    assert variables.read_bytes() == kept  # the second start keeps them: no fresh copy of the template
    await dom.resume()
    await wait_for_serial(serial, DONE)
    assert "avirt-guest: firmware efi" in serial.read_text()
    assert blocks_reported(serial) == first
    assert pci_layout(await dom.qemu_monitor_command("query-pci")) == pci_layout(buses)
    await power_off(dom)
    assert await dom.xml(inactive=True) == stable


async def test_secure_boot_definition_gets_the_secboot_firmware_with_smm_and_starts_paused(
        conn: Connection, tmp_path: Path, guest_images: GuestImages) -> None:
    dom, stable = await defined_stably(conn, guest_xml(
        "secboot", guest_images, tmp_path / "serial.log", "", os_attrs=" firmware='efi'",
        os_extra="<firmware><feature enabled='yes' name='secure-boot'/></firmware>"))
    definition = etree.fromstring(stable)
    loader, nvram = definition.find("os/loader"), definition.find("os/nvram")
    assert loader is not None and loader.text == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert loader.get("secure") == "yes"
    assert nvram is not None and nvram.text is not None
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"  # Microsoft's keys enrolled
    assert one(definition, "features/smm").get("state") == "on"  # the secboot build needs SMM

    layouts = []
    for _ in range(2):
        await dom.start(paused=True)
        assert await dom.state() == (DomainState.PAUSED, "user")
        assert await dom.qemu_monitor_command("qom-get", {"path": "/machine", "property": "smm"}) == "on"
        assert await dom.qemu_monitor_command(
            "qom-get", {"path": "/machine/system.flash0", "property": "secure"}) is True
        layouts.append(await dom.qemu_monitor_command("query-pci"))
        await dom.destroy()
    assert Path(nvram.text).read_bytes() == Path(nvram.get("template", "")).read_bytes()  # never ran
    assert layouts[0] == layouts[1]
    assert await dom.xml(inactive=True) == stable


SHARED_MEMORY = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
VIRTIOFSD_NEEDS_ROOT = "QEMU 7.2's virtiofsd sandboxes itself with namespaces, which needs root"


def virtiofs_share(source: Path, tag: str) -> str:
    return f"""
    <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs' queue='1024'/>
      <binary><cache mode='always'/></binary><source dir='{source}'/><target dir='{tag}'/></filesystem>"""


async def all_ended(pids: list[int], timeout: float = 10) -> None:
    """Until every process of ``pids`` has exited (pidfds turn readable then)."""
    with anyio.fail_after(timeout):
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)


def virtiofsds_serving(source: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"source={source}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.guest
@pytest.mark.skipif(os.geteuid() != 0, reason=VIRTIOFSD_NEEDS_ROOT)
async def test_guest_reads_and_writes_a_host_directory_over_virtiofs(
        conn: Connection, tmp_path: Path, guest_images: GuestImages) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "host.txt").write_text("written by the host\n")
    serial = tmp_path / "serial.log"
    dom, stable = await defined_stably(conn, guest_xml(
        "virtiofs", guest_images, serial, virtiofs_share(share, "hostshare"), shares="hostshare",
        memory_extra=SHARED_MEMORY))
    fs = one(etree.fromstring(stable), "devices/filesystem")
    assert one(fs, "address").get("type") == "pci"  # a PCI device like any other, placed at define time

    await boot(dom, serial, "avirt-guest: share hostshare ")
    assert "avirt-guest: share hostshare read=written by the host wrote=ok" in serial.read_text()
    assert (share / "guest.txt").read_text() == "written by the guest\n"
    servers = virtiofsds_serving(share)
    assert servers  # virtiofsd runs beside QEMU...
    await power_off(dom)
    await all_ended(servers)  # ...and ends with it, with no one to stop it


@pytest.mark.skipif(os.geteuid() != 0, reason=VIRTIOFSD_NEEDS_ROOT)
async def test_a_failed_start_ends_the_virtiofsd_it_started(
        conn: Connection, tmp_path: Path, guest_images: GuestImages) -> None:
    share = tmp_path / "share"
    share.mkdir()
    devices = f"<emulator>/bin/false</emulator>{virtiofs_share(share, 'hostshare')}"
    dom = await conn.define_xml(guest_xml("virtiofs-fails", guest_images, tmp_path / "serial.log", devices,
                                          memory_extra=SHARED_MEMORY))
    with pytest.raises(DomainStartError) as failure:
        await dom.start()
    assert "virtiofsd of filesystem 1:" in str(failure.value)  # what the file server said, kept
    assert (await dom.state())[0] is DomainState.SHUTOFF
    await all_ended(virtiofsds_serving(share))


async def test_virtiofs_without_its_shared_directory_is_refused_before_anything_starts(
        conn: Connection, tmp_path: Path, guest_images: GuestImages) -> None:
    missing = tmp_path / "no-such-dir"
    dom = await conn.define_xml(guest_xml("virtiofs-missing", guest_images, tmp_path / "serial.log",
                                          virtiofs_share(missing, "hostshare"), memory_extra=SHARED_MEMORY))
    with pytest.raises(DomainStartError, match=r"does not exist|needs root"):
        await dom.start()
    assert not virtiofsds_serving(missing)
