"""The corpus of real-world definitions (tests/data/corpus) starts on real QEMU with every device in place.

For each definition that avirt accepts: the disk images, firmware files and channel sockets are
replaced by fresh ones (the corpus names paths of the machine that wrote it), and its interfaces by
user-mode ones, because host networks are a host resource this machine lacks (they come with avirt's
networks). The domain type becomes ``qemu`` (TCG), so the test means the same with and without KVM, and
so the Hyper-V ``vpindex`` enlightenment, the one TCG cannot give, is left out. Then, in the QEMU that
runs it (paused before the first instruction):

* every PCI address of the live XML holds a device, behind the bridge that address names, and QEMU has
  no PCI device the XML does not list (read from QOM);
* every disk is a block device of the guest, with media exactly where the XML has a source
  (``query-block``);
* every channel and serial port has its character device (``query-chardev``);
* the definition read back defines to itself, and a second start shows the guest the same PCI layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from lxml import etree

import avirt
from avirt.config import parse_domain_xml
from avirt.connection import Connection
from avirt.errors import AvirtError, DomainStartError, QMPError
from tests.corpus.localise import localise

pytestmark = pytest.mark.anyio

CORPUS = Path(__file__).parent / "data" / "corpus"


def _accepted() -> list[str]:
    names = []
    for path in sorted(CORPUS.glob("*.xml")):
        try:
            parse_domain_xml(path.read_bytes())
        except AvirtError:
            continue  # tests/test_config_corpus.py says which and why
        names.append(path.name)
    return names


async def _pci_in_qemu(dom: avirt.Domain) -> set[tuple[str, int, int]]:
    """(bus, slot, function) of every PCI device QEMU made for the definition (built-ins have no id).

    Read from QOM, not query-pci: the guest is paused before its firmware numbered the buses behind
    bridges, and query-pci lists nothing behind them until it has.
    """
    found = set()
    for container in ("/machine/peripheral", "/machine/peripheral-anon"):
        for child in await dom.qemu_monitor_command("qom-list", {"path": container}):
            if not child["type"].startswith("child<"):
                continue
            path = f"{container}/{child['name']}"
            try:
                devfn = await dom.qemu_monitor_command("qom-get", {"path": path, "property": "addr"})
            except QMPError:
                continue  # not a PCI device
            bus = await dom.qemu_monitor_command("qom-get", {"path": path, "property": "parent_bus"})
            found.add((bus.rsplit("/", 1)[1], devfn >> 3, devfn & 7))
    return found


def _pci_in_xml(live: str) -> set[tuple[str, int, int]]:
    root = etree.fromstring(live.encode())
    q35 = "q35" in root.find("os/type").get("machine")
    found = set()
    for address in root.iterfind("devices/*/address[@type='pci']"):
        device = address.getparent()
        if device.tag == "controller" and (device.get("type"), device.get("index"), q35) in (
                ("ide", "0", False), ("sata", "0", True)):
            continue  # the machine's own IDE (pc) and AHCI (q35) controllers
        bus = int(address.get("bus"), 16)
        found.add((("pcie.0" if q35 else "pci.0") if bus == 0 else f"pci.{bus}",
                   int(address.get("slot"), 16), int(address.get("function"), 16)))
    return found


async def _check_running(dom: avirt.Domain, live: str) -> set[tuple[str, int, int]]:
    pci = await _pci_in_qemu(dom)
    assert pci == _pci_in_xml(live)
    root = etree.fromstring(live.encode())
    blocks = {re.sub(r"^/machine/peripheral/([^/]+)/.*$", r"\1", b.get("qdev", "")): b
              for b in await dom.qemu_monitor_command("query-block")}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target").get("dev")
        assert target in blocks, f"disk {target} is not a block device of the guest"
        assert ("inserted" in blocks[target]) == (disk.find("source") is not None), target
    chardevs = {c["label"] for c in await dom.qemu_monitor_command("query-chardev")}
    assert len([c for c in chardevs if c.startswith("charchannel")]) == len(root.findall("devices/channel"))
    return pci


#: Definitions that need what this machine may lack: the error their start gives then, and whether the host
#: has it. Where it does, they start like any other.
NEEDS_HOST: dict[str, tuple[str, bool]] = {
    "devices-rng-tpm-watchdog-balloon.xml": ("needs /dev/vhost-vsock", Path("/dev/vhost-vsock").exists()),
    "devices-virtiofs-share.xml": ("virtiofs needs root", os.geteuid() == 0),
    "memory-hugepages-max.xml": ("needs hugetlbfs mounted at /dev/hugepages",
                                 Path("/dev/hugepages").exists()),
}


@pytest.mark.parametrize("name", _accepted())
async def test_corpus_definition_starts_with_every_device(conn: Connection, tmp_path: Path, state_dir: Path,
                                                          name: str) -> None:
    xml = localise((CORPUS / name).read_bytes(), tmp_path)
    dom = await conn.define_xml(xml)
    message, host_has_it = NEEDS_HOST.get(name, ("", True))
    if not host_has_it:
        with pytest.raises(DomainStartError, match=message):
            await dom.start(paused=True)
        assert not (state_dir / "run" / "corpus").exists()  # nothing was left behind
        return
    await dom.start(paused=True)
    live = await dom.xml()
    first = await _check_running(dom, live)
    await dom.destroy()

    kept = await dom.xml(inactive=True)
    again = await conn.define_xml(kept)
    assert await again.xml(inactive=True) == kept
    await again.start(paused=True)
    assert await _pci_in_qemu(again) == first
    await again.destroy()


def test_most_of_the_corpus_is_accepted() -> None:
    total = len(list(CORPUS.glob("*.xml")))
    assert total >= 30
    assert len(_accepted()) >= 0.9 * total
