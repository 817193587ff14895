"""Live migration between two state directories of this machine (shared storage): real QEMU on both
sides, the tiny guest writing to its disk throughout, libvirt's events on both sides, and every refusal
and failure leaving the guest running in exactly one place."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

import avirt
from avirt import DomainState, EventKind, LifecycleEvent
from avirt.connection import Connection
from avirt.errors import (
    DomainExistsError,
    InsufficientSpaceError,
    InvalidArgumentError,
    MigrationError,
    OperationInvalidError,
)
from tests.guest import BASE_CMDLINE, GuestImages
from tests.images import GUEST_VIEW, backing_chain, make_chain, reads
from tests.test_cli import CLI
from tests.test_served import HOLDER
from tests.waiting import wait_for_serial, wait_for_state
from tests.xmls import XMLFactory

pytestmark = [pytest.mark.anyio]

SLOTS = 8
WRITE = re.compile(r"avirt-wl: i=(\d+) slot=(\d+) pat=0x([0-9a-f]{2})")


@pytest.fixture
def two_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    dirs = tmp_path / "source", tmp_path / "dest"
    yield dirs
    for pidfile in [*dirs[0].glob("run/*/qemu.pid"), *dirs[1].glob("run/*/qemu.pid")]:
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


@pytest.fixture
async def pair(two_dirs: tuple[Path, Path]) -> AsyncIterator[tuple[Connection, Connection]]:
    async with avirt.connect(state_dir=two_dirs[0]) as source, avirt.connect(state_dir=two_dirs[1]) as dest:
        yield source, dest


class Lifecycle:
    """Every lifecycle event of one connection, as (type, detail)."""

    def __init__(self, conn: Connection) -> None:
        self.seen: list[tuple[str, str]] = []
        self._changed = anyio.Event()
        conn.subscribe(self._on, kinds={EventKind.LIFECYCLE})

    def _on(self, event: avirt.Event) -> None:
        assert isinstance(event, LifecycleEvent)
        self.seen.append((event.type.name, event.detail))
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, *wanted: tuple[str, str], timeout: float = 30) -> None:
        with anyio.fail_after(timeout):
            while not all(w in self.seen for w in wanted):
                await self._changed.wait()


async def writing_guest(source: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages,
                        name: str) -> tuple[avirt.Domain, Path, Path]:
    """The tiny guest writing patterns to its disk without end, started and past its tenth write; with
    its disk image and its serial log (which both QEMUs append to)."""
    disk, serial = tmp_path / "disk.qcow2", tmp_path / "serial.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "32M"], check=True)
    dom = await source.define_xml(xml(
        name, type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
        initrd=str(guest_images.initrd), serial_file=str(serial), disks=[("vda", str(disk), "qcow2")],
        cmdline=f"{BASE_CMDLINE} avirt.workload=write avirt.slots={SLOTS} avirt.count=0 avirt.sleep=0"))
    await dom.start()
    await wait_for_serial(serial, "avirt-wl: i=10 ")
    return dom, disk, serial


def check_every_write(serial: Path, disk: Path) -> None:
    """Every write the guest reported is on the disk, whichever QEMU made it (the last per slot)."""
    last: dict[int, int] = {}
    for _, slot, pat in WRITE.findall(serial.read_text()):
        last[int(slot)] = int(pat, 16)
    assert len(last) == SLOTS
    for slot, pat in last.items():
        out = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pat:#x} {slot}M 64k", disk],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "verification failed" not in out.stdout, (slot, out.stdout)


@pytest.mark.guest
async def test_a_writing_guest_moves_and_keeps_every_write(
        pair: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path,
        guest_images: GuestImages) -> None:
    source, dest = pair
    dom, disk, serial = await writing_guest(source, xml, tmp_path, guest_images, "mover")
    at_source, at_dest = Lifecycle(source), Lifecycle(dest)

    job = await dom.migrate(dest)
    seen = [p async for p in job.progress()]
    moved = await job
    assert moved.name == "mover" and moved.uuid == dom.uuid
    assert await moved.state() == (DomainState.RUNNING, "migrated")
    assert await source.list_domains() == []  # undefine_source: gone from the source
    assert (await dest.lookup("mover")) == moved  # persist: defined at the destination
    await at_source.until(("SUSPENDED", "migrated"), ("STOPPED", "migrated"), ("UNDEFINED", "removed"))
    await at_dest.until(("STARTED", "migrated"), ("RESUMED", "migrated"), ("DEFINED", "added"))
    assert at_dest.seen.index(("STARTED", "migrated")) < at_dest.seen.index(("RESUMED", "migrated"))
    assert all(p.ram_total > 0 for p in seen)
    assert job.stats is not None and job.stats.status == "completed" and job.stats.total_ms > 0
    assert job.stats.ram_transferred > 0

    # The guest goes on writing at the destination (into the same log: append='on').
    done = len(WRITE.findall(serial.read_text()))
    await wait_for_serial(serial, f"avirt-wl: i={done + 2 * SLOTS} ")
    await moved.shutdown(wait=60)
    check_every_write(serial, disk)


@pytest.mark.guest
async def test_a_writing_guest_switched_to_postcopy_runs_at_once_at_the_destination(
        pair: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path,
        guest_images: GuestImages) -> None:
    source, dest = pair
    dom, disk, serial = await writing_guest(source, xml, tmp_path, guest_images, "post")
    at_source, at_dest = Lifecycle(source), Lifecycle(dest)
    plain = await dom.migrate(dest)
    with pytest.raises(OperationInvalidError, match="not started with postcopy=True"):
        await plain.postcopy()
    await plain.cancel()
    with pytest.raises(MigrationError):
        await plain
    with pytest.raises(InvalidArgumentError, match="postcopy with parallel"):
        await dom.migrate(dest, postcopy=True, parallel=2)

    # Precopy at 1 MiB/s would take minutes for 256 MiB: the switch moves the guest at once.
    job = await dom.migrate(dest, postcopy=True, bandwidth=2**20)
    async for progress in job.progress():
        if progress.status == "active" and progress.ram_transferred > 0:
            await job.postcopy()
            break
    with pytest.raises(OperationInvalidError, match="too late to cancel"):
        await job.cancel()
    await at_dest.until(("RESUMED", "postcopy"))  # running there while its pages still come
    await at_source.until(("SUSPENDED", "postcopy"))
    done = len(WRITE.findall(serial.read_text()))
    await wait_for_serial(serial, f"avirt-wl: i={done + SLOTS} ", timeout=300)  # it writes on, there
    moved = await job
    assert (await moved.state())[0] is DomainState.RUNNING
    await at_source.until(("STOPPED", "migrated"))
    await moved.shutdown(wait=60)
    check_every_write(serial, disk)


async def test_a_paused_transient_copy_stays_paused_and_the_source_keeps_its_definition(
        pair: tuple[Connection, Connection], xml: XMLFactory) -> None:
    source, dest = pair
    dom = await source.define_xml(xml("idle"))
    await dom.start(paused=True)
    at_source = Lifecycle(source)
    moved = await (await dom.migrate(dest, persist=False, undefine_source=False, max_downtime=50))
    assert (await moved.state())[0] is DomainState.PAUSED
    assert await dom.state() == (DomainState.SHUTOFF, "migrated")
    await at_source.until(("STOPPED", "migrated"))
    await moved.destroy()
    assert await dest.list_domains() == []  # it was transient there


async def test_refusals_come_before_anything_moves(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    source, dest = pair
    off = await source.define_xml(xml("off"))
    with pytest.raises(OperationInvalidError, match="shutoff"):
        await off.migrate(dest)
    dom = await source.define_xml(xml("busy"))
    await dom.start()
    await dest.define_xml(xml("busy"))  # a namesake at the destination
    with pytest.raises(DomainExistsError):
        await (await dom.migrate(dest))
    # The source was made ready while the destination refused: its record goes, the guest runs on.
    assert not list(two_dirs[0].glob("run/*/migration.json"))
    assert (await dom.state())[0] is DomainState.RUNNING
    with pytest.raises(InvalidArgumentError):
        await dom.migrate(dest, copy_storage="some")
    with pytest.raises(InvalidArgumentError):
        await dom.migrate(dest, storage_paths={"vda": "/elsewhere.qcow2"})  # without copy_storage
    with pytest.raises(InvalidArgumentError):
        await dom.migrate(source)
    with pytest.raises(InvalidArgumentError):
        await dom.migrate(dest, bandwidth=0)
    async with avirt.connect("test:///default") as test_conn:
        with pytest.raises(OperationInvalidError):
            await (await dom.migrate(test_conn))
    # The guest never stopped running at the source.
    assert await dom.state() == (DomainState.RUNNING, "booted")
    assert [d.name for d in await dest.list_domains()] == ["busy"]
    assert (await (await dest.lookup("busy")).state())[0] is DomainState.SHUTOFF


async def test_a_cancelled_migration_leaves_the_guest_running_at_the_source(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    await cancel_while_sending(*pair, xml, two_dirs[1])


async def cancel_while_sending(source: Connection, dest: Connection, xml: XMLFactory, dest_dir: Path) -> None:
    """A migration cancelled while QEMU sends memory: the guest runs on at the source, nothing is left
    at the destination."""
    dom = await source.define_xml(xml("slow"))
    await dom.start()
    job = await dom.migrate(dest, bandwidth=32 * 1024)  # a few hundred KiB to send: seconds at this rate
    async for progress in job.progress():
        if progress.status == "active" and progress.ram_transferred > 0:
            await job.cancel()
            break
    with pytest.raises(MigrationError, match="cancelled"):
        await job
    assert (await dom.state())[0] is DomainState.RUNNING
    assert await dest.list_domains() == []
    assert list((dest_dir / "run").glob("*")) == []  # nothing of the destination's QEMU is left


async def test_auto_converge_compression_and_parallel_connections_reach_qemu(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    source, dest = pair
    dom = await source.define_xml(xml("tuned"))
    await dom.start()
    with pytest.raises(InvalidArgumentError, match="1 to 255"):
        await dom.migrate(dest, parallel=0)
    job = await dom.migrate(dest, bandwidth=64 * 1024, auto_converge=True, compressed=True, parallel=2)
    async for progress in job.progress():
        if progress.status == "active":
            caps = {c["capability"]: c["state"]
                    for c in await dom.qemu_monitor_command("query-migrate-capabilities")}
            assert caps["auto-converge"] and caps["xbzrle"] and caps["multifd"]
            params = await dom.qemu_monitor_command("query-migrate-parameters")
            assert params["multifd-channels"] == 2
            arriving = await (await dest.lookup("tuned")).qemu_monitor_command("query-migrate-capabilities")
            assert {c["capability"]: c["state"] for c in arriving}["multifd"]  # it expects the connections
            await job.cancel()  # what was to be seen is seen; a slow stream need not run to its end
            break
    with pytest.raises(MigrationError, match="cancelled"):
        await job
    moved = await (await dom.migrate(dest, parallel=4, compressed=True))  # unthrottled: to the end
    assert (await moved.state())[0] is DomainState.RUNNING


async def test_a_migration_cancelled_before_it_sends_or_after_it_ended(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    source, dest = pair
    dom = await source.define_xml(xml("early"))
    await dom.start()
    job = await dom.migrate(dest)
    assert job.phase in ("begin", "prepare")  # the job's task has not reached perform yet
    await job.cancel()
    with pytest.raises(MigrationError, match="cancelled"):
        await job
    assert (await dom.state())[0] is DomainState.RUNNING
    assert await dest.list_domains() == []
    assert list((two_dirs[1] / "run").glob("*")) == []  # the destination QEMU prepared for it is gone
    done = await dom.migrate(dest)
    moved = await done
    with pytest.raises(OperationInvalidError, match="too late to cancel"):
        await done.cancel()
    assert (await moved.state())[0] is DomainState.RUNNING


async def test_a_destination_qemu_killed_mid_migration_leaves_the_guest_running_at_the_source(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    source, dest = pair
    dom = await source.define_xml(xml("victim"))
    await dom.start()
    job = await dom.migrate(dest, bandwidth=32 * 1024)  # seconds at this rate: time to pull the plug
    async for progress in job.progress():
        if progress.status == "active" and progress.ram_transferred > 0:
            pid = int((two_dirs[1] / "run/victim/qemu.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            break
    with pytest.raises(MigrationError):
        await job
    assert (await dom.state())[0] is DomainState.RUNNING
    assert (await dom.qemu_monitor_command("query-status"))["status"] == "running"
    assert await dest.list_domains() == []
    with anyio.fail_after(30):
        while list((two_dirs[1] / "run").glob("*")):  # noqa: ASYNC110 (the dead QEMU's run directory goes)
            await anyio.sleep(0.05)
    again = await dom.migrate(dest)  # and the guest can still move
    moved = await again
    assert (await moved.state())[0] is DomainState.RUNNING


def test_the_command_moves_a_domain_with_virsh_s_flags(
        two_dirs: tuple[Path, Path], xml: XMLFactory, tmp_path: Path) -> None:
    source, dest = CLI(two_dirs[0]), CLI(two_dirs[1])
    (tmp_path / "d.xml").write_text(xml("cli-mover"))
    source.ok("define", str(tmp_path / "d.xml"))
    source.ok("start", "cli-mover")
    assert "--live" in source.fails("migrate", "cli-mover", "qemu:///session",
                                    "--dest-state-dir", str(two_dirs[1]))
    out = source.ok("migrate", "cli-mover", "qemu:///session", "--dest-state-dir", str(two_dirs[1]),
                    "--live", "--persistent", "--undefinesource", "--verbose", "--max-downtime", "100")
    assert out.splitlines()[-2:] == ["Migration: [100 %]", "Domain 'cli-mover' migrated to qemu:///session"]
    assert "cli-mover" not in source.ok("list", "--all")
    assert re.search(r"cli-mover\s+running", dest.ok("list", "--all"))
    assert "needs --postcopy" in dest.fails("migrate", "cli-mover", "qemu:///session", "--dest-state-dir",
                                             str(two_dirs[0]), "--live", "--postcopy-after-precopy")
    dest.ok("migrate", "cli-mover", "qemu:///session", "--dest-state-dir", str(two_dirs[0]), "--live",
            "--postcopy", "--postcopy-after-precopy", "--auto-converge", "--compressed")  # and back
    assert re.search(r"cli-mover\s+running", source.ok("list", "--all"))
    source.ok("destroy", "cli-mover")


async def test_a_guest_migrates_back_onto_its_own_definition(
        pair: tuple[Connection, Connection], xml: XMLFactory) -> None:
    source, dest = pair
    dom = await source.define_xml(xml("roundtrip"))
    await dom.start()
    there = await (await dom.migrate(dest, persist=False, undefine_source=False))
    assert await dom.state() == (DomainState.SHUTOFF, "migrated")
    back = await (await there.migrate(source))  # onto the shut-off definition of the same UUID
    assert back == dom and await back.state() == (DomainState.RUNNING, "migrated")
    assert await dest.list_domains() == []
    await back.destroy()
    assert (await dom.state())[0] is DomainState.SHUTOFF  # still defined here


@pytest.fixture
def dest_holder(two_dirs: tuple[Path, Path]) -> Iterator[subprocess.Popen[str]]:
    """Another program holding the destination's state directory."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(two_dirs[1])], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "serving"
    yield process
    process.kill()
    process.wait(timeout=30)


