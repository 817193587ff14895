"""Domain XML parsing and serialisation: the supported subset, its errors, and round trips."""

from __future__ import annotations

import re
import uuid

import pytest
from lxml import etree

from avirt.config import (
    CharDevice,
    Disk,
    DomainConfig,
    Graphics,
    Interface,
    OSConfig,
    domain_to_xml,
    parse_domain_xml,
)
from avirt.errors import InvalidXMLError, UnsupportedError

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
    """A small valid document; ``extra`` goes after <os>, ``devices`` inside <devices>."""
    return (
        f"<domain {root_attrs}>\n"
        "  <name>mini</name>\n"
        "  <memory>131072</memory>\n"
        "  <os><type>hvm</type></os>\n"
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
    assert cfg.acpi and cfg.apic and cfg.cpu_host_passthrough
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
        CharDevice(kind="console", type="pty", target_port=0),
    ]
    assert cfg.graphics == [Graphics(type="vnc", port=5901, listen="127.0.0.1")]
    assert cfg.memballoon == "virtio"
    assert cfg.panic == "isa"
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
        extra="  <metadata><x/></metadata>\n  <cpu mode='host-model'/>",
        devices="""\
    <disk type='file' device='disk'>
      <source file='/a.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/b.img'/>
      <target dev='vdb' bus='scsi'/>
      <address type='pci'/>
    </disk>
    <interface type='network'><source network='default'/></interface>
    <video><model type='vga'/></video>
    <graphics type='vnc' listen='0.0.0.0'/>""",
    ).replace("<type>hvm</type>", "<type machine='pc-q35-7.2'>hvm</type>")
    with pytest.raises(UnsupportedError) as info:
        parse_domain_xml(xml)
    assert sorted(info.value.items) == sorted([
        "/domain/metadata",
        "/domain/cpu/@mode",
        "/domain/os/type/@machine",
        "/domain/devices/disk[2]/driver/@cache",
        "/domain/devices/disk[2]/target/@bus",
        "/domain/devices/disk[2]/address",
        "/domain/devices/interface/@type",
        "/domain/devices/interface/source",
        "/domain/devices/video",
        "/domain/devices/graphics/@listen",
    ])


@pytest.mark.parametrize(
    ("snippet", "items"),
    [
        ("<console type='pty'><target type='virtio' port='0'/></console>",
         ["/domain/devices/console/target/@type"]),
        ("<serial type='pty'><target type='isa-serial' port='0'/></serial>",
         ["/domain/devices/serial/target/@type"]),
        ("<serial type='tcp'/>", ["/domain/devices/serial/@type"]),
        ("<serial type='pty'><source path='/dev/pts/1'/></serial>", ["/domain/devices/serial/source"]),
        ("<disk type='file' device='cdrom'/>", ["/domain/devices/disk/@device"]),
        ("<disk><source file='/a'/><target dev='sda'/></disk>", ["/domain/devices/disk/target/@bus"]),
        ("<disk><source file='/a' dev='/dev/sda'/><target dev='vda'/></disk>",
         ["/domain/devices/disk/source/@dev"]),
        ("<interface type='user'><model type='e1000'/></interface>",
         ["/domain/devices/interface/model/@type"]),
        ("<graphics type='spice'/>", ["/domain/devices/graphics/@type"]),
        ("<graphics type='vnc'><listen type='address' address='0.0.0.0'/></graphics>",
         ["/domain/devices/graphics/listen/@address"]),
        ("<graphics type='vnc'/><graphics type='vnc'/>", ["/domain/devices/graphics[2]"]),
        ("<memballoon model='virtio'><stats period='10'/></memballoon>",
         ["/domain/devices/memballoon/stats"]),
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
        ("<cpu mode='host-passthrough' migratable='off'/>", ["/domain/cpu/@migratable"]),
        ("<cpu/>", ["/domain/cpu"]),
        ("<clock offset='variable'/>", ["/domain/clock/@offset"]),
        ("<on_crash>coredump-destroy</on_crash>", ["/domain/on_crash"]),
        ("<vcpu placement='auto'>1</vcpu>", ["/domain/vcpu/@placement"]),
        ("<features><acpi/><apic eoi='on'/><pae/></features>",
         ["/domain/features/apic/@eoi", "/domain/features/pae"]),
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
         "may only contain"),
        (D, D + "<interface type='user'><mac address='52:54:00:12:34'/></interface>", D, "not a unicast MAC"),
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
        memballoon="none",
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
