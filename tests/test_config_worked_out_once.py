"""What reading and writing work out once per table (or per process) changes no answer.

Reading remembers, per table entry, the raw strings it found valid; writing regroups each table on its
kind's first write; argv's JSON goes through one encoder made once. Each is checked here against what it
stands for: a remembered string never hides an invalid or unsupported one met later, a written document
keeps libvirt's order whatever its fields, and the JSON is json.dumps's, byte for byte.
"""

from __future__ import annotations

import json

import pytest

from avirt.config import Address, Disk, domain_to_xml, parse_domain_xml
from avirt.drivers.qemu.cmdline import _json
from avirt.errors import InvalidXMLError, UnsupportedError


def _domain(disk: str) -> str:
    return f"""<domain type='qemu'>
  <name>once</name>
  <memory unit='MiB'>64</memory>
  <os><type>hvm</type></os>
  <devices>
    {disk}
  </devices>
</domain>"""


def _disk(driver: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' {driver}/>"
            "<source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/></disk>")


def test_a_value_found_valid_before_does_not_hide_an_invalid_or_unsupported_one() -> None:
    for _ in range(2):  # the second round meets every value a second time
        cfg = parse_domain_xml(_domain(_disk("type='qcow2' cache='none'")))
        assert (cfg.disks[0].format, cfg.disks[0].cache) == ("qcow2", "none")
        with pytest.raises(InvalidXMLError, match=r"disk/driver/@cache: unknown value 'nonex'"):
            parse_domain_xml(_domain(_disk("type='qcow2' cache='nonex'")))
        with pytest.raises(UnsupportedError) as unsupported:
            parse_domain_xml(_domain(_disk("type='vmdk'")))  # libvirt knows it, avirt does not write it
        assert unsupported.value.items == ["/domain/devices/disk/driver/@type"]
        with pytest.raises(InvalidXMLError, match=r"disk/driver/@type: must not be blank"):
            parse_domain_xml(_domain(_disk("type=' '")))


def test_hex_numbers_met_again_read_the_same_and_bounds_still_hold() -> None:
    address = "<address type='pci' domain='0x0000' bus='0x00' slot='{slot}' function='0x0'/>"
    nic = "<interface type='user'><model type='virtio'/>" + address + "</interface>"
    for _ in range(2):
        cfg = parse_domain_xml(_domain(nic.format(slot="0x03")))
        assert cfg.interfaces[0].address == Address(type="pci", domain=0, bus=0, slot=3, function=0)
        with pytest.raises(InvalidXMLError, match=r"@slot: expected an integer >= 0 and <= 31, got '0x20'"):
            parse_domain_xml(_domain(nic.format(slot="0x20")))


def test_writing_keeps_table_order_whichever_fields_are_set() -> None:
    cfg = parse_domain_xml(_domain(_disk("type='qcow2'")))
    full = domain_to_xml(cfg)
    assert full.index("<driver") < full.index("<source") < full.index("<target")
    # A disk with model defaults, and elements after <target> that the first disk did not have.
    disk = cfg.disks[0]
    cfg.disks[0] = Disk(source=disk.source, target=disk.target, bus=disk.bus, serial="S1", readonly=True)
    text = domain_to_xml(cfg)
    assert text.index("<driver") < text.index("<source") < text.index("<target") < text.index("<readonly/>")
    assert text.index("<readonly/>") < text.index("<serial>S1</serial>")
    assert parse_domain_xml(text) == cfg


@pytest.mark.parametrize("value", [
    {"driver": "virtio-blk-pci", "id": "vda", "bootindex": 1, "share-rw": True, "serial": None},
    {"driver": "file", "filename": "/img/\u00e9t\u00e9 \"q\".qcow2", "node-name": "n\\1",
     "cache": {"direct": False}},
    {"ports": [1, 2, 3], "nested": [{"a": 1.5}], "empty": {}},
])
def test_argv_json_is_json_dumps_byte_for_byte(value: dict[str, object]) -> None:
    assert _json(value) == json.dumps(value, separators=(",", ":"))