async def test_a_guest_moves_into_a_state_directory_another_program_holds(
        two_dirs: tuple[Path, Path], xml: XMLFactory, dest_holder: subprocess.Popen[str]) -> None:
    """The destination's controller is another process: every destination phase goes through the served
    protocol to it, and its own subscribers see the guest arrive."""
    async with avirt.connect(state_dir=two_dirs[0]) as source, avirt.connect(state_dir=two_dirs[1]) as dest:
        assert not dest.serving
        dom = await source.define_xml(xml("handed"))
        await dom.start()
        at_dest = Lifecycle(dest)
        moved = await (await dom.migrate(dest))
        assert await moved.state() == (DomainState.RUNNING, "migrated")
        await at_dest.until(("STARTED", "migrated"), ("RESUMED", "migrated"), ("DEFINED", "added"))
        assert await source.list_domains() == []
        await moved.destroy()


# -- controllers killed mid-migration ---------------------------------------------------------------------

SOURCE = textwrap.dedent("""
    import sys, anyio, avirt
    async def main():
        where = sys.argv[2]  # the destination: a state directory here, or a URI
        async with avirt.connect(state_dir=sys.argv[1]) as source, (
                avirt.connect(where) if "://" in where else avirt.connect(state_dir=where)) as dest:
            dom = await source.define_xml(sys.stdin.read())
            await dom.start()
            job = await dom.migrate(dest, bandwidth=16 * 1024)
            async for p in job.progress():
                if p.status == "active" and p.ram_transferred > 0:
                    print("sending", flush=True)
                    await anyio.sleep_forever()  # until the test kills this controller
    anyio.run(main)
""")


