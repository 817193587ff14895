"""Live migration between machines: from this machine to an SSH host and back, in both of the SSH
connection's modes (through the host's avirt, or driving its QEMU directly).

The SSH host is the test sshd on 127.0.0.1, so both QEMUs run on this machine; but to avirt it is
another machine, and the streams go as they would between two: each through OpenSSH's unix-socket
forwarding over the connection (hosts/forwarding.py), never straight from one QEMU's socket to the
other's. The records of each side name the other as a location elsewhere, which neither reads.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import avirt
from avirt import DomainState, migration
from avirt.connection import Connection
from avirt.errors import MigrationError
from tests import tlscerts
from tests.guest import GuestImages
from tests.images import GUEST_VIEW, make_chain, reads
from tests.sshd import SSHServer
from tests.sshd import start as start_sshd
from tests.test_cli import CLI
from tests.test_migration import (
    SLOTS,
    WRITE,
    Lifecycle,
    cancel_while_sending,
    check_every_write,
    kill_source_while_sending,
    qemu_pids,
    two_dirs,
    writing_guest,
)
from tests.waiting import wait_for_serial, wait_for_state
from tests.xmls import XMLFactory

pytestmark = [pytest.mark.anyio]
__all__ = ["two_dirs"]  # the fixture, shared with the one-machine tests


@pytest.fixture(params=["serve", "direct"])
async def apart(request: pytest.FixtureRequest, two_dirs: tuple[Path, Path],
                sshd: SSHServer) -> AsyncIterator[tuple[Connection, Connection]]:
    """This machine's connection and an SSH host's, in the mode under test."""
    async with avirt.connect(state_dir=two_dirs[0]) as here, \
            avirt.connect(sshd.uri(two_dirs[1], mode=request.param)) as there:
        yield here, there


def records(state_dir: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in state_dir.glob("run/*/migration.json")]


@pytest.mark.guest
async def test_a_writing_guest_moves_to_an_ssh_host_and_back(
        apart: tuple[Connection, Connection], two_dirs: tuple[Path, Path], xml: XMLFactory,
        tmp_path: Path, guest_images: GuestImages) -> None:
    here, there = apart
    dom, disk, serial = await writing_guest(here, xml, tmp_path, guest_images, "traveller")
    at_here, at_there = Lifecycle(here), Lifecycle(there)

    job = await dom.migrate(there)
    moved = await job
    assert await moved.state() == (DomainState.RUNNING, "migrated")
    assert await here.list_domains() == []
    await at_here.until(("SUSPENDED", "migrated"), ("STOPPED", "migrated"))
    await at_there.until(("STARTED", "migrated"), ("RESUMED", "migrated"))
    assert job.stats is not None and job.stats.status == "completed" and job.stats.ram_transferred > 0
    assert records(two_dirs[0]) == [] and records(two_dirs[1]) == []
    done = len(WRITE.findall(serial.read_text()))
    await wait_for_serial(serial, f"avirt-wl: i={done + SLOTS} ")

    # And back: now the source's QEMU is the SSH host's, connecting to a socket that sshd forwards here.
    back = await (await moved.migrate(here))
    assert await back.state() == (DomainState.RUNNING, "migrated")
    assert await there.list_domains() == []
    done = len(WRITE.findall(serial.read_text()))
    await wait_for_serial(serial, f"avirt-wl: i={done + SLOTS} ")
    await back.shutdown(wait=60)
    check_every_write(serial, disk)


async def test_copied_storage_goes_through_the_ssh_connection(
        apart: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path) -> None:
    here, there = apart
    chain = make_chain(tmp_path)  # base 0x11 <- snap1 0x22 <- snap2 0x33 <- active 0x44
    dom = await here.define_xml(xml("copied", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    new_top = tmp_path / "there.qcow2"
    moved = await (await dom.migrate(there, copy_storage="all", storage_paths={"vda": str(new_top)}))
    assert "there.qcow2" in await moved.xml()
    await moved.destroy()
    assert reads(new_top, GUEST_VIEW) == []  # the guest's whole view, in the one new image
    assert reads(chain.active, GUEST_VIEW) == []


async def test_a_cancelled_migration_to_an_ssh_host_leaves_the_guest_here(
        apart: tuple[Connection, Connection], two_dirs: tuple[Path, Path], xml: XMLFactory) -> None:
    await cancel_while_sending(*apart, xml, two_dirs[1])


async def test_a_source_controller_killed_while_sending_to_an_ssh_host_keeps_the_guest_here(
        two_dirs: tuple[Path, Path], xml: XMLFactory, sshd: SSHServer) -> None:
    """The forwarding dies with the controller that made it: the destination's QEMU loses its stream and
    ends, and a new controller of the source finds a migration nobody committed."""
    dest_uri = sshd.uri(two_dirs[1], mode="serve")
    async with avirt.connect(dest_uri) as there:  # this process watches the destination
        at_there = Lifecycle(there)
        await kill_source_while_sending(two_dirs[0], dest_uri, there, xml)
        await at_there.until(("STOPPED", "failed"), timeout=60)  # its stream broke: QEMU ended
        assert await there.list_domains() == []
        async with avirt.connect(state_dir=two_dirs[0]) as here:
            dom = await here.lookup("killed")
            await wait_for_state(dom, DomainState.RUNNING)
            assert len(qemu_pids(*two_dirs)) == 1  # one QEMU: the source's
            await dom.destroy()


# -- TLS ------------------------------------------------------------------------------------------------


async def test_a_tls_migration_with_a_storage_copy_checks_both_certificates(
        apart: tuple[Connection, Connection], two_dirs: tuple[Path, Path], xml: XMLFactory,
        tmp_path: Path) -> None:
    here, there = apart
    chain = make_chain(tmp_path)
    dom = await here.define_xml(xml("secret", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    new_top = tmp_path / "there.qcow2"
    copy = {"copy_storage": "all", "storage_paths": {"vda": str(new_top)}}
    with pytest.raises(MigrationError, match=r"tls/ca-cert\.pem"):  # no certificates yet: nothing moves
        await (await dom.migrate(there, tls=True, **copy))
    assert not new_top.exists() and await there.list_domains() == []
    tlscerts.write_set(two_dirs[1], ca_name="another CA")  # the source still has none: refused in begin
    with pytest.raises(MigrationError, match=re.escape(str(two_dirs[0] / "tls"))):
        await dom.migrate(there, tls=True, **copy)
    assert not new_top.exists() and await there.list_domains() == []

    tlscerts.write_set(two_dirs[0])  # each side distrusts the other's certificate
    with pytest.raises(MigrationError):
        await (await dom.migrate(there, tls=True, **copy))
    assert (await dom.state())[0] is DomainState.RUNNING and await there.list_domains() == []

    tlscerts.write_set(*two_dirs)
    moved = await (await dom.migrate(there, tls=True, **copy))
    assert await moved.state() == (DomainState.RUNNING, "migrated")
    # Back without TLS: the QEMU that was a TLS destination must not keep using its credentials.
    back = await (await moved.migrate(here))
    await back.destroy()
    assert reads(new_top, GUEST_VIEW) == []


@pytest.mark.guest
async def test_a_postcopy_switch_to_an_ssh_host_fetches_pages_through_the_forwarding(
        two_dirs: tuple[Path, Path], xml: XMLFactory, tmp_path: Path, guest_images: GuestImages,
        sshd: SSHServer) -> None:
    """Postcopy's page requests travel back on the same stream: the forwarding carries both ways."""
    async with avirt.connect(state_dir=two_dirs[0]) as here, \
            avirt.connect(sshd.uri(two_dirs[1], mode="serve")) as there:
        dom, disk, serial = await writing_guest(here, xml, tmp_path, guest_images, "paged")
        at_there = Lifecycle(there)
        job = await dom.migrate(there, postcopy=True, bandwidth=2**20)  # precopy alone: minutes
        async for progress in job.progress():
            if progress.status == "active" and progress.ram_transferred > 0:
                await job.postcopy()
                break
        await at_there.until(("RESUMED", "postcopy"), timeout=120)
        done = len(WRITE.findall(serial.read_text()))
        await wait_for_serial(serial, f"avirt-wl: i={done + SLOTS} ", timeout=300)  # it writes on, there
        moved = await job
        assert (await moved.state())[0] is DomainState.RUNNING
        await moved.shutdown(wait=60)
        check_every_write(serial, disk)


