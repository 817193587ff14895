"""Domain XML parsing and serialisation: the supported subset, its errors, and round trips."""

from __future__ import annotations

import dataclasses
import re
import uuid

import pytest
from lxml import etree

from avirt.config import (
    CPU,
    Address,
    CharDevice,
    Controller,
    Disk,
    DomainConfig,
    Filesystem,
    Graphics,
    Interface,
    IoTune,
    MemBalloon,
    OSConfig,
    Panic,
    Vsock,
    domain_to_xml,
    parse_domain_xml,
    tables,
)
from avirt.config.model import CPUTune, IOThreadPin, MemoryBacking, NUMACell, VCPUPin
from avirt.config.schema import Kind
from avirt.errors import InvalidXMLError, UnsupportedError
from tests.test_config_corpus import lost_items

FULL_XML = """\
<domain type='qemu' id='7'>
  <name>full-guest_1.0+x</name>
  <uuid>C7A5FDBD-EDAF-9455-926A-D65C16DB1809</uuid>
  <title>A full guest</title>
  <description>Line one
line two</description>
  <memory unit='GiB'>2</memory>
  <currentMemory unit='MiB'>1024</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/boot/vmlinuz</kernel>
    <initrd>/boot/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda1</cmdline>
    <boot dev='network'/>
    <boot dev='hd'/>
    <boot dev='cdrom'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='partial' migratable='on'/>
  <clock offset='localtime'/>
  <on_poweroff>preserve</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>restart</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/avirt/top.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
      <serial>SN-0001</serial>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' error_policy='stop'/>
      <source dev='/dev/vg0/data'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:AB:CD:EF'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/avirt/full.log'/>
      <target port='1'/>
    </serial>
    <serial type='null'/>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <memballoon model='virtio'/>
    <panic model='isa'/>
  </devices>
</domain>
"""


def minimal(devices: str = "", extra: str = "", root_attrs: str = "type='kvm'") -> str:
    """A small valid document; ``extra`` goes after <os> (or replaces it), ``devices`` inside <devices>."""
    os = "" if "<os>" in extra else "  <os><type>hvm</type></os>\n"
    return (
        f"<domain {root_attrs}>\n"
        "  <name>mini</name>\n"
        "  <memory>131072</memory>\n"
        f"{os}"
        f"{extra}\n"
        f"  <devices>\n{devices}\n  </devices>\n"
        "</domain>\n"
    )


def line_of(xml: str, marker: str) -> int:
    return next(i for i, line in enumerate(xml.splitlines(), start=1) if marker in line)


def test_full_document_fills_every_field() -> None:
    cfg = parse_domain_xml(FULL_XML)
    assert cfg.name == "full-guest_1.0+x"
    assert cfg.uuid == "c7a5fdbd-edaf-9455-926a-d65c16db1809"
    assert cfg.hypervisor == "qemu"
    assert cfg.title == "A full guest"
    assert cfg.description == "Line one\nline two"
    assert (cfg.memory_kib, cfg.current_memory_kib, cfg.vcpus) == (2 * 1024 * 1024, 1024 * 1024, 4)
    assert cfg.os.machine == "pc" and cfg.os.arch == "x86_64" and cfg.os.type == "hvm"
    assert (cfg.os.kernel, cfg.os.initrd) == ("/boot/vmlinuz", "/boot/initrd.img")
    assert cfg.os.cmdline == "console=ttyS0 root=/dev/vda1"
    assert cfg.os.boot_devs == ["network", "hd", "cdrom"]
    assert cfg.features.acpi and cfg.features.apic and not cfg.features.pae
    assert cfg.cpu == CPU(mode="host-passthrough", check="partial", migratable="on")
    assert cfg.clock_offset == "localtime"
    assert (cfg.on_poweroff, cfg.on_reboot, cfg.on_crash) == ("preserve", "destroy", "restart")
    assert cfg.emulator == "/usr/bin/qemu-system-x86_64"
    assert cfg.disks == [
        Disk(target="vda", source="/var/lib/avirt/top.qcow2", type="file", format="qcow2", bus="virtio",
             readonly=True, serial="SN-0001"),
        Disk(target="sda", source="/dev/vg0/data", type="block", format="raw", bus="sata",
             error_policy="stop"),
    ]
    assert cfg.interfaces == [Interface(mac="52:54:00:ab:cd:ef")]
    assert cfg.chardevs == [
        CharDevice(kind="serial", type="file", path="/var/log/avirt/full.log", target_port=1),
        CharDevice(kind="serial", type="null", target_port=0),  # lowest port not taken
        CharDevice(kind="console", type="pty", target_type="serial", target_port=0),
    ]
    assert cfg.graphics == [Graphics(type="vnc", port=5901, listen="127.0.0.1")]
    assert cfg.memballoon == MemBalloon(model="virtio")
    assert cfg.panics == [Panic(model="isa")]
    assert [d.error_policy for d in cfg.disks][-1] == "stop"


def test_full_document_round_trips_and_serialisation_is_stable() -> None:
    cfg = parse_domain_xml(FULL_XML)
    text = domain_to_xml(cfg)
    assert parse_domain_xml(text) == cfg
    assert domain_to_xml(parse_domain_xml(text)) == text
    assert text.startswith("<domain type=\"qemu\">\n  <name>full-guest_1.0+x</name>\n")
    assert 'id="' not in text  # the input's live id is not part of the definition


def test_minimal_document_gets_model_defaults() -> None:
    cfg = parse_domain_xml(minimal())
    assert cfg == DomainConfig(name="mini", uuid=cfg.uuid)
    assert parse_domain_xml(domain_to_xml(cfg)) == cfg


def test_uuid_generated_when_absent_and_kept_across_round_trip() -> None:
    first, second = parse_domain_xml(minimal()), parse_domain_xml(minimal())
    assert uuid.UUID(first.uuid).version == 4
    assert first.uuid != second.uuid
    assert parse_domain_xml(domain_to_xml(first)).uuid == first.uuid


def test_uuid_accepts_libvirt_spellings() -> None:
    xml = minimal(extra="  <uuid> C7A5FDBDEDAF9455926AD65C16DB1809 </uuid>")
    assert parse_domain_xml(xml).uuid == "c7a5fdbd-edaf-9455-926a-d65c16db1809"


