"""Statistics benchmark: ``all_domain_stats()`` over a fleet of running guests, beside libvirt's.

A fleet manager polls every guest's counters every few seconds; what that costs the controller per guest
decides how many guests one controller can watch. This measures it, and the same poll under libvirt.

What it measures
----------------
(a) **A fleet.** ``--guests`` (default 1,000) QEMUs started paused (no OS, 32 MiB, TCG, one qcow2 disk
    each, so every group has something to report), then ``conn.all_domain_stats(groups)`` ``--rounds``
    times (default 10) after one untimed call, with the groups both sides have: state, cpu-total,
    balloon, vcpu, block. Reported: the call's wall time (median) and per guest, and the controller's CPU
    time per guest (``getrusage`` of this process around the calls, so QEMU's own work is not in it).
(b) **Beside libvirt.** The first ``--reference`` (default 50) of those guests' definitions, run as a
    second set under Debian's libvirt 9.0 (``libvirtd`` started as root by ``bench/libvirt_ns.sh`` in a
    private mount namespace: its own /run, /var/lib/libvirt, /etc/libvirt with ``user``/``group`` root in
    qemu.conf, so nothing of the machine's own configuration is read or changed), and
    ``virConnectGetAllDomainStats`` with the same groups (``python3-libvirt`` under the system Python,
    ``--rounds`` times after one untimed call), beside avirt's ``all_domain_stats`` over the same 50
    definitions. Reported: per-guest wall time of each and the ratio libvirt / avirt (target: avirt at
    least 5x faster per guest). Without root, libvirtd or python3-libvirt the reference is reported as
    unavailable, with the reason.
(c) **Hotplug.** A SCSI disk attached to a running guest and detached again (``attach_device`` +
    ``detach_device``, which waits for QEMU's DEVICE_DELETED), ``--hotplug`` times (default 20): median
    round trip; and libvirt's ``attachDevice`` + ``detachDevice`` of the same disk on its guest.

::

    .venv/bin/python bench/stats.py                  # table
    .venv/bin/python bench/stats.py --json           # one JSON object
    .venv/bin/python bench/stats.py --guests 200     # a smaller fleet

1,000 paused guests need about 13 GB of memory (12 MiB private per QEMU) and take a minute to start on
2 cores. All figures are wall-clock, on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import avirt

GROUPS = ("state", "cpu-total", "balloon", "vcpu", "block")
#: libvirt's VIR_DOMAIN_STATS_* bits for the same groups: STATE, CPU_TOTAL, BALLOON, VCPU, BLOCK.
LIBVIRT_GROUPS = 1 | 2 | 4 | 8 | 32
TARGET_RATIO = 5.0
SYSTEM_PYTHON = "/usr/bin/python3"


def guest_xml(name: str, disk: Path) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
            "<controller type='scsi' index='0' model='virtio-scsi'/>"
            "</devices></domain>")


def hotplug_disk_xml(path: Path) -> str:
    return ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{path}'/><target dev='sdb' bus='scsi'/></disk>")


def make_disks(root: Path, count: int) -> list[Path]:
    """A 16 MiB base and ``count`` overlays on it; plus the raw disk that (c) plugs in and out."""
    base = root / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(root / "hot.raw"), "8M"], check=True)
    tops = []
    for i in range(count):
        top = root / f"g{i}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
                       check=True)
        tops.append(top)
    return tops


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def avirt_stats(conn: avirt.Connection, domains: list[avirt.Domain] | None,
                      rounds: int) -> dict[str, Any]:
    """``rounds`` timed calls after one untimed; wall and CPU in ms, per call and per guest."""
    count = len(domains) if domains is not None else len(await conn.list_domains())
    await conn.all_domain_stats(GROUPS, domains)
    walls: list[float] = []
    cpu = cpu_s()
    for _ in range(rounds):
        started = time.perf_counter()
        stats = await conn.all_domain_stats(GROUPS, domains)
        walls.append(time.perf_counter() - started)
        if any(s.unresponsive for s in stats):
            raise RuntimeError("a guest did not answer its statistics query")
    cpu = cpu_s() - cpu
    wall_ms = statistics.median(walls) * 1000
    return {"guests": count, "wall_ms": round(wall_ms, 3), "per_guest_ms": round(wall_ms / count, 4),
            "cpu_per_guest_ms": round(cpu * 1000 / rounds / count, 4)}


async def hotplug_round_trips(dom: avirt.Domain, disk: Path, times: int) -> float:
    xml = hotplug_disk_xml(disk)
    samples = []
    for i in range(times + 1):
        started = time.perf_counter()
        await dom.attach_device(xml)
        await dom.detach_device(xml)
        if i:
            samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 2)


# -- the reference: libvirtd in a mount namespace of its own ----------------------------------------------

# Run under the system Python (python3-libvirt is built for it), as a child of this script.
LIBVIRT_CLIENT = r"""
import json, sys, time, statistics, libvirt
uri, xml_file, hot_xml, rounds, flags, hotplug = sys.argv[1:7]
rounds, flags, hotplug = int(rounds), int(flags), int(hotplug)
conn = libvirt.open(uri)
doms = [conn.createXML(x, libvirt.VIR_DOMAIN_START_PAUSED) for x in json.load(open(xml_file))]
try:
    conn.getAllDomainStats(flags)
    walls = []
    for _ in range(rounds):
        t = time.perf_counter(); stats = conn.getAllDomainStats(flags); walls.append(time.perf_counter() - t)
    assert len(stats) == len(doms), (len(stats), len(doms))
    hot = []
    for i in range(hotplug + 1):
        t = time.perf_counter()
        doms[0].attachDeviceFlags(hot_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        doms[0].detachDeviceFlags(hot_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)  # returns at DEVICE_DELETED
        if i:
            hot.append(time.perf_counter() - t)
    print(json.dumps({"wall_ms": statistics.median(walls) * 1000,
                      "hotplug_ms": statistics.median(hot) * 1000 if hot else None}))
finally:
    for d in doms:
        d.destroy()
"""

LIBVIRT_NS = Path(__file__).resolve().parent / "libvirt_ns.sh"


def reference_missing() -> str | None:
    if os.geteuid() != 0:
        return "libvirtd's system instance needs root"
    for tool in ("libvirtd", "unshare", SYSTEM_PYTHON):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True)
    if probe.returncode != 0:
        return "python3-libvirt is not installed for the system Python"
    return None


async def libvirt_reference(root: Path, xmls: list[str], hot: Path, rounds: int,
                            hotplug: int) -> dict[str, Any]:
    """The same polls under libvirtd (bench/libvirt_ns.sh: a private mount namespace, nothing of the
    host's libvirt read or written), by LIBVIRT_CLIENT under the system Python."""
    missing = reference_missing()
    if missing is not None:
        return {"available": False, "reason": missing}
    await anyio.Path(root).mkdir(parents=True)
    await anyio.Path(root / "xmls.json").write_text(json.dumps(xmls))
    result = await anyio.run_process(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", str(LIBVIRT_NS), str(root),
         SYSTEM_PYTHON, "-c", LIBVIRT_CLIENT, "qemu:///system", str(root / "xmls.json"),
         hotplug_disk_xml(hot), str(rounds), str(LIBVIRT_GROUPS), str(hotplug)], check=False)
    if result.returncode != 0:
        log_file = anyio.Path(root / "libvirtd.log")
        log = (await log_file.read_text())[-300:] if await log_file.exists() else ""
        return {"available": False, "reason": f"{result.stderr.decode()[-500:]} {log}".strip()}
    out = json.loads(result.stdout)
    return {"available": True, "guests": len(xmls), "wall_ms": round(out["wall_ms"], 3),
            "per_guest_ms": round(out["wall_ms"] / len(xmls), 4),
            "hotplug_ms": None if out["hotplug_ms"] is None else round(out["hotplug_ms"], 2)}


# -- the run ----------------------------------------------------------------------------------------------


async def run(guests: int, reference: int, rounds: int, hotplug: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="avirt-bench-stats-"))
    try:
        disks = await anyio.to_thread.run_sync(make_disks, root, guests + reference)
        doms: list[avirt.Domain] = []
        report: dict[str, Any] = {"config": {"guests": guests, "reference": reference, "rounds": rounds,
                                             "hotplug": hotplug},
                                  "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}}
        async with avirt.connect("qemu:///session", state_dir=root / "state") as conn:
            try:
                limit = anyio.Semaphore(16)

                async def start(i: int) -> None:
                    async with limit:
                        doms.append(await conn.create_xml(guest_xml(f"g{i}", disks[i]), paused=True))

                started = time.perf_counter()
                async with anyio.create_task_group() as group:
                    for i in range(guests):
                        group.start_soon(start, i)
                report["start_s"] = round(time.perf_counter() - started, 1)
                report["fleet"] = await avirt_stats(conn, None, rounds)
                doms.sort(key=lambda d: int(d.name[1:]))
                report["avirt_reference_set"] = await avirt_stats(conn, doms[:reference], rounds)
                report["avirt_hotplug_ms"] = await hotplug_round_trips(doms[0], root / "hot.raw", hotplug)
            finally:
                with anyio.CancelScope(shield=True):
                    for dom in doms:
                        try:
                            await dom.destroy()
                        except avirt.errors.AvirtError:
                            pass
        # libvirt's guests get disks of their own: two QEMUs must not write one image.
        ref_xmls = [guest_xml(f"g{i}", disks[guests + i]) for i in range(reference)]
        ref = await libvirt_reference(root / "libvirt", ref_xmls, root / "hot.raw", rounds, hotplug)
        report["libvirt"] = ref
        targets = []
        if ref["available"]:
            ratio = ref["per_guest_ms"] / report["avirt_reference_set"]["per_guest_ms"]
            report["ratio"] = round(ratio, 2)
            targets.append({"name": f"(b) per guest, libvirt / avirt over {reference} guests",
                            "value": round(ratio, 2), "limit": TARGET_RATIO, "unit": "x",
                            "ok": ratio >= TARGET_RATIO})
        report["targets"] = targets
        return report
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(root, ignore_errors=True))


