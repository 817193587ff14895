"""Socket paths of any length: a deep state directory and a 64-character name start, reconnect and stop.

A unix socket's path holds at most 107 bytes. Here every path starts about 200 bytes deep, so the QMP
socket avirt binds and the guest agent's channel socket that QEMU binds itself are reached through the
short link ``/tmp/avirt-<uid>/<hash>`` (see ``avirt/drivers/qemu/state.py``), locally and over SSH.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import avirt
from avirt import DomainState
from avirt.drivers.qemu.state import SOCKET_PATH_MAX, link_name
from avirt.errors import DomainStartError
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio
HOSTS = ("local", "ssh")
S = DomainState

NAME = "long-" + "n" * 59
AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
TPM = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"  # swtpm binds one more


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """Every path of these tests, the state directory's among them, is about 200 bytes deep."""
    deep = tmp_path / ("deep-" * 24) / ("er-" * 20)
    deep.mkdir(parents=True)
    assert len(os.fsencode(deep)) >= 190
    yield deep


def _connect(uri: str, state_dir: Path) -> avirt.connection._Connecting:
    return avirt.connect(uri, state_dir=None if uri.startswith("qemu+ssh") else state_dir)


def _short_link(state_dir: Path) -> Path:
    return Path(f"/tmp/avirt-{os.getuid()}") / link_name(str(state_dir / "run" / NAME))


async def test_a_deep_state_directory_and_a_long_name_start_reconnect_and_stop(
        uri: str, state_dir: Path, xml: XMLFactory) -> None:
    run = state_dir / "run" / NAME
    assert len(os.fsencode(run / "qmp.sock")) > SOCKET_PATH_MAX
    async with _connect(uri, state_dir) as conn:
        dom = await conn.define_xml(xml(NAME, extra_devices=AGENT + TPM))
        await dom.start()
        assert await dom.state() == (S.RUNNING, "booted")
        pid = (run / "qemu.pid").read_text()
        # The sockets live in the run directory; the short link only names it.
        assert stat.S_ISSOCK((run / "qmp.sock").stat().st_mode)
        assert stat.S_ISSOCK((run / "ch0.sock").stat().st_mode)
        assert stat.S_ISSOCK((run / "tpm.sock").stat().st_mode)
        link = _short_link(state_dir)
        assert os.readlink(link) == str(run)
        assert stat.S_IMODE(link.parent.lstat().st_mode) == 0o700

    async with _connect(uri, state_dir) as conn:  # a new controller finds the same link again
        dom = await conn.lookup(NAME)
        assert await dom.state() == (S.RUNNING, "booted")
        assert (run / "qemu.pid").read_text() == pid
        with socket.socket(socket.AF_UNIX) as agent:  # QEMU's own channel socket answers through it
            agent.connect(str(_short_link(state_dir) / "ch0.sock"))
        await dom.destroy()
        assert await dom.state() == (S.SHUTOFF, "destroyed")
        await dom.undefine()
    assert not run.exists()
    assert not os.path.lexists(_short_link(state_dir))


async def test_a_link_removed_while_the_guest_runs_is_made_again(uri: str, state_dir: Path,
                                                                 xml: XMLFactory) -> None:
    async with _connect(uri, state_dir) as conn:
        await (await conn.define_xml(xml(NAME))).start()
    _short_link(state_dir).unlink()  # a /tmp cleaner, or a reboot of a host whose /tmp is a tmpfs
    async with _connect(uri, state_dir) as conn:
        dom = await conn.lookup(NAME)
        assert await dom.state() == (S.RUNNING, "booted")
        await dom.suspend()  # the monitor answers: the controller reached it through the new link
        assert await dom.state() == (S.PAUSED, "user")
        await dom.destroy()


async def test_a_socket_path_the_definition_gives_too_long_is_refused_by_name(
        state_dir: Path, xml: XMLFactory) -> None:
    path = str(state_dir / "agent.sock")
    channel = (f"<channel type='unix'><source mode='bind' path='{path}'/>"
               "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.define_xml(xml("given", extra_devices=channel))
        with pytest.raises(DomainStartError, match=f"{path} is {len(os.fsencode(path))} bytes, over the "
                                                   f"kernel's limit of {SOCKET_PATH_MAX}"):
            await dom.start()
        assert not (state_dir / "run/given").exists()


async def test_a_short_directory_owned_by_someone_else_is_refused_by_name(
        state_dir: Path, xml: XMLFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Making a directory for another user takes root; shifting this user's uid by one does the same:
    # the /tmp/avirt-<uid> that exists then belongs to "someone else".
    real = os.getuid()
    other = Path(f"/tmp/avirt-{real + 1}")
    other.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    try:
        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            dom = await conn.define_xml(xml(NAME))
            with pytest.raises(DomainStartError) as caught:
                await dom.start()
            message = str(caught.value)
            assert f"{other} belongs to uid {real}, not to uid {real + 1}" in message
            assert f"limit of {SOCKET_PATH_MAX} bytes" in message and str(state_dir / "run" / NAME) in message
            assert (await dom.state())[0] is S.SHUTOFF
        assert not (state_dir / "run" / NAME).exists()
        assert os.listdir(other) == []
    finally:
        other.rmdir()


async def test_a_deep_state_directory_is_served_to_other_programs(state_dir: Path, xml: XMLFactory) -> None:
    assert len(os.fsencode(state_dir / "avirt.sock")) > SOCKET_PATH_MAX
    async with avirt.connect("qemu:///session", state_dir=state_dir) as holder:
        assert holder.serving  # through the short link to the state directory
        async with avirt.connect("qemu:///session", state_dir=state_dir) as client:
            assert not client.serving
            await client.define_xml(xml("served"))
            assert [d.name for d in await holder.list_domains()] == ["served"]
    link = Path(f"/tmp/avirt-{os.getuid()}") / link_name(str(state_dir))
    assert os.readlink(link) == str(state_dir)
