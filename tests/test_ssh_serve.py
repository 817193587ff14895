"""``avirt serve --stdio`` and ``qemu+ssh://`` through it: one SSH channel to the avirt on the host.

First the command itself, run as a subprocess with a :class:`~avirt.served.client.ClientDriver` on its
pipes (as the SSH channel's two directions are); then through the test sshd (tests/sshd.py), whose
remote ``avirt`` is this checkout's (``?avirt=``): the whole API through one channel, the fallback to
the direct mode when the host has no avirt, another protocol version, and a lost connection.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.stapled import StapledByteStream

import avirt
from avirt import BlockJobStatus, ControlErrorEvent, DomainState, EventKind, LifecycleEvent
from avirt.connection import Connection
from avirt.errors import CommandNotFoundError, HostError, ProtocolVersionError
from avirt.served.client import ClientDriver
from avirt.served.server import PROTOCOL
from avirt.uri import InvalidURIError
from tests.events_help import read_until
from tests.images import GUEST_VIEW, backing_chain, make_chain, reads
from tests.sshd import SSHServer
from tests.test_ssh import listener_stopped
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

ROOT = Path(avirt.__file__).resolve().parent.parent


@asynccontextmanager
async def serve_stdio(state_dir: Path, log: Path) -> AsyncIterator[tuple[Connection, anyio.abc.Process]]:
    """``avirt serve --stdio`` as a subprocess, and a connection whose driver speaks over its pipes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-m", "avirt", "--state-dir", str(state_dir), "serve", "--stdio"],
            env=env, stderr=stderr)
    try:
        assert process.stdin is not None and process.stdout is not None
        driver = ClientDriver("qemu:///session", str(state_dir))
        try:
            await driver.open_stream(StapledByteStream(process.stdin, process.stdout))
        except BaseException:
            await driver.close()
            raise
        yield Connection("qemu:///session", driver), process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def qemu_pid(state_dir: Path, name: str) -> int:
    return int((state_dir / "run" / name / "qemu.pid").read_text())


