"""Networks benchmark: avirt's NAT network, its start and its guests' traffic, on this machine.

Everything runs inside a network namespace (and mount namespace) the benchmark makes for itself: run as
root, it starts itself again under ``unshare --net --mount``, so the bridges, nftables tables, dnsmasq,
taps and guests it makes never touch the host's own network, and they all go with the namespace.

What it measures
----------------
(a) **Network start and destroy.** A NAT network with a DHCP range (bridge, addresses, the network's
    nftables table, dnsmasq) is started and destroyed ``--runs`` times (default 5): the medians of
    ``Network.start()`` and ``Network.destroy()``. The reference is libvirt's ``virsh net-start`` /
    ``net-destroy`` of the same network, under a libvirtd (9.0 here) run in a network and mount
    namespace of its own with private copies of its directories (see ``LIBVIRT_SCRIPT``); each virsh
    figure includes virsh's own start and connection, measured alone as ``virsh net-list``. Where
    libvirtd, its network driver or the ``iptables`` command it programs NAT with is missing, the
    reference is reported as unavailable with the reason.

(b) **Guest-to-guest TCP throughput.** Two tiny test guests (``tests/guest``: a Debian kernel and a busybox
    initramfs, under TCG) on avirt's NAT network: one sends ``--mib`` MiB (default 32) of zeros to the other
    with busybox ``nc``, ``--transfers`` times (default 3) per round. Each transfer is timed from the host,
    from the receiver's console line "nc connected" to its "nc received N bytes" (the console is read every
    10 ms). Then the same two guests run bare: **the same QEMU command lines** (avirt's own ``build_argv``
    on the definitions avirt stored, as ``lifecycle.py``'s baseline), spawned as avirt spawns QEMU
    (``rawqemu.py``), but with taps made by hand (``ip tuntap``) on a bridge made by hand, which QEMU opens
    itself (``-netdev tap,ifname=...``). ``--rounds`` rounds (default 2) alternate which of the two goes
    first, so that the drift of a shared machine hits both alike. Reported: MB/s of each (median of the
    transfers) and the ratio bare / avirt (target <= 1.05x). Under TCG the absolute figures are low; the
    ratio is what counts.

(c) **Start to lease.** From ``Domain.start()`` until the guest's DHCP lease appears in
    ``Network.dhcp_leases()`` (polled every 10 ms), ``--lease-runs`` times (default 2), a new MAC each
    time.

::

    sudo .venv/bin/python bench/networks.py               # table
    sudo .venv/bin/python bench/networks.py --json        # one JSON object
    sudo .venv/bin/python bench/networks.py --parts network --runs 3

JSON keys: ``machine`` (cpus, loadavg, other QEMU processes at the start), ``network`` (``avirt``:
``start_ms`` and ``destroy_ms`` summaries; ``libvirt``: the same and ``noop_ms``, or ``unavailable``: the
reason),
``throughput`` (``bytes``, ``transfers``, ``rounds``, ``avirt`` and ``bare``: ``mb_s`` per transfer and
``median_mb_s``; ``ratio``), ``lease`` (``ms``: summary), ``targets`` (name, value, limit, unit, ok) and
``error`` when the namespace cannot be made. Parts not asked for (``--parts``) are absent.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import rawqemu
from lifecycle import summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import avirt
from avirt.config import parse_domain_xml
from avirt.drivers.qemu.cmdline import build_argv
from tests.guest import BASE_CMDLINE, GuestImages, build_guest

INSIDE = "AVIRT_BENCH_NETNS"
PARTS = ("network", "throughput", "lease")
NETWORK = """<network>
  <name>benchnet</name>
  <forward mode='nat'/>
  <bridge name='avbench0'/>
  <ip address='10.77.0.1' prefix='24'>
    <dhcp><range start='10.77.0.100' end='10.77.0.199'/></dhcp>
  </ip>