@pytest.mark.parametrize(
    ("amount", "unit", "kib"),
    [
        ("1", "GiB", 1048576),
        ("1", "G", 1048576),
        ("1", "GB", 976563),  # 10**9 / 1024 = 976562.5, rounded up
        ("1", "KB", 1),
        ("1", "MB", 977),
        ("3", "M", 3072),
        ("2", "k", 2),
        ("2", "KiB", 2),
        ("1024", "b", 1),
        ("1025", "bytes", 2),
        ("1", "TiB", 1024**3),
        ("1", "TB", 976562500),
        ("1", "T", 1024**3),
        ("5", None, 5),
    ],
)
def test_memory_units_become_kib(amount: str, unit: str | None, kib: int) -> None:
    attr = "" if unit is None else f" unit='{unit}'"
    xml = minimal().replace("<memory>131072</memory>", f"<memory{attr}>{amount}</memory>")
    assert parse_domain_xml(xml).memory_kib == kib


def test_malformed_xml_reports_line() -> None:
    xml = "<domain type='kvm'>\n  <name>x</name>\n  <memory>1\n  </name>\n</domain>\n"
    with pytest.raises(InvalidXMLError) as info:
        parse_domain_xml(xml)
    assert info.value.line == 4


def test_empty_document_is_invalid() -> None:
    with pytest.raises(InvalidXMLError):
        parse_domain_xml(b"")


def test_every_unsupported_item_is_listed() -> None:
    xml = minimal(
        extra="  <memoryBacking><locked/></memoryBacking>\n"
              "  <cpu mode='host-model'><cache level='3'/></cpu>",
        devices="""\
    <disk type='file' device='disk'>
      <source file='/a.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' copy_on_read='on'/>
      <source file='/b.img'/>
      <target dev='vdb' bus='xen'/>
      <address type='ccw'/>
    </disk>
    <interface type='vhostuser'><model type='virtio'/></interface>
    <video><model type='vmvga'/></video>
    <hostdev mode='subsystem' type='usb'/>
    <graphics type='sdl'/>""",
    ).replace("<type>hvm</type>", "<type machine='microvm'>hvm</type>")
    with pytest.raises(UnsupportedError) as info:
        parse_domain_xml(xml)
    assert sorted(info.value.items) == sorted([
        "/domain/memoryBacking/locked",
        "/domain/cpu/cache/@level",
        "/domain/os/type/@machine",
        "/domain/devices/disk[2]/driver/@copy_on_read",
        "/domain/devices/disk[2]/target/@bus",
        "/domain/devices/disk[2]/address/@type",
        "/domain/devices/interface/@type",
        "/domain/devices/video/model/@type",
        "/domain/devices/hostdev",
        "/domain/devices/graphics/@type",
    ])


@pytest.mark.parametrize(
    ("snippet", "items"),
    [
        ("<console type='pty'><target type='sclp' port='0'/></console>",
         ["/domain/devices/console/target/@type"]),
        ("<serial type='pty'><target type='usb-serial' port='0'/></serial>",
         ["/domain/devices/serial/target/@type"]),
        ("<serial type='udp'/>", ["/domain/devices/serial/@type"]),
        ("<serial type='null'><source path='/x'/></serial>", ["/domain/devices/serial/source"]),
        ("<disk type='block' device='lun' sgio='unfiltered'><source dev='/dev/sdb'/>"
         "<target dev='sda' bus='scsi'/></disk>", ["/domain/devices/disk/@sgio"]),
        ("<disk type='network'><source protocol='nbd' name='x'/><target dev='vda'/></disk>",
         ["/domain/devices/disk/source/@protocol", "/domain/devices/disk/source/@name",
          "/domain/devices/disk/@type"]),
        ("<disk><source file='/a'/><target dev='xvda'/></disk>", ["/domain/devices/disk/target/@bus"]),
        ("<disk><source file='/a' dev='/dev/sda'/><target dev='vda'/></disk>",
         ["/domain/devices/disk/source/@dev"]),
        ("<interface type='user'><model type='ne2k_pci'/></interface>",
         ["/domain/devices/interface/model/@type"]),
        ("<graphics type='sdl'/>", ["/domain/devices/graphics/@type"]),
        ("<graphics type='vnc'><listen type='socket'/></graphics>",
         ["/domain/devices/graphics/listen/@type"]),
        ("<graphics type='spice' autoport='yes'><gl enable='yes'/></graphics>",
         ["/domain/devices/graphics/gl"]),
        ("<memballoon model='virtio'><driver iommu='on'/></memballoon>",
         ["/domain/devices/memballoon/driver"]),
        ("<video><model type='virtio'><acceleration accel3d='yes'/></model></video>",
         ["/domain/devices/video/model/acceleration/@accel3d"]),
        ("<watchdog model='i6300esb' action='dump'/>", ["/domain/devices/watchdog/@action"]),
        ("<tpm model='tpm-crb'><backend type='passthrough'/></tpm>", ["/domain/devices/tpm/backend/@type"]),
        ("<filesystem type='ram'><source dir='/a'/><target dir='t'/></filesystem>",
         ["/domain/devices/filesystem/@type"]),
        ("<audio id='1' type='pulseaudio'/>", ["/domain/devices/audio/@type"]),
        ("<controller type='scsi' model='lsilogic'/>", ["/domain/devices/controller/@model"]),
        ("<interface type='user'><address type='pci'/></interface>", ["/domain/devices/interface/address"]),
        ("<disk>stray<source file='/a'/><target dev='vda'/></disk>", ["/domain/devices/disk/text()"]),
    ],
)
def test_unsupported_device_details(snippet: str, items: list[str]) -> None:
    with pytest.raises(UnsupportedError) as info:
        parse_domain_xml(minimal(devices=snippet))
    assert info.value.items == items


@pytest.mark.parametrize(
    ("extra", "items"),
    [
        ("<cpu mode='host-passthrough'><maxphysaddr mode='passthrough'/></cpu>", ["/domain/cpu/maxphysaddr"]),
        ("<vcpu>2</vcpu><cpu><topology sockets='1' clusters='2' cores='1' threads='1'/></cpu>",
         ["/domain/cpu/topology/@clusters"]),
        ("<cpu mode='custom'><model vendor_id='GenuineIntel'>qemu64</model></cpu>",
         ["/domain/cpu/model/@vendor_id"]),
        ("<clock offset='variable'/>", ["/domain/clock/@offset"]),
        ("<on_crash>rename-restart</on_crash>", ["/domain/on_crash"]),
        ("<vcpu placement='auto'>1</vcpu>", ["/domain/vcpu/@placement"]),
        ("<features><acpi/><apic eoi='on'/><pae/><gic version='3'/></features>",
         ["/domain/features/apic/@eoi", "/domain/features/gic"]),
        ("<cputune><shares>1024</shares></cputune>", ["/domain/cputune/shares"]),
        ("<memoryBacking><source type='file'/></memoryBacking>", ["/domain/memoryBacking/source/@type"]),
        ("<seclabel type='static' model='selinux'><label>x</label></seclabel>", ["/domain/seclabel/@type"]),
        ("<resource><partition>/custom</partition></resource>", ["/domain/resource/partition"]),
    ],
)
def test_unsupported_domain_details(extra: str, items: list[str]) -> None:
    with pytest.raises(UnsupportedError) as info:
        parse_domain_xml(minimal(extra=extra))
    assert info.value.items == items


