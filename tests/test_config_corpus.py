"""Real-world domain XML (tests/data/corpus/: virt-install output and libvirt dumpxml) through avirt/config.

For each document: it parses (or is refused for exactly the items listed in EXPECTED_UNSUPPORTED), the
serialised definition keeps every element and attribute of the input, modulo the documented
normalisations, and the round trip is exact and stable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from avirt.config import domain_to_xml, parse_domain_xml
from avirt.errors import UnsupportedError

CORPUS = Path(__file__).parent / "data" / "corpus"
FILES = sorted(CORPUS.glob("*.xml"))

#: Entries that need what avirt refuses, and exactly the items it reports for each.
EXPECTED_UNSUPPORTED: dict[str, list[str]] = {
    # PCI and USB host devices handed to the guest: host resources.
    "devices-hostdev-pci-usb.xml": ["/domain/devices/hostdev[1]", "/domain/devices/hostdev[2]"],
    # An RBD volume on a Ceph cluster: network storage (and its secrets) avirt does not reach.
    "disks-ceph-rbd.xml": [
        "/domain/devices/disk[2]/source/@protocol",
        "/domain/devices/disk[2]/source/@name",
        "/domain/devices/disk[2]/source/host",
        "/domain/devices/disk[2]/@type",
    ],
    # SPICE with OpenGL on the host's render node and a 3D virtio-gpu: the host's GPU. (listen type='none'
    # only makes sense with local OpenGL clients.)
    "graphics-spice-gl-audio.xml": [
        "/domain/devices/graphics/gl",
        "/domain/devices/graphics/listen/@type",
        "/domain/devices/video/model/acceleration/@accel3d",
    ],
}

_PARSER = etree.XMLParser(remove_comments=True, remove_pis=True, resolve_entities=False, no_network=True)
_UNITS = {"b": 1, "bytes": 1}
for _power, _prefix in enumerate("kmgtpe", start=1):
    _UNITS.update({_prefix: 1024**_power, f"{_prefix}ib": 1024**_power, f"{_prefix}b": 1000**_power})


def _kib(amount: str, unit: str | None) -> int:
    return -(-int(amount.strip()) * _UNITS[(unit or "KiB").lower()] // 1024)


def _integer(text: str) -> int | None:
    text = text.strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        return None


def _output_only(el: etree._Element, attr: str | None = None) -> bool:
    """Items a definition drops because they describe a running guest or libvirt's host (documented)."""
    parent = el.getparent()
    parent_tag = parent.tag if parent is not None else None
    if attr is None:
        return el.tag in ("alias", "backingStore", "mirror") or (
            parent_tag == "domain" and el.tag in ("seclabel", "resource"))
    if (el.tag, attr) in (("domain", "id"), ("console", "tty")):
        return True
    if el.tag == "source" and attr == "index" and parent_tag == "disk":
        return True
    if el.tag == "source" and attr == "path" and parent_tag in ("serial", "console", "channel"):
        return parent is not None and parent.get("type", "pty") == "pty"
    if el.tag == "target" and attr == "state" and parent_tag == "channel":
        return True
    if parent_tag == "interface" and parent is not None:
        if el.tag == "source" and attr == "portid":
            return True
        if el.tag == "source" and attr == "bridge" and parent.get("type") == "network":
            return True
        if el.tag == "target" and attr == "dev":
            return el.get("dev", "").startswith(("vnet", "macvtap", "macvlan"))
    if el.tag == "graphics" and attr == "port":
        return el.get("autoport") == "yes" and el.get("port") != "-1"
    return attr == "unit"  # sizes are compared in KiB


def _nothing_kept(el: etree._Element) -> bool:
    """An element whose every item is output-only (``<target dev='vnet3'/>`` of a running NIC)."""
    if _output_only(el):
        return True
    items = [*el.attrib, *(c for c in el if isinstance(c.tag, str))]
    return bool(items) and not (el.text or "").strip() and all(
        _output_only(el, item) if isinstance(item, str) else _nothing_kept(item) for item in items)


def _same(tag: str, attr: str | None, given: str, written: str) -> bool:
    if given == written:
        return True
    if tag == "uuid" or (tag == "mac" and attr == "address"):
        return given.replace("-", "").lower() == written.replace("-", "").lower()
    number = _integer(given)
    return number is not None and number == _integer(written)


