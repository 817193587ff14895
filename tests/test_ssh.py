"""The SSH host: trust, authentication, the remote shell, and a connection lost under running guests.

A real OpenSSH server on 127.0.0.1 (tests/sshd.py); the remote host is this machine, reached only through
SSH. The lifecycle, events and block job suites also run through it (their modules set ``HOSTS``).
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import asyncssh
import pytest

import avirt
from avirt import BlockJobStatus, ControlErrorEvent, DomainState, EventKind, LifecycleEvent
from avirt.errors import DomainStartError, HostError
from avirt.hosts.base import Host
from avirt.hosts.local import LocalHost
from avirt.hosts.ssh import SSHHost, SSHTarget
from tests.events_help import read_until
from tests.images import GUEST_VIEW, backing_chain, check, make_chain, reads
from tests.sshd import SSHServer
from tests.sshd import missing_reason as sshd_missing
from tests.sshd import start as start_sshd
from tests.waiting import wait_for_state
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


async def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: SSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostError, match=r"host key ssh-ed25519 SHA256:\S+ is not trusted"):
        await avirt.connect(sshd.uri(tmp_path / "state", known_hosts=empty))


async def test_changed_host_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key()
    wrong = tmp_path / "known_hosts"
    wrong.write_bytes(f"[127.0.0.1]:{sshd.port} ".encode() + other)
    with pytest.raises(HostError, match="is not trusted"):
        await avirt.connect(sshd.uri(tmp_path / "state", known_hosts=wrong))


async def test_a_key_the_host_does_not_know_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    with pytest.raises(HostError, match="authentication failed"):
        await avirt.connect(sshd.uri(tmp_path / "state", keyfile=stranger))


async def test_nobody_listening_is_a_host_error(sshd: SSHServer, tmp_path: Path) -> None:
    closed = sshd.uri(tmp_path / "state").replace(f":{sshd.port}/", ":1/")
    with pytest.raises(HostError, match="cannot connect"):
        await avirt.connect(closed)


async def test_state_lives_on_the_host_and_a_second_controller_is_locked_out(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory) -> None:
    async with avirt.connect(sshd.uri(state_dir)) as conn:
        dom = await conn.define_xml(xml("remote1"))
        assert (state_dir / "domains/remote1/domain.xml").exists()
        with pytest.raises(avirt.errors.ConnectionLockedError):
            await avirt.connect(sshd.uri(state_dir))
        await dom.start(paused=True)
    async with avirt.connect(sshd.uri(state_dir)) as conn:  # the guest outlived the first controller
        dom = await conn.lookup("remote1")
        assert (await dom.state())[0] is DomainState.PAUSED
        await dom.destroy()


HOSTILE = "-d $(touch {marker}) 'q' \"dq\" `id` sp ace;x"


async def test_hostile_file_names_pass_the_remote_shell_intact(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory, tmp_path: Path) -> None:
    marker = f"pwned-{secrets.token_hex(4)}"
    directory = tmp_path / HOSTILE.format(marker=marker)
    directory.mkdir()
    chain = make_chain(directory)
    async with avirt.connect(sshd.uri(state_dir)) as conn:
        dom = await conn.define_xml(xml("hostile", disks=[("vda", str(chain.active), "qcow2")]))
        await dom.start(paused=True)
        overlays = await dom.snapshot_disks("s1")
        assert Path(overlays["vda"]).exists() and Path(overlays["vda"]).parent == directory
        job = await dom.block_commit("vda", top=str(chain.snap2), base=str(chain.snap1))
        assert await job == BlockJobStatus.COMPLETED
        await dom.destroy()
        pull = await dom.block_pull("vda")  # offline: qemu-img over the remote shell
        assert await pull == BlockJobStatus.COMPLETED
        assert backing_chain(Path(overlays["vda"])) == [overlays["vda"]]
    assert reads(Path(overlays["vda"]), GUEST_VIEW, alone=True) == []
    check(Path(overlays["vda"]))
    home = Path(os.path.expanduser("~"))
    assert not any(p.exists() for p in (home / marker, Path("/") / marker, directory / marker))


@contextmanager
def listener_stopped(server: SSHServer) -> Iterator[None]:
    """Freeze sshd's listener: a reconnect hangs in the handshake until it thaws."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def test_connection_loss_mid_job_then_recovery(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path, size_mib=64)
    async with avirt.connect(sshd.uri(state_dir)) as conn:
        dom = await conn.define_xml(xml("lossy", disks=[("vda", str(chain.active), "qcow2")]))
        other = await conn.define_xml(xml("bystander"))
        await dom.start()
        await other.start(paused=True)
        async with conn.events(kinds={EventKind.CONTROL_ERROR, EventKind.BLOCK_JOB}) as stream:
            # 1 MiB/s over 2 MiB of snap2: the job outlives the connection.
            job = await dom.block_commit("vda", top=str(chain.snap2), base=str(chain.snap1),
                                         bandwidth=1 << 20)
            with listener_stopped(sshd):
                assert sshd.drop_connections() >= 1
                seen = []
                with anyio.fail_after(30):
                    async for ev in stream:
                        if isinstance(ev, ControlErrorEvent):
                            seen.append(ev.domain)
                            if sorted(seen) == ["bystander", "lossy"]:
                                break
                with pytest.raises(HostError, match="connection"):  # in flight or new: fails, never hangs
                    await dom.suspend()
            # Thawed: the host reconnects, the supervisors re-attach, and the job goes on to its end.
            assert await job == BlockJobStatus.COMPLETED
        assert (await dom.state())[0] is DomainState.RUNNING
        assert (await other.state())[0] is DomainState.PAUSED
        await dom.suspend()  # the monitor works again
        assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
        await dom.destroy()
        await other.destroy()
    assert reads(chain.active, GUEST_VIEW) == []
    check(chain.active)


