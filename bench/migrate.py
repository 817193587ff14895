"""Migration benchmark: a live migration on this machine, avirt beside the same QMP steps run bare.

The guest: the tests' tiny Linux guest (TCG), 256 MiB of memory, a 1 GiB qcow2 disk it keeps writing to
(the write workload: 64 KiB patterns with fsync, so memory is dirtied while it migrates), booted once
per side for every run, each side with its own disk. Storage is shared (both QEMUs of a migration open
the same image), then copied (below).

**Turns.** The two sides run in one process and take turns, one migration each, the side that goes
first alternating; a side's guest is paused outside its turns, so each migration runs beside one idle
QEMU of the other side whichever it is. Load that comes and goes on the machine thus falls on both
sides alike (run one side after the other, and a few busy seconds decide the ratio).

* **avirt**: two state directories; ``dom.migrate(dest, persist=False, undefine_source=False)`` then
  ``await job``, back and forth, ``--runs`` times after one that warms up (the definition stays where
  it was first defined, and the guest migrates back onto it; the bare side defines nothing either).
  Timed: from the call to the job's end (the destination runs, the source QEMU is gone).
* **bare** (BASELINE): the same QEMU command line (``build_argv`` on the definition avirt stored), the
  source spawned as avirt spawns QEMU (``rawqemu.py``) and booted the same way; each run spawns the
  destination with ``-incoming defer``, then with bare qemu.qmp clients: migration events on at both ends,
  ``migrate-incoming`` on a unix socket, ``migrate-set-parameters`` as avirt sets them, ``migrate``, wait
  for both MIGRATION ``completed`` events, ``cont`` at the destination, ``quit`` the source and wait for
  its end. Then the roles swap.

**Copied storage** (``--storage copy``, or both with the default ``--storage both``): the same, with each
migration copying the disk into a new image at the destination. avirt: ``copy_storage="all"`` with a new
``storage_paths`` image each run. Bare: the destination's image made with ``qemu-img create``, the
destination's NBD server exporting its disk node, the source's ``blockdev-add`` of that export and a
``blockdev-mirror`` (sync full) until READY, then ``migrate`` with ``pause-before-switchover``, the
mirror cancelled at the pause (which completes a READY mirror), ``migrate-continue``, and the NBD server
stopped before ``cont`` — the steps avirt takes.

**Between machines** (``--ssh``): avirt again, the second state directory now an SSH host's
(``qemu+ssh://`` to the tests' sshd on 127.0.0.1, through the host's avirt), so each migration's streams
go through OpenSSH's unix-socket forwarding (``avirt/hosts/forwarding.py``). No target: it says what the
SSH connection costs against avirt on one machine (its encryption on these same two cores).

Both sides report QEMU's own downtime (``query-migrate`` at the source once completed). Targets: avirt's
median total within 1.05x of bare, its median downtime no worse than bare's (+1 ms, QEMU's resolution).
libvirt refuses to migrate a guest to the same host, so it cannot give a figure here.

::

    .venv/bin/python bench/migrate.py              # table
    .venv/bin/python bench/migrate.py --json       # one JSON object: config, avirt, bare, ratio, targets
    .venv/bin/python bench/migrate.py --calibrate  # A/A: two bare sides, what the bench reads for equals
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import rawqemu
from qemu.qmp import QMPClient
from rawqemu import RawGuest, kill_leftovers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio.lowlevel

import avirt
from avirt.config import parse_domain_xml
from avirt.drivers.qemu.cmdline import Layer, build_argv
from avirt.drivers.qemu.migration import UNLIMITED
from avirt.models import DomainState
from tests import sshd as test_sshd
from tests.guest import BASE_CMDLINE, build_guest

TARGET_RATIO = 1.05
READY = "avirt-wl: i=5 "


def guest_xml(tmp: Path, tag: str) -> str:
    """The guest of one side (``tag``): its own 1 GiB disk and console log, all else the same."""
    images = build_guest()
    disk = tmp / f"disk-{tag}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    return f"""<domain type='qemu'><name>mig-{tag}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{images.kernel}</kernel>
    <initrd>{images.initrd}</initrd>
    <cmdline>{BASE_CMDLINE} avirt.workload=write avirt.slots=16 avirt.count=0 avirt.sleep=0</cmdline></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
    <target dev='vda' bus='virtio'/></disk>
  <serial type='file'><source path='{serial_log(tmp, tag)}' append='on'/></serial></devices></domain>"""


def serial_log(tmp: Path, tag: str) -> Path:
    return tmp / f"serial-{tag}.log"


async def _migration_done(client: QMPClient) -> None:
    with client.listener("MIGRATION") as events:
        async for event in events:
            if event["data"]["status"] in ("completed", "failed", "cancelled"):
                if event["data"]["status"] != "completed":
                    raise RuntimeError(f"bare migration {event['data']['status']}")
                return


async def _event(client: QMPClient, name: str, key: str, wanted: str) -> None:
    """Until ``client``'s QEMU sends event ``name`` whose ``data[key]`` is ``wanted``."""
    with client.listener(name) as events:
        async for event in events:
            if event["data"].get(key) == wanted:
                return