def qemu_pids(*dirs: Path) -> list[int]:
    pids = []
    for d in dirs:
        for pidfile in d.glob("run/*/qemu.pid"):
            try:
                pid = int(pidfile.read_text())
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                continue
            pids.append(pid)
    return pids


async def kill_source_while_sending(source_dir: Path, dest: str, watcher: Connection,
                                    xml: XMLFactory) -> None:
    """A controller in another process (SOURCE) migrates "killed" to ``dest`` (a state directory or a
    URI) and is SIGKILLed while QEMU sends; ``watcher`` (a connection to the destination) saw it arrive."""
    source_proc = await anyio.open_process([sys.executable, "-c", SOURCE, str(source_dir), dest])
    try:
        assert source_proc.stdin is not None and source_proc.stdout is not None
        await source_proc.stdin.send(xml("killed").encode())
        await source_proc.stdin.aclose()
        with anyio.fail_after(60):
            assert (await source_proc.stdout.receive()).startswith(b"sending")
        assert [d.name for d in await watcher.list_domains()] == ["killed"]  # waiting for the guest
    finally:
        source_proc.kill()
        await source_proc.wait()


async def test_a_source_controller_killed_while_sending_keeps_the_guest_at_the_source(
        two_dirs: tuple[Path, Path], xml: XMLFactory) -> None:
    async with avirt.connect(state_dir=two_dirs[1]) as dest:  # this process holds the destination
        at_dest = Lifecycle(dest)
        await kill_source_while_sending(two_dirs[0], str(two_dirs[1]), dest, xml)
        # A new controller of the source finds the record of a migration nobody committed.
        async with avirt.connect(state_dir=two_dirs[0]) as source:
            dom = await source.lookup("killed")
            await at_dest.until(("STOPPED", "failed"), timeout=60)  # its stream was cancelled: QEMU ended
            assert await dest.list_domains() == []
            assert (await dom.state())[0] is DomainState.RUNNING
            assert len(qemu_pids(*two_dirs)) == 1  # one QEMU: the source's
            await dom.destroy()