def test_unsupported_root_type_and_namespaced_element() -> None:
    xml = minimal(
        root_attrs="type='xen' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
        extra="<qemu:commandline><qemu:arg value='-S'/></qemu:commandline>",
    )
    with pytest.raises(UnsupportedError) as info:
        parse_domain_xml(xml)
    assert info.value.items == ["/domain/qemu:commandline", "/domain/@type"]


D = "<devices>"


@pytest.mark.parametrize(
    ("old", "new", "marker", "match"),
    [
        ("<memory>131072</memory>", "<memory unit='XB'>1</memory>", "<memory", "unknown unit 'XB'"),
        ("<memory>131072</memory>", "<memory>lots</memory>", "<memory", "expected an integer"),
        ("<memory>131072</memory>", "<memory>0</memory>", "<memory", "expected an integer >= 1"),
        ("<memory>131072</memory>", "<memory>1_000</memory>", "<memory", "expected an integer"),
        ("<name>mini</name>", "<name>.hidden</name>", "<name", "not a safe domain name"),
        ("<name>mini</name>", "<name>-x</name>", "<name", "not a safe domain name"),
        ("<name>mini</name>", "<name>a/b</name>", "<name", "not a safe domain name"),
        ("<name>mini</name>", "<name>" + "a" * 65 + "</name>", "<name", "not a safe domain name"),
        ("<name>mini</name>", "<name>mini</name><name>again</name>", "<name", "only once"),
        ("<name>mini</name>", "<name>mini</name><uuid>not-a-uuid</uuid>", "<uuid", "is not a UUID"),
        ("<name>mini</name>", "<name>mini</name><vcpu>0</vcpu>", "<vcpu", "integer >= 1"),
        ("<name>mini</name>", "<name>mini</name><currentMemory>999999</currentMemory>", "<currentMemory",
         "larger than <memory>"),
        ("<name>mini</name>", "<name>mini</name><on_reboot>explode</on_reboot>", "<on_reboot",
         "unknown value 'explode'"),
        ("<name>mini</name>", "<name>mini</name><title>two\nlines</title>", "<title", "single line"),
        ("<type>hvm</type>", "<type arch='x86-64!'>hvm</type>", "<type", "unknown architecture"),
        ("<type>hvm</type>", "<type>hvm</type><boot dev='floppyx'/>", "<type", "boot/@dev: unknown value"),
        ("type='kvm'", "type='banana'", "<domain", "/domain/@type: unknown value 'banana'"),
        (D, D + "<disk><source file='/a'/><target dev='vda' bus='floppyx'/></disk>", D, "@bus: unknown"),
        (D, D + "<disk><source file='/a'/><target dev='zz'/></disk>", D, "not a disk name"),
        (D, D + "<disk><target dev='vda'/></disk>", D, "<source file=...> is required"),
        (D, D + "<disk type='block'><source file='/a'/><target dev='vda'/></disk>", D,
         "source/@dev: is required"),
        (D, D + "<disk><driver type='qcow7'/><source file='/a'/><target dev='vda'/></disk>", D,
         "driver/@type: unknown value 'qcow7'"),
        (D, D + "<disk><source file='/a'/><target dev='vda'/><serial>a,b</serial></disk>", D,
         "is not made of [A-Za-z0-9_ .+-] only"),
        (D, D + "<interface type='user'><mac address='52:54:00:12:34'/></interface>", D,
         "is not a MAC address"),
        (D, D + "<interface type='user'><mac address='01:00:5e:00:00:01'/></interface>", D,
         "not a unicast MAC"),
        (D, D + "<serial type='file'/>", D, "<source path=...> is required"),
        (D, D + "<serial><target port='x'/></serial>", D, "target/@port: expected an integer"),
        (D, D + "<graphics type='vnc' port='80'/>", D, "outside 5900-65535"),
        (D, D + "<graphics type='vnc' autoport='maybe'/>", D, "@autoport: unknown value"),
        (D, D + "<graphics type='none'/>", D, "@type: unknown value 'none'"),
        (D, D + "<memballoon/>", D, "memballoon/@model: is required"),
        (D, D + "<memballoon model='virtio'/><memballoon model='none'/>", D, "only once"),
    ],
)
def test_invalid_values_raise_with_line(old: str, new: str, marker: str, match: str) -> None:
    xml = minimal().replace(old, new, 1)
    assert xml != minimal()
    with pytest.raises(InvalidXMLError, match=re.escape(match)) as info:
        parse_domain_xml(xml)
    assert info.value.line == line_of(xml, marker)


def test_duplicate_disk_target_reports_second_disk() -> None:
    xml = minimal(devices="""\
    <disk><source file='/a'/><target dev='vda'/></disk>
    <disk><source file='/b'/><target dev='vda'/></disk>""")
    with pytest.raises(InvalidXMLError, match="duplicate disk target") as info:
        parse_domain_xml(xml)
    assert info.value.line == line_of(xml, "/b")


def test_duplicate_serial_port_is_invalid() -> None:
    xml = minimal(devices="<serial><target port='0'/></serial>\n<serial><target port='0'/></serial>")
    with pytest.raises(InvalidXMLError, match="duplicate serial port"):
        parse_domain_xml(xml)


def test_missing_required_elements_are_invalid() -> None:
    for old in ("<name>mini</name>", "<memory>131072</memory>", "<os><type>hvm</type></os>"):
        with pytest.raises(InvalidXMLError, match="required"):
            parse_domain_xml(minimal().replace(old, ""))


def test_wrong_root_and_doctype_are_invalid() -> None:
    with pytest.raises(InvalidXMLError, match="root element"):
        parse_domain_xml("<network/>")
    with pytest.raises(InvalidXMLError, match="DOCTYPE"):
        parse_domain_xml("<!DOCTYPE domain [<!ENTITY e 'x'>]>" + minimal())


def test_str_with_encoding_declaration_and_bytes_are_accepted() -> None:
    xml = minimal(extra="  <title>café</title>")
    decl = "<?xml version='1.0' encoding='ISO-8859-1'?>\n"
    assert parse_domain_xml(decl + xml).title == "café"  # a str is already decoded: declaration ignored
    assert parse_domain_xml((decl + xml).encode("iso-8859-1")).title == "café"