async def _copy_disk(source: QMPClient, dest: QMPClient, sock: Path) -> None:
    """The storage copy's first part: the destination exports its new disk, the source mirrors into it
    until READY."""
    await dest.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})
    await dest.execute("block-export-add", {"type": "nbd", "id": "mig-vda", "node-name": "vda-1",
                                            "name": "vda", "writable": True})
    await source.execute("blockdev-add", {"driver": "nbd", "node-name": "mig-vda", "export": "vda",
                                          "server": {"type": "unix", "path": str(sock)}})
    async with anyio.create_task_group() as group:
        group.start_soon(_event, source, "BLOCK_JOB_READY", "device", "mig-vda")
        await anyio.lowlevel.checkpoint()
        await source.execute("blockdev-mirror", {"job-id": "mig-vda", "device": "vda-1", "target": "mig-vda",
                                                 "sync": "full", "speed": 0})


async def _switch_over(source: QMPClient) -> None:
    """The storage copy's last part: at QEMU's pause before the switch-over, the mirror completes
    (a READY mirror cancelled writes what is left), its NBD node goes, and the migration continues."""
    async with anyio.create_task_group() as group:
        group.start_soon(_event, source, "BLOCK_JOB_COMPLETED", "device", "mig-vda")
        await anyio.lowlevel.checkpoint()
        await source.execute("block-job-cancel", {"device": "mig-vda"})
    await source.execute("blockdev-del", {"node-name": "mig-vda"})
    await source.execute("migrate-continue", {"state": "pre-switchover"})


async def _pause_then_switch(source: QMPClient) -> None:
    await _event(source, "MIGRATION", "status", "pre-switchover")
    await _switch_over(source)


async def wait_serial(path: Path, marker: str, timeout: float = 120) -> None:
    """Until the guest's console shows ``marker`` (a file QEMU appends to: read it every 50 ms)."""
    with anyio.fail_after(timeout):
        while True:
            file = anyio.Path(path)
            if await file.exists() and marker in await file.read_text():
                return
            await anyio.sleep(0.05)


class Side:
    """One side of the comparison: a guest booted once, migrated back and forth one turn at a time, and
    paused between its turns (so the other side's migrations run beside an idle QEMU, not a busy one).
    ``copy``: the migrations copy the storage (else it is shared)."""

    copy = False
    count = 0  # migrations so far: each names its new image and run directory after it

    async def migrate(self) -> tuple[float, int]:
        """One migration: its total time in seconds and QEMU's downtime in ms."""
        raise NotImplementedError

    async def pause(self) -> None:
        raise NotImplementedError

    async def resume(self) -> None:
        raise NotImplementedError