def lost_items(given: etree._Element, written: etree._Element) -> str | None:
    """What of ``given`` (an input element) ``written`` (an output element) lacks; None when nothing."""
    tag = str(given.tag)
    for attr, raw in given.attrib.items():
        name, value = str(attr), str(raw)
        if _output_only(given, name):
            continue
        if name not in written.attrib:
            return f"@{name} missing"
        if "unit" in given.attrib and name == "memory":  # <cell memory= unit=>
            if _kib(value, given.get("unit")) != _kib(str(written.attrib[name]), written.get("unit")):
                return f"@{name}={value!r} differs"
        elif not _same(tag, name, value, str(written.attrib[name])):
            return f"@{name}={value!r}, written {str(written.attrib[name])!r}"
    text, out_text = (given.text or "").strip(), (written.text or "").strip()
    if text and len(given) == 0:
        if "unit" in given.attrib or tag in ("memory", "currentMemory"):
            if _kib(text, given.get("unit")) != _kib(out_text, written.get("unit")):
                return f"size {text!r} differs"
        elif not _same(tag, None, text, out_text):
            return f"text {text!r}, written {out_text!r}"
    used: set[int] = set()
    for item in given:
        if not isinstance(item.tag, str) or _nothing_kept(item):
            continue
        reasons = []
        for index, candidate in enumerate(written):
            if index in used or candidate.tag != item.tag:
                continue
            reason = lost_items(item, candidate)
            if reason is None:
                used.add(index)
                break
            reasons.append(reason)
        else:
            return f"<{item.tag}> (line {item.sourceline}): {'; '.join(reasons) or 'not written'}"
    return None


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 20, f"tests/data/corpus/ holds {len(FILES)} documents"
    names = {path.name for path in FILES}
    assert set(EXPECTED_UNSUPPORTED) <= names, "EXPECTED_UNSUPPORTED names a file that is gone"


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_corpus_document(path: Path) -> None:
    text = path.read_bytes()
    expected = EXPECTED_UNSUPPORTED.get(path.name)
    if expected is not None:
        with pytest.raises(UnsupportedError) as info:
            parse_domain_xml(text)
        assert sorted(info.value.items) == sorted(expected)
        return
    cfg = parse_domain_xml(text)
    written = domain_to_xml(cfg)
    lost = lost_items(etree.fromstring(text, _PARSER), etree.fromstring(written.encode(), _PARSER))
    assert lost is None, f"the definition lost {lost}"
    again = parse_domain_xml(written)
    assert again == cfg
    assert domain_to_xml(again) == written


def test_most_of_the_corpus_is_kept_whole() -> None:
    kept = len(FILES) - len(EXPECTED_UNSUPPORTED)
    assert kept / len(FILES) >= 0.85, f"{kept} of {len(FILES)} documents define"


@pytest.mark.parametrize(
    ("given", "written", "lost"),
    [
        ("<d><a x='1'/></d>", "<d><a x='1' y='2'/></d>", None),
        ("<d><a x='1'/></d>", "<d><a/></d>", "<a> (line 1): @x missing"),
        ("<d><a x='0x10'/></d>", "<d><a x='16'/></d>", None),
        ("<d><a x='0x10'/></d>", "<d><a x='17'/></d>", "<a> (line 1): @x='0x10', written '17'"),
        ("<d><a/><a/></d>", "<d><a/></d>", "<a> (line 1): not written"),
        ("<d><memory unit='GiB'>1</memory></d>", "<d><memory unit='KiB'>1048576</memory></d>", None),
        ("<d><memory unit='GiB'>1</memory></d>", "<d><memory unit='KiB'>1048575</memory></d>",
         "<memory> (line 1): size '1' differs"),
        ("<d><uuid>C7A5FDBD-EDAF-9455-926A-D65C16DB1809</uuid></d>",
         "<d><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></d>", None),
        ("<d><mac address='52:54:00:AB:CD:EF'/></d>", "<d><mac address='52:54:00:ab:cd:ef'/></d>", None),
        ("<d><x><alias name='a'/></x></d>", "<d><x/></d>", None),
        ("<d><acpi/></d>", "<d/>", "<acpi> (line 1): not written"),
        ("<d><interface><target dev='vnet3'/></interface></d>", "<d><interface/></d>", None),
        ("<d><interface><target dev='tap3'/></interface></d>", "<d><interface/></d>",
         "<interface> (line 1): <target> (line 1): not written"),
        ("<d><t>a</t></d>", "<d><t>b</t></d>", "<t> (line 1): text 'a', written 'b'"),
    ],
)
def test_the_comparator_sees_losses(given: str, written: str, lost: str | None) -> None:
    assert lost_items(etree.fromstring(given), etree.fromstring(written)) == lost