async def test_a_guest_that_ends_while_the_host_is_unreachable_is_reported_stopped(
        sshd: SSHServer, state_dir: Path, xml: XMLFactory) -> None:
    async with avirt.connect(sshd.uri(state_dir)) as conn:
        dom = await conn.define_xml(xml("gone"))
        await dom.start(paused=True)
        pid = int((state_dir / "run/gone/qemu.pid").read_text())
        async with conn.events(domain=dom, kinds={EventKind.LIFECYCLE, EventKind.CONTROL_ERROR}) as stream:
            with listener_stopped(sshd):
                sshd.drop_connections()
                await read_until(stream, lambda ev: isinstance(ev, ControlErrorEvent))
                os.kill(pid, signal.SIGKILL)
            events = await read_until(stream, lambda ev: isinstance(ev, LifecycleEvent))
        assert (events[-1].type.name, events[-1].detail) == ("STOPPED", "failed")
        await wait_for_state(dom, DomainState.SHUTOFF)
        assert not (state_dir / "run/gone").exists()


async def test_remove_tree_takes_a_tree_a_file_and_a_missing_path(sshd: SSHServer, tmp_path: Path) -> None:
    host = SSHHost(SSHTarget("127.0.0.1", sshd.port, sshd.user, str(sshd.keyfile), str(sshd.known_hosts)))
    await host.open()
    try:
        tree = tmp_path / HOSTILE.format(marker="tree")
        (tree / "sub" / "deeper").mkdir(parents=True)
        for f in (tree / "a", tree / "sub" / "b", tree / "sub" / "deeper" / "c"):
            f.write_text("x")
        (tree / "link").symlink_to(tmp_path / "outside")
        (tmp_path / "outside").write_text("kept")
        lone = tmp_path / "-lone file"
        lone.write_text("x")
        await host.remove_tree(str(tree))
        await host.remove_tree(str(lone))
        await host.remove_tree(str(tmp_path / "never-was"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]
        assert (tmp_path / "outside").read_text() == "kept"  # a symlink goes, not what it points to
    finally:
        await host.aclose()


@pytest.mark.parametrize("kind", ["local", "ssh"])
async def test_a_fresh_directory_holds_only_the_files_given(
        sshd: SSHServer, tmp_path: Path, kind: str) -> None:
    host: Host = LocalHost() if kind == "local" else SSHHost(
        SSHTarget("127.0.0.1", sshd.port, sshd.user, str(sshd.keyfile), str(sshd.known_hosts)))
    await host.open()
    try:
        run = tmp_path / HOSTILE.format(marker="run")
        (run / "old").mkdir(parents=True)
        (run / "stale.json").write_text("{}")
        await host.fresh_dir(str(run), {"live.xml": "<domain/>", "nodes.json": '{"vda-1": "/a b"}'})
        assert sorted(p.name for p in run.iterdir()) == ["live.xml", "nodes.json"]
        assert (run / "nodes.json").read_text() == '{"vda-1": "/a b"}'
        assert run.stat().st_mode & 0o777 == 0o700 and (run / "live.xml").stat().st_mode & 0o777 == 0o600
        with pytest.raises(HostError):
            await host.fresh_dir(str(tmp_path / "x\0y"), {})
    finally:
        await host.aclose()


async def test_an_sshd_out_of_file_descriptors_is_named_as_the_cause(
        tmp_path: Path, xml: XMLFactory) -> None:
    # sshd keeps one descriptor per forwarded monitor socket: its open-files limit bounds the guests that
    # one connection can watch. The guest past it must fail with a message that says so, not as QEMU.
    if sshd_missing():
        pytest.skip(sshd_missing())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (24, hard))
    try:
        server = start_sshd(tmp_path / "sshd")  # inherits the low limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        async with avirt.connect(server.uri(tmp_path / "state")) as conn:
            started = []
            with pytest.raises(DomainStartError, match=r"refused a channel.*open-files limit"):
                for i in range(40):
                    dom = await conn.define_xml(xml(f"fd{i}"))
                    await dom.start(paused=True)
                    started.append(dom)
            assert started, "the limit left room for no guest at all"
            assert (await started[0].state())[0] is DomainState.PAUSED  # the others are still watched
            for dom in started:
                await dom.destroy()
    finally:
        server.stop()