class AvirtSide(Side):
    """avirt back and forth between two connections (``a`` and ``b``)."""

    def __init__(self, tmp: Path, a: avirt.Connection, b: avirt.Connection, tag: str) -> None:
        self.tmp, self.tag = tmp, tag
        self.here, self.there = a, b
        self.dom: avirt.Domain | None = None

    async def boot(self, xml: str, serial: Path) -> None:
        self.dom = await self.here.define_xml(xml)
        await self.dom.start()
        await wait_serial(serial, READY)

    async def migrate(self) -> tuple[float, int]:
        assert self.dom is not None
        i = self.count = self.count + 1
        storage: dict[str, Any] = {}
        if self.copy:  # a new image each run: avirt never writes over an existing file
            image = self.tmp / f"{self.tag}{i}.qcow2"
            storage = {"copy_storage": "all", "storage_paths": {"vda": str(image)}}
        t0 = time.perf_counter()
        job = await self.dom.migrate(self.there, persist=False, undefine_source=False,  # as bare: no defines
                                     **storage)
        self.dom = await job
        elapsed = time.perf_counter() - t0
        assert job.stats is not None
        self.here, self.there = self.there, self.here
        return elapsed, job.stats.downtime_ms

    async def pause(self) -> None:
        assert self.dom is not None
        await self.dom.suspend()

    async def resume(self) -> None:
        assert self.dom is not None
        await self.dom.resume()

    async def close(self) -> None:
        if self.dom is not None and (await self.dom.state())[0] is not DomainState.SHUTOFF:
            await self.dom.destroy()


class BareSide(Side):
    """The same QMP steps, with bare qemu.qmp clients, on QEMU spawned as avirt spawns it."""

    def __init__(self, tmp: Path, stored_xml: str, tag: str = "b") -> None:
        self.tmp, self.tag = tmp, tag
        self.cfg = parse_domain_xml(stored_xml)
        self.chains = {d.target: [Layer(d.source, d.format)] for d in self.cfg.disks if d.source}
        self.raw = tmp / f"raw-{tag}"
        self.source: RawGuest | None = None

    def argv(self, run_dir: Path, incoming: bool, disk: str | None = None) -> Any:
        disks = {"vda": [Layer(disk, "qcow2")]} if disk else self.chains
        return lambda fd, pidfile: [*build_argv(self.cfg, chains=disks, accel="tcg", monitor=f"fd={fd}",
                                                pidfile=pidfile, run_dir=str(run_dir)),
                                    *(["-incoming", "defer"] if incoming else [])]

    async def boot(self, serial: Path) -> None:
        self.raw.mkdir()
        first = self.raw / "s"
        self.source = await rawqemu.spawn(f"{self.tag}src", first, self.argv(first, False), cont=True)
        await wait_serial(serial, READY)

    async def migrate(self) -> tuple[float, int]:
        source = self.source
        i = self.count = self.count + 1
        assert source is not None
        t0 = time.perf_counter()
        run_dir = self.raw / f"d{i}"
        disk = None
        if self.copy:  # as avirt makes it: the source's format and size
            disk = str(self.tmp / f"{self.tag}{i}.qcow2")
            await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", disk, "1G"])
        dest = await rawqemu.spawn(f"{self.tag}d{i}", run_dir, self.argv(run_dir, True, disk), cont=False)
        extra = [{"capability": "pause-before-switchover", "state": True}] if self.copy else []
        caps = {"capabilities": [{"capability": "events", "state": True}]}
        await dest.client.execute("migrate-set-capabilities", caps)
        await source.client.execute("migrate-set-capabilities",
                                    {"capabilities": [*caps["capabilities"], *extra]})
        uri = f"unix:{run_dir / 'migrate.sock'}"
        await dest.client.execute("migrate-incoming", {"uri": uri})
        if self.copy:
            await _copy_disk(source.client, dest.client, run_dir / "nbd.sock")
        await source.client.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
        async with anyio.create_task_group() as group:
            group.start_soon(_migration_done, dest.client)
            group.start_soon(_migration_done, source.client)
            if self.copy:
                group.start_soon(_pause_then_switch, source.client)
            await anyio.lowlevel.checkpoint()  # every listener is registered before the migration starts
            await source.client.execute("migrate", {"uri": uri})
        info = await source.client.execute("query-migrate")
        if self.copy:
            await dest.client.execute("nbd-server-stop")
        await dest.client.execute("cont")
        await rawqemu.stop(source)
        elapsed = time.perf_counter() - t0
        self.source = dest
        return elapsed, int(info.get("downtime", 0))

    async def pause(self) -> None:
        assert self.source is not None
        await self.source.client.execute("stop")

    async def resume(self) -> None:
        assert self.source is not None
        await self.source.client.execute("cont")

    async def close(self) -> None:
        if self.source is not None:
            await rawqemu.stop(self.source)


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {"median": round(statistics.median(ordered), 2), "min": round(ordered[0], 2),
            "max": round(ordered[-1], 2)}


