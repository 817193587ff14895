"""Chaos: many block jobs at once, the controller killed (SIGKILL) at random moments, again and again.

20 guests with no OS (SeaBIOS looking for a boot disk), 15 running and 5 shut off, 55 disks. Each round:

1. the test's own connection grows every disk by one layer (a disk snapshot) and writes a pattern into the
   new active image: through QEMU on a running guest (HMP ``qemu-io`` on the disk's device, as a guest
   write), with qemu-io on a shut-off guest's file. The model of each disk is what every offset must read;
2. a separate controller (``tests/chaos_controller.py``) starts 50 block jobs at once: online commits
   (pivoted by avirt or by the controller), intermediate commits, pulls and copies, throttled with
   ``bandwidth=``, and offline commits and pulls (qemu-img), and prints a line per event; the test kills it
   after a number of lines drawn from a seeded ``random.Random``: reproducible, and synchronised on the
   controller's own events, never on the clock;
3. the test checks that no qemu-img of the dead controller lives on, reconnects, and accounts for every
   job: ended before the kill (its line), or handed out by ``block_job()`` (running, adopted and driven
   to its end here, or settled while nobody watched), or, if neither, its effect is in the chain; then
   every chain opens, the live and persistent definitions and QEMU name the same top image, every
   pattern reads back through it, and no image of a shut-off guest is locked.

Every job that completed must have the effect its kind has on the chain; every other one none.

What it found: QEMU 7.2 crashing in
``query-named-block-nodes`` beside a concluded stream job (node names are now read from the run
directory), node names of dropped nodes clashing after a reattach, a concurrent write of jobs.json
losing a running job, and an offline pull killed while qemu-img wrote its header losing data.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import avirt
from avirt import BlockJobStatus, JobPhase
from avirt.connection import Connection
from avirt.errors import BlockJobError, OperationInvalidError

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

SEED = 20240512
ROUNDS = int(os.environ.get("AVIRT_CHAOS_ROUNDS", "12"))  # more for a longer hunt
RUNNING, SHUT_OFF = 15, 5
ONLINE_DISKS, OFFLINE_DISKS = ("vda", "vdb", "vdc"), ("vda", "vdb")
JOBS = 50
KiB, MiB = 1 << 10, 1 << 20
SLOT = 64 * KiB
ONLINE_SIZE, OFFLINE_SIZE = 4 * MiB, 32 * MiB
#: Shut-off guests' base images hold this much data, so that a qemu-img pull has work to be killed in.
BULK = (8 * MiB, 16 * MiB)
ONLINE_OPS = ("commit", "commit-manual", "commit-top", "pull", "copy")
OFFLINE_OPS = ("offline-commit", "offline-pull")
BANDWIDTHS = (0, 512 * KiB, 2 * MiB)
LINE_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0


@dataclass
class Disk:
    domain: str
    target: str
    index: int
    online: bool
    chain: list[str]  # top first, as the model says it must be
    view: dict[int, int] = field(default_factory=dict)  # slot -> pattern
    last: str = ""  # the last job on it and its outcome, for failure messages

    @property
    def device(self) -> str:
        return f"{self.target}/virtio-backend"  # the qdev path of the disk's block backend


@dataclass
class Job:
    disk: Disk
    op: str
    bandwidth: int
    dest: str | None
    before: list[str]
    started: str | None = None  # the job id the controller printed
    ended: str | None = None  # the status the controller printed

    def effect(self) -> list[str]:
        """The disk's chain once the job has completed."""
        top, bottom = self.before[0], self.before[-1]
        return {"commit": [bottom], "commit-manual": [bottom], "offline-commit": [bottom],
                "commit-top": [top, bottom], "pull": [top], "offline-pull": [top],
                "copy": [self.dest or ""]}[self.op]


def pattern(disk: Disk, round_: int) -> int:
    return (disk.index * 7 + round_ * 13) % 254 + 1  # never 0: unwritten clusters read as 0


def domain_xml(name: str, disks: list[Disk]) -> str:
    devices = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{d.chain[0]}'/><target dev='{d.target}' bus='virtio'/></disk>" for d in disks)
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{devices}</devices></domain>")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def make_disks(images: Path) -> dict[str, list[Disk]]:
    domains: dict[str, list[Disk]] = {}
    index = 0
    for number in range(RUNNING + SHUT_OFF):
        online = number < RUNNING
        name = f"chaos{number:02d}"
        domains[name] = []
        for target in ONLINE_DISKS if online else OFFLINE_DISKS:
            path = images / f"{name}-{target}.qcow2"
            disk = Disk(name, target, index, online, [str(path)])
            index += 1
            size = ONLINE_SIZE if online else OFFLINE_SIZE
            run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size))
            first = pattern(disk, ROUNDS + 1)
            commands = ["-c", f"write -P {first} 0 {SLOT}", "-c", f"write -P {first} {40 * SLOT} {SLOT}"]
            if not online:
                commands += ["-c", f"write -P {first} {BULK[0]} {BULK[1]}"]
            assert run("qemu-io", "-f", "qcow2", *commands, str(path)).returncode == 0
            disk.view = {0: first, 40: first}
            domains[name].append(disk)
    return domains


