"""Metadata elements on both drivers: get, set, remove; live against persistent; refusals; the events.

What the persistent definition holds is also read back through ``xml(inactive=True)``, and what the
running domain holds through ``xml()``: the calls change the same ``<metadata>`` the XML shows. That the
changes outlive the controller (the state directory's files) is QEMU's alone: tests/test_metadata_restart.py.
"""

from __future__ import annotations

import pytest
from lxml import etree

from avirt import Domain, EventKind, MetadataChangeEvent
from avirt.errors import InvalidXMLError, OperationInvalidError
from tests.conformance.conftest import World
from tests.events_help import read_until

pytestmark = pytest.mark.anyio

APP = "http://example.org/app/1"
OTHER = "http://example.org/other/1"
STORED = '<app:app xmlns:app="http://example.org/app/1"><app:owner>ops</app:owner></app:app>'


def stored(xml: str) -> list[str]:
    """The children of a domain XML's ``<metadata>``, each as text."""
    metadata = etree.fromstring(xml.encode()).find("metadata")
    if metadata is None:
        return []
    return [etree.tostring(child, encoding="unicode").strip() for child in metadata]


async def both(dom: Domain, uri: str) -> tuple[str | None, str | None]:
    """(live, persistent) element of a running domain."""
    return await dom.metadata(uri), await dom.metadata(uri, inactive=True)


async def test_set_get_replace_remove_on_a_shut_off_domain(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("md1"))
    assert await dom.metadata(APP) is None

    await dom.set_metadata(APP, "<app><owner>ops</owner></app>", prefix="app")
    assert await dom.metadata(APP) == "<app><owner>ops</owner></app>"  # as it was given: libvirt's form
    assert await dom.metadata(APP, inactive=True) == "<app><owner>ops</owner></app>"
    assert stored(await dom.xml(inactive=True)) == [STORED]
    assert await dom.metadata(OTHER) is None

    await dom.set_metadata(OTHER, "<x:cfg xmlns:x='urn:old' level='2'/>", prefix="o")
    await dom.set_metadata(APP, "<app><owner>dev</owner></app>", prefix="app")  # replaced in place
    assert stored(await dom.xml()) == [
        '<app:app xmlns:app="http://example.org/app/1"><app:owner>dev</app:owner></app:app>',
        '<o:cfg xmlns:o="http://example.org/other/1" level="2"/>']
    assert await dom.metadata(OTHER) == '<cfg level="2"/>'

    await dom.set_metadata(APP, None)
    assert await dom.metadata(APP) is None
    await dom.set_metadata(APP, None)  # nothing there: nothing to do, as in libvirt
    assert stored(await dom.xml()) == ['<o:cfg xmlns:o="http://example.org/other/1" level="2"/>']
    await dom.set_metadata(OTHER, None, config=True, live=False)
    assert etree.fromstring((await dom.xml()).encode()).find("metadata") is None


async def test_metadata_of_the_defined_xml_is_read_and_kept(world: World) -> None:
    given = world.xml("md2").replace(
        "<memory", f"<metadata><lo:libosinfo xmlns:lo='{OTHER}'><lo:os id='http://x/os'/></lo:libosinfo>"
                   "</metadata><memory")
    dom = await world.conn.define_xml(given)
    assert await dom.metadata(OTHER) == '<libosinfo><os id="http://x/os"/></libosinfo>'
    await dom.set_metadata(APP, "<app><owner>ops</owner></app>", prefix="app")
    assert await dom.metadata(OTHER) == '<libosinfo><os id="http://x/os"/></libosinfo>'
    # What xml() gives defines the same domain again, metadata and all.
    await world.conn.define_xml(await dom.xml(inactive=True))
    assert (await dom.metadata(APP), await dom.metadata(OTHER)) == (
        "<app><owner>ops</owner></app>", '<libosinfo><os id="http://x/os"/></libosinfo>')


async def test_running_domain_live_and_config(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("md3"))
    await dom.start(paused=True)

    await dom.set_metadata(APP, "<app>both</app>", prefix="app")  # default: live and config
    assert await both(dom, APP) == ("<app>both</app>", "<app>both</app>")
    assert stored(await dom.xml()) == stored(await dom.xml(inactive=True))

    await dom.set_metadata(APP, "<app>live</app>", prefix="app", config=False)
    assert await both(dom, APP) == ("<app>live</app>", "<app>both</app>")
    assert stored(await dom.xml()) == ['<app:app xmlns:app="http://example.org/app/1">live</app:app>']
    assert stored(await dom.xml(inactive=True)) == [
        '<app:app xmlns:app="http://example.org/app/1">both</app:app>']

    await dom.set_metadata(APP, "<app>next boot</app>", prefix="app", live=False)
    assert await both(dom, APP) == ("<app>live</app>", "<app>next boot</app>")
    await dom.set_metadata(OTHER, "<o/>", prefix="o", config=False)
    assert await both(dom, OTHER) == ("<o/>", None)

    await dom.destroy()  # the live definition goes with the run
    assert await both(dom, APP) == ("<app>next boot</app>", "<app>next boot</app>")
    assert await dom.metadata(OTHER) is None