async def committed(pair: tuple[Connection, Connection], definition: str, *, persist: bool) -> avirt.Domain:
    """A guest started at the source and taken, phase by phase, as far as the source's commit."""
    source, dest = pair
    dom = await source.define_xml(definition)
    await dom.start()
    src, dst = source._driver, dest._driver
    live, _, running, _ = await src.migrate_begin(dom.name)
    uri, _ = await dst.migrate_prepare(live, source=src.location(), resume=running,
                                       persistent_xml=live if persist else None)
    await src.migrate_ready(dom.name, dest=dst.location(), bandwidth=None, max_downtime=None)
    await src.migrate_perform(dom.name, uri)
    return dom


async def test_a_committed_migration_nobody_finished_is_settled_by_both_sides_records(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    """The source commits, then its controller goes away before finish: the destination, after its grace
    period, reads the source's record and runs the guest; a new source controller ends its QEMU."""
    source, dest = pair
    await committed(pair, xml("orphan"), persist=True)
    at_dest = Lifecycle(dest)
    await source.close()  # the source's controller is gone before finish and confirm
    moved = await dest.lookup("orphan")
    await at_dest.until(("RESUMED", "migrated"), timeout=60)
    assert await moved.state() == (DomainState.RUNNING, "migrated")
    assert len(qemu_pids(*two_dirs)) == 2  # the source's QEMU waits, paused, for its controller
    async with avirt.connect(state_dir=two_dirs[0]) as again:
        left = await again.lookup("orphan")
        await wait_for_state(left, DomainState.SHUTOFF)
        assert await left.state() == (DomainState.SHUTOFF, "migrated")
    assert len(qemu_pids(*two_dirs)) == 1
    assert (await dest.lookup("orphan")) == moved  # kept there: the record said persistent


async def test_a_finish_asked_again_does_nothing_and_the_arrived_guest_is_not_given_up(
        pair: tuple[Connection, Connection], xml: XMLFactory, two_dirs: tuple[Path, Path]) -> None:
    """A caller that lost the answer to finish (a dropped connection) may ask again, or unwind: neither
    may end the guest that runs at the destination now."""
    source, dest = pair
    dom = await committed(pair, xml("asked-twice"), persist=False)
    src, dst = source._driver, dest._driver
    await dst.migrate_finish("asked-twice", ok=True, resume=True, persistent_xml=None)
    await dst.migrate_finish("asked-twice", ok=True, resume=True, persistent_xml=None)
    with pytest.raises(OperationInvalidError, match="too late to give it up"):
        await dst.migrate_finish("asked-twice", ok=False, resume=False, persistent_xml=None)
    moved = await dest.lookup("asked-twice")
    assert await moved.state() == (DomainState.RUNNING, "migrated")
    await src.migrate_confirm("asked-twice", ok=True, undefine=False, resume=False)
    assert (await dom.state())[0] is DomainState.SHUTOFF
    assert len(qemu_pids(*two_dirs)) == 1
    await moved.destroy()


async def test_a_closed_connection_refuses_calls_that_still_come(two_dirs: tuple[Path, Path]) -> None:
    """A migration's task holds both connections; the destination's may be closed under it."""
    conn = await avirt.connect(state_dir=two_dirs[0])
    await conn.close()
    with pytest.raises(OperationInvalidError, match="is closed"):
        await conn._driver.migrate_finish("gone", ok=False, resume=False, persistent_xml=None)


# -- storage copy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["all", "inc"])
async def test_copied_storage_carries_every_layer_s_data(
        pair: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path, mode: str) -> None:
    source, dest = pair
    chain = make_chain(tmp_path)  # base 0x11 <- snap1 0x22 <- snap2 0x33 <- active 0x44
    dom = await source.define_xml(xml("copied", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    new_top = tmp_path / "elsewhere.qcow2"
    moved = await (await dom.migrate(dest, copy_storage=mode, storage_paths={"vda": str(new_top)}))
    assert "elsewhere.qcow2" in await moved.xml()
    await moved.destroy()
    assert reads(new_top, GUEST_VIEW) == []  # the guest's whole view, through the new image
    if mode == "all":  # flattened: the new image alone holds it all
        assert backing_chain(new_top) == [str(new_top)]
    else:  # only the top layer moved, onto the same backing chain
        assert backing_chain(new_top) == [str(new_top), str(chain.snap2), str(chain.snap1), str(chain.base)]
        assert reads(new_top, ((0x44, 3, 2),), alone=True) == []
    assert reads(chain.active, GUEST_VIEW) == []  # the source's images are untouched


async def test_a_storage_copy_is_refused_before_anything_is_made(
        pair: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path) -> None:
    source, dest = pair
    chain = make_chain(tmp_path)
    dom = await source.define_xml(xml("refused", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    with pytest.raises(InvalidArgumentError, match="storage_paths"):  # the same file, on one machine
        await dom.migrate(dest, copy_storage="all")
    with pytest.raises(InvalidArgumentError, match="vdz"):
        await dom.migrate(dest, copy_storage="all", storage_paths={"vda": str(tmp_path / "n"), "vdz": "/x"})
    taken = tmp_path / "taken.qcow2"
    taken.write_bytes(b"someone's data")
    with pytest.raises(OperationInvalidError, match="exists"):
        await (await dom.migrate(dest, copy_storage="all", storage_paths={"vda": str(taken)}))
    assert taken.read_bytes() == b"someone's data"
    assert await dom.state() == (DomainState.RUNNING, "booted")
    assert await dest.list_domains() == []


async def test_a_storage_copy_gives_each_disk_an_image_of_its_own(
        pair: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path) -> None:
    source, dest = pair
    images = [tmp_path / "a.qcow2", tmp_path / "b.qcow2"]
    for image in images:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    dom = await source.define_xml(xml("two", disks=[("vda", str(images[0]), "qcow2"),
                                                    ("vdb", str(images[1]), "qcow2")]))
    await dom.start()
    one = tmp_path / "one.qcow2"
    with pytest.raises(InvalidArgumentError, match=r"one image per disk: .*one\.qcow2 is given to vda, vdb"):
        await dom.migrate(dest, copy_storage="all", storage_paths={"vda": str(one), "vdb": str(one)})
    assert not one.exists() and await dest.list_domains() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem to fill needs root")
async def test_a_storage_copy_that_cannot_fit_is_refused_before_anything_is_made(
        pair: tuple[Connection, Connection], xml: XMLFactory, tmp_path: Path) -> None:
    source, dest = pair
    chain = make_chain(tmp_path)  # its layers hold several MiB of data
    dom = await source.define_xml(xml("roomy", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    try:
        with pytest.raises(InsufficientSpaceError, match="copy storage into") as refused:
            await (await dom.migrate(dest, copy_storage="all",
                                     storage_paths={"vda": str(small / "new.qcow2")}))
        assert refused.value.needed > refused.value.available
        assert list(small.iterdir()) == [] and await dest.list_domains() == []
        assert await dom.state() == (DomainState.RUNNING, "booted")
    finally:
        subprocess.run(["umount", small], check=True)