async def test_serve_stdio_serves_one_client_and_ends_with_its_standard_input(
        state_dir: Path, xml: XMLFactory, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    async with serve_stdio(state_dir, log) as (conn, process):
        async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
            dom = await conn.define_xml(xml("piped"))
            await dom.start(paused=True)
            events = await read_until(stream, lambda e: isinstance(e, LifecycleEvent)
                                      and e.type.name == "SUSPENDED")
        assert [e.type.name for e in events if isinstance(e, LifecycleEvent)] == \
            ["DEFINED", "STARTED", "SUSPENDED"]
        assert [d.name for d in await conn.list_domains()] == ["piped"]
        pid = qemu_pid(state_dir, "piped")
        await conn.close()  # its standard input closes: the process ends, normally
        with anyio.fail_after(30):
            assert await process.wait() == 0
    text = log.read_text()
    assert "serving" in text and "the controller" in text and "Traceback" not in text, text
    os.kill(pid, 0)  # the guest outlives the server
    async with avirt.connect(state_dir=state_dir) as local:
        dom = await local.lookup("piped")
        assert (await dom.state())[0] is DomainState.PAUSED
        assert qemu_pid(state_dir, "piped") == pid
        await dom.destroy()


async def test_serve_stdio_relays_to_the_program_that_holds_the_directory(
        state_dir: Path, xml: XMLFactory, tmp_path: Path) -> None:
    async with avirt.connect(state_dir=state_dir) as holder:
        assert holder.serving
        async with serve_stdio(state_dir, tmp_path / "serve.log") as (conn, process):
            async with holder.events(kinds={EventKind.LIFECYCLE}) as stream:
                await conn.define_xml(xml("relayed"))
                await read_until(stream, lambda e: e.domain == "relayed")
            assert [d.name for d in await holder.list_domains()] == ["relayed"]
            await conn.close()
            with anyio.fail_after(30):
                assert await process.wait() == 0
    assert "relayed to its controller" in (tmp_path / "serve.log").read_text()


# -- through SSH ---------------------------------------------------------------------------------------


def channels(records: list[logging.LogRecord]) -> dict[str, int]:
    """What the client asked its SSH connections for, as asyncssh logged it."""
    counts = {"connections": 0, "sessions": 0, "forwarded sockets": 0, "sftp": 0}
    for record in records:
        message = record.getMessage()
        if record.name.startswith("asyncssh"):
            if "Opening SSH connection" in message:
                counts["connections"] += 1
            elif "Requesting new SSH session" in message:
                counts["sessions"] += 1
            elif "Opening direct UNIX connection" in message:
                counts["forwarded sockets"] += 1
            elif "Starting SFTP client" in message:
                counts["sftp"] += 1
    return counts


@pytest.mark.parametrize("mode", ["serve", "direct"])
async def test_a_lifecycle_its_events_and_a_block_commit_through_one_channel(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, mode: str) -> None:
    caplog.set_level(logging.INFO, logger="asyncssh")
    chain = make_chain(tmp_path)
    async with avirt.connect(sshd.uri(state_dir, mode=mode)) as conn:
        async with conn.events(kinds={EventKind.LIFECYCLE, EventKind.BLOCK_JOB}) as stream:
            dom = await conn.define_xml(xml("one", disks=[("vda", str(chain.active), "qcow2")]))
            await dom.start(paused=True)
            job = await dom.block_commit("vda", top=str(chain.snap2), shallow=True)
            assert await job == BlockJobStatus.COMPLETED
            await dom.resume()
            await dom.destroy()
            await dom.undefine()
            events = await read_until(stream, lambda e: isinstance(e, LifecycleEvent)
                                      and e.type.name == "UNDEFINED")
    kinds = [e.type.name if isinstance(e, LifecycleEvent) else "BLOCK_JOB" for e in events]
    assert kinds == ["DEFINED", "STARTED", "SUSPENDED", "BLOCK_JOB", "RESUMED", "STOPPED", "UNDEFINED"]
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    counts = channels(caplog.records)
    if mode == "serve":
        assert counts == {"connections": 1, "sessions": 1, "forwarded sockets": 0, "sftp": 0}
    else:  # the direct mode, for contrast: commands, SFTP and a forwarded monitor of its own
        assert counts["connections"] == 1 and counts["sessions"] > 3, counts
        assert counts["forwarded sockets"] >= 1 and counts["sftp"] == 1, counts


async def test_two_connections_share_one_remote_directory_and_outlive_each_other(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory, tmp_path: Path) -> None:
    uri = sshd.uri(state_dir, mode="serve")
    async with avirt.connect(uri) as first:
        # The first connection's remote avirt holds the directory; the second's is relayed to it.
        second = await avirt.connect(uri)
        try:
            async with first.events(kinds={EventKind.LIFECYCLE}) as stream:
                dom = await second.define_xml(xml("shared"))
                await dom.start(paused=True)
                await read_until(stream, lambda e: isinstance(e, LifecycleEvent)
                                 and e.type.name == "SUSPENDED")
            assert [d.name for d in await first.list_domains()] == ["shared"]
        except BaseException:
            await second.close()
            raise
    try:
        # The first's remote avirt ended with its channel: the second's takes the directory over, and
        # the second connection goes on as before (calls wait for the hand-over on the host).
        pid = qemu_pid(state_dir, "shared")
        async with second.events(kinds={EventKind.LIFECYCLE}) as stream:
            await dom.resume()
            await read_until(stream, lambda e: isinstance(e, LifecycleEvent) and e.type.name == "RESUMED")
        assert qemu_pid(state_dir, "shared") == pid
        await dom.destroy()
    finally:
        await second.close()


async def test_auto_mode_drives_the_host_directly_when_it_has_no_avirt(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="avirt.connection")
    uri = sshd.uri(state_dir, mode="auto", avirt="/nonexistent/avirt")
    async with avirt.connect(uri) as conn:
        dom = await conn.define_xml(xml("direct"))
        await dom.start(paused=True)
        assert (await dom.state())[0] is DomainState.PAUSED
        await dom.destroy()
    assert any("no command '/nonexistent/avirt'" in r.getMessage() and "directly" in r.getMessage()
               for r in caplog.records)
    assert (state_dir / "domains" / "direct" / "domain.xml").exists()


async def test_serve_mode_without_avirt_on_the_host_is_an_error(sshd: SSHServer, state_dir: Path) -> None:
    with pytest.raises(CommandNotFoundError, match="no command '/nonexistent/avirt'") as caught:
        await avirt.connect(sshd.uri(state_dir, mode="serve", avirt="/nonexistent/avirt"))
    assert caught.value.command == "/nonexistent/avirt"


async def test_a_remote_avirt_of_another_protocol_version_is_named(sshd: SSHServer, state_dir: Path) -> None:
    # A real avirt whose server speaks version 99: this checkout with the one number changed.
    newer = shlex.join(["env", f"PYTHONPATH={ROOT}", sys.executable, "-c",
                        "import sys, avirt.served.server as s; s.PROTOCOL = 99; "
                        "from avirt.cli.app import main; sys.exit(main())"])
    with pytest.raises(ProtocolVersionError) as caught:
        await avirt.connect(sshd.uri(state_dir, mode="serve", avirt=newer))
    assert (caught.value.server, caught.value.client) == (99, PROTOCOL)
    message = str(caught.value)
    assert "protocol version 99" in message and f"this avirt {PROTOCOL}" in message, message


async def test_a_lost_connection_is_announced_fails_calls_and_a_job_goes_on_to_its_end(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path, size_mib=64)
    async with avirt.connect(sshd.uri(state_dir, mode="serve")) as conn:
        dom = await conn.define_xml(xml("lossy", disks=[("vda", str(chain.active), "qcow2")]))
        other = await conn.define_xml(xml("bystander"))
        await dom.start()
        await other.start(paused=True)
        pid = qemu_pid(state_dir, "lossy")
        async with conn.events(kinds={EventKind.CONTROL_ERROR, EventKind.BLOCK_JOB}) as stream:
            # 256 KiB/s over 2 MiB of snap2: the job outlives the connection.
            job = await dom.block_commit("vda", top=str(chain.snap2), base=str(chain.snap1),
                                         bandwidth=1 << 18)
            with listener_stopped(sshd):
                assert sshd.drop_connections() >= 1
                seen = []
                with anyio.fail_after(30):
                    async for ev in stream:
                        if isinstance(ev, ControlErrorEvent):
                            seen.append(ev.domain)
                            if sorted(seen) == ["bystander", "lossy"]:
                                break
                with pytest.raises(HostError, match="connection"):  # nothing waits for the host
                    await dom.suspend()
            # The listener is back: the connection finds the remote avirt again, which re-attached to
            # the guests, and the job goes on to its real end.
            with anyio.fail_after(60):
                assert await job == BlockJobStatus.COMPLETED
        assert (await dom.state())[0] is DomainState.RUNNING
        assert (await other.state())[0] is DomainState.PAUSED
        assert qemu_pid(state_dir, "lossy") == pid  # the same QEMU throughout
        await dom.suspend()
        assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
        await dom.destroy()
        await other.destroy()
    assert reads(chain.active, GUEST_VIEW) == []


async def test_a_guest_that_ends_while_the_host_is_unreachable_is_reported_stopped(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory) -> None:
    async with avirt.connect(sshd.uri(state_dir, mode="serve")) as conn:
        dom = await conn.define_xml(xml("gone"))
        await dom.start(paused=True)
        pid = qemu_pid(state_dir, "gone")
        async with conn.events(domain=dom, kinds={EventKind.LIFECYCLE, EventKind.CONTROL_ERROR}) as stream:
            with listener_stopped(sshd):
                sshd.drop_connections()
                await read_until(stream, lambda ev: isinstance(ev, ControlErrorEvent))
                os.kill(pid, signal.SIGKILL)
            events = await read_until(stream, lambda ev: isinstance(ev, LifecycleEvent), timeout=60)
        assert (events[-1].type.name, events[-1].detail) == ("STOPPED", "failed")
        assert (await dom.state())[0] is DomainState.SHUTOFF


async def test_serve_stdio_ends_on_sigterm_too(state_dir: Path, tmp_path: Path) -> None:
    async with serve_stdio(state_dir, tmp_path / "serve.log") as (conn, process):
        assert await conn.list_domains() == []
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 0
        await conn.close()


@pytest.mark.parametrize(("query", "complaint"), [("mode=remote", "the modes are auto, serve, direct"),
                                                  ("avirt=%27unclosed", "not a command line")])
async def test_mode_and_avirt_options_are_checked(query: str, complaint: str) -> None:
    with pytest.raises(InvalidURIError, match=complaint):
        await avirt.connect(f"qemu+ssh://admin@host.invalid/session?{query}")
