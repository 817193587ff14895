"""Migration benchmark: a live migration on this machine, avirt beside the same QMP steps run bare.

The guest: the tests' tiny Linux guest (TCG), 256 MiB of memory, a 1 GiB qcow2 disk it keeps writing to
(the write workload: 64 KiB patterns with fsync, so memory is dirtied while it migrates), booted once.
Storage is shared (both QEMUs open the same image).

* **avirt**: two state directories; ``dom.migrate(dest, persist=False, undefine_source=False)`` then
  ``await job``, back and forth, ``--runs`` times (the definition stays where it was first defined, and
  the guest migrates back onto it; the bare side defines nothing either). Timed: from the call to the
  job's end (the destination runs, the source QEMU is gone).
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
from tests import sshd as test_sshd
from tests.guest import BASE_CMDLINE, build_guest

TARGET_RATIO = 1.05
READY = "avirt-wl: i=5 "


def guest_xml(tmp: Path) -> str:
    images = build_guest()
    disk = tmp / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    return f"""<domain type='qemu'><name>mig</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{images.kernel}</kernel>
    <initrd>{images.initrd}</initrd>
    <cmdline>{BASE_CMDLINE} avirt.workload=write avirt.slots=16 avirt.count=0 avirt.sleep=0</cmdline></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
    <target dev='vda' bus='virtio'/></disk>
  <serial type='file'><source path='{tmp / "serial.log"}' append='on'/></serial></devices></domain>"""


async def wait_serial(path: Path, marker: str, timeout: float = 120) -> None:
    """Until the guest's console shows ``marker`` (a file QEMU appends to: read it every 50 ms)."""
    with anyio.fail_after(timeout):
        while True:
            file = anyio.Path(path)
            if await file.exists() and marker in await file.read_text():
                return
            await anyio.sleep(0.05)


async def avirt_side(tmp: Path, xml: str, runs: int, copy: bool,
                     other: str | None = None) -> tuple[list[float], list[int], str]:
    """avirt back and forth between two state directories; ``other``: the second one's URI (an SSH
    host's) instead of a local directory."""
    totals, downtimes = [], []
    second = avirt.connect(other) if other else avirt.connect(state_dir=tmp / "b")
    (tmp / "serial.log").unlink(missing_ok=True)  # READY must come from this boot
    async with avirt.connect(state_dir=tmp / ("a-ssh" if other else "a")) as a, second as b:
        dom = await a.define_xml(xml)
        stored = await dom.xml(inactive=True)
        await dom.start()
        await wait_serial(tmp / "serial.log", READY)
        here, there = a, b
        for i in range(runs + 1):
            storage: dict[str, Any] = {}
            if copy:  # a new image each run: avirt never writes over an existing file
                image = tmp / f"{'s' if other else 'a'}{i}.qcow2"
                storage = {"copy_storage": "all", "storage_paths": {"vda": str(image)}}
            t0 = time.perf_counter()
            job = await dom.migrate(there, persist=False, undefine_source=False,  # as bare: no defines
                                    **storage)
            dom = await job
            if i:  # the first run warms up both sides
                totals.append(time.perf_counter() - t0)
                assert job.stats is not None
                downtimes.append(job.stats.downtime_ms)
            here, there = there, here
        await dom.destroy()
    return totals, downtimes, stored


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