def test_output_only_items_in_input_are_ignored() -> None:
    plain = minimal(devices="<disk><source file='/top.qcow2'/><target dev='vda'/></disk>",
                    extra="<uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>")
    live = minimal(
        root_attrs="type='kvm' id='12'",
        extra="<uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>",
        devices="""\
    <disk>
      <source file='/top.qcow2'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/>
        <source file='/mid.qcow2'/>
        <backingStore type='file' index='2'>
          <format type='raw'/>
          <source file='/base.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda'/>
      <alias name='virtio-disk0'/>
    </disk>""",
    )
    assert parse_domain_xml(live) == parse_domain_xml(plain)


def test_live_id_and_backing_chains_are_rendered_and_ignored_on_reparse() -> None:
    cfg = parse_domain_xml(FULL_XML)
    chains = {"vda": [("/img/mid.qcow2", "qcow2"), ("/img/base.raw", "raw")], "sda": [], "vdz": []}
    text = domain_to_xml(cfg, live_id=3, backing_chains=chains)
    root = etree.fromstring(text)
    assert root.get("id") == "3"
    vda, sda = root.findall("devices/disk")
    first = vda.find("backingStore")
    assert first is not None
    assert (first.get("type"), first.get("index")) == ("file", "1")
    assert first.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert first.find("source").get("file") == "/img/mid.qcow2"  # type: ignore[union-attr]
    second = first.find("backingStore")
    assert second is not None and second.get("index") == "2"
    assert second.find("source").get("file") == "/img/base.raw"  # type: ignore[union-attr]
    end = second.find("backingStore")
    assert end is not None and len(end) == 0 and not end.attrib
    # libvirt's order: the chain sits between <source> and <target>
    assert [child.tag for child in vda][:4] == ["driver", "source", "backingStore", "target"]
    only = sda.find("backingStore")
    assert only is not None and len(only) == 0 and not only.attrib  # self-contained image
    assert parse_domain_xml(text) == cfg


def test_no_backing_store_without_chains() -> None:
    cfg = parse_domain_xml(FULL_XML)
    assert "backingStore" not in domain_to_xml(cfg)
    text = domain_to_xml(cfg, backing_chains={"sda": [("/x", "raw")]})
    vda, sda = etree.fromstring(text).findall("devices/disk")
    assert vda.find("backingStore") is None and sda.find("backingStore") is not None
    assert domain_to_xml(cfg, backing_chains={}) == domain_to_xml(cfg)


@pytest.mark.parametrize(
    ("attrs", "port"),
    [
        ("autoport='yes'", None),
        ("port='-1' autoport='yes'", -1),
        ("port='-1'", -1),
        ("port='5905' autoport='yes'", None),  # a live XML's allocated port does not pin the definition
        ("port='5905'", 5905),
        ("", None),
    ],
)
def test_vnc_ports(attrs: str, port: int | None) -> None:
    cfg = parse_domain_xml(minimal(devices=f"<graphics type='vnc' {attrs}/>"))
    assert cfg.graphics == [Graphics(type="vnc", port=port)]
    assert parse_domain_xml(domain_to_xml(cfg)) == cfg


def test_graphics_none_is_written_as_no_graphics() -> None:
    cfg = DomainConfig(name="g", uuid=str(uuid.uuid4()), graphics=[Graphics(type="none")])
    text = domain_to_xml(cfg)
    assert "<graphics" not in text
    assert parse_domain_xml(text).graphics == []


def test_programmatic_config_round_trips() -> None:
    cfg = DomainConfig(
        name="built",
        uuid=str(uuid.uuid4()),
        chardevs=[CharDevice(kind="console", type="pty"), CharDevice(kind="serial", type="pty")],
        disks=[Disk(target="vdb", source="/b.qcow2", format="qcow2")],
        interfaces=[Interface()],
        memballoon=MemBalloon(model="none"),
        title="",
        description="  spaces & <markup> kept  ",
        os=OSConfig(cmdline='init=/bin/sh quiet="yes"'),
    )
    assert parse_domain_xml(domain_to_xml(cfg)) == cfg


def test_readonly_sata_disk_is_unsupported() -> None:
    xml = """<domain type='qemu'><name>r</name><memory>65536</memory><os><type>hvm</type></os><devices>
      <disk type='file' device='disk'><source file='/x.raw'/><target dev='sda' bus='sata'/><readonly/></disk>
    </devices></domain>"""
    with pytest.raises(UnsupportedError) as caught:
        parse_domain_xml(xml)
    assert caught.value.items == ["/domain/devices/disk/readonly"]


# -- the wider vocabulary: each kind of device, as virt-install and libvirt write it ------------------------

SPICE = "<graphics type='spice' autoport='yes'/>"
SHARED_RAM = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"