async def test_a_committed_migration_to_an_ssh_host_is_finished_by_the_source_s_next_controller(
        two_dirs: tuple[Path, Path], xml: XMLFactory, sshd: SSHServer) -> None:
    """The source commits, then its controller (which also joined the streams) goes before finish. The
    destination cannot read the source's record: it waits, paused, holding the whole guest. The source's
    next controller ends its QEMU and, by the URI in its record, has the destination run the guest."""
    dest_uri = sshd.uri(two_dirs[1], mode="serve")
    async with avirt.connect(dest_uri) as there:
        at_there = Lifecycle(there)
        source = await avirt.connect(state_dir=two_dirs[0])
        try:
            dom = await source.define_xml(xml("orphan"))
            await dom.start()
            src, dst = source._driver, there._driver
            ends = migration._Ends(src.forwarder(), dst.forwarder(), src.location(), dst.location(), dst.uri)
            live, _, running, _ = await src.migrate_begin("orphan")
            uri, _ = await dst.migrate_prepare(live, source=ends.source_as_seen(), resume=running,
                                               persistent_xml=live)
            async with contextlib.AsyncExitStack() as streams:
                joined = "unix:" + await ends.join(streams, uri.removeprefix("unix:"))
                await src.migrate_ready("orphan", dest=ends.dest_as_seen(), bandwidth=None,
                                        max_downtime=None)
                await src.migrate_perform("orphan", joined)
            assert records(two_dirs[0])[0]["phase"] == "committed"
        finally:
            await source.close()  # gone before finish and confirm
        moved = await there.lookup("orphan")
        assert (await moved.state())[0] is DomainState.PAUSED  # it waits for the source's word
        async with avirt.connect(state_dir=two_dirs[0]) as again:
            await at_there.until(("RESUMED", "migrated"), timeout=60)
            assert await moved.state() == (DomainState.RUNNING, "migrated")
            left = await again.lookup("orphan")
            await wait_for_state(left, DomainState.SHUTOFF)
        assert len(qemu_pids(*two_dirs)) == 1
        with anyio.fail_after(10):  # the record goes just after the guest resumes (a file: no event)
            while records(two_dirs[1]):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert await there.lookup("orphan") == moved  # kept there: its record said persistent
        await moved.destroy()