def print_table(r: dict[str, Any]) -> None:
    f, a, lv = r["fleet"], r["avirt_reference_set"], r["libvirt"]
    print(f"stats: all_domain_stats({', '.join(GROUPS)}), {r['config']['rounds']} rounds, medians "
          f"({f['guests']} paused guests started in {r['start_s']} s)")
    print(f"(a) {f['guests']} guests: {f['wall_ms']:.1f} ms a call, "
          f"{f['per_guest_ms'] * 1000:.1f} us per guest, "
          f"controller CPU {f['cpu_per_guest_ms'] * 1000:.1f} us per guest")
    print(f"(b) {a['guests']} guests: avirt {a['wall_ms']:.2f} ms "
          f"({a['per_guest_ms'] * 1000:.1f} us per guest)", end="")
    if lv["available"]:
        print(f", libvirt {lv['wall_ms']:.2f} ms ({lv['per_guest_ms'] * 1000:.1f} us per guest): "
              f"avirt {r['ratio']:.1f}x faster")
    else:
        print(f"; libvirt unavailable: {lv['reason']}")
    libvirt_hot = f", libvirt {lv['hotplug_ms']:.2f} ms" if lv.get("hotplug_ms") is not None else ""
    print(f"(c) SCSI disk attach + detach: avirt {r['avirt_hotplug_ms']:.2f} ms{libvirt_hot}")
    for t in r["targets"]:
        verdict = "ok  " if t["ok"] else "MISS"
        print(f"  {verdict} {t['name']}: {t['value']}{t['unit']} (at least {t['limit']}{t['unit']})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guests", type=int, default=1000, help="paused guests of the fleet (a)")
    parser.add_argument("--reference", type=int, default=50, help="guests of the side-by-side set (b)")
    parser.add_argument("--rounds", type=int, default=10, help="timed calls of each kind")
    parser.add_argument("--hotplug", type=int, default=20, help="attach + detach round trips (c)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.reference <= args.guests:
        parser.error("--reference is 1 to --guests")
    report = anyio.run(run, args.guests, args.reference, args.rounds, args.hotplug)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
