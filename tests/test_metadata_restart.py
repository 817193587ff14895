"""Metadata outlives the controller: persistent changes in domain.xml, live ones in the run's live.xml.

Real QEMU (firmware-only guests, started paused), on this machine and on a host reached over SSH; each
test closes its connection and opens a new one on the same state directory, as a restarted program would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import avirt
from avirt.connection import Connection
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

HOSTS = ("local", "ssh")

APP = "http://example.org/app/1"
STORED = '<app:app xmlns:app="http://example.org/app/1">{}</app:app>'


@asynccontextmanager
async def controller(uri: str, state_dir: Path) -> AsyncIterator[Connection]:
    async with avirt.connect(uri, state_dir=None if uri.startswith("qemu+ssh") else state_dir) as conn:
        yield conn


async def test_a_running_domain_keeps_live_and_persistent_metadata(uri: str, state_dir: Path,
                                                                   xml: XMLFactory) -> None:
    async with controller(uri, state_dir) as conn:
        dom = await conn.define_xml(xml("mdr1"))
        await dom.start(paused=True)
        await dom.set_metadata(APP, "<app>both</app>", prefix="app")
        await dom.set_metadata(APP, "<app>live</app>", prefix="app", config=False)
        await dom.set_metadata("urn:next", "<n>boot</n>", prefix="n", live=False)

    assert STORED.format("both") in (state_dir / "domains/mdr1/domain.xml").read_text()
    assert STORED.format("live") in (state_dir / "run/mdr1/live.xml").read_text()

    async with controller(uri, state_dir) as conn:
        dom = await conn.lookup("mdr1")
        assert await dom.metadata(APP) == "<app>live</app>"
        assert await dom.metadata(APP, inactive=True) == "<app>both</app>"
        assert (await dom.metadata("urn:next"), await dom.metadata("urn:next", inactive=True)) == (
            None, "<n>boot</n>")
        assert STORED.format("live") in await dom.xml()
        # A change made by this controller is there for the next one too.
        await dom.set_metadata(APP, None, config=False)
        await dom.set_metadata("urn:next", "<n>now</n>", prefix="n", live=True, config=False)

    async with controller(uri, state_dir) as conn:
        dom = await conn.lookup("mdr1")
        assert (await dom.metadata(APP), await dom.metadata("urn:next")) == (None, "<n>now</n>")
        await dom.destroy()
        assert (await dom.metadata(APP), await dom.metadata("urn:next")) == ("<app>both</app>", "<n>boot</n>")


async def test_a_shut_off_domain_keeps_its_metadata(uri: str, state_dir: Path, xml: XMLFactory) -> None:
    async with controller(uri, state_dir) as conn:
        dom = await conn.define_xml(xml("mdr2"))
        await dom.set_metadata(APP, "<o:app xmlns:o='urn:old'><o:owner>ops</o:owner></o:app>", prefix="app")

    async with controller(uri, state_dir) as conn:
        dom = await conn.lookup("mdr2")
        assert await dom.metadata(APP) == "<app><owner>ops</owner></app>"
        await dom.start(paused=True)  # the live definition starts as the persistent one
        assert await dom.metadata(APP) == "<app><owner>ops</owner></app>"
        await dom.destroy()