async def bare_side(tmp: Path, stored_xml: str, runs: int, copy: bool) -> tuple[list[float], list[int]]:
    cfg = parse_domain_xml(stored_xml)
    chains = {d.target: [Layer(d.source, d.format)] for d in cfg.disks if d.source}
    raw = tmp / ("raw-copy" if copy else "raw")
    raw.mkdir()

    def argv(run_dir: Path, incoming: bool, disk: str | None = None) -> Any:
        disks = {"vda": [Layer(disk, "qcow2")]} if disk else chains
        return lambda fd, pidfile: [*build_argv(cfg, chains=disks, accel="tcg", monitor=f"fd={fd}",
                                                pidfile=pidfile, run_dir=str(run_dir)),
                                    *(["-incoming", "defer"] if incoming else [])]

    totals, downtimes = [], []
    serial = tmp / "serial.log"
    serial.unlink()
    first = raw / "s"
    source: RawGuest = await rawqemu.spawn("src", first, argv(first, False), cont=True)
    await wait_serial(serial, READY)
    for i in range(runs + 1):
        t0 = time.perf_counter()
        run_dir = raw / f"d{i}"
        disk = None
        if copy:  # as avirt makes it: the source's format and size
            disk = str(tmp / f"b{i}.qcow2")
            await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", disk, "1G"])
        dest = await rawqemu.spawn(f"d{i}", run_dir, argv(run_dir, True, disk), cont=False)
        extra = [{"capability": "pause-before-switchover", "state": True}] if copy else []
        caps = {"capabilities": [{"capability": "events", "state": True}]}
        await dest.client.execute("migrate-set-capabilities", caps)
        await source.client.execute("migrate-set-capabilities",
                                    {"capabilities": [*caps["capabilities"], *extra]})
        uri = f"unix:{run_dir / 'migrate.sock'}"
        await dest.client.execute("migrate-incoming", {"uri": uri})
        if copy:
            await _copy_disk(source.client, dest.client, run_dir / "nbd.sock")
        await source.client.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
        async with anyio.create_task_group() as group:
            group.start_soon(_migration_done, dest.client)
            group.start_soon(_migration_done, source.client)
            if copy:
                group.start_soon(_pause_then_switch, source.client)
            await anyio.lowlevel.checkpoint()  # every listener is registered before the migration starts
            await source.client.execute("migrate", {"uri": uri})
        info = await source.client.execute("query-migrate")
        if copy:
            await dest.client.execute("nbd-server-stop")
        await dest.client.execute("cont")
        await rawqemu.stop(source)
        if i:
            totals.append(time.perf_counter() - t0)
            downtimes.append(int(info.get("downtime", 0)))
        source = dest
    await rawqemu.stop(source)
    return totals, downtimes


async def _pause_then_switch(source: QMPClient) -> None:
    await _event(source, "MIGRATION", "status", "pre-switchover")
    await _switch_over(source)


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {"median": round(statistics.median(ordered), 2), "min": round(ordered[0], 2),
            "max": round(ordered[-1], 2)}


async def measure_one(runs: int, copy: bool, ssh: bool = False) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-migrate-"))
    apart: dict[str, Any] = {}
    try:
        xml = guest_xml(tmp)
        a_total, a_down, stored = await avirt_side(tmp, xml, runs, copy)
        b_total, b_down = await bare_side(tmp, stored, runs, copy)
        if ssh:
            server = test_sshd.start(tmp / "sshd")
            try:
                s_total, s_down, _ = await avirt_side(tmp, xml, runs, copy,
                                                      server.uri(tmp / "ssh-state", mode="serve"))
            finally:
                server.drop_connections()
                server.stop()
            apart = {"total_ms": summary([t * 1000 for t in s_total]),
                     "downtime_ms": statistics.median(s_down)}
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    avirt_ms, bare_ms = summary([t * 1000 for t in a_total]), summary([t * 1000 for t in b_total])
    ratio = round(avirt_ms["median"] / bare_ms["median"], 3)
    down_a, down_b = statistics.median(a_down), statistics.median(b_down)
    return {
        "avirt": {"total_ms": avirt_ms, "downtime_ms": down_a},
        "bare": {"total_ms": bare_ms, "downtime_ms": down_b},
        "ratio": ratio,
        **({"avirt_ssh": {**apart, "ratio_to_avirt":
                          round(apart["total_ms"]["median"] / avirt_ms["median"], 3)}} if apart else {}),
        "targets": [
            {"name": "total: avirt / bare (median)", "value": ratio, "limit": TARGET_RATIO, "unit": "x",
             "ok": ratio <= TARGET_RATIO},
            {"name": "downtime: avirt - bare (median)", "value": down_a - down_b, "limit": 1, "unit": "ms",
             "ok": down_a - down_b <= 1},
        ],
    }


async def measure(runs: int, storage: str, ssh: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"config": {"runs": runs, "memory_mib": 256, "disk_gib": 1, "storage": storage,
                                         "ssh": ssh}}
    for kind in ("shared", "copy"):
        if storage in (kind, "both"):
            report[kind] = await measure_one(runs, kind == "copy", ssh)
    report["targets"] = [{**t, "name": f"{kind}: {t['name']}"}
                         for kind in ("shared", "copy") if kind in report for t in report[kind]["targets"]]
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10, help="timed migrations per side (default 10)")
    parser.add_argument("--storage", choices=("shared", "copy", "both"), default="both",
                        help="shared storage, copied storage, or both (default)")
    parser.add_argument("--ssh", action="store_true",
                        help="also avirt between this machine and an SSH host (the tests' sshd on 127.0.0.1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.ssh and test_sshd.missing_reason():
        parser.error(f"--ssh: {test_sshd.missing_reason()}")
    report = anyio.run(measure, args.runs, args.storage, args.ssh)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"migration: 256 MiB TCG guest writing to a 1 GiB disk, {args.runs} runs each way")
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
