"""Lifecycle benchmark: avirt versus a bare QEMU + QMP baseline, on this machine.

What it measures
----------------
(a) **One guest, one at a time.** ``define_xml`` + ``start()`` + ``destroy()`` + ``undefine()`` of a
    diskless q35 guest with 64 MiB (firmware only, no OS), ``--runs`` times (default 20). Reported: the
    median, p10 and p90 of the whole cycle, the medians of each avirt call, and the same figures for the
    RAW BASELINE (below). The headline is the ratio of the medians, avirt / raw (target <= 1.2x). avirt
    and raw runs alternate, after one untimed warm-up run of each, so drift (load, page cache) hits both.

(b) **Many guests at once.** ``--guests`` (default 50) guests are defined, then all started
    concurrently (one anyio task group), once running and once paused (``start(paused=True)``). Reported:
    wall seconds from the first ``start()`` call until the last one has returned (targets: < 3 s
    running, < 1.5 s paused, on this 2-core machine), and the controller's RSS growth per guest
    (``VmRSS`` of ``/proc/self/status``, read before the first ``define_xml`` and once all are up; target
    < 50 KiB per guest). The same raw baseline starts the same number of QEMUs concurrently, for the
    wall-clock figure of QEMU itself on these cores. Afterwards every guest is destroyed and undefined
    (in ``finally``, so also on an error or Ctrl-C).

    So that the RSS figure is about guests and not about the process: each scenario of (b) runs in a
    fresh Python process (a child of this one), which first does an untimed warm-up round of
    ``WARMUP_GUESTS`` guests (imports, lazily built tables, the capability probe, worker threads) and
    calls ``gc.collect()`` before each reading. A warm-up round as large as the measured one would
    hide per-guest costs instead: the measured round would reuse the memory the warm-up round freed.
    avirt writes and removes state files in anyio worker threads, so a concurrent round grows that pool
    (up to anyio's default limit of 40 threads, about 30 KiB each); the warm-up grows it to the size the
    round may need and reports what it cost as ``worker_pool_kib``, a fixed cost that is not a guest's.

How the baseline is made fair
-----------------------------
The raw baseline runs **the very same QEMU command**: the argv comes from avirt's own
``avirt.drivers.qemu.cmdline.build_argv`` for the same parsed XML, with ``chains={}``, the same
accelerator and a pid file. It is **spawned the same way** as avirt spawns it: the baseline binds and
listens on a unix socket itself, passes that fd (``qmp_fd``) to ``setsid -f qemu-system-x86_64 ...`` with
``pass_fds`` through ``anyio.run_process``, stdout/stderr appended to a log file. It then drives QEMU
with a bare ``qemu.qmp.QMPClient``: ``connect`` (greeting + capabilities), reads the pid file, ``cont``
(unless paused); to stop it, ``quit`` and waits until the process is gone through a pidfd
(``os.pidfd_open`` + ``anyio.wait_readable``, never ``waitpid``), then disconnects and removes its run
directory. What remains between the two is avirt's own work: XML parsing and serialising, the state
directory (atomic, fsync'ed files), locks, the supervisor task, and its event and error handling.

How to run
----------
::

    .venv/bin/python bench/lifecycle.py                 # table, 20 runs, 50 guests, accelerator auto
    .venv/bin/python bench/lifecycle.py --json          # one JSON object on stdout
    .venv/bin/python bench/lifecycle.py --runs 40 --guests 20 --accel tcg

``--accel auto`` uses KVM if ``Connection.capabilities()`` says QEMU can use it here, else TCG (the
guest XML then says ``<domain type='qemu'>``). State lives in a temporary directory, removed at the end.
Run it on an otherwise idle machine: the figures are wall-clock times (the table warns when other QEMU
processes were running at the start).

Know what "running" means here: with ``-accel kvm`` on this machine (the PVM ``/dev/kvm``), a running
diskless guest's vCPU thread spins a whole core once SeaBIOS finds no boot device (under TCG it goes
idle after about 60 ms of CPU). So the "running" round with KVM starts 50 guests on 2 cores while the
ones already running eat the CPU, and its figure varies from run to run much more than the others.

JSON keys (``--json``)
----------------------
* ``machine``: ``cpus``, ``loadavg_start`` (1/5/15 min), ``other_qemu_at_start`` (QEMU processes that
  were already running: anything above 0 makes the wall-clock figures suspect), ``qemu_version``,
  ``kvm_usable``, ``accel``.
* ``single``: ``runs``; ``avirt`` and ``raw``, each with ``total_ms`` = {``median``, ``p10``, ``p90``,
  ``min``, ``max``}, ``samples_ms`` (every run, in order) and ``phases_ms`` = {phase: median} (avirt:
  ``define``, ``start``, ``destroy``, ``undefine``; raw: ``start``, ``stop``); ``ratio`` = avirt median /
  raw median.
* ``concurrent``: {``running``, ``paused``}, each {``avirt``, ``raw``}, each with ``guests``,
  ``start_wall_s`` (all started), ``define_wall_s`` (avirt: defining all, before the starts),
  ``start_cpu_s`` (the controller process's CPU time, all threads, during the starts),
  ``stop_wall_s`` (destroying, or quitting, all), ``rss_before_kib``, ``rss_after_kib``,
  ``rss_per_guest_kib``, ``threads_before``, ``threads_after``, ``worker_pool_kib`` (RSS of growing the
  worker-thread pool during the warm-up, not counted per guest); or ``error`` (a message) if it failed.
* ``targets``: list of {``name``, ``value``, ``limit``, ``unit``, ``ok``} (``ok`` is null when the
  figure is missing).
* ``libvirt_reference``: libvirt 9.0's figures on this machine class (static text, not measured here).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import rawqemu
from rawqemu import RawGuest, count_qemu_processes, kill_leftovers

import avirt
from avirt.config import parse_domain_xml
from avirt.drivers.qemu.cmdline import build_argv

#: Guests in the untimed warm-up round that each scenario of (b) does before measuring.
WARMUP_GUESTS = 5
#: Deadline for any one QMP connect or command of the baseline.
QMP_TIMEOUT = 10.0

LIBVIRT_REFERENCE = {
    "source": "libvirt 9.0 (libvirtd + QEMU 7.2) on this machine class (static text, not measured here)",
    "single_cycle_ms": "464-471",
    "concurrent_running_s": "18.7-19.4",
    "concurrent_paused_s": "4.9",
    "rss_per_running_guest_kib": "286-502",
}

TARGETS = {
    "ratio": 1.2,  # avirt / raw, single cycle
    "running_s": 3.0,
    "paused_s": 1.5,
    "rss_kib": 50.0,
}


def guest_xml(name: str, accel: str) -> str:
    dom_type = "kvm" if accel == "kvm" else "qemu"
    return (f"<domain type='{dom_type}'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features></domain>")


# -- small helpers --------------------------------------------------------------------------------------


def proc_status(field: str) -> int:
    """An integer field of /proc/self/status (VmRSS is in KiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kib() -> int:
    gc.collect()
    return proc_status("VmRSS")


async def grow_worker_pool(threads: int) -> int:
    """Grow anyio's worker-thread pool (capped by its default limiter, 40) to the size the measured round
    may use, so those threads' stacks and malloc arenas are not charged to guests. Returns its RSS (KiB)."""
    before = rss_kib()
    async with anyio.create_task_group() as group:
        for _ in range(threads):
            group.start_soon(anyio.to_thread.run_sync, time.sleep, 0.05)
    return rss_kib() - before




def summary(values_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    deciles = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median": round(statistics.median(ms), 2), "p10": round(deciles[0], 2),
            "p90": round(deciles[8], 2), "min": round(ms[0], 2), "max": round(ms[-1], 2)}


def median_ms(values_s: Sequence[float]) -> float:
    return round(statistics.median(values_s) * 1000, 2)




# -- the raw baseline -----------------------------------------------------------------------------------


class RawBaseline:
    """QEMU spawned as avirt spawns it, driven by a bare QMPClient. See the module docstring."""

    def __init__(self, root: Path, accel: str) -> None:
        self.root = root
        self.accel = accel
        self.live: dict[str, RawGuest] = {}

    async def start(self, name: str, *, paused: bool) -> RawGuest:
        cfg = parse_domain_xml(guest_xml(name, self.accel))
        guest = self.live[name] = await rawqemu.spawn(
            name, self.root / name,
            lambda fd, pidfile: build_argv(cfg, chains={}, accel=self.accel, monitor=f"fd={fd}",
                                           pidfile=pidfile),
            cont=not paused)
        return guest

    async def stop(self, name: str) -> None:
        await rawqemu.stop(self.live.pop(name))

    async def stop_all(self) -> None:
        """Cleanup: quit every QEMU still alive (shielded, errors swallowed; leftovers get SIGKILL)."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for name in list(self.live):
                    group.start_soon(_quietly, self.stop, name)
        kill_leftovers(self.root)


async def shielded(func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Run a start to its end even on Ctrl-C: a start cut short could leave a QEMU nobody tracks, which
    the cleanup could then miss. Starts are short; the cleanup runs right after."""
    with anyio.CancelScope(shield=True):
        return await func(*args, **kwargs)


async def _quietly(func: Callable[..., Awaitable[Any]], *args: Any) -> None:
    with contextlib.suppress(Exception):
        await func(*args)


# -- avirt cleanup --------------------------------------------------------------------------------------


async def timed_cycle(conn: avirt.Connection, name: str, accel: str,
                      doms: list[avirt.Domain]) -> dict[str, float]:
    """One define + start + destroy + undefine through ``conn``: seconds per phase and in all. The domain
    sits in ``doms`` while it exists, so that a failure's clean-up finds it."""
    t0 = time.perf_counter()
    dom = await conn.define_xml(guest_xml(name, accel))
    doms.append(dom)
    t1 = time.perf_counter()
    await shielded(dom.start, paused=False)
    t2 = time.perf_counter()
    await dom.destroy()
    t3 = time.perf_counter()
    await dom.undefine()
    t4 = time.perf_counter()
    doms.remove(dom)
    return {"total": t4 - t0, "define": t1 - t0, "start": t2 - t1, "destroy": t3 - t2, "undefine": t4 - t3}


async def avirt_cleanup(doms: Sequence[avirt.Domain]) -> None:
    """Destroy whatever still runs and undefine everything (shielded: also runs on Ctrl-C)."""

    async def one(dom: avirt.Domain) -> None:
        with contextlib.suppress(Exception):
            if (await dom.state())[0] is not avirt.DomainState.SHUTOFF:
                await dom.destroy()
        with contextlib.suppress(Exception):
            await dom.undefine()

    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as group:
            for dom in doms:
                group.start_soon(one, dom)


# -- (a) one guest at a time ----------------------------------------------------------------------------


async def single(runs: int, accel_opt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Part (a). Returns (machine info, results)."""
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-"))
    avirt_times: dict[str, list[float]] = {k: [] for k in ("total", "define", "start", "destroy", "undefine")}
    raw_times: dict[str, list[float]] = {k: [] for k in ("total", "start", "stop")}
    doms: list[avirt.Domain] = []
    (tmp / "raw").mkdir()
    raw = RawBaseline(tmp / "raw", accel_opt)
    try:
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            try:
                caps = await conn.capabilities()
                accel = ("kvm" if caps["kvm"] else "tcg") if accel_opt == "auto" else accel_opt
                if accel == "kvm" and not caps["kvm"]:
                    raise SystemExit("--accel kvm: KVM is not usable here (capabilities()['kvm'] is false)")
                raw.accel = accel
                machine = {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                           "other_qemu_at_start": count_qemu_processes(),
                           "qemu_version": caps.get("qemu_version"), "kvm_usable": caps["kvm"],
                           "accel": accel}

                async def avirt_cycle(name: str, record: bool) -> None:
                    phases = await timed_cycle(conn, name, accel, doms)
                    if record:
                        for key, value in phases.items():
                            avirt_times[key].append(value)

                async def raw_cycle(name: str, record: bool) -> None:
                    t0 = time.perf_counter()
                    await shielded(raw.start, name, paused=False)
                    t1 = time.perf_counter()
                    await raw.stop(name)
                    t2 = time.perf_counter()
                    if record:
                        for key, value in (("total", t2 - t0), ("start", t1 - t0), ("stop", t2 - t1)):
                            raw_times[key].append(value)

                await avirt_cycle("warm-a", record=False)
                await raw_cycle("warm-r", record=False)
                for i in range(runs):
                    # Alternate which goes first, so neither always follows the other's QEMU exit.
                    pair = [avirt_cycle(f"a{i}", True), raw_cycle(f"r{i}", True)]
                    for coro in pair if i % 2 == 0 else reversed(pair):
                        await coro
            finally:
                await avirt_cleanup(doms)
                await raw.stop_all()
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    a_total, r_total = summary(avirt_times["total"]), summary(raw_times["total"])
    result = {
        "runs": runs,
        "avirt": {"total_ms": a_total, "samples_ms": [round(v * 1000, 1) for v in avirt_times["total"]],
                  "phases_ms": {k: median_ms(v) for k, v in avirt_times.items() if k != "total"}},
        "raw": {"total_ms": r_total, "samples_ms": [round(v * 1000, 1) for v in raw_times["total"]],
                "phases_ms": {k: median_ms(v) for k, v in raw_times.items() if k != "total"}},
        "ratio": round(a_total["median"] / r_total["median"], 3),
    }
    return machine, result


# -- (b) many guests at once (each scenario in a child process) -----------------------------------------


async def concurrent_avirt(guests: int, accel: str, paused: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-"))
    doms: list[avirt.Domain] = []
    try:
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            try:
                await conn.capabilities()  # the one-time KVM probe is not a guest's cost
                # Warm-up round, untimed and unmeasured.
                warm = [await conn.define_xml(guest_xml(f"w{i}", accel)) for i in range(WARMUP_GUESTS)]
                doms += warm
                async with anyio.create_task_group() as group:
                    for dom in warm:
                        group.start_soon(partial(shielded, dom.start, paused=paused))
                await avirt_cleanup(warm)
                doms.clear()
                pool_kib = await grow_worker_pool(guests)

                threads_before, rss_before = proc_status("Threads"), rss_kib()
                t0 = time.perf_counter()
                for i in range(guests):
                    doms.append(await conn.define_xml(guest_xml(f"g{i}", accel)))
                t1, cpu1 = time.perf_counter(), time.process_time()
                async with anyio.create_task_group() as group:
                    for dom in doms:
                        group.start_soon(partial(shielded, dom.start, paused=paused))
                t2, cpu2 = time.perf_counter(), time.process_time()
                threads_after, rss_after = proc_status("Threads"), rss_kib()
                want = avirt.DomainState.PAUSED if paused else avirt.DomainState.RUNNING
                states = {(await d.state())[0] for d in doms}
                if states != {want}:
                    found = sorted(s.name for s in states)
                    raise RuntimeError(f"expected every guest {want.name}, found {found}")
                t3 = time.perf_counter()
                async with anyio.create_task_group() as group:
                    for dom in doms:
                        group.start_soon(dom.destroy)
                t4 = time.perf_counter()
            finally:
                await avirt_cleanup(doms)
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"guests": guests, "define_wall_s": round(t1 - t0, 3), "start_wall_s": round(t2 - t1, 3),
            "start_cpu_s": round(cpu2 - cpu1, 3),
            "stop_wall_s": round(t4 - t3, 3), "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "rss_per_guest_kib": round((rss_after - rss_before) / guests, 1),
            "threads_before": threads_before, "threads_after": threads_after, "worker_pool_kib": pool_kib}


async def concurrent_raw(guests: int, accel: str, paused: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-raw-"))
    raw = RawBaseline(tmp, accel)
    try:
        async with anyio.create_task_group() as group:
            for i in range(WARMUP_GUESTS):
                group.start_soon(partial(shielded, raw.start, f"w{i}", paused=paused))
        await raw.stop_all()
        pool_kib = await grow_worker_pool(guests)

        threads_before, rss_before = proc_status("Threads"), rss_kib()
        t1, cpu1 = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as group:
            for i in range(guests):
                group.start_soon(partial(shielded, raw.start, f"g{i}", paused=paused))
        t2, cpu2 = time.perf_counter(), time.process_time()
        threads_after, rss_after = proc_status("Threads"), rss_kib()
        async with anyio.create_task_group() as group:
            for name in list(raw.live):
                group.start_soon(raw.stop, name)
        t3 = time.perf_counter()
    finally:
        await raw.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"guests": guests, "start_wall_s": round(t2 - t1, 3),
            "start_cpu_s": round(cpu2 - cpu1, 3), "stop_wall_s": round(t3 - t2, 3),
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "rss_per_guest_kib": round((rss_after - rss_before) / guests, 1),
            "threads_before": threads_before, "threads_after": threads_after, "worker_pool_kib": pool_kib}


def run_child(kind: str, mode: str, guests: int, accel: str) -> dict[str, Any]:
    """Run one scenario of (b) in a fresh interpreter; its stdout is one JSON object."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", f"{kind}:{mode}",
            "--guests", str(guests), "--accel", accel]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        # The child got the SIGINT too and is cleaning up its guests: let it finish, do not kill it.
        proc.wait()
        raise
    if proc.returncode != 0:
        return {"error": f"{kind}:{mode} child failed with status {proc.returncode} (see stderr)"}
    return dict(json.loads(out))


def child_main(spec: str, guests: int, accel: str) -> None:
    kind, mode = spec.split(":")
    func = concurrent_avirt if kind == "avirt" else concurrent_raw
    result = anyio.run(func, guests, accel, mode == "paused")
    print(json.dumps(result))


# -- report ---------------------------------------------------------------------------------------------


def targets(single_res: dict[str, Any], conc: dict[str, dict[str, Any]], guests: int) -> list[dict[str, Any]]:
    def get(mode: str, key: str) -> float | None:
        value = conc[mode]["avirt"].get(key)
        return float(value) if value is not None else None

    rows = [
        ("single cycle avirt/raw", single_res["ratio"], TARGETS["ratio"], "x"),
        (f"{guests} concurrent starts, running", get("running", "start_wall_s"), TARGETS["running_s"], "s"),
        (f"{guests} concurrent starts, paused", get("paused", "start_wall_s"), TARGETS["paused_s"], "s"),
        ("controller RSS per running guest", get("running", "rss_per_guest_kib"), TARGETS["rss_kib"], "KiB"),
        ("controller RSS per paused guest", get("paused", "rss_per_guest_kib"), TARGETS["rss_kib"], "KiB"),
    ]
    out = []
    for name, value, limit, unit in rows:
        ok = None if value is None else (value <= limit if unit == "x" else value < limit)
        out.append({"name": name, "value": value, "limit": limit, "unit": unit, "ok": ok})
    return out


def print_table(report: dict[str, Any]) -> None:
    m, s, c = report["machine"], report["single"], report["concurrent"]
    print(f"avirt lifecycle benchmark  (QEMU {m['qemu_version']}, accel {m['accel']}, {m['cpus']} CPUs, "
          f"load at start {m['loadavg_start'][0]:.2f})")
    if m["other_qemu_at_start"]:
        print(f"WARNING: {m['other_qemu_at_start']} other QEMU process(es) were running at start: "
              "wall-clock figures are unreliable; rerun on an idle machine")
    print()
    print(f"(a) define+start+destroy+undefine, one guest (q35, 64 MiB, no disk), {s['runs']} runs, ms")
    print(f"    {'':24}{'median':>9}{'p10':>9}{'p90':>9}{'min':>9}{'max':>9}")
    for label, key in (("avirt", "avirt"), ("raw QEMU+QMPClient", "raw")):
        t = s[key]["total_ms"]
        print(f"    {label:24}{t['median']:9.1f}{t['p10']:9.1f}{t['p90']:9.1f}{t['min']:9.1f}{t['max']:9.1f}")
    ap, rp = s["avirt"]["phases_ms"], s["raw"]["phases_ms"]
    print(f"    avirt phases (median):  define {ap['define']:.1f}  start {ap['start']:.1f}  "
          f"destroy {ap['destroy']:.1f}  undefine {ap['undefine']:.1f}")
    print(f"    raw phases (median):    start {rp['start']:.1f}  stop {rp['stop']:.1f}")
    print(f"    start overhead {ap['start'] - rp['start']:+.1f} ms, destroy overhead "
          f"{ap['destroy'] - rp['stop']:+.1f} ms;  ratio avirt/raw = {s['ratio']:.3f}x")
    print()
    print("(b) guests started concurrently: wall seconds until all are up, controller CPU seconds meanwhile,")
    print("    wall seconds to destroy all, controller RSS growth per guest, controller threads")
    print(f"    {'':10}{'':7}{'guests':>7}{'define s':>10}{'start s':>9}{'cpu s':>7}{'stop s':>8}"
          f"{'KiB/guest':>11}{'threads':>10}")
    for mode in ("running", "paused"):
        for kind in ("avirt", "raw"):
            r = c[mode][kind]
            label = f"    {mode if kind == 'avirt' else '':10}{kind:7}"
            if "error" in r:
                print(f"{label}ERROR: {r['error']}")
                continue
            define = f"{r['define_wall_s']:10.3f}" if "define_wall_s" in r else f"{'-':>10}"
            print(f"{label}{r['guests']:7d}{define}{r['start_wall_s']:9.3f}{r['start_cpu_s']:7.3f}"
                  f"{r['stop_wall_s']:8.3f}"
                  f"{r['rss_per_guest_kib']:11.1f}{r['threads_before']:>5}->{r['threads_after']:<4}")
    pools = [f"{c[m]['avirt']['worker_pool_kib']} KiB" for m in ("running", "paused")
             if "worker_pool_kib" in c[m]["avirt"]]
    if pools:
        print(f"    (avirt's worker-thread pool, grown in the warm-up and not counted per guest: "
              f"{' / '.join(pools)})")
    print()
    print("Targets")
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:g} {t['unit']}"
        verdict = {True: "PASS", False: "MISS", None: "ERROR"}[t["ok"]]
        limit = f"{'<=' if t['unit'] == 'x' else '<'} {t['limit']:g} {t['unit']}"
        print(f"    {t['name']:40}{value:>14}   {limit:>10}   {verdict}")
    print()
    ref = report["libvirt_reference"]
    print(f"Reference: {ref['source']}")
    print(f"    define+start+destroy+undefine     {ref['single_cycle_ms']} ms")
    print(f"    50 concurrent starts, running     {ref['concurrent_running_s']} s")
    print(f"    50 concurrent starts, paused      {ref['concurrent_paused_s']} s")
    print(f"    libvirtd RSS per running guest    {ref['rss_per_running_guest_kib']} KiB")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--runs", type=int, default=20, help="single-guest cycles per side (default 20)")
    parser.add_argument("--guests", type=int, default=50, help="guests started concurrently (default 50)")
    parser.add_argument("--accel", choices=("kvm", "tcg", "auto"), default="auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one scenario of (b)
    args = parser.parse_args(argv)
    if args.runs < 2 or args.guests < 1:
        parser.error("--runs must be >= 2 and --guests >= 1")
    if args.child:
        child_main(args.child, args.guests, args.accel)
        return

    machine, single_res = anyio.run(single, args.runs, args.accel)
    conc: dict[str, dict[str, Any]] = {}
    for mode in ("running", "paused"):
        conc[mode] = {kind: run_child(kind, mode, args.guests, machine["accel"]) for kind in ("avirt", "raw")}
    report = {"machine": machine, "single": single_res, "concurrent": conc,
              "targets": targets(single_res, conc, args.guests), "libvirt_reference": LIBVIRT_REFERENCE}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