DEVICE_SNIPPETS: dict[str, tuple[str, str]] = {  # name: (devices, extra domain-level XML)
    "disk-cdrom": ("""
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/isos/install.iso'/>
      <target dev='sdb' bus='sata' tray='closed'/>
      <readonly/>
      <boot order='1'/>
      <address type='drive' controller='0' bus='0' target='0' unit='1'/>
    </disk>""", ""),
    "disk-empty-cdrom-ide": ("""
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>""",
                             "<os><type machine='pc'>hvm</type></os>"),
    "disk-tuned": ("""
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native' discard='unmap' detect_zeroes='unmap'
              iothread='1' error_policy='stop' rerror_policy='report'/>
      <source dev='/dev/vg0/data'/>
      <target dev='vdb' bus='virtio'/>
      <iotune>
        <total_bytes_sec>52428800</total_bytes_sec>
        <read_iops_sec>500</read_iops_sec>
        <read_iops_sec_max>1000</read_iops_sec_max>
        <read_iops_sec_max_length>10</read_iops_sec_max_length>
        <group_name>db</group_name>
      </iotune>
      <shareable/>
      <serial>DATA-01</serial>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>""", "<iothreads>1</iothreads>"),
    "disk-floppy": ("""
    <disk type='file' device='floppy'><source file='/img/floppy.img'/><target dev='fda' bus='fdc'/></disk>""",
                    ""),
    "disk-usb-removable": ("""
    <disk type='file' device='disk'>
      <source file='/img/stick.raw'/><target dev='sdc' bus='usb' removable='on'/>
    </disk>""", ""),
    "disk-scsi-wwn": ("""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='/img/s.qcow2'/><target dev='sda' bus='scsi'/>
      <wwn>5000c50015ea71ac</wwn><address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'><driver queues='4' iothread='1'/></controller>""",
                      "<iothreads>1</iothreads>"),
    "controller-xhci": ("""
    <controller type='usb' index='0' model='qemu-xhci' ports='15'>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>""", ""),
    "controller-ehci-companions": ("""
    <controller type='usb' index='0' model='ich9-ehci1'/>
    <controller type='usb' index='0' model='ich9-uhci1'><master startport='0'/></controller>
    <controller type='usb' model='ich9-uhci2'><master startport='2'/></controller>""", ""),
    "controller-pcie-root-port": ("""
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='1' port='0x10'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0' multifunction='on'/>
    </controller>
    <controller type='pci' index='2' model='pcie-to-pci-bridge'>
      <model name='pcie-pci-bridge'/>
    </controller>""", ""),
    "controller-virtio-serial-sata": ("""
    <controller type='virtio-serial' index='0' ports='16' vectors='4'/>
    <controller type='sata' index='0'/>""", ""),
    "interface-network": ("""
    <interface type='network'>
      <mac address='52:54:00:6B:3C:01'/>
      <source network='default'/>
      <model type='e1000e'/>
      <link state='down'/>
      <boot order='2'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>""", ""),
    "interface-bridge-vhost": ("""
    <interface type='bridge'>
      <source bridge='br0'/><model type='virtio'/><driver name='vhost' queues='4'/><mtu size='9000'/>
    </interface>""", ""),
    "interface-direct": ("""
    <interface type='direct'><source dev='eno1' mode='bridge'/><model type='virtio'/></interface>""", ""),
    "interface-ethernet-user": ("""
    <interface type='ethernet'><target dev='tap7'/><model type='rtl8139'/></interface>
    <interface type='user'><model type='e1000'/></interface>""", ""),
    "serial-file-and-tcp": ("""
    <serial type='file'><source path='/var/log/guest.log'/><target type='isa-serial' port='0'>
      <model name='isa-serial'/></target></serial>
    <serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/><protocol type='telnet'/>
      <target port='1'/></serial>""", ""),
    "console-virtio": ("""
    <console type='pty'><target type='virtio' port='0'/></console>""", ""),
    "channel-unix": ("""
    <channel type='unix'>
      <source mode='bind' path='/run/guest/agent.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <channel type='unix'><target type='virtio' name='org.example.auto'/></channel>""", ""),
    "channel-spicevmc": ("""
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>""" + SPICE, ""),
    "input": ("""
    <input type='tablet' bus='usb'><address type='usb' bus='0' port='1'/></input>
    <input type='keyboard' bus='virtio'/>
    <input type='mouse' bus='ps2'/>""", ""),
    "tpm": ("""
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>""", ""),
    "graphics-vnc": ("""
    <graphics type='vnc' port='5905' autoport='no' listen='0.0.0.0' passwd='s3cr3t' keymap='de'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>""", ""),
    "graphics-spice-and-vnc": ("""
    <graphics type='spice' port='-1' tlsPort='-1' autoport='yes'><image compression='off'/></graphics>
    <graphics type='vnc' autoport='yes'/>""", ""),
    "sound-audio": ("""
    <sound model='ich9'><codec type='micro'/><audio id='1'/></sound>
    <audio id='1' type='none'/>""", ""),
    "video": ("""
    <video>
      <model type='qxl' ram='65536' vram='65536' vgamem='16384' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
    </video>
    <video><model type='virtio' heads='2'><acceleration accel3d='no'/></model></video>""", ""),
    "redirdev": ("""
    <redirdev bus='usb' type='spicevmc'><address type='usb' bus='0' port='2'/></redirdev>""" + SPICE, ""),
    "watchdog": ("""
    <watchdog model='i6300esb' action='reset'/>
    <watchdog model='itco' action='inject-nmi'/>""", ""),
    "memballoon": ("""
    <memballoon model='virtio' autodeflate='on' freePageReporting='on'><stats period='10'/></memballoon>""",
                   ""),
    "rng": ("""
    <rng model='virtio'><rate bytes='1024' period='1000'/><backend model='random'>/dev/urandom</backend></rng>
    <rng model='virtio'><backend model='builtin'/></rng>""", ""),
    "panic": ("""
    <panic model='isa'><address type='isa' iobase='0x505'/></panic>
    <panic model='hyperv'/>""", ""),
    "filesystem-9p": ("""
    <filesystem type='mount' accessmode='mapped'>
      <driver type='path'/><source dir='/srv/share'/><target dir='share'/><readonly/>
    </filesystem>""", ""),
    "filesystem-virtiofs": ("""
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary path='/usr/libexec/virtiofsd' xattr='on'><cache mode='always'/><sandbox mode='chroot'/></binary>
      <source dir='/srv/share'/><target dir='hostshare'/>
    </filesystem>""", SHARED_RAM),
    "vsock": ("""
    <vsock model='virtio'><cid auto='no' address='7'/></vsock>""", ""),
}


@pytest.mark.parametrize("name", DEVICE_SNIPPETS)
def test_device_round_trips_and_keeps_its_attributes(name: str) -> None:
    devices, extra = DEVICE_SNIPPETS[name]
    xml = minimal(devices=devices, extra=extra)
    cfg = parse_domain_xml(xml)
    text = domain_to_xml(cfg)
    assert parse_domain_xml(text) == cfg
    assert domain_to_xml(parse_domain_xml(text)) == text
    lost = lost_items(etree.fromstring(xml), etree.fromstring(text))
    assert lost is None, f"the definition lost {lost}"


