"""State files: atomic, private, and a URI that says where they live."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import avirt
from avirt.connection import Connection
from avirt.errors import HostError, InvalidXMLError, UnsupportedError
from avirt.hosts.local import LocalHost
from avirt.uri import ConnectionURI, InvalidURIError
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


async def test_write_atomic_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    host = LocalHost()
    target = tmp_path / "f.xml"
    await host.write_atomic(str(target), "one")
    await host.write_atomic(str(target), "two" * 1000)
    assert target.read_text() == "two" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f.xml"]


async def test_definitions_are_private_and_bad_xml_writes_nothing(conn: Connection, xml: XMLFactory,
                                                                  state_dir: Path) -> None:
    await conn.define_xml(xml("p1"))
    path = state_dir / "domains/p1/domain.xml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    before = path.read_text()
    with pytest.raises(InvalidXMLError) as caught:
        await conn.define_xml("<domain type='kvm'>\n<name>p1</name>\n<memory>64\n</domain>")
    assert caught.value.line is not None
    with pytest.raises(UnsupportedError) as unsupported:
        await conn.define_xml(xml("p1").replace("<devices>", "<devices><hostdev/><smartcard/>"))
    assert unsupported.value.items == ["/domain/devices/hostdev", "/domain/devices/smartcard"]
    assert path.read_text() == before
    assert sorted(os.listdir(path.parent)) == ["domain.xml"]


async def test_uris() -> None:
    uri = ConnectionURI.parse("qemu+ssh://admin@host:2222/session?keyfile=/k")
    assert (uri.scheme, uri.transport, uri.user, uri.host, uri.port, uri.path, uri.options) == (
        "qemu", "ssh", "admin", "host", 2222, "session", {"keyfile": "/k"})
    assert ConnectionURI.parse("qemu:///system").default_state_dir() == "/var/lib/avirt"
    with pytest.raises(InvalidURIError):
        await avirt.connect("nonsense")
    with pytest.raises(InvalidURIError, match="/session or /system"):
        await avirt.connect("qemu:///elsewhere")
    with pytest.raises(InvalidURIError, match="name a host"):
        await avirt.connect("qemu+ssh:///session")
    with pytest.raises(InvalidURIError, match="unknown option"):
        await avirt.connect("qemu+ssh://host/session?keyfle=/k")
    with pytest.raises(UnsupportedError, match="not supported"):
        await avirt.connect("qemu+tls://host/session")
    with pytest.raises(HostError, match="cannot connect"):  # no user@: the local user, as ssh does
        await avirt.connect("qemu+ssh://127.0.0.1:1/session")


async def test_session_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert ConnectionURI.parse("qemu:///session").default_state_dir() == str(tmp_path / "avirt")
    async with avirt.connect("qemu:///session") as conn:
        assert await conn.list_domains() == []
    assert (tmp_path / "avirt" / "lock").exists()