async def turns(sides: dict[str, Side], runs: int) -> dict[str, tuple[list[float], list[int]]]:
    """Each side's ``runs`` migrations (after one that warms up), the sides taking turns, which goes
    first alternating: load that comes and goes on the machine falls on both alike. Only the side
    whose turn it is has its guest running."""
    results: dict[str, tuple[list[float], list[int]]] = {name: ([], []) for name in sides}
    for side in sides.values():
        await side.pause()
    names = list(sides)
    for i in range(runs + 1):
        for name in names if i % 2 == 0 else reversed(names):
            side = sides[name]
            await side.resume()
            total, downtime = await side.migrate()
            await side.pause()
            if i:
                results[name][0].append(total)
                results[name][1].append(downtime)
    return results


def compare(avirt_runs: tuple[list[float], list[int]], bare_runs: tuple[list[float], list[int]],
            ssh_runs: tuple[list[float], list[int]] | None) -> dict[str, Any]:
    """One storage kind's report: each side's figures, the ratio, the targets."""
    (a_total, a_down), (b_total, b_down) = avirt_runs, bare_runs
    avirt_ms, bare_ms = summary([t * 1000 for t in a_total]), summary([t * 1000 for t in b_total])
    # Each avirt migration against the bare one of its turn (they ran back to back): the machine's
    # drift over the run cancels out of each pair, which a ratio of the two medians keeps.
    ratio = round(statistics.median(a / b for a, b in zip(a_total, b_total, strict=True)), 3)
    down_a, down_b = statistics.median(a_down), statistics.median(b_down)
    down_diff = statistics.median(a - b for a, b in zip(a_down, b_down, strict=True))
    apart: dict[str, Any] = {}
    if ssh_runs is not None:
        ssh_ms = summary([t * 1000 for t in ssh_runs[0]])
        apart = {"avirt_ssh": {"total_ms": ssh_ms, "downtime_ms": statistics.median(ssh_runs[1]),
                               "ratio_to_avirt": round(ssh_ms["median"] / avirt_ms["median"], 3)}}
    return {
        "avirt": {"total_ms": avirt_ms, "downtime_ms": down_a},
        "bare": {"total_ms": bare_ms, "downtime_ms": down_b},
        "ratio": ratio,
        "ratio_of_medians": round(avirt_ms["median"] / bare_ms["median"], 3),
        **apart,
        "targets": [
            {"name": "total: avirt / bare (median over pairs)", "value": ratio, "limit": TARGET_RATIO,
             "unit": "x", "ok": ratio <= TARGET_RATIO},
            {"name": "downtime: avirt - bare (median over pairs)", "value": down_diff, "limit": 1,
             "unit": "ms", "ok": down_diff <= 1},
        ],
    }


