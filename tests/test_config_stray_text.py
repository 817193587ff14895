"""Text where none belongs is reported per element, whether it is found by counting or by asking.

The structure check first counts the text that belongs (that of elements which carry text, and whatever
output-only content such as ``<metadata>`` holds) against all the text of the document, and only walks
the document element by element, to say where, when something is left over. These pin that both ways
agree: what is accepted, what is reported and in which order.
"""

from __future__ import annotations

import pytest

from avirt.config import parse_domain_xml
from avirt.errors import UnsupportedError


def _domain(devices: str = "", metadata: str = "") -> str:
    return (f"<domain type='qemu'><name>t</name><memory unit='MiB'>64</memory>{metadata}"
            f"<os><type>hvm</type></os><devices>{devices}</devices></domain>")


_DISK = "<disk type='file' device='disk'><source file='/a b'/><target dev='vda' bus='virtio'/></disk>"


@pytest.mark.parametrize("xml", [
    _domain(_DISK),
    _domain(_DISK.replace("<source", "\u00a0\n <source")),  # blanks for Python, if not for XML
    _domain(_DISK, "<metadata><m:x xmlns:m='urn:x'>words <m:y>and more</m:y> here</m:x></metadata>"),
    _domain(_DISK).replace("<name>t</name>", "<name><![CDATA[t]]></name>"),
])
def test_text_that_belongs_is_accepted(xml: str) -> None:
    assert parse_domain_xml(xml).disks[0].source == "/a b"


@pytest.mark.parametrize(("xml", "items"), [
    (_domain(_DISK.replace("<target", "tail<target")), ["/domain/devices/disk/text()"]),
    (_domain(_DISK.replace("/></disk>", "/>x</disk>")),
     ["/domain/devices/disk/text()"]),
    (_domain(_DISK).replace("<os>", "<os>here<![CDATA[ ]]>"), ["/domain/os/text()"]),
    (_domain(_DISK.replace("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'>t</target>")),
     ["/domain/devices/disk/target/text()"]),
    (_domain(_DISK.replace("<target", "a<target").replace("<source file='/a b'/>",
                                                          "<source file='/a b'>s</source>")),
     ["/domain/devices/disk/source/text()", "/domain/devices/disk/text()"]),
    (_domain(_DISK).replace("</devices>", "</devices>after"), ["/domain/text()"]),
    (_domain(_DISK.replace("<target", "<hostdev>inside</hostdev><target")),
     ["/domain/devices/disk/hostdev"]),
])
def test_stray_text_is_reported_where_it_is_in_document_order(xml: str, items: list[str]) -> None:
    with pytest.raises(UnsupportedError) as refused:
        parse_domain_xml(xml)
    assert refused.value.items == items
