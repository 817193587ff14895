"""Guests outlive the controller: a new controller on the same state directory takes them over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import avirt
from avirt import DomainState
from avirt.errors import ConnectionLockedError, DomainNotFoundError
from avirt.served import shared
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio
S = DomainState


async def test_guests_survive_the_controller_and_are_controllable(state_dir: Path, xml: XMLFactory) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        running = await conn.define_xml(xml("run1"))
        await running.start()
        paused = await conn.define_xml(xml("pause1"))
        await paused.start(paused=True)
        transient = await conn.create_xml(xml("trans1"))
        pids = {d.name: _pid(state_dir, d.name) for d in (running, paused, transient)}

    for pid in pids.values():
        assert _alive(pid)

    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        assert (await (await conn.lookup("run1")).state())[0] is S.RUNNING
        assert await (await conn.lookup("pause1")).state() == (S.PAUSED, "user")
        dom = await conn.lookup("trans1")
        assert (await dom.state())[0] is S.RUNNING
        assert _pid(state_dir, "run1") == pids["run1"]  # the same QEMU, not a new one

        await (await conn.lookup("pause1")).resume()
        assert await (await conn.lookup("pause1")).state() == (S.RUNNING, "unpaused")
        await (await conn.lookup("run1")).suspend()
        assert await (await conn.lookup("run1")).state() == (S.PAUSED, "user")

        await dom.destroy()
        with pytest.raises(DomainNotFoundError):
            await conn.lookup("trans1")  # transient: gone once stopped
        for name in ("run1", "pause1"):
            await (await conn.lookup(name)).destroy()
            assert await (await conn.lookup(name)).state() == (S.SHUTOFF, "destroyed")


async def test_guest_started_by_a_process_that_exited(state_dir: Path, xml: XMLFactory) -> None:
    script = (
        "import anyio, avirt, sys\n"
        "async def main():\n"
        "    async with avirt.connect('qemu:///session', state_dir=sys.argv[1]) as conn:\n"
        "        dom = await conn.define_xml(sys.stdin.read())\n"
        "        await dom.start()\n"
        "anyio.run(main)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(state_dir)], input=xml("other").encode(),
                   check=True, timeout=60)
    pid = _pid(state_dir, "other")
    assert _alive(pid)

    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("other")
        assert (await dom.state())[0] is S.RUNNING
        await dom.suspend()
        assert await dom.state() == (S.PAUSED, "user")
        await dom.destroy()
        assert await dom.state() == (S.SHUTOFF, "destroyed")
    assert not _alive(pid)


async def test_guest_that_died_meanwhile_ends_up_shut_off(state_dir: Path, xml: XMLFactory) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        await (await conn.define_xml(xml("gone1"))).start()
        await conn.create_xml(xml("gone2"))
    for name in ("gone1", "gone2"):
        os.kill(_pid(state_dir, name), signal.SIGKILL)

    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("gone1")
        assert (await dom.state())[0] is S.SHUTOFF
        with pytest.raises(DomainNotFoundError):
            await conn.lookup("gone2")
        assert not (state_dir / "run/gone1").exists()
        assert not (state_dir / "run/gone2").exists()
        await dom.start()  # a clean slate: it starts again
        await dom.destroy()


async def test_a_second_connection_to_a_held_state_directory_is_served_by_the_holder(
        state_dir: Path, xml: XMLFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as holder:
        assert holder.serving
        async with avirt.connect("qemu:///session", state_dir=state_dir) as client:
            assert not client.serving
            dom = await client.define_xml(xml("shared1"))
            assert [d.name for d in await holder.list_domains()] == ["shared1"]  # one set of domains
            await dom.undefine()
        # A holder that cannot be reached (its socket gone) is named, not waited for forever.
        (state_dir / "avirt.sock").unlink()
        monkeypatch.setattr(shared, "HANDOVER_TIMEOUT", 1.0)
        with pytest.raises(ConnectionLockedError, match="does not serve"):
            await avirt.connect("qemu:///session", state_dir=state_dir)
    conn = await avirt.connect("qemu:///session", state_dir=state_dir)  # free again once closed
    assert conn.serving
    await conn.close()


async def test_a_new_controller_reports_the_reasons_the_old_one_knew(state_dir: Path,
                                                                    xml: XMLFactory) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        booted = await conn.define_xml(xml("why-booted"))
        await booted.start()
        resumed = await conn.define_xml(xml("why-resumed"))
        await resumed.start()
        await resumed.suspend()
        await resumed.resume()
        paused = await conn.create_xml(xml("why-paused"), paused=True)
        before = {d.name: await d.state() for d in (booted, resumed, paused)}
    assert before == {"why-booted": (S.RUNNING, "booted"), "why-resumed": (S.RUNNING, "unpaused"),
                      "why-paused": (S.PAUSED, "user")}
    assert json.loads((state_dir / "run/why-resumed/state.json").read_text()) == {
        "state": "running", "reason": "unpaused", "reboot": False}

    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        after = {name: await (await conn.lookup(name)).state() for name in before}
        assert after == before
        dom = await conn.lookup("why-booted")
        await dom.suspend()  # a change made by this controller is what the next one reads
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        assert await (await conn.lookup("why-booted")).state() == (S.PAUSED, "user")
        for name in before:
            await (await conn.lookup(name)).destroy()


async def test_a_state_that_changed_unwatched_takes_qemus_word(state_dir: Path, xml: XMLFactory) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        await (await conn.define_xml(xml("unwatched"))).start()
    # The saved reason belongs to the saved state: a guest paused since then is not "booted" any more.
    (state_dir / "run/unwatched/state.json").write_text('{"state": "paused", "reason": "ioerror"}')
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("unwatched")
        assert await dom.state() == (S.RUNNING, "unknown")
    (state_dir / "run/unwatched/state.json").write_text("{not json")  # unreadable: QEMU's word alone
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("unwatched")
        assert await dom.state() == (S.RUNNING, "unknown")
        await dom.destroy()


def _pid(state_dir: Path, name: str) -> int:
    return int((state_dir / "run" / name / "qemu.pid").read_text())


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"