def test_the_command_moves_a_domain_to_an_ssh_host_over_tls(
        two_dirs: tuple[Path, Path], xml: XMLFactory, tmp_path: Path, sshd: SSHServer) -> None:
    here = CLI(two_dirs[0])
    tlscerts.write_set(*two_dirs)
    (tmp_path / "d.xml").write_text(xml("cli-traveller"))
    here.ok("define", str(tmp_path / "d.xml"))
    here.ok("start", "cli-traveller")
    dest_uri = sshd.uri(two_dirs[1], mode="serve")
    out = here.ok("migrate", "cli-traveller", dest_uri, "--live", "--persistent", "--undefinesource",
                  "--tls", "--verbose")
    assert out.splitlines()[-1] == f"Domain 'cli-traveller' migrated to {dest_uri}"
    assert "cli-traveller" not in here.ok("list", "--all")
    there = CLI(two_dirs[1])  # the SSH host's state directory is on this machine: look at it directly
    assert re.search(r"cli-traveller\s+running", there.ok("list", "--all"))
    there.ok("destroy", "cli-traveller")


async def test_a_guest_moves_between_two_ssh_hosts(
        two_dirs: tuple[Path, Path], xml: XMLFactory, sshd: SSHServer, tmp_path: Path) -> None:
    """Two SSH hosts (two sshds: two machines to avirt): the source's QEMU reaches the destination's
    socket through a path the first sshd forwards here and one the second forwards there."""
    other = start_sshd(tmp_path / "sshd2")
    try:
        async with avirt.connect(sshd.uri(two_dirs[0], mode="serve")) as first, \
                avirt.connect(other.uri(two_dirs[1], mode="direct")) as second:
            dom = await first.define_xml(xml("hopper"))
            await dom.start()
            moved = await (await dom.migrate(second))
            assert await moved.state() == (DomainState.RUNNING, "migrated")
            assert await first.list_domains() == []
            back = await (await moved.migrate(first))
            assert await back.state() == (DomainState.RUNNING, "migrated")
            await back.destroy()
    finally:
        other.drop_connections()
        other.stop()