def reads(disk: Disk) -> list[str]:
    """Mismatches between what the disk's top image shows and the model (one qemu-io run)."""
    commands = [f"read -P {p} {slot * SLOT} {SLOT}" for slot, p in sorted(disk.view.items())]
    commands.append(f"read -P 0 {63 * SLOT} {SLOT}")  # never written
    if not disk.online:
        commands.append(f"read -P {pattern(disk, ROUNDS + 1)} {BULK[0]} {BULK[1]}")
    argv = ["qemu-io", "-r", "-U", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    result = run(*argv, disk.chain[0])
    if result.returncode != 0 or "verification failed" in result.stdout:
        failed = [line for line in result.stdout.splitlines() if "failed" in line]
        return [f"{disk.domain} {disk.target} ({disk.chain[0]}, after {disk.last}): {failed} {result.stderr}"]
    return []


def opened_chain(top: str, *, share: bool = True) -> list[str]:
    result = run("qemu-img", "info", *(["-U"] if share else []), "--backing-chain", "--output=json", top)
    assert result.returncode == 0, result.stderr
    return [layer["filename"] for layer in json.loads(result.stdout)]


def sources(xml_text: str) -> dict[str, str]:
    return {d.find("target").get("dev"): d.find("source").get("file")  # type: ignore[union-attr]
            for d in ET.fromstring(xml_text).iter("disk")}


def survivors(images: Path) -> Iterator[int]:
    """Pids of qemu-img processes working on this test's images."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"qemu-img") and any(str(images).encode() in a for a in argv):
                yield int(entry.name)


async def no_survivors(images: Path) -> None:
    """Every qemu-img of the killed controller dies with it (or ends by itself: an image creation)."""
    for pid in list(survivors(images)):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            with anyio.fail_after(10):
                await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)


async def controller(state_dir: Path, plan: list[Job], kill_after: int) -> list[str]:
    """Run one controller with ``plan``; SIGKILL it after ``kill_after`` lines (or once it is done)."""
    specs = [{"domain": j.disk.domain, "disk": j.disk.target, "op": j.op, "bandwidth": j.bandwidth,
              "dest": j.dest} for j in plan]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    lines: list[str] = []
    async with await anyio.open_process([sys.executable, "-m", "tests.chaos_controller", str(state_dir)],
                                        env=env, stderr=subprocess.DEVNULL) as process:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(json.dumps(specs).encode())
        await process.stdin.aclose()
        stream = BufferedByteReceiveStream(process.stdout)
        while len(lines) < kill_after and (not lines or lines[-1] != "done"):
            with anyio.fail_after(LINE_TIMEOUT):
                lines.append((await stream.receive_until(b"\n", 1 << 16)).decode())
        process.kill()
        assert await process.wait() == -signal.SIGKILL
    return lines


async def settle(conn: Connection, job: Job) -> BlockJobStatus | None:
    """The job's outcome, driving an adopted job to its end; None if nothing says it ran."""
    dom = await conn.lookup(job.disk.domain)
    handle = await dom.block_job(job.disk.target)
    if handle is not None:
        assert job.started in (None, handle.id), (job.started, handle.id)
        with anyio.fail_after(SETTLE_TIMEOUT):
            try:
                if not handle.ended and handle.bandwidth:
                    await handle.set_speed(0)
                if not handle.ended and job.op == "commit-manual":
                    await handle.wait_ready()
                    if handle.phase is JobPhase.READY:
                        await handle.pivot()
                return await handle.wait()
            except OperationInvalidError:  # it ended meanwhile
                return await handle.wait()
            except BlockJobError:
                return BlockJobStatus.FAILED
    if job.ended is not None:
        return BlockJobStatus(job.ended)
    return None


async def account(conn: Connection, plan: list[Job]) -> None:
    """Every job's outcome is known, and the chain says the same."""
    for job in plan:
        dom = await conn.lookup(job.disk.domain)
        status = await settle(conn, job)
        top = sources(await dom.xml())[job.disk.target]
        now = opened_chain(top)
        if status is None:
            # Neither the dead controller's lines nor the new one know it: it did nothing, or it completed
            # and was settled by the dead controller just before the kill (its effect is then there).
            assert now in (job.before, job.effect()), (job, now)
            assert job.started is None or now == job.effect(), f"{job}: started, then lost"
            status = BlockJobStatus.COMPLETED if now == job.effect() else None
        job.disk.last = f"{job.op} bandwidth {job.bandwidth}: {status} (lines: {job.started}, {job.ended})"
        if status is BlockJobStatus.COMPLETED:
            assert now == job.effect(), (job, now)
            job.disk.chain = now
        else:
            assert now == job.before, (job, status, now)


def check(tops: dict[str, tuple[dict[str, str], ...]], domains: dict[str, list[Disk]],
          running: set[str]) -> None:
    problems = []
    for name, disks in domains.items():
        for disk in disks:
            named = {said[disk.target] for said in tops[name]}
            assert named == {disk.chain[0]}, (disk, tops[name])
            assert opened_chain(disk.chain[0], share=name in running) == disk.chain, disk
            problems += reads(disk)
    assert problems == []


async def snapshot_and_write(conn: Connection, domains: dict[str, list[Disk]], round_: int,
                             running: set[str]) -> None:
    for name, disks in domains.items():
        dom = await conn.lookup(name)
        overlays = await dom.snapshot_disks(f"r{round_}")
        for disk in disks:
            disk.chain.insert(0, overlays[disk.target])
            p = pattern(disk, round_)
            for slot in (0, round_ + 1):
                if name in running:
                    said = await dom.qemu_monitor_command("human-monitor-command", {
                        "command-line": f'qemu-io -d {disk.device} "write -P {p} {slot * SLOT} {SLOT}"'})
                    assert said == "", said
                else:
                    assert run("qemu-io", "-f", "qcow2", "-c", f"write -P {p} {slot * SLOT} {SLOT}",
                               disk.chain[0]).returncode == 0
                disk.view[slot] = p


def plan_round(rng: random.Random, domains: dict[str, list[Disk]], images: Path, round_: int) -> list[Job]:
    online = [d for disks in domains.values() for d in disks if d.online]
    offline = [d for disks in domains.values() for d in disks if not d.online]
    plan = []
    for disk in rng.sample(online, JOBS - len(offline)) + offline:
        ops = OFFLINE_OPS if not disk.online else tuple(
            op for op in ONLINE_OPS if op != "commit-top" or len(disk.chain) >= 3)
        op = rng.choice(ops)
        dest = str(images / f"{disk.domain}-{disk.target}-copy{round_}.qcow2") if op == "copy" else None
        plan.append(Job(disk, op, rng.choice(BANDWIDTHS) if disk.online else 0, dest, list(disk.chain)))
    return plan


async def tops(conn: Connection, running: set[str]) -> dict[str, tuple[dict[str, str], ...]]:
    """Each domain's disk -> top image, as its live definition, its persistent one and QEMU name it.
    A running guest's disks are flushed first, so that the image files say all that QEMU wrote."""
    said = {}
    for dom in await conn.list_domains():
        named = [sources(await dom.xml()), sources(await dom.xml(inactive=True))]
        if dom.name in running:
            for target in named[0]:  # QEMU's caches (qcow2 metadata) to the files that the test reads
                said_ = await dom.qemu_monitor_command("human-monitor-command", {
                    "command-line": f'qemu-io -d {target}/virtio-backend "flush"'})
                assert said_ == "", said_
            named.append({block["qdev"].split("/")[3]: block["inserted"]["image"]["filename"]
                          for block in await dom.qemu_monitor_command("query-block")})
        said[dom.name] = tuple(named)
    return said


@pytest.mark.timeout(400)
async def test_chaos(state_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    images = tmp_path / "images"
    images.mkdir()
    domains = make_disks(images)
    running = set(list(domains)[:RUNNING])
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        for name, disks in domains.items():
            dom = await conn.define_xml(domain_xml(name, disks))
            if name in running:
                await dom.start()
    plan: list[Job] = []
    kills = []
    for round_ in range(ROUNDS + 1):
        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            await account(conn, plan)
            for name in domains:
                state, _ = await (await conn.lookup(name)).state()
                assert (state is avirt.DomainState.RUNNING) == (name in running), (name, state)
            check(await tops(conn, running), domains, running)
            assert not any(state_dir.glob("offline/*/*.json"))  # every offline job finished
            for jobs_file in state_dir.glob("run/*/jobs.json"):
                assert json.loads(jobs_file.read_text()) == {}, jobs_file
            if round_ == ROUNDS:
                for name in running:
                    await (await conn.lookup(name)).destroy()
                break
            await snapshot_and_write(conn, domains, round_, running)
        plan = plan_round(rng, domains, images, round_)
        kill_after = rng.randint(1, 2 * JOBS + 20)
        lines = await controller(state_dir, plan, kill_after)
        kills.append(len(lines))
        await no_survivors(images)
        by_disk = {(j.disk.domain, j.disk.target): j for j in plan}
        for line in lines:
            word, *rest = line.split()
            if word == "started":
                by_disk[(rest[0], rest[1])].started = rest[2]
            elif word == "ended":
                by_disk[(rest[0], rest[1])].ended = rest[2]
    # Every QEMU has gone: every chain opens without sharing (nothing is left locked), the data is there.
    for disks in domains.values():
        for disk in disks:
            assert opened_chain(disk.chain[0], share=False) == disk.chain
            assert reads(disk) == []
    assert len(set(kills)) > ROUNDS // 2, kills  # the kills landed at many different moments