async def test_which_definitions_a_call_may_change(world: World) -> None:
    off = await world.conn.define_xml(world.xml("md4"))
    with pytest.raises(OperationInvalidError, match="not running"):
        await off.set_metadata(APP, "<app/>", prefix="app", config=False)
    await off.set_metadata(APP, "<app/>", prefix="app", live=True, config=True)  # live is ignored
    assert await off.metadata(APP) == "<app/>"

    transient = await world.conn.create_xml(world.xml("md5"), paused=True)
    with pytest.raises(OperationInvalidError, match="transient"):
        await transient.set_metadata(APP, "<app/>", prefix="app")
    with pytest.raises(OperationInvalidError, match="transient"):
        await transient.set_metadata(APP, None, live=False)
    with pytest.raises(OperationInvalidError, match="transient"):
        await transient.metadata(APP, inactive=True)
    await transient.set_metadata(APP, "<app>t</app>", prefix="app", config=False)
    assert await transient.metadata(APP) == "<app>t</app>"
    assert stored(await transient.xml()) == ['<app:app xmlns:app="http://example.org/app/1">t</app:app>']
    await transient.destroy()


@pytest.mark.parametrize(("uri", "text", "prefix", "error", "message"), [
    (APP, "<app>", "app", InvalidXMLError, "malformed"),
    (APP, "<a/><b/>", "app", InvalidXMLError, "one element, not 2"),
    (APP, "", "app", InvalidXMLError, "empty"),
    (APP, "just text", "app", InvalidXMLError, "malformed"),
    (APP, "<app>caf\udce9</app>", "app", InvalidXMLError, "not valid Unicode"),  # os.fsdecode's bad bytes
    (APP, "<app/>", None, ValueError, "prefix"),
    (APP, "<app/>", "1st", ValueError, "not an XML name"),
    (APP, "<app/>", "a:b", ValueError, "not an XML name"),
    (APP, "<app/>", "xmlns", ValueError, "cannot be a namespace prefix"),
    ("", "<app/>", "app", ValueError, "non-empty"),
    ("not a uri", "<app/>", "app", ValueError, "not a valid XML namespace URI"),
])
async def test_bad_input_is_refused_and_changes_nothing(world: World, uri: str, text: str,
                                                       prefix: str | None, error: type[Exception],
                                                       message: str) -> None:
    dom = await world.conn.define_xml(world.xml("md6"))
    await dom.set_metadata(APP, "<app>kept</app>", prefix="app")
    before = await dom.xml(inactive=True)
    async with world.conn.events(kinds={EventKind.METADATA_CHANGE}) as stream:
        with pytest.raises(error, match=message):
            await dom.set_metadata(uri, text, prefix=prefix)
        with pytest.raises(ValueError, match="both False"):
            await dom.set_metadata(APP, None, live=False, config=False)
        await dom.set_metadata(OTHER, None)  # the first event must be this one
        event = (await read_until(stream, lambda e: True))[0]
    assert isinstance(event, MetadataChangeEvent) and event.uri == OTHER
    assert await dom.xml(inactive=True) == before
    with pytest.raises(ValueError):
        await dom.metadata("")


async def test_each_change_is_a_metadata_change_event(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("md7"))
    await dom.start(paused=True)
    async with world.conn.events(kinds={EventKind.METADATA_CHANGE}, domain=dom) as stream:
        await dom.set_metadata(APP, "<app/>", prefix="app")
        await dom.set_metadata(APP, "<app/>", prefix="app", config=False)
        await dom.set_metadata(OTHER, None, live=False)
        events = await read_until(stream, lambda e: isinstance(e, MetadataChangeEvent) and e.uri == OTHER)
    assert [(type(e), e.kind, e.domain, e.uuid) for e in events] == [
        (MetadataChangeEvent, EventKind.METADATA_CHANGE, "md7", dom.uuid)] * 3
    assert [(e.type, e.uri) for e in events if isinstance(e, MetadataChangeEvent)] == [
        ("element", APP), ("element", APP), ("element", OTHER)]
    assert EventKind.METADATA_CHANGE == 23  # libvirt's VIR_DOMAIN_EVENT_ID_METADATA_CHANGE
    await dom.destroy()