</network>"""
RECEIVER, SENDER = "10.77.0.21", "10.77.0.22"
PORT = 5001
TAP_PLACEHOLDER = 99999  # the fd avirt would hand down; the bare run names its own tap instead


def guest_xml(name: str, images: GuestImages, serial: Path, mac: str, knobs: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{images.kernel}</kernel>
    <initrd>{images.initrd}</initrd><cmdline>{BASE_CMDLINE} {knobs}</cmdline></os>
  <features><acpi/></features>
  <devices>
    <interface type='network'><source network='benchnet'/><mac address='{mac}'/>
      <model type='virtio'/></interface>
    <serial type='file'><source path='{serial}'/></serial>
  </devices>
</domain>"""


async def sh(*argv: str) -> None:
    done = await anyio.run_process(argv, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode().strip()}")


# -- (a) network start and destroy --------------------------------------------------------------------


async def network_cycle(conn: avirt.Connection, runs: int) -> dict[str, Any]:
    net = await conn.define_network_xml(NETWORK)
    starts, destroys = [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            await net.start()
            t1 = time.perf_counter()
            await net.destroy()
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            destroys.append(t2 - t1)
    finally:
        if await net.is_active():
            await net.destroy()
        await net.undefine()
    return {"runs": runs, "start_ms": summary(starts), "destroy_ms": summary(destroys)}


def libvirt_unavailable() -> str | None:
    """Why libvirt's network driver cannot serve as the reference here (None: it can)."""
    for tool in ("libvirtd", "virsh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_network.so").exists():
        return "libvirt's network driver (libvirt_driver_network.so) is not installed"
    if shutil.which("iptables") is None:
        return ("libvirt 9.0's network driver programs NAT with the iptables command, which is not "
                "installed (apt-get install iptables)")
    return None


#: Under libvirtd (bench/libvirt_ns.sh, in a network namespace of its own too): prints "noop S",
#: "start S", "destroy S" lines (wall seconds of each virsh).
LIBVIRT_SCRIPT = r"""
set -e
T=$1; RUNS=$2
ip link set lo up
V="virsh -q -c qemu:///system"
$V net-define $T/net.xml >/dev/null
t() { a=$(date +%s%N); "$@" >/dev/null; b=$(date +%s%N); echo "$((b - a))"; }
i=0
while [ $i -lt $RUNS ]; do
    echo "noop $(t $V net-list --all)"
    echo "start $(t $V net-start benchnet)"
    echo "destroy $(t $V net-destroy benchnet)"
    i=$((i + 1))
done
$V net-undefine benchnet >/dev/null
"""
LIBVIRT_NS = Path(__file__).resolve().parent / "libvirt_ns.sh"


async def libvirt_cycle(work: Path, runs: int) -> dict[str, Any]:
    """``virsh net-start`` and ``net-destroy`` of the same network under libvirtd (see LIBVIRT_SCRIPT);
    ``noop_ms`` is a ``virsh net-list`` (virsh's own start and connection), part of every figure."""
    root = work / "libvirt"
    root.mkdir()
    (root / "net.xml").write_text(NETWORK.replace("avbench0", "lvbench0"))
    done = await anyio.run_process(["unshare", "--net", "--mount", "--propagation", "private", "--", "sh",
                                    str(LIBVIRT_NS), str(root), "sh", "-c", LIBVIRT_SCRIPT, "libvirt",
                                    str(root), str(runs)], check=False)
    times: dict[str, list[float]] = {"noop": [], "start": [], "destroy": []}
    for line in done.stdout.decode().splitlines():
        key, _, ns = line.partition(" ")
        if key in times and ns.isdigit():
            times[key].append(int(ns) / 1e9)
    if done.returncode != 0 or not times["start"]:
        log = (root / "libvirtd.log").read_text()[-300:] if (root / "libvirtd.log").exists() else ""
        return {"unavailable": f"libvirtd did not run here: {done.stderr.decode().strip()[-300:]} {log}"}
    return {"runs": len(times["start"]), "start_ms": summary(times["start"]),
            "destroy_ms": summary(times["destroy"]), "noop_ms": summary(times["noop"])}


# -- (b) throughput -----------------------------------------------------------------------------------


async def watch_transfers(serial: Path, count: int, timeout: float) -> list[float]:
    """The host-side duration of each of ``count`` transfers: from the receiver's k-th "nc connected"
    line to its k-th "nc received" line, the console file read every 10 ms."""
    connected: list[float] = []
    received: list[float] = []
    with anyio.fail_after(timeout):
        while len(received) < count:
            path = anyio.Path(serial)
            text = await path.read_text() if await path.exists() else ""
            now = time.perf_counter()
            while len(connected) < text.count("avirt-guest: nc connected"):
                connected.append(now)
            while len(received) < text.count("avirt-guest: nc received"):
                received.append(now)
            await anyio.sleep(0.01)
    lines = [line for line in text.splitlines() if "nc received" in line]
    for line in lines:
        got = int(line.split("nc received ")[1].split()[0])
        if got <= 0:
            raise RuntimeError(f"a transfer brought nothing: {line}")
    return [end - start for start, end in zip(connected, received, strict=True)]


def knobs(images_role: str, size: int, transfers: int) -> str:
    if images_role == "receiver":
        return f"avirt.net={RECEIVER}/24 avirt.nc=listen:{PORT}"
    return f"avirt.net={SENDER}/24 avirt.nc=send:{RECEIVER}:{PORT}:{size}:{transfers}"


async def throughput(conn: avirt.Connection, images: GuestImages, work: Path, size: int, transfers: int,
                     rounds: int) -> tuple[list[float], list[float]]:
    """The transfers' durations on avirt's network and bare, in alternating rounds (avirt first in even
    rounds, bare first in odd ones), so that the machine's drift hits both alike."""
    net = await conn.define_network_xml(NETWORK)
    await net.start()
    doms: list[avirt.Domain] = []
    stored = {}
    await sh("ip", "link", "add", "benchbr0", "type", "bridge")
    await sh("ip", "link", "set", "benchbr0", "up")
    for n in range(2):
        tap = f"benchtap{n}"
        await sh("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        await sh("ip", "link", "set", "dev", tap, "master", "benchbr0")
        await sh("ip", "link", "set", "dev", tap, "up")
    avirt_s: list[float] = []
    bare_s: list[float] = []
    try:
        for role, mac in (("receiver", "52:54:00:77:00:21"), ("sender", "52:54:00:77:00:22")):
            serial = work / f"avirt-{role}.log"
            dom = await conn.define_xml(guest_xml(role, images, serial, mac, knobs(role, size, transfers)))
            stored[role] = await dom.xml(inactive=True)
            doms.append(dom)
        for r in range(rounds):
            for kind in (("avirt", "bare") if r % 2 == 0 else ("bare", "avirt")):
                if kind == "avirt":
                    avirt_s += await avirt_round(doms, work, transfers)
                else:
                    bare_s += await bare_round(stored, work, transfers)
    finally:
        with anyio.CancelScope(shield=True):
            for dom in doms:
                if (await dom.state())[0] is not avirt.DomainState.SHUTOFF:
                    await dom.destroy()
                await dom.undefine()
            await net.destroy()
            await net.undefine()
            for link in ("benchbr0", "benchtap0", "benchtap1"):
                await anyio.run_process(["ip", "link", "delete", link], check=False)
    return avirt_s, bare_s


async def avirt_round(doms: list[avirt.Domain], work: Path, transfers: int) -> list[float]:
    """The transfers between the two guests on avirt's NAT network."""
    for role in ("receiver", "sender"):
        (work / f"avirt-{role}.log").unlink(missing_ok=True)
    try:
        for dom in doms:
            await dom.start()
        return await watch_transfers(work / "avirt-receiver.log", transfers, 120 + 60 * transfers)
    finally:
        with anyio.CancelScope(shield=True):
            for dom in doms:
                await dom.destroy()


async def bare_round(stored: dict[str, str], work: Path, transfers: int) -> list[float]:
    """The same two QEMU command lines on the taps and the bridge made by hand."""
    guests = []
    root = work / "bare"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    try:
        for n, role in enumerate(("receiver", "sender")):
            (work / f"bare-{role}.log").unlink(missing_ok=True)
            cfg = parse_domain_xml(stored[role].replace(f"avirt-{role}.log", f"bare-{role}.log"))

            def argv(fd: int, pidfile: str, cfg: Any = cfg, tap: str = f"benchtap{n}",
                     role: str = role) -> list[str]:
                built = build_argv(cfg, chains={}, accel="tcg", monitor=f"fd={fd}", pidfile=pidfile,
                                   run_dir=str(root / role), tap_fds={0: TAP_PLACEHOLDER})
                return [a.replace(f"tap,id=net0,fd={TAP_PLACEHOLDER}",
                                  f"tap,id=net0,ifname={tap},script=no,downscript=no") for a in built]

            guests.append(await rawqemu.spawn(role, root / role, argv, cont=True))
        return await watch_transfers(work / "bare-receiver.log", transfers, 120 + 60 * transfers)
    finally:
        with anyio.CancelScope(shield=True):
            for guest in guests:
                try:
                    await rawqemu.stop(guest)
                except Exception:  # cleanup: the leftovers are killed below
                    pass
            rawqemu.kill_leftovers(root)


# -- (c) start to lease -------------------------------------------------------------------------------


async def lease_times(conn: avirt.Connection, images: GuestImages, work: Path, runs: int) -> list[float]:
    net = await conn.define_network_xml(NETWORK)
    await net.start()
    found = []
    try:
        for run in range(runs):
            mac = f"52:54:00:77:01:{run:02x}"
            dom = await conn.define_xml(guest_xml(f"lease{run}", images, work / f"lease{run}.log", mac,
                                                  "avirt.net=dhcp"))
            try:
                t0 = time.perf_counter()
                await dom.start()
                with anyio.fail_after(120):
                    while not any(lease.mac == mac for lease in await net.dhcp_leases()):  # noqa: ASYNC110
                        await anyio.sleep(0.01)  # (a lease file offers nothing to wait on)
                found.append(time.perf_counter() - t0)
            finally:
                if (await dom.state())[0] is not avirt.DomainState.SHUTOFF:
                    await dom.destroy()
                await dom.undefine()
    finally:
        await net.destroy()
        await net.undefine()
    return found


# -- the report ---------------------------------------------------------------------------------------


def mb_s(size: int, seconds: Sequence[float]) -> list[float]:
    return [round(size / s / 1e6, 2) for s in seconds]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    await sh("ip", "link", "set", "lo", "up")
    parts = args.parts.split(",")
    load = os.getloadavg()
    report: dict[str, Any] = {"machine": {
        "cpus": os.cpu_count(), "loadavg_start": [round(v, 2) for v in load],
        "other_qemu_at_start": rawqemu.count_qemu_processes()}}
    targets = []
    work = Path(tempfile.mkdtemp(prefix="avirt-bench-net-"))
    try:
        images = build_guest() if {"throughput", "lease"} & set(parts) else None
        async with avirt.connect("qemu:///session", state_dir=work / "state") as conn:
            if "network" in parts:
                reason = libvirt_unavailable()
                report["network"] = {"avirt": await network_cycle(conn, args.runs),
                                     "libvirt": {"unavailable": reason} if reason is not None
                                     else await libvirt_cycle(work, args.runs)}
            if "throughput" in parts:
                assert images is not None
                size = args.mib << 20
                avirt_s, bare_s = await throughput(conn, images, work, size, args.transfers, args.rounds)
                a, b = mb_s(size, avirt_s), mb_s(size, bare_s)
                med_a, med_b = round(statistics.median(a), 2), round(statistics.median(b), 2)
                ratio = round(med_b / med_a, 3) if med_a else None
                report["throughput"] = {"bytes": size, "transfers": args.transfers, "rounds": args.rounds,
                                        "avirt": {"mb_s": a, "median_mb_s": med_a},
                                        "bare": {"mb_s": b, "median_mb_s": med_b}, "ratio": ratio}
                targets.append({"name": "(b) throughput, bare / avirt", "value": ratio, "limit": 1.05,
                                "unit": "x", "ok": None if ratio is None else ratio <= 1.05})
            if "lease" in parts:
                assert images is not None
                report["lease"] = {"runs": args.lease_runs,
                                   "ms": summary(await lease_times(conn, images, work, args.lease_runs))}
    finally:
        rawqemu.kill_leftovers(work)
        shutil.rmtree(work, ignore_errors=True)
    report["targets"] = targets
    return report


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"networks benchmark: {m['cpus']} CPUs, load {m['loadavg_start']}, "
          f"{m['other_qemu_at_start']} other QEMU processes at the start")
    if "network" in report:
        a = report["network"]["avirt"]
        print(f"(a) NAT network with DHCP, {a['runs']} runs (ms)       median     p10     p90")
        for key, label in (("start_ms", "start"), ("destroy_ms", "destroy")):
            s = a[key]
            print(f"    avirt {label:<8}{'':26}{s['median']:8.1f} {s['p10']:7.1f} {s['p90']:7.1f}")
        lib = report["network"]["libvirt"]
        if "unavailable" in lib:
            print(f"    libvirt net-start/net-destroy: unavailable ({lib['unavailable']})")
        else:
            for key, label in (("start_ms", "net-start"), ("destroy_ms", "net-destroy"),
                               ("noop_ms", "net-list")):
                s = lib[key]
                print(f"    virsh {label:<12}{'':22}{s['median']:8.1f} {s['p10']:7.1f} {s['p90']:7.1f}")
            print("    (each virsh figure includes virsh's own start and connection: see net-list)")
    if "throughput" in report:
        t = report["throughput"]
        print(f"(b) guest to guest TCP, {t['bytes'] >> 20} MiB, {t['transfers']} transfers x {t['rounds']} "
              "rounds (MB/s)")
        print(f"    avirt NAT network   {t['avirt']['median_mb_s']:8.2f}   {t['avirt']['mb_s']}")
        print(f"    bare taps + bridge  {t['bare']['median_mb_s']:8.2f}   {t['bare']['mb_s']}")
        print(f"    ratio bare / avirt  {t['ratio']}")
    if "lease" in report:
        s = report["lease"]["ms"]
        print(f"(c) start() to DHCP lease, {report['lease']['runs']} runs (ms): median {s['median']:.0f}, "
              f"min {s['min']:.0f}, max {s['max']:.0f}")
    for t in report["targets"]:
        print(f"target {t['name']}: {t['value']} (limit {t['limit']} {t['unit']}): "
              f"{'ok' if t['ok'] else 'MISSED' if t['ok'] is False else 'n/a'}")


def why_no_namespace() -> str | None:
    if os.geteuid() != 0:
        return "needs root (bridges, taps, nftables, dnsmasq), in a namespace of its own"
    for tool in ("unshare", "ip", "nft", "dnsmasq"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["unshare", "--net", "--mount", "--", "true"], capture_output=True).returncode != 0:
        return "cannot make a network namespace (unshare --net --mount)"
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--runs", type=int, default=5, help="network start/destroy cycles (a)")
    parser.add_argument("--mib", type=int, default=32, help="MiB per transfer (b)")
    parser.add_argument("--transfers", type=int, default=3, help="transfers per guest pair and round (b)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of avirt and bare, alternating (b)")
    parser.add_argument("--lease-runs", type=int, default=2, help="guest starts timed to their lease (c)")
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if os.environ.get(INSIDE) != "1":
        reason = why_no_namespace()
        if reason is not None:
            if args.json:
                print(json.dumps({"error": reason}))
            else:
                print(f"networks benchmark: cannot run: {reason}", file=sys.stderr)
            sys.exit(2)
        done = subprocess.run(["unshare", "--net", "--mount", "--", sys.executable, __file__,
                               *(argv if argv is not None else sys.argv[1:])],
                              env={**os.environ, INSIDE: "1"}, check=False)
        sys.exit(done.returncode)
    report = anyio.run(run, args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