def test_device_snippets_fill_the_model() -> None:
    def parsed(name: str) -> DomainConfig:
        devices, extra = DEVICE_SNIPPETS[name]
        return parse_domain_xml(minimal(devices=devices, extra=extra))

    cdrom = parsed("disk-cdrom").disks[0]
    assert (cdrom.device, cdrom.bus, cdrom.readonly, cdrom.boot_order) == ("cdrom", "sata", True, 1)
    assert cdrom.address == Address(type="drive", controller=0, bus=0, target=0, unit=1)
    assert parsed("disk-empty-cdrom-ide").disks[0].source is None
    tuned = parsed("disk-tuned").disks[0]
    assert (tuned.cache, tuned.io, tuned.discard, tuned.detect_zeroes, tuned.iothread) == (
        "none", "native", "unmap", "unmap", 1)
    assert tuned.iotune == IoTune(total_bytes_sec=52428800, read_iops_sec=500, read_iops_sec_max=1000,
                                  read_iops_sec_max_length=10, group_name="db")
    assert tuned.address == Address(type="pci", domain=0, bus=4, slot=0, function=0)
    port = parsed("controller-pcie-root-port").controllers[1]
    assert port == Controller(type="pci", index=1, model="pcie-root-port", model_name="pcie-root-port",
                              target_chassis=1, target_port=0x10,
                              address=Address(type="pci", domain=0, bus=0, slot=2, function=0,
                                              multifunction="on"))
    assert [c.index for c in parsed("controller-ehci-companions").controllers] == [0, 0, 0]
    nic = parsed("interface-network").interfaces[0]
    assert (nic.type, nic.source_network, nic.mac, nic.model) == ("network", "default", "52:54:00:6b:3c:01",
                                                                  "e1000e")
    tcp = parsed("serial-file-and-tcp").chardevs[1]
    assert tcp == CharDevice(kind="serial", type="tcp", mode="bind", host="127.0.0.1", service=4555,
                             protocol="telnet", target_port=1)
    auto = parsed("channel-unix").chardevs[1]
    assert (auto.path, auto.mode, auto.target_port) == (None, None, None)  # a socket path picked at start
    vnc = parsed("graphics-vnc").graphics[0]
    assert (vnc.listen, vnc.port, vnc.passwd, vnc.keymap) == ("0.0.0.0", 5905, "s3cr3t", "de")
    assert [g.type for g in parsed("graphics-spice-and-vnc").graphics] == ["spice", "vnc"]
    assert parsed("memballoon").memballoon == MemBalloon(model="virtio", autodeflate="on",
                                                         free_page_reporting="on", stats_period=10)
    assert parsed("filesystem-virtiofs").filesystems == [
        Filesystem(source_dir="/srv/share", target_dir="hostshare", accessmode="passthrough",
                   driver_type="virtiofs", queue=1024, binary_path="/usr/libexec/virtiofsd",
                   binary_xattr="on", binary_cache="always", binary_sandbox="chroot")]
    assert parsed("vsock").vsock == Vsock(cid_auto="no", cid=7)


DOMAIN_XML = """\
<domain type='kvm'>
  <name>wide</name>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://microsoft.com/win/11"/>
    </libosinfo:libosinfo>
    <app:note xmlns:app="http://example.com/app/1" app:owner="ops">kept <app:b>as is</app:b></app:note>
  </metadata>
  <memory unit='GiB'>4</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/><allocation mode='immediate'/><nosharepages/>
  </memoryBacking>
  <vcpu placement='static' current='2'>4</vcpu>
  <iothreads>2</iothreads>
  <cputune>
    <vcpupin vcpu='0' cpuset='0'/><vcpupin vcpu='1' cpuset='1-3,^2'/><emulatorpin cpuset='0-1'/>
    <iothreadpin iothread='2' cpuset='3'/>
  </cputune>
  <sysinfo type='smbios'>
    <bios><entry name='vendor'>Acme BIOS</entry></bios>
    <system><entry name='manufacturer'>Acme Corp</entry><entry name='serial'>ACM-1</entry></system>
    <baseBoard><entry name='product'>VB-100</entry></baseBoard>
    <chassis><entry name='asset'>IT-4217</entry></chassis>
    <oemStrings><entry>avirt:test</entry></oemStrings>
  </sysinfo>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <firmware>
      <feature enabled='yes' name='secure-boot'/><feature enabled='yes' name='enrolled-keys'/>
    </firmware>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/avirt/nvram/wide_VARS.fd</nvram>
    <boot dev='hd'/>
    <bootmenu enable='yes' timeout='3000'/>
    <smbios mode='sysinfo'/>
  </os>
  <features>
    <acpi/><apic/><pae/>
    <hyperv mode='custom'>
      <relaxed state='on'/><vapic state='on'/><spinlocks state='on' retries='8191'/><vpindex state='on'/>
      <synic state='on'/><stimer state='on'><direct state='on'/></stimer>
      <vendor_id state='on' value='KVM Hv'/>
    </hyperv>
    <kvm><hidden state='on'/><hint-dedicated state='on'/><poll-control state='on'/>
      <dirty-ring state='on' size='4096'/></kvm>
    <pmu state='off'/><vmport state='off'/><smm state='on'/><ioapic driver='kvm'/>
  </features>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>Skylake-Client</model>
    <vendor>Intel</vendor>
    <topology sockets='1' dies='1' cores='2' threads='2'/>
    <feature policy='require' name='vmx'/>
    <feature policy='disable' name='hle'/>
    <numa>
      <cell id='0' cpus='0-1' memory='2' unit='GiB' memAccess='shared'/>
      <cell id='1' cpus='2-3' memory='2097152'/>
    </numa>
  </cpu>
  <clock offset='localtime'>
    <timer name='rtc' tickpolicy='catchup'/><timer name='hpet' present='no'/>
    <timer name='hypervclock' present='yes'/>
  </clock>
  <on_crash>coredump-restart</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices/>
  <resource><partition>/machine</partition></resource>
  <seclabel type='dynamic' model='dac' relabel='yes'/>
</domain>
"""


def test_domain_level_vocabulary_round_trips() -> None:
    cfg = parse_domain_xml(DOMAIN_XML)
    assert cfg.memory_backing == MemoryBacking(source_type="memfd", access_mode="shared",
                                               allocation_mode="immediate", nosharepages=True)
    assert (cfg.vcpus, cfg.vcpus_current, cfg.iothreads) == (4, 2, 2)
    assert cfg.cputune == CPUTune(vcpupins=[VCPUPin(0, "0"), VCPUPin(1, "1-3,^2")], emulatorpin="0-1",
                                  iothreadpins=[IOThreadPin(2, "3")])
    assert cfg.os.machine == "pc-q35-7.2" and cfg.os.firmware == "efi"
    assert cfg.os.loader is not None and cfg.os.loader.secure == "yes"
    assert cfg.features.hyperv is not None and cfg.features.hyperv.stimer_direct == "on"
    assert (cfg.features.kvm_hint_dedicated, cfg.features.kvm_dirty_ring_size) == ("on", 4096)
    assert cfg.cpu is not None and cfg.cpu.model == "Skylake-Client"
    assert cfg.cpu.numa == [NUMACell(0, "0-1", 2097152, "shared"), NUMACell(1, "2-3", 2097152)]
    assert [t.name for t in cfg.timers] == ["rtc", "hpet", "hypervclock"]
    assert cfg.on_crash == "coredump-restart"
    assert cfg.sysinfo is not None and cfg.sysinfo.oem_strings == ["avirt:test"]
    text = domain_to_xml(cfg)
    assert parse_domain_xml(text) == cfg
    assert domain_to_xml(parse_domain_xml(text)) == text
    lost = lost_items(etree.fromstring(DOMAIN_XML), etree.fromstring(text))
    assert lost is None, f"the definition lost {lost}"


