"""Fleet benchmark: what each per-domain call costs in a state directory of one domain and of a thousand.

What it measures
----------------
Two worlds, each built and measured in a child process of its own (so that controller memory is its
own): **small**, one shut-off domain and one running; **large**, ``--domains`` (1,000) shut-off domains and
``--running`` (100) running ones. Both also hold the two domains the commits are measured on
(``probe-off``, shut off, and ``probe-on``, running). Every domain has its own two-layer chain
(``base.qcow2`` under ``top.qcow2``, 16 MiB virtual, 4 KiB clusters, in a directory of its own).
Running guests are QEMU with no kernel, started paused (``start(paused=True)``), TCG, 32 MiB each: they
cost the controller what any guest does (a monitor, a supervisor, chains read from QEMU) and the
machine almost nothing.

The world is set up by one controller, which also commits once so that the image index has read every
chain (``first_commit_ms``: that first question after all the defines, whose cost is one ``qemu-img``
run per domain defined since, once). Then a new controller measures, each call ``--runs`` times after
one untimed warm-up, medians reported:

* ``connect``: ``avirt.connect()`` to the state directory (reads every definition and saved chain,
  re-attaches to every running guest), and the controller's resident memory after it (``rss_kib``);
* ``list_domains``, ``lookup`` (by name), ``define_xml`` (a new domain; undefined untimed);
* ``commit_offline``: on a shut-off domain, from ``block_commit("vda", shallow=True)`` to the job
  handle: the chain read with qemu-img's lock probe, the shared-base check (the image index), the
  free-space check; an offline snapshot before each run (untimed) gives it a layer to commit;
* ``commit_online``: the same on a running domain (QMP ``block-commit``; pivoted untimed).

Target: every per-domain call (lookup, define_xml, both commits) within 1.2x between the two worlds
(large median / small median). ``connect`` and ``list_domains`` grow with the fleet by their nature and
are reported beside it. Before the image index, the shared-base check read every other domain's chain
with ``qemu-img``: 6.7 ms to an offline commit's handle with one domain, 1.84 s with 300.

How to run
----------
::

    .venv/bin/python bench/fleet.py                     # 1,000 domains, 100 running, 15 runs: a table
    .venv/bin/python bench/fleet.py --json              # one JSON object on stdout
    .venv/bin/python bench/fleet.py --domains 300 --running 20 --runs 9

The large world takes a few minutes to build (two qemu-img files and a define per domain, a QEMU start
per running guest); 100 paused TCG guests need about 3 GB of memory. All figures are wall-clock.

JSON keys (``--json``)
----------------------
``config`` (``domains``, ``running``, ``runs``), ``machine`` (``cpus``, ``loadavg``), ``small`` and
``large``: {``setup_s``, ``first_commit_ms``, ``rss_kib``, and per call a summary {``median``, ``p10``,
``p90``, ``min``, ``max``} in ms}; ``ratios`` (large / small medians per call); ``targets``: list of
{``name``, ``value``, ``limit``, ``unit``, ``ok``}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

import avirt
from avirt import BlockJobStatus

TARGET_RATIO = 1.2
PER_DOMAIN = ("lookup", "define_xml", "commit_offline", "commit_online")
CALLS = ("connect", "list_domains", *PER_DOMAIN)


def domain_xml(name: str, disk: Path) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>")


def make_images(root: Path, count: int) -> list[Path]:
    """``count`` directories each with base.qcow2 under top.qcow2 (backing named relatively, so that a
    copy of the prototype is a chain of its own); the top images."""
    proto = root / "proto"
    proto.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
                    str(proto / "base.qcow2"), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-F", "qcow2",
                    "-b", "base.qcow2", str(proto / "top.qcow2")], cwd=proto, check=True)
    tops = []
    for i in range(count):
        directory = root / f"d{i}"
        shutil.copytree(proto, directory)
        tops.append(directory / "top.qcow2")
    return tops


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p10": ordered[len(ordered) // 10],
            "p90": ordered[min(len(ordered) - 1, len(ordered) * 9 // 10)], "min": ordered[0],
            "max": ordered[-1]}


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def timed(runs: int, call: Callable[[int], Awaitable[Any]],
                before: Callable[[int], Awaitable[Any]] | None = None,
                after: Callable[[Any], Awaitable[Any]] | None = None) -> dict[str, float]:
    """``call`` once untimed, then ``runs`` times timed (ms); ``before``/``after`` each run, untimed."""
    samples = []
    for i in range(runs + 1):
        if before is not None:
            await before(i)
        started = time.perf_counter()
        result = await call(i)
        elapsed = (time.perf_counter() - started) * 1000
        if after is not None:
            await after(result)
        if i:
            samples.append(elapsed)
    return summary(samples)


async def world(domains: int, running: int, runs: int) -> dict[str, Any]:
    """Build a state directory of ``domains`` shut-off and ``running`` running domains; measure it."""
    root = Path(tempfile.mkdtemp(prefix="avirt-fleet-"))
    state = str(root / "state")
    report: dict[str, Any] = {}
    try:
        began = time.perf_counter()
        tops = await anyio.to_thread.run_sync(make_images, root, domains + running + 2)
        async with avirt.connect("qemu:///session", state_dir=state) as conn:
            for i in range(domains):
                await conn.define_xml(domain_xml(f"off{i}", tops[i]))
            for i in range(running):
                dom = await conn.define_xml(domain_xml(f"run{i}", tops[domains + i]))
                await dom.start(paused=True)
            probe = await conn.define_xml(domain_xml("probe-off", tops[-2]))
            live = await conn.define_xml(domain_xml("probe-on", tops[-1]))
            await live.start(paused=True)
            await probe.snapshot_disks("first")
            started = time.perf_counter()
            job = await probe.block_commit("vda", shallow=True)  # the index reads every chain now
            report["first_commit_ms"] = (time.perf_counter() - started) * 1000
            await job
        report["setup_s"] = time.perf_counter() - began
        # The setup dirtied thousands of image files: their writeback would land on the fsyncs of the
        # measured calls (each definition and job record is written with fsync) in the large world only.
        await anyio.to_thread.run_sync(os.sync)

        connects = []
        for _ in range(3):
            started = time.perf_counter()
            conn = await avirt.connect("qemu:///session", state_dir=state)
            connects.append((time.perf_counter() - started) * 1000)
            await conn.close()
        report["connect"] = summary(connects)
        async with avirt.connect("qemu:///session", state_dir=state) as conn:
            report["rss_kib"] = rss_kib()
            report["list_domains"] = await timed(runs, lambda i: conn.list_domains())
            report["lookup"] = await timed(runs, lambda i: conn.lookup(f"off{(i * 7919) % max(domains, 1)}"))

            async def undefine(dom: avirt.Domain) -> None:
                await dom.undefine()

            report["define_xml"] = await timed(
                runs, lambda i: conn.define_xml(domain_xml(f"new{i}", tops[0])), after=undefine)
            probe, live = await conn.lookup("probe-off"), await conn.lookup("probe-on")

            async def settle(job: avirt.BlockJob) -> None:
                if job.two_phase:
                    await job.wait_ready()
                    await job.pivot()
                if await job != BlockJobStatus.COMPLETED:
                    raise RuntimeError(f"{job.id} ended {job.status}")

            async def snapshot_off(i: int) -> None:
                await probe.snapshot_disks(f"off{i}")

            async def snapshot_on(i: int) -> None:
                await live.snapshot_disks(f"on{i}")

            report["commit_offline"] = await timed(
                runs, lambda i: probe.block_commit("vda", shallow=True), before=snapshot_off, after=settle)
            report["commit_online"] = await timed(
                runs, lambda i: live.block_commit("vda", shallow=True), before=snapshot_on, after=settle)
            for dom in await conn.list_domains(state=avirt.DomainState.PAUSED):
                await dom.destroy()
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(root, ignore_errors=True))
    return report


def run_child(domains: int, running: int, runs: int) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "--child", f"{domains},{running},{runs}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the world of {domains} domains failed:\n{result.stderr}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def build_report(domains: int, running: int, runs: int) -> dict[str, Any]:
    small, large = run_child(1, 1, runs), run_child(domains, running, runs)
    ratios = {call: large[call]["median"] / small[call]["median"] for call in CALLS}
    targets = [{"name": f"{call}: {domains} domains / 1", "value": round(ratios[call], 3),
                "limit": TARGET_RATIO, "unit": "x", "ok": ratios[call] <= TARGET_RATIO}
               for call in PER_DOMAIN]
    return {"config": {"domains": domains, "running": running, "runs": runs},
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "small": small, "large": large, "ratios": ratios, "targets": targets}


def print_table(report: dict[str, Any]) -> None:
    cfg, small, large = report["config"], report["small"], report["large"]
    print(f"fleet: 1 shut off + 1 running vs {cfg['domains']} shut off + {cfg['running']} running, "
          f"{cfg['runs']} runs, medians (p10-p90)")
    print(f"{'call':<16}{'1 domain':>22}{str(cfg['domains']) + ' domains':>24}{'ratio':>8}  target")
    for call in CALLS:
        s, g = small[call], large[call]
        target = f"<= {TARGET_RATIO}x" if call in PER_DOMAIN else "(grows with the fleet)"
        print(f"{call:<16}{s['median']:>9.2f} ms ({s['p10']:.2f}-{s['p90']:.2f}){g['median']:>11.2f} ms "
              f"({g['p10']:.2f}-{g['p90']:.2f}){report['ratios'][call]:>7.2f}x  {target}")
    print(f"{'controller RSS':<16}{small['rss_kib']:>19} KiB{large['rss_kib']:>21} KiB")
    print(f"{'first commit':<16}{small['first_commit_ms']:>19.1f} ms{large['first_commit_ms']:>21.1f} ms"
          "  (the index reads every chain defined since: once)")
    print(f"{'setup':<16}{small['setup_s']:>20.1f} s{large['setup_s']:>22.1f} s")
    for t in report["targets"]:
        print(f"  {'ok  ' if t['ok'] else 'MISS'} {t['name']}: {t['value']}x (limit {t['limit']}x)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--domains", type=int, default=1000, help="shut-off domains of the large world")
    parser.add_argument("--running", type=int, default=100, help="running guests of the large world")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        domains, running, runs = (int(x) for x in args.child.split(","))
        print(json.dumps(anyio.run(world, domains, running, runs)))
        return
    report = build_report(args.domains, args.running, args.runs)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
