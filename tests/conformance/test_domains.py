"""Definitions on both drivers: define, redefine, undefine, lookup, list, and the XML that comes back."""

from __future__ import annotations

import pytest
from lxml import etree

from avirt import DomainState, EventKind
from avirt.config import domain_to_xml, parse_domain_xml
from avirt.drivers.qemu.abi import MACHINE_ALIASES, stabilise
from avirt.errors import DomainExistsError, DomainNotFoundError, InvalidXMLError, UnsupportedError
from tests.conformance.conftest import World
from tests.events_help import lifecycle, read_until

pytestmark = pytest.mark.anyio
S = DomainState

UUID = "5f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
NIC = "<interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>"


async def test_lookup_by_name_and_uuid_and_list(world: World) -> None:
    a = await world.conn.define_xml(world.xml("a"))
    b = await world.conn.define_xml(world.xml("b"))
    assert await world.conn.lookup("a") == a
    assert await world.conn.lookup(b.uuid.upper()) == b
    assert [d.name for d in await world.conn.list_domains()] == ["a", "b"]
    await a.start(paused=True)
    assert [d.name for d in await world.conn.list_domains(state=S.PAUSED)] == ["a"]
    assert [d.name for d in await world.conn.list_domains(state=S.SHUTOFF)] == ["b"]
    await a.destroy()
    with pytest.raises(DomainNotFoundError):
        await world.conn.lookup("nope")
    with pytest.raises(DomainNotFoundError):
        await world.conn.lookup("00000000-0000-4000-8000-00000000dead")


async def test_redefine_updates_and_clashes_are_refused(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("r1", memory_mib=64))
    text = (await dom.xml()).replace("65536", "131072")
    async with world.conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        assert await world.conn.define_xml(text) == dom
        events = await read_until(stream, lambda e: True)
    assert lifecycle(events) == [("DEFINED", "updated")]
    assert (await dom.info()).max_memory_kib == 131072
    other_uuid = world.xml("r1").replace("<name>", "<uuid>00000000-0000-4000-8000-000000000001</uuid><name>")
    with pytest.raises(DomainExistsError):
        await world.conn.define_xml(other_uuid)
    with pytest.raises(DomainExistsError, match="r1"):
        await world.conn.define_xml(text.replace("<name>r1</name>", "<name>r2</name>"))
    with pytest.raises(DomainExistsError):
        await world.conn.create_xml(world.xml("r1"))


async def test_redefining_a_running_domain_changes_the_next_start_only(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("r3", memory_mib=64))
    await dom.start(paused=True)
    await world.conn.define_xml((await dom.xml(inactive=True)).replace("65536", "131072"))
    assert "65536" in await dom.xml() and "131072" in await dom.xml(inactive=True)
    await dom.destroy()
    assert "131072" in await dom.xml()


async def test_bad_xml_is_refused_and_defines_nothing(world: World) -> None:
    with pytest.raises(InvalidXMLError) as caught:
        await world.conn.define_xml("<domain type='kvm'>\n<name>x</name>\n<memory>12</memory")
    assert caught.value.line is not None
    with pytest.raises(UnsupportedError) as unsupported:
        await world.conn.define_xml(world.xml("x1", extra_devices="<smartcard mode='host'/>"))
    assert unsupported.value.items == ["/domain/devices/smartcard"]
    with pytest.raises(UnsupportedError):
        await world.conn.create_xml(world.xml("x2", extra_devices="<smartcard mode='host'/>"))
    undecodable = world.xml("x4").replace("</name>", "\udce9</name>")  # os.fsdecode's bad bytes
    for call in (world.conn.define_xml, world.conn.create_xml):
        with pytest.raises(InvalidXMLError, match="not valid Unicode"):
            await call(undecodable)
    assert await world.conn.list_domains() == []


async def test_xml_round_trip(world: World) -> None:
    source = world.xml("x3", extra_devices=NIC).replace("<name>", f"<uuid>{UUID}</uuid><name>")
    dom = await world.conn.define_xml(source)
    assert dom.uuid == UUID
    # The one serializer, whichever the driver, after the stable guest ABI both drivers fill in the same
    expected = domain_to_xml(stabilise(parse_domain_xml(source), MACHINE_ALIASES))
    assert await dom.xml(inactive=True) == expected
    assert await dom.xml() == expected  # shut off: the definition
    await world.conn.define_xml(await dom.xml())
    assert await dom.xml(inactive=True) == expected  # define(dumpxml()) changes nothing
    await dom.start(paused=True)
    live = etree.fromstring((await dom.xml()).encode())
    assert live.get("id") is not None and live.findtext("name") == "x3"
    assert live.find("devices/interface/mac").get("address") == "52:54:00:12:34:56"  # type: ignore[union-attr]
    await dom.destroy()


async def test_a_nic_gets_a_mac_once_at_define_time(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("n1", extra_devices="<interface type='user'/>"))
    first = await dom.xml(inactive=True)
    assert '<mac address="52:54:00:' in first
    await dom.start(paused=True)
    assert first.split("<mac")[1].split("/>")[0] in await dom.xml()
    await dom.destroy()
    assert await dom.xml(inactive=True) == first


async def test_live_xml_shows_the_backing_chain_with_indexes(world: World) -> None:
    dom, chain = await world.chain_domain("lx1")
    live = etree.fromstring((await dom.xml()).encode())
    disk = live.find("devices/disk")
    assert disk is not None
    layers = [(el.get("index"), el.find("source").get("file"))  # type: ignore[union-attr]
              for el in disk.iter("backingStore") if el.get("index")]
    assert disk.find("source").get("file") == str(chain.active)  # type: ignore[union-attr]
    assert layers == [("1", str(chain.snap2)), ("2", str(chain.snap1)), ("3", str(chain.base))]
    assert len(disk.findall(".//backingStore")) == 4  # the last, empty one: the chain is complete
    await world.conn.define_xml(await dom.xml())  # output-only elements are accepted back
    await dom.destroy()
    assert "backingStore" not in await dom.xml()  # shut off: the definition, which has no chain