def test_metadata_in_other_namespaces_is_kept_verbatim() -> None:
    cfg = parse_domain_xml(DOMAIN_XML)
    assert cfg.metadata == [
        '<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">\n'
        '      <libosinfo:os id="http://microsoft.com/win/11"/>\n'
        "    </libosinfo:libosinfo>",
        '<app:note xmlns:app="http://example.com/app/1" app:owner="ops">kept <app:b>as is</app:b></app:note>',
    ]
    written = etree.fromstring(domain_to_xml(cfg)).find("metadata")
    assert written is not None
    first, second = written
    assert first.tag == "{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo"
    assert first.prefix == "libosinfo"
    assert first[0].get("id") == "http://microsoft.com/win/11"
    assert second.tag == "{http://example.com/app/1}note" and second.prefix == "app"
    assert second.get("{http://example.com/app/1}owner") == "ops"
    assert "".join(second.itertext()) == "kept as is"


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ("<plain/>", "/domain/metadata/plain: a metadata element must be in a namespace of its own"),
        ("<a:x xmlns:a='urn:a'/><b:y xmlns:b='urn:a'/>",
         "/domain/metadata/b:y: a second metadata element in namespace 'urn:a'"),
    ],
)
def test_metadata_without_its_own_namespace_is_invalid(metadata: str, match: str) -> None:
    with pytest.raises(InvalidXMLError, match=re.escape(match)):
        parse_domain_xml(minimal(extra=f"<metadata>{metadata}</metadata>"))


def test_lone_surrogates_in_a_str_document_are_invalid_xml() -> None:
    xml = minimal(extra="  <title>bad \udcff byte</title>")
    with pytest.raises(InvalidXMLError, match="not valid Unicode") as info:
        parse_domain_xml(xml)
    assert info.value.line is None


ROOT_PORT = "<controller type='pci' model='pcie-root-port'>{}</controller>"