# A parent that never reaps: its child spins a moment, says so, then idles until killed, and stays a zombie.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "sum(range(10**7)); print('ready', flush=True); import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["local", "ssh"])
async def test_hosts_agree_on_process_liveness_and_cpu_time(sshd: SSHServer, kind: str) -> None:
    host: Host = LocalHost() if kind == "local" else SSHHost(
        SSHTarget("127.0.0.1", sshd.port, sshd.user, str(sshd.keyfile), str(sshd.known_hosts)))
    await host.open()
    parent = await anyio.open_process([sys.executable, "-c", PARENT])
    try:
        assert parent.stdout is not None
        lines = b""
        with anyio.fail_after(60):
            while b"ready" not in lines:  # the child's pid, then its "ready" once it has used CPU
                lines += await parent.stdout.receive()
        pid = int(lines.split()[0])
        assert await host.pid_alive(pid)
        assert await host.cpu_time_ns(pid) > 0
        # Many at once, in order; one that does not exist reads as 0 and does not shift the others.
        times = await host.cpu_times_ns([pid, 2**22 + 1, pid, parent.pid])
        assert times[0] > 0 and times[1] == 0 and times[2] >= times[0] and len(times) == 4
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(30):
            await anyio.wait_readable(pidfd)  # exited; its parent does not reap it: a zombie
        os.close(pidfd)
        assert not await host.pid_alive(pid)  # whatever kill -0 would say
        assert await host.pid_alive(parent.pid)
    finally:
        parent.kill()
        await parent.wait()
        await host.aclose()