async def measure(runs: int, storage: str, ssh: bool, calibrate: bool = False) -> dict[str, Any]:
    """Each side's guest boots once and serves every storage kind asked for, shared first (a storage
    copy moves the bare side's guest onto new images, which its shared-storage argv does not name).
    ``calibrate``: a second bare side takes avirt's place (an A/A run: what the bench reads when the
    two sides are the same)."""
    kinds = [kind for kind in ("shared", "copy") if storage in (kind, "both")]
    report: dict[str, Any] = {"config": {"runs": runs, "memory_mib": 256, "disk_gib": 1, "storage": storage,
                                         "ssh": ssh, "calibrate": calibrate}}
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-migrate-"))
    results: dict[str, dict[str, tuple[list[float], list[int]]]] = {}
    try:
        async with avirt.connect(state_dir=tmp / "a") as a, avirt.connect(state_dir=tmp / "b") as b:
            probe = await a.define_xml(guest_xml(tmp, "bare"))  # the bare side's argv: a stored definition
            stored = await probe.xml(inactive=True)
            await probe.undefine()
            avirt_side: AvirtSide | BareSide
            if calibrate:
                probe = await a.define_xml(guest_xml(tmp, "avirt"))
                avirt_side = BareSide(tmp, await probe.xml(inactive=True), "c")
                await probe.undefine()
            else:
                avirt_side = AvirtSide(tmp, a, b, "a")
            bare_side = BareSide(tmp, stored)
            try:
                if isinstance(avirt_side, BareSide):
                    await avirt_side.boot(serial_log(tmp, "avirt"))
                else:
                    await avirt_side.boot(guest_xml(tmp, "avirt"), serial_log(tmp, "avirt"))
                await bare_side.boot(serial_log(tmp, "bare"))
                for kind in kinds:
                    avirt_side.copy = bare_side.copy = kind == "copy"
                    results[kind] = await turns({"avirt": avirt_side, "bare": bare_side}, runs)
            finally:
                await avirt_side.close()
                await bare_side.close()
        if ssh:  # alone: it is not compared with bare
            server = test_sshd.start(tmp / "sshd")
            try:
                async with avirt.connect(state_dir=tmp / "a-ssh") as a, \
                        avirt.connect(server.uri(tmp / "ssh-state", mode="serve")) as b:
                    ssh_side = AvirtSide(tmp, a, b, "s")
                    try:
                        await ssh_side.boot(guest_xml(tmp, "ssh"), serial_log(tmp, "ssh"))
                        for kind in kinds:
                            ssh_side.copy = kind == "copy"
                            results[kind].update(await turns({"ssh": ssh_side}, runs))
                    finally:
                        await ssh_side.close()
            finally:
                server.drop_connections()
                server.stop()
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    for kind in kinds:
        report[kind] = compare(results[kind]["avirt"], results[kind]["bare"], results[kind].get("ssh"))
    report["targets"] = [{**t, "name": f"{kind}: {t['name']}"}
                         for kind in kinds for t in report[kind]["targets"]]
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10, help="timed migrations per side (default 10)")
    parser.add_argument("--storage", choices=("shared", "copy", "both"), default="both",
                        help="shared storage, copied storage, or both (default)")
    parser.add_argument("--ssh", action="store_true",
                        help="also avirt between this machine and an SSH host (the tests' sshd on 127.0.0.1)")
    parser.add_argument("--calibrate", action="store_true",
                        help="an A/A run: a second bare side in avirt's place (the bench's own resolution)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.calibrate and args.ssh:
        parser.error("--calibrate compares two bare sides on this machine: no --ssh")
    if args.ssh and test_sshd.missing_reason():
        parser.error(f"--ssh: {test_sshd.missing_reason()}")
    report = anyio.run(measure, args.runs, args.storage, args.ssh, args.calibrate)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"migration: 256 MiB TCG guest writing to a 1 GiB disk, {args.runs} runs each way"
          + (" (A/A: a second bare side in avirt's row)" if args.calibrate else ""))
    for kind in ("shared", "copy"):
        if kind not in report:
            continue
        print(f" {kind} storage:")
        for side in ("avirt", "bare", "avirt_ssh"):
            if side not in report[kind]:
                continue
            t = report[kind][side]["total_ms"]
            print(f"  {side:<9} total {t['median']:8.1f} ms (min {t['min']:.1f}, max {t['max']:.1f})   "
                  f"downtime {report[kind][side]['downtime_ms']:.0f} ms")
    for t in report["targets"]:
        print(f"  {'ok  ' if t['ok'] else 'MISS'} {t['name']}: {t['value']} {t['unit']} (limit {t['limit']})")
    print("  (libvirt refuses a migration to the same host: no libvirt figure here)")


if __name__ == "__main__":
    main()