@pytest.mark.parametrize(
    ("devices", "extra", "marker", "match"),
    [
        ("<controller type='usb' index='0' model='qemu-xhci'/>\n"
         "<controller type='usb' index='0' model='none'/>",
         "", "model='none'", "/domain/devices/controller[2]: duplicate controller type and index ('usb', 0)"),
        ("<disk device='cdrom'><source file='/a.iso'/><target dev='vdb' bus='virtio'/></disk>", "", "<disk",
         "/domain/devices/disk/target/@bus: a cdrom cannot sit on bus 'virtio'"),
        ("<disk device='floppy'><source file='/f.img'/><target dev='sda' bus='sata'/></disk>", "", "<disk",
         "/domain/devices/disk/target/@bus: a floppy sits on bus 'fdc', not 'sata'"),
        ("<disk><source file='/f.img'/><target dev='fda'/></disk>", "", "<disk",
         "/domain/devices/disk/target/@bus: only a floppy sits on bus 'fdc'"),
        ("<video><model type='banana'/></video>", "", "<video",
         "/domain/devices/video/model/@type: unknown value 'banana'"),
        ("<controller type='usb' model='banana-xhci'/>", "", "<controller",
         "/domain/devices/controller/@model: unknown value 'banana-xhci'"),
        ("<controller type='sata' model='virtio-scsi'/>", "", "<controller",
         "/domain/devices/controller/@model: unknown value 'virtio-scsi'"),
        (ROOT_PORT.format("<model name='pci-bridge'/>"), "", "<controller",
         "/domain/devices/controller/model/@name: 'pci-bridge' is not a device for a pcie-root-port "
         "controller"),
        ("<controller type='usb' model='qemu-xhci' ports='16'/>", "", "<controller",
         "/domain/devices/controller/@ports: a usb controller has at most 15 ports"),
        ("<controller type='pci' index='0' model='pci-root'/>", "", "<controller",
         "/domain/devices/controller: the q35 machine's PCI controller 0 is model='pcie-root'"),
        ("<graphics type='vnc' listen='127.0.0.1'>\n<listen type='address' address='0.0.0.0'/></graphics>",
         "",
         "<listen", "/domain/devices/graphics/listen/@address: address '0.0.0.0' disagrees with <graphics "
                    "listen='127.0.0.1'>"),
        ("<graphics type='vnc'/>\n<graphics type='vnc' port='5901'/>", "", "5901",
         "/domain/devices/graphics[2]: duplicate <graphics> of type 'vnc'"),
        ("<interface type='user'><address type='pci' bus='0x01' slot='0x20'/></interface>", "", "<interface",
         "/domain/devices/interface/address/@slot: expected an integer >= 0 and <= 31, got '0x20'"),
        ("<interface type='user'><address type='pci' bus='0' slot='0'/></interface>", "", "<interface",
         "/domain/devices/interface/address/@slot: slot 0 of PCI bus 0 is the host bridge"),
        ("<interface type='user'><address type='pci' bus='0' slot='3'/></interface>\n"
         "<rng model='virtio'><backend model='random'/><address type='pci' bus='0' slot='3'/></rng>", "",
         "<rng",
         "/domain/devices/rng/address: duplicate PCI address '0000:00:03.0'"),
        ("<interface type='user'><address type='drive' slot='1'/></interface>", "", "<interface",
         "/domain/devices/interface/address/@slot: slot= is not part of a type='drive' address"),
        ("<disk><source file='/a'/><target dev='vda'/></disk>\n"
         "<disk><source file='/b'/><target dev='vda'/></disk>",
         "", "/b", "/domain/devices/disk[2]: duplicate disk target 'vda'"),
        ("<disk><source file='/a'/><target dev='hda'/></disk>", "", "<disk",
         "/domain/devices/disk/target/@bus: the q35 machine has no IDE bus (use sata)"),
        ("<disk><driver iothread='2'/><source file='/a'/><target dev='vda'/></disk>",
         "<iothreads>1</iothreads>",
         "<disk", "/domain/devices/disk/driver/@iothread: there is no iothread 2 (<iothreads> is 1)"),
        ("<disk><driver io='native'/><source file='/a'/><target dev='vda'/></disk>", "", "<disk",
         "/domain/devices/disk/driver/@io: io='native' needs cache='none' or 'directsync'"),
        ("<disk><source file='/a'/><target dev='vda'/><iotune><total_bytes_sec>1</total_bytes_sec>\n"
         "<read_bytes_sec>1</read_bytes_sec></iotune></disk>", "", "<disk",
         "/domain/devices/disk/iotune/total_bytes_sec: cannot be set together with read_bytes_sec"),
        ("<disk><source file='/a'/><target dev='vda'/><boot order='1'/></disk>",
         "<os><type>hvm</type><boot dev='hd'/></os>", "<disk",
         "/domain/devices/disk/boot: per-device boot order cannot be mixed with <os><boot dev=...>"),
        ("<channel type='unix'><source mode='bind'/><target type='virtio'/></channel>", "", "<channel",
         "/domain/devices/channel/target: a channel needs <target type='virtio' name=...>"),
        ("<channel type='unix'><target type='virtio' name='a'/></channel>\n"
         "<channel type='pty'><target type='virtio' name='a'/></channel>", "", "type='pty'",
         "/domain/devices/channel[2]: duplicate channel name 'a'"),
        ("<serial type='unix'><source mode='bind'/></serial>", "", "<serial",
         "/domain/devices/serial/source: a unix socket needs path="),
        ("<serial type='tcp'><source mode='connect' service='4555'/></serial>", "", "<serial",
         "/domain/devices/serial/source/@host: is required to connect"),
        ("<redirdev bus='usb' type='spicevmc'/>", "", "<redirdev",
         "/domain/devices/redirdev: type='spicevmc' and type='spice' need <graphics type='spice'>"),
        ("<sound model='ich9'><audio id='2'/></sound>\n<audio id='1' type='none'/>", "", "<sound",
         "/domain/devices/sound/audio/@id: there is no <audio id='2'>"),
        ("<input type='tablet' bus='usb'/>\n<controller type='usb' model='none'/>", "", "<input",
         "/domain/devices/input: a USB device, but the USB controller is model='none'"),
        ("<input type='tablet' bus='ps2'/>", "", "<input",
         "/domain/devices/input/@bus: a tablet is not a PS/2"),
        ("<tpm model='tpm-crb'><backend type='emulator'/></tpm>\n"
         "<tpm model='tpm-tis'><backend type='emulator'/></tpm>", "", "tpm-tis",
         "/domain/devices/tpm[2]: a domain has one <tpm> at most"),
        ("<filesystem><driver type='virtiofs'/><source dir='/s'/><target dir='t'/></filesystem>", "",
         "<filesystem", "/domain/devices/filesystem/driver: virtiofs needs shared guest memory"),
        ("<filesystem accessmode='mapped'><driver type='virtiofs'/><source dir='/s'/><target dir='t'/>"
         "</filesystem>", SHARED_RAM, "<filesystem",
         "/domain/devices/filesystem/@accessmode: virtiofs supports only accessmode='passthrough'"),
        ("<filesystem><binary><cache mode='always'/></binary><source dir='/s'/><target dir='t'/>"
         "</filesystem>", "", "<filesystem",
         "/domain/devices/filesystem/binary: is only for driver type='virtiofs'"),
        ("<vsock model='virtio'><cid auto='no'/></vsock>", "", "<vsock",
         "/domain/devices/vsock/cid: needs address= unless auto='yes'"),
        ("", "<vcpu>4</vcpu><cpu><topology sockets='1' cores='2' threads='1'/></cpu>", "<vcpu",
         "/domain/cpu/topology: 2 CPUs in the topology, but <vcpu> is 4"),
        ("", "<cpu><topology sockets='1'/></cpu>", "<cpu",
         "/domain/cpu/topology: needs sockets=, cores= and threads="),
        ("", "<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0-1' memory='1024'/></numa></cpu>", "<vcpu",
         "/domain/cpu/numa: the cells hold 1024 KiB, but <memory> is 131072 KiB"),
        ("", "<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0-2' memory='131072'/></numa></cpu>", "<vcpu",
         "/domain/cpu/numa/cell/@cpus: CPU 2 is beyond the 2 vCPUs"),
        ("", "<cputune><vcpupin vcpu='0' cpuset='1-0'/></cputune>", "<cputune",
         "/domain/cputune/vcpupin/@cpuset: '1-0' is not a CPU list"),
        ("", "<cputune><vcpupin vcpu='1' cpuset='0'/></cputune>", "<cputune",
         "/domain/cputune/vcpupin/@vcpu: there is no vCPU 1 (<vcpu> is 1)"),
        ("", "<os><type>hvm</type><loader secure='yes'>/ovmf.fd</loader></os>", "<loader",
         "/domain/os/loader/@secure: secure boot needs <features><smm state='on'/>"),
        ("", "<on_poweroff>coredump-destroy</on_poweroff>", "<on_poweroff",
         "/domain/on_poweroff: unknown value 'coredump-destroy'"),
    ],
)
def test_invalid_devices_name_the_element(devices: str, extra: str, marker: str, match: str) -> None:
    xml = minimal(devices=devices, extra=extra)
    with pytest.raises(InvalidXMLError, match=re.escape(match)) as info:
        parse_domain_xml(xml)
    assert info.value.line == line_of(xml, marker)


def test_unsupported_items_are_reported_before_rules_that_need_them() -> None:
    # The spicevmc channel needs SPICE graphics; the graphics are refused (OpenGL), so the refusal is reported
    # rather than a missing-SPICE error that fixing the refusal would not cure.
    channel = "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>"
    xml = minimal(devices="<graphics type='spice'><gl enable='yes'/></graphics>\n" + channel)
    with pytest.raises(UnsupportedError) as info:
        parse_domain_xml(xml)
    assert info.value.items == ["/domain/devices/graphics/gl"]


def test_live_only_items_of_a_running_nic_are_dropped() -> None:
    xml = minimal(devices="<interface type='network'><source network='default' portid='a7638e3d' "
                          "bridge='virbr0'/><target dev='vnet2'/><model type='virtio'/></interface>\n"
                          "<interface type='ethernet'><target dev='tap-web'/></interface>")
    first, second = parse_domain_xml(xml).interfaces
    assert (first.source_network, first.source_bridge, first.target_dev) == ("default", None, None)
    assert second.target_dev == "tap-web"


def test_every_model_field_has_a_place_in_the_xml() -> None:
    # parse(serialize(cfg)) == cfg holds because each table names every field of its dataclass; the few
    # fields that a build function computes are listed here with the XML items they come from.
    computed = {"SysInfo": {"oem_strings"}, "NUMACell": {"memory_kib"}, "Disk": {"source"},
                "CharDevice": {"kind"}, "SysInfoEntry": {"name"}}
    for name, kind in vars(tables).items():
        if isinstance(kind, Kind):
            fields = {f.name for f in dataclasses.fields(kind.cls)}
            placed = {entry.name for entry in kind.entries} | computed.get(kind.cls.__name__, set())
            assert fields <= placed, f"tables.{name}: {sorted(fields - placed)} are never written"
