"""Event benchmark: how fast and how far avirt's lifecycle events go, beside bare qemu.qmp, on this machine.

What it measures
----------------
(1) **Latency, one guest.** From just before ``Domain.suspend()`` to the SUSPENDED
    :class:`~avirt.events.model.LifecycleEvent` reaching a subscriber, then the same for ``resume()`` and
    RESUMED, ``--rounds`` times (default 1,000), on one running guest (q35, 64 MiB, firmware only, TCG by
    default: it is idle once SeaBIOS finds no boot device). Two kinds of subscriber, measured separately:
    an async-iterator stream (``conn.events(kinds={LIFECYCLE}, domain=dom)``) and a callback subscription
    (``conn.subscribe(callback, ...)``, a plain function). RAW BASELINE: a second QEMU, the same command
    line, driven by a bare ``qemu.qmp.QMPClient`` with an ``EventListener(("STOP", "RESUME"))`` of its own
    read by a task: from just before ``execute("stop")`` to that task receiving STOP. Reported: p50, p90,
    p99 and max (ms), and how each splits at QEMU's own event timestamp (QEMU's wall clock, the same
    clock as ``time.time()``): "cmd->emit" (the command reaching QEMU and QEMU pausing the vCPU) and
    "emit->sub" (the event travelling from QEMU to the subscriber, where avirt does its work).

(2) **Fan-in.** ``--fanin`` (default 100) running guests (the same XML, TCG) each loop ``suspend()`` +
    ``resume()`` for ``--duration`` seconds (default 5), all at once; ONE stream subscribed to every
    LIFECYCLE event counts what it receives. Reported: events/s delivered to that stream (total and per
    guest, with the slowest and fastest guest), calls/s, EventsLostError count, events missing after a
    drain (expected = one event per completed call), the CPU the controller and the guests' QEMUs used
    meanwhile (on 2 cores the two together are the limit, so events/s is a machine figure; the
    controller's CPU microseconds per call + event is the figure that is avirt's own). RAW BASELINE: the
    same number of QEMUs, each with a bare QMPClient looping ``stop`` + ``cont`` and one EventListener per
    client read by its own task (events/s received across all listeners); it runs after avirt's round,
    with the same settling first.

(3) **Scale, real.** ``--real-scale`` (default 1,000; 0 skips) QEMUs started paused
    (``start(paused=True)``, ``--concurrency`` at a time, default 50) and watched by one controller. N is
    capped so that N x 16 MiB stays below 70 % of MemAvailable (a paused q35 guest costs about 14 MiB of
    host memory here). Reported: seconds to define them, seconds from the first ``start()`` until all are
    monitored, the controller's RSS growth per guest (target < 50 KiB per idle monitored guest), its CPU
    use while all sit idle, open fds, ``list_domains()`` latency (plain, and with a state filter), and the
    event latency of (1) under that load: one sample guest is resumed, left to settle, then suspended and
    resumed ``SCALE_EVENT_ROUNDS`` times while all others exist, with one stream subscribed to every
    LIFECYCLE event of every domain; the garbage collector's pauses during those rounds, the objects it
    tracks per guest and how long one full collection takes with all guests up (a controller's tail
    latency grows with the objects it keeps per guest). RAW BASELINE: the same N QEMUs with a bare
    QMPClient each (start wall time, RSS per client, the same latency rounds). Each side runs in a fresh
    Python process (so the RSS figure is about guests, not about what (1) and (2) left behind) that raises
    RLIMIT_NOFILE to its hard limit, does an untimed warm-up round of ``WARMUP_GUESTS`` guests and grows
    anyio's worker-thread pool before measuring (as ``bench/lifecycle.py`` explains). Everything is
    destroyed at the end (``--concurrency`` at a time), in ``finally``, also on Ctrl-C.

(4) **Scale, simulated.** ``simulated_scale(monitors=--simulated)`` from ``bench/events_sim.py``
    (another benchmark's code: fake monitors, no QEMU), in a fresh Python process, if that module is
    there; otherwise "simulated: not available". ``--simulated 0`` skips it.

How the baselines are made fair
-------------------------------
The raw QEMUs run **the very same command line**: the argv comes from avirt's own
``avirt.drivers.qemu.cmdline.build_argv`` for the same parsed XML (``chains={}``, the same accelerator, a pid
file), spawned the way avirt spawns it (a listening unix socket passed as ``qmp_fd`` to ``setsid -f``, in a
session of its own). Raw and avirt guests coexist during (1), and the rounds alternate in blocks of ``BLOCK``
rounds (stream, callback, raw, rotating which goes first) so that drift hits all three; each subscription
exists only during its own block, so no subscriber is ever woken behind another. Every variant gets
``WARMUP_ROUNDS`` untimed rounds first, then one ``gc.collect()`` (a fresh process's first full collection, of
its start-up garbage, is no steady-state cost). Before any measured loop this run's QEMUs are left to settle
(``wait_settled``: together below 5 % of a CPU, plus 1 % per guest in (2): an idle firmware-only TCG guest
uses about 0.6 % here), so their firmware is done; other users' processes are not waited for.

What remains between avirt and raw is avirt's own work: ``dom.suspend()`` takes the guest's lock and checks
its state, ``Monitor.execute`` adds a timeout and maps errors, the monitor copies the event, the driver's
state machine turns STOP into PAUSED, the bus builds a frozen dataclass and queues it per subscriber, and
the reader is woken through an ``anyio.Event``.

Targets
-------
* (1) avirt p50 within 1.5x and p99 within 2x of the raw baseline's, for the stream and for the callback.
* (1) 5x better than libvirt: p50 <= 1.62 / 5 ms and p99 <= 1.9 / 5 ms, i.e. against libvirt's *best*
  figures (the lower ends of its ranges, with the libvirt call blocking the asyncio loop; see
  ``LIBVIRT_REFERENCE``, static text, not measured here). The table also says whether bare qemu.qmp
  itself clears that bar: QEMU's own ``stop`` (from the command to its STOP event, "cmd->emit") takes
  most of it on this machine.
* (2) no EventsLostError and no event missing.
* (3) controller RSS < 50 KiB per idle monitored guest. The event latency under load has no bar of its own:
  the table shows it beside the raw baseline's under the same load and the ratios (200 rounds: its p99 is
  the second-worst sample, so one stray scheduling delay on this shared 2-core machine moves it).

How to run
----------
::

    .venv/bin/python bench/events.py                       # everything, table
    .venv/bin/python bench/events.py --json                # one JSON object on stdout
    .venv/bin/python bench/events.py --real-scale 200 --simulated 0 --rounds 300
    .venv/bin/python bench/events.py --profile             # (1) also splits avirt's path into stages

``--profile`` wraps a few of avirt's and qemu.qmp's internals for part (1) only (a few microseconds each)
to time the path monitor -> ``QemuDriver._on_qmp_event`` -> ``EventBus.emit`` -> queue wake-up ->
subscriber, beside raw's message read -> listener. Run on an otherwise idle machine: the figures are
wall-clock times (the table warns when other QEMU processes were running at the start).

JSON keys (``--json``)
----------------------
* ``machine``: ``cpus``, ``loadavg_start``, ``loadavg_end``, ``other_qemu_at_start``, ``qemu_version``,
  ``kvm_usable``, ``accel``, ``mem_available_mib``, ``nofile`` ([soft, hard] after raising).
* ``latency``: ``rounds``, ``settle`` = {``settle_s``, ``guests_cpu``} (see ``wait_settled``);
  ``avirt_stream``, ``avirt_callback``, ``raw``: each {``suspended``, ``resumed``}, each with ``ms`` =
  {``p50``, ``p90``, ``p99``, ``max``, ``mean``}, ``call_ms`` (the API call or ``execute`` returning; same
  keys), ``cmd_to_emit_ms`` and ``emit_to_sub_ms`` (p50 and p99 of the split at QEMU's timestamp); ``ratios``
  = {``stream_p50``, ``stream_p99``, ``callback_p50``, ``callback_p99``} (avirt / raw, SUSPENDED); ``gc``:
  {``avirt_stream``, ``avirt_callback``, ``raw``}, each the collector's pauses while that variant's measured
  rounds ran, as in ``scale`` below; ``profile`` (only with ``--profile``): {``avirt_stream``,
  ``avirt_callback``, ``raw``}, each stage pair (``t0->recv``, ``recv->driver``...) -> {p50, p99} ms; or
  ``error``.
* ``fanin``: {``avirt``, ``raw``}, each with ``guests``, ``duration_s``, ``events``, ``events_per_s``,
  ``per_guest_events_per_s`` = {``mean``, ``min``, ``max``}, ``calls``, ``calls_per_s``, ``lost``
  (EventsLostError counts summed; raw: 0 by construction, its queues are unbounded), ``missing`` (events
  not delivered after a 5 s drain), ``controller_cpu`` (CPU seconds / wall seconds),
  ``controller_us_per_call`` (controller CPU per call and its event, microseconds), ``guests_cpu_loop``
  (all the guests' QEMUs together, CPU seconds / wall seconds, during the loops), ``start_wall_s``,
  ``settle_s``, ``guests_cpu`` (before the loops, see ``wait_settled``); or ``error``.
* ``scale``: ``requested``, ``guests`` (after the memory cap), ``capped``; {``avirt``, ``raw``}, each with
  ``guests``, ``define_wall_s`` (avirt), ``start_wall_s``, ``start_cpu_s``, ``rss_before_kib``,
  ``rss_after_kib``, ``rss_per_guest_kib``, ``worker_pool_kib``, ``gc_objects`` (objects the garbage collector
  tracks, all up), ``gc_objects_per_guest``, ``gc_full_ms`` (one full collection then), ``host_mib_per_guest``
  (MemAvailable drop), ``fds``, ``threads``, ``idle_cpu`` (controller CPU seconds per wall second, all idle),
  ``list_ms`` / ``list_state_ms`` (avirt: {p50, p99}), ``event`` = {``suspended``, ``resumed``} as in
  ``latency``, plus ``settle`` and ``gc`` = {``gen0``, ``gen1``, ``gen2``: {``count``, ``max_ms``,
  ``total_ms``}} (collector pauses during the measured rounds); ``stop_wall_s``; or ``error``. Absent when
  skipped.
* ``simulated``: whatever ``simulated_scale()`` returned, or {``available``: false}, or {``error``}.
  Absent when skipped.
* ``targets``: list of {``name``, ``value``, ``limit``, ``unit``, ``ok``} (``ok`` null: figure missing);
  (4)'s targets are copied from ``simulated_scale()``'s own ``targets`` (``limit`` is then its text).
* ``libvirt_reference``: libvirt 9.0's figures on this machine class (static text, not measured here).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import rawqemu
from lifecycle import grow_worker_pool, guest_xml, proc_status, rss_kib
from qemu.qmp import EventListener, QMPClient
from rawqemu import RawGuest, count_qemu_processes, kill_leftovers, our_qemu_pids

import avirt
from avirt.config import parse_domain_xml
from avirt.drivers.qemu.cmdline import build_argv
from avirt.errors import EventsLostError
from avirt.events.bus import EventBus
from avirt.events.model import Event, EventKind, LifecycleEvent, LifecycleType

#: Untimed rounds per variant before (1) measures.
WARMUP_ROUNDS = 50
#: Rounds per block in (1): the variants take turns block by block.
BLOCK = 50
#: Guests in the untimed warm-up round of each (3) child.
WARMUP_GUESTS = 5
#: Suspend/resume rounds on the sample guest in (3).
SCALE_EVENT_ROUNDS = 200
#: Deadline for any one QMP connect or command of the baseline, and for any one awaited event.
TIMEOUT = 10.0
#: Host memory assumed per paused guest for the cap of (3), and the share of MemAvailable it may use.
MIB_PER_PAUSED_GUEST = 16
MEM_SHARE = 0.7

#: Where this file and bench/events_sim.py live.
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

SUSPENDED, RESUMED = LifecycleType.SUSPENDED, LifecycleType.RESUMED
#: The raw QMP event that stands for each lifecycle type.
RAW_NAME = {SUSPENDED: "STOP", RESUMED: "RESUME"}

LIBVIRT_REFERENCE = {
    "source": "libvirt 9.0 + libvirt-python asyncio event loop on this machine class (static text, "
              "not measured here)",
    "suspend_to_callback_p50_ms": "1.62-1.70",
    "suspend_to_callback_p99_ms_call_blocking_loop": "1.9-2.9",
    "suspend_to_callback_p99_ms_call_in_worker_thread": "12-22",
    "bare_qmp_query_status_p50_ms": "0.30",
    "bare_qmp_query_status_p99_ms": "0.58",
}
#: libvirt's best figures (lower ends of the ranges above), which avirt is to beat 5x.
LIBVIRT_BEST_P50_MS = 1.62
LIBVIRT_BEST_P99_MS = 1.9

TARGETS = {
    "p50_ratio": 1.5,
    "p99_ratio": 2.0,
    "libvirt_factor": 5.0,
    "rss_kib": 50.0,
}


# -- small helpers --------------------------------------------------------------------------------------


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise KeyError("MemAvailable")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raise_nofile() -> list[int]:
    """Soft RLIMIT_NOFILE up to the hard one: 1,000 guests are 1,000 sockets plus 1,000 pidfds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime (clock ticks) of these processes, all threads; gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


async def wait_settled(root: Path, threshold: float = 0.05, interval: float = 0.5,
                       max_wait: float = 30.0) -> dict[str, float]:
    """Wait until this run's QEMUs under ``root`` together use less than ``threshold`` of one CPU over
    ``interval`` (their firmware is done: an idle TCG guest uses next to nothing); gives up after
    ``max_wait``. Other users' processes do not count. Returns the seconds waited and the CPUs (of one)
    those QEMUs used over the last interval."""
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    pids = await anyio.to_thread.run_sync(our_qemu_pids, root)
    before, cores = cpu_ticks(pids), float("nan")
    while time.monotonic() - t0 < max_wait:
        await anyio.sleep(interval)
        after = cpu_ticks(pids)
        cores = (after - before) / hz / interval
        if cores < threshold:
            break
        before = after
    return {"settle_s": round(time.monotonic() - t0, 2), "guests_cpu": round(cores, 3)}


def pct(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of samples already in ms."""
    ms = sorted(values_ms)
    if not ms:
        return {}
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
            "max": round(ms[-1], 3), "mean": round(statistics.fmean(ms), 3)}


def p50_p99(values_ms: Sequence[float]) -> dict[str, float]:
    full = pct(values_ms)
    return {"p50": full["p50"], "p99": full["p99"]} if full else {}


class GcWatch:
    """Records the garbage collector's pauses while active (``with GcWatch() as watch``): a controller
    that holds more objects per guest pays longer full collections, and those land in the tail."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self._start) * 1000)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def report(self) -> dict[str, dict[str, float]]:
        return {f"gen{g}": {"count": len(p), "max_ms": round(max(p, default=0.0), 2),
                            "total_ms": round(sum(p), 2)} for g, p in self.pauses.items()}


def gc_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def gc_full_ms() -> float:
    """How long one full collection takes now: the pause a gen2 collection puts on every subscriber."""
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    return round((time.perf_counter() - t0) * 1000, 2)


def qmp_timestamp(msg: Any) -> float | None:
    stamp = msg.get("timestamp") if hasattr(msg, "get") else None
    if not stamp or stamp.get("seconds", -1) < 0:
        return None
    return float(stamp["seconds"]) + float(stamp.get("microseconds", 0)) / 1e6


async def limited(sem: anyio.Semaphore, func: Callable[..., Awaitable[Any]], *args: Any,
                  shield: bool = False, **kwargs: Any) -> Any:
    """``func`` once a slot of ``sem`` is free; shielded while it runs if asked (a start cut short could
    leave a QEMU nobody tracks). Waiting for the slot stays cancellable."""
    async with sem:
        with anyio.CancelScope(shield=shield):
            return await func(*args, **kwargs)


# -- one event arrival at a time ------------------------------------------------------------------------


@dataclass
class Sample:
    """One measured round: perf_counter at the call, when the call returned, when the event arrived; the
    wall clock at the call and at the arrival, and QEMU's own timestamp of the event."""

    t0: float
    t_call: float
    t_sub: float
    wall0: float
    wall_sub: float
    qemu_ts: float | None
    stages: dict[str, float] = field(default_factory=dict)


class Arrival:
    """What a subscriber reports into: the round arms it for one event type, the subscriber hits it."""

    def __init__(self) -> None:
        self._want: LifecycleType | None = None
        self._got = anyio.Event()
        self.t_sub = 0.0
        self.wall_sub = 0.0
        self.qemu_ts: float | None = None
        self.unexpected = 0

    def arm(self, want: LifecycleType) -> None:
        self._want, self._got = want, anyio.Event()

    def hit(self, kind: LifecycleType, qemu_ts: float | None) -> None:
        t, wall = time.perf_counter(), time.time()
        if kind is not self._want or self._got.is_set():
            self.unexpected += 1
            return
        self.t_sub, self.wall_sub, self.qemu_ts = t, wall, qemu_ts
        self._got.set()

    async def wait(self) -> None:
        with anyio.fail_after(TIMEOUT):
            await self._got.wait()


class Rounds:
    """Samples of SUSPENDED and RESUMED for one variant."""

    def __init__(self) -> None:
        self.samples: dict[LifecycleType, list[Sample]] = {SUSPENDED: [], RESUMED: []}
        #: The collector's pauses while this variant's measured rounds ran (entered per block).
        self.gc = GcWatch()

    async def one(self, arrival: Arrival, want: LifecycleType, call: Callable[[], Awaitable[Any]],
                  record: bool, probe: Probe | None = None) -> None:
        arrival.arm(want)
        if probe is not None:
            probe.stamps.clear()
        wall0 = time.time()
        t0 = time.perf_counter()
        await call()
        t_call = time.perf_counter()
        await arrival.wait()
        if record:
            stages = dict(probe.stamps) if probe is not None else {}
            self.samples[want].append(Sample(t0, t_call, arrival.t_sub, wall0, arrival.wall_sub,
                                             arrival.qemu_ts, stages))

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for want, samples in self.samples.items():
            stamped = [s for s in samples if s.qemu_ts is not None]
            out[want.value] = {
                "ms": pct([(s.t_sub - s.t0) * 1000 for s in samples]),
                "call_ms": pct([(s.t_call - s.t0) * 1000 for s in samples]),
                "cmd_to_emit_ms": p50_p99([(s.qemu_ts - s.wall0) * 1000 for s in stamped if s.qemu_ts]),
                "emit_to_sub_ms": p50_p99([(s.wall_sub - s.qemu_ts) * 1000 for s in stamped if s.qemu_ts]),
            }
        return out

    def gc_report(self) -> dict[str, dict[str, float]]:
        return self.gc.report()

    def stage_report(self, order: Sequence[str]) -> dict[str, dict[str, float]]:
        """For --profile: p50/p99 of the time between consecutive stages (SUSPENDED rounds)."""
        out: dict[str, dict[str, float]] = {}
        samples = [s for s in self.samples[SUSPENDED] if all(k in s.stages for k in order)]
        if not samples:
            return out
        for a, b in zip(["t0", *order], [*order, "sub"], strict=True):
            values = [((s.t_sub if b == "sub" else s.stages[b]) - (s.t0 if a == "t0" else s.stages[a]))
                      * 1000 for s in samples]
            out[f"{a}->{b}"] = p50_p99(values)
        return out


# -- --profile: timestamps along the event path ----------------------------------------------------------


class Probe:
    """Wraps internals (only with --profile) to stamp the STOP message and its SUSPENDED event on the way:

    * ``recv``: qemu.qmp has read and parsed the STOP message (``QMPClient._do_recv`` returns), both sides;
    * ``driver``: ``QemuDriver._on_qmp_event`` is entered with it;
    * ``emit``: ``EventBus.emit`` is entered for the SUSPENDED LifecycleEvent;
    * ``queued``: ``emit`` has queued it and woken every reader.
    """

    def __init__(self) -> None:
        self.stamps: dict[str, float] = {}
        self._undo: list[tuple[type, str, Any]] = []

    def _patch(self, cls: type, name: str, new: Any) -> None:
        self._undo.append((cls, name, cls.__dict__[name]))
        setattr(cls, name, new)

    def install(self) -> None:
        from avirt.drivers.qemu.driver import QemuDriver

        stamps = self.stamps
        orig_recv = QMPClient._do_recv
        orig_driver = QemuDriver._on_qmp_event
        orig_emit = EventBus.emit

        async def do_recv(client: QMPClient) -> Any:
            msg = await orig_recv(client)
            if msg.get("event") == "STOP":
                stamps["recv"] = time.perf_counter()
            return msg

        def on_qmp_event(driver: QemuDriver, guest: Any, msg: dict[str, Any]) -> None:
            if msg.get("event") == "STOP":
                stamps["driver"] = time.perf_counter()
            orig_driver(driver, guest, msg)

        def emit(bus: EventBus, cls: type[Event], domain: str, uuid: str, timestamp: float | None = None,
                 **fields: Any) -> Any:
            mine = cls is LifecycleEvent and fields.get("type") is SUSPENDED
            if mine:
                stamps["emit"] = time.perf_counter()
            event = orig_emit(bus, cls, domain, uuid, timestamp, **fields)
            if mine:
                stamps["queued"] = time.perf_counter()
            return event

        self._patch(QMPClient, "_do_recv", do_recv)
        self._patch(QemuDriver, "_on_qmp_event", on_qmp_event)
        self._patch(EventBus, "emit", emit)

    def remove(self) -> None:
        for cls, name, orig in reversed(self._undo):
            setattr(cls, name, orig)
        self._undo.clear()


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

    async def stop_all(self, concurrency: int) -> None:
        """Cleanup: quit every QEMU still alive (shielded, errors swallowed; leftovers get SIGKILL)."""
        sem = anyio.Semaphore(concurrency)
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for name in list(self.live):
                    group.start_soon(_quietly, limited, sem, self.stop, name)
        kill_leftovers(self.root)


async def _quietly(func: Callable[..., Awaitable[Any]], *args: Any) -> None:
    with contextlib.suppress(Exception):
        await func(*args)


async def avirt_cleanup(doms: Sequence[avirt.Domain], concurrency: int) -> None:
    """Destroy whatever still runs and undefine everything, ``concurrency`` at a time (shielded: also
    runs on Ctrl-C)."""

    async def one(dom: avirt.Domain) -> None:
        with contextlib.suppress(Exception):
            if (await dom.state())[0] is not avirt.DomainState.SHUTOFF:
                await dom.destroy()
        with contextlib.suppress(Exception):
            await dom.undefine()

    sem = anyio.Semaphore(concurrency)
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as group:
            for dom in doms:
                group.start_soon(limited, sem, one, dom)


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


# -- (1) latency, one guest -----------------------------------------------------------------------------


async def machine_info(accel_opt: str) -> dict[str, Any]:
    with scratch("avirt-bench-ev-") as tmp:
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            caps = await conn.capabilities()
    accel = ("kvm" if caps["kvm"] else "tcg") if accel_opt == "auto" else accel_opt
    return {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
            "other_qemu_at_start": count_qemu_processes(), "qemu_version": caps["qemu_version"],
            "kvm_usable": caps["kvm"], "accel": accel, "mem_available_mib": mem_available_kib() // 1024,
            "nofile": raise_nofile()}


async def latency(rounds: int, accel: str, profile: bool) -> dict[str, Any]:
    """Part (1). See the module docstring."""
    stream_rounds, callback_rounds, raw_rounds = Rounds(), Rounds(), Rounds()
    probe = Probe() if profile else None
    with scratch("avirt-bench-ev-") as tmp:
        raw = RawBaseline(tmp / "raw", accel)
        (tmp / "raw").mkdir()
        doms: list[avirt.Domain] = []
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            try:
                dom = await conn.define_xml(guest_xml("lat", accel))
                doms.append(dom)
                with anyio.CancelScope(shield=True):
                    await dom.start(paused=False)
                    rguest = await raw.start("raw-lat", paused=False)
                settle = await wait_settled(tmp)

                async def stream_block(count: int, record: bool) -> None:
                    arrival = Arrival()
                    async with conn.events(kinds={EventKind.LIFECYCLE}, domain=dom) as stream:
                        async def read() -> None:
                            async for ev in stream:
                                assert isinstance(ev, LifecycleEvent)
                                arrival.hit(ev.type, ev.timestamp)

                        async with anyio.create_task_group() as group:
                            group.start_soon(read)
                            with stream_rounds.gc if record else contextlib.nullcontext():
                                for _ in range(count):
                                    await stream_rounds.one(arrival, SUSPENDED, dom.suspend, record, probe)
                                    await stream_rounds.one(arrival, RESUMED, dom.resume, record, probe)
                            group.cancel_scope.cancel()

                async def callback_block(count: int, record: bool) -> None:
                    arrival = Arrival()

                    def on_event(ev: Event) -> None:
                        assert isinstance(ev, LifecycleEvent)
                        arrival.hit(ev.type, ev.timestamp)

                    sub = conn.subscribe(on_event, kinds={EventKind.LIFECYCLE}, domain=dom)
                    try:
                        with callback_rounds.gc if record else contextlib.nullcontext():
                            for _ in range(count):
                                await callback_rounds.one(arrival, SUSPENDED, dom.suspend, record, probe)
                                await callback_rounds.one(arrival, RESUMED, dom.resume, record, probe)
                    finally:
                        sub.cancel()

                async def raw_block(count: int, record: bool) -> None:
                    arrival = Arrival()
                    kinds = {name: kind for kind, name in RAW_NAME.items()}
                    listener = EventListener(tuple(kinds))
                    with rguest.client.listen(listener):
                        async def read() -> None:
                            while True:
                                msg = await listener.get()
                                arrival.hit(kinds[str(msg["event"])], qmp_timestamp(msg))

                        async def stop() -> None:
                            await rguest.client.execute("stop")

                        async def cont() -> None:
                            await rguest.client.execute("cont")

                        async with anyio.create_task_group() as group:
                            group.start_soon(read)
                            with raw_rounds.gc if record else contextlib.nullcontext():
                                for _ in range(count):
                                    await raw_rounds.one(arrival, SUSPENDED, stop, record, probe)
                                    await raw_rounds.one(arrival, RESUMED, cont, record, probe)
                            group.cancel_scope.cancel()
                    rguest.client.events.clear()  # the default listener keeps every event

                blocks = [stream_block, callback_block, raw_block]
                for block in blocks:
                    await block(WARMUP_ROUNDS, False)
                # A fresh process's first full collection (of the start-up garbage) is not steady state.
                gc.collect()
                if probe is not None:
                    probe.install()
                try:
                    done, turn = 0, 0
                    while done < rounds:
                        count = min(BLOCK, rounds - done)
                        for block in blocks[turn % 3:] + blocks[: turn % 3]:
                            await block(count, True)
                        done += count
                        turn += 1
                finally:
                    if probe is not None:
                        probe.remove()
            finally:
                await avirt_cleanup(doms, 1)
                await raw.stop_all(1)
    result: dict[str, Any] = {"rounds": rounds, "settle": settle, "avirt_stream": stream_rounds.report(),
                              "avirt_callback": callback_rounds.report(), "raw": raw_rounds.report()}
    raw_s = result["raw"]["suspended"]["ms"]
    ratios = {}
    for label, key in (("stream", "avirt_stream"), ("callback", "avirt_callback")):
        mine = result[key]["suspended"]["ms"]
        ratios[f"{label}_p50"] = round(mine["p50"] / raw_s["p50"], 3)
        ratios[f"{label}_p99"] = round(mine["p99"] / raw_s["p99"], 3)
    result["ratios"] = ratios
    result["gc"] = {"avirt_stream": stream_rounds.gc_report(), "avirt_callback": callback_rounds.gc_report(),
                    "raw": raw_rounds.gc_report()}
    if probe is not None:
        result["profile"] = {
            "avirt_stream": stream_rounds.stage_report(["recv", "driver", "emit", "queued"]),
            "avirt_callback": callback_rounds.stage_report(["recv", "driver", "emit", "queued"]),
            "raw": raw_rounds.stage_report(["recv"]),
        }
    return result


# -- (2) fan-in -----------------------------------------------------------------------------------------


class FanInCounter:
    """Counts events per guest, and which of them arrived inside the measured window."""

    def __init__(self) -> None:
        self.window_end = float("inf")
        self.in_window: dict[str, int] = {}
        self.total = 0
        self.lost = 0
        self._expected: int | None = None
        self._all_in = anyio.Event()

    def hit(self, guest: str) -> None:
        self.total += 1
        if time.perf_counter() <= self.window_end:
            self.in_window[guest] = self.in_window.get(guest, 0) + 1
        self._check()

    def add_lost(self, count: int) -> None:
        self.lost += count
        self._check()

    def _check(self) -> None:
        if self._expected is not None and self.total + self.lost >= self._expected:
            self._all_in.set()

    async def drained(self, expected: int) -> int:
        """Wait (up to 5 s) until all ``expected`` events have arrived; returns how many never did."""
        self._expected = expected
        self._check()
        with anyio.move_on_after(5):
            await self._all_in.wait()
        return max(0, expected - self.total - self.lost)


async def drive_loops(root: Path, names: Sequence[str], step: Callable[[str], Awaitable[None]],
                      duration: float, counter: FanInCounter) -> tuple[int, float, float, float]:
    """Run ``step(name)`` (one suspend + resume) in a loop per guest for ``duration`` seconds, all at once.
    Returns (completed calls, wall seconds, controller CPU seconds, the QEMUs' CPU seconds)."""
    pids = await anyio.to_thread.run_sync(our_qemu_pids, root)
    ticks0 = cpu_ticks(pids)
    calls = 0
    stop = anyio.Event()

    async def loop(name: str) -> None:
        nonlocal calls
        while not stop.is_set():
            await step(name)
            calls += 2

    t0, cpu0 = time.perf_counter(), time.process_time()
    counter.window_end = t0 + duration
    async with anyio.create_task_group() as group:
        for name in names:
            group.start_soon(loop, name)
        await anyio.sleep(duration)
        stop.set()
    t1, cpu1 = time.perf_counter(), time.process_time()
    return calls, t1 - t0, cpu1 - cpu0, (cpu_ticks(pids) - ticks0) / os.sysconf("SC_CLK_TCK")


def fanin_result(guests: int, duration: float, counter: FanInCounter, calls: int, wall: float,
                 cpu: float, qemu_cpu: float, missing: int, start_wall: float) -> dict[str, Any]:
    per_guest = [counter.in_window.get(name, 0) / duration for name in counter.in_window] or [0.0]
    per_guest += [0.0] * (guests - len(counter.in_window))
    events = sum(counter.in_window.values())
    return {"guests": guests, "duration_s": duration, "events": events,
            "events_per_s": round(events / duration, 1),
            "per_guest_events_per_s": {"mean": round(statistics.fmean(per_guest), 1),
                                       "min": round(min(per_guest), 1), "max": round(max(per_guest), 1)},
            "calls": calls, "calls_per_s": round(calls / wall, 1), "lost": counter.lost, "missing": missing,
            "controller_cpu": round(cpu / wall, 3),
            "controller_us_per_call": round(cpu / max(calls, 1) * 1e6, 1),
            "guests_cpu_loop": round(qemu_cpu / wall, 3),
            "start_wall_s": round(start_wall, 2)}


async def fanin_avirt(guests: int, duration: float, accel: str, concurrency: int) -> dict[str, Any]:
    with scratch("avirt-bench-ev-") as tmp:
        doms: list[avirt.Domain] = []
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            try:
                for i in range(guests):
                    doms.append(await conn.define_xml(guest_xml(f"f{i}", accel)))
                sem = anyio.Semaphore(concurrency)
                t0 = time.perf_counter()
                async with anyio.create_task_group() as group:
                    for dom in doms:
                        group.start_soon(lambda d: limited(sem, d.start, shield=True, paused=False), dom)
                start_wall = time.perf_counter() - t0
                settle = await wait_settled(tmp, threshold=0.05 + 0.01 * guests)
                by_name = {d.name: d for d in doms}
                counter = FanInCounter()

                async def step(name: str) -> None:
                    await by_name[name].suspend()
                    await by_name[name].resume()

                async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
                    async def read() -> None:
                        while True:
                            try:
                                async for ev in stream:
                                    counter.hit(ev.domain)
                                return
                            except EventsLostError as e:
                                counter.add_lost(e.count)

                    async with anyio.create_task_group() as group:
                        group.start_soon(read)
                        calls, wall, cpu, qemu_cpu = await drive_loops(tmp, list(by_name), step, duration,
                                                                       counter)
                        missing = await counter.drained(calls)
                        group.cancel_scope.cancel()
            finally:
                await avirt_cleanup(doms, concurrency)
    return fanin_result(guests, duration, counter, calls, wall, cpu, qemu_cpu, missing, start_wall) | settle


async def fanin_raw(guests: int, duration: float, accel: str, concurrency: int) -> dict[str, Any]:
    with scratch("avirt-bench-ev-raw-") as tmp:
        raw = RawBaseline(tmp, accel)
        try:
            sem = anyio.Semaphore(concurrency)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as group:
                for i in range(guests):
                    group.start_soon(lambda n: limited(sem, raw.start, n, shield=True, paused=False), f"f{i}")
            start_wall = time.perf_counter() - t0
            settle = await wait_settled(tmp, threshold=0.05 + 0.01 * guests)
            counter = FanInCounter()

            async def step(name: str) -> None:
                client = raw.live[name].client
                await client.execute("stop")
                await client.execute("cont")

            with contextlib.ExitStack() as stack:
                listeners = {}
                for name, guest in raw.live.items():
                    listeners[name] = EventListener(("STOP", "RESUME"))
                    stack.enter_context(guest.client.listen(listeners[name]))

                async def read(name: str, listener: EventListener) -> None:
                    while True:
                        await listener.get()
                        counter.hit(name)

                async with anyio.create_task_group() as group:
                    for name, listener in listeners.items():
                        group.start_soon(read, name, listener)
                    calls, wall, cpu, qemu_cpu = await drive_loops(tmp, list(raw.live), step, duration,
                                                                   counter)
                    missing = await counter.drained(calls)
                    group.cancel_scope.cancel()
        finally:
            await raw.stop_all(concurrency)
    return fanin_result(guests, duration, counter, calls, wall, cpu, qemu_cpu, missing, start_wall) | settle


# -- (3) scale, real (each side in a child process) -----------------------------------------------------


async def sample_rounds(root: Path, arrival: Arrival, suspend: Callable[[], Awaitable[Any]],
                        resume: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """The sample guest of (3): resumed, left to settle, then SCALE_EVENT_ROUNDS suspend+resume rounds."""
    rounds = Rounds()
    await rounds.one(arrival, RESUMED, resume, False)
    settle = await wait_settled(root, max_wait=10)
    for _ in range(10):
        await rounds.one(arrival, SUSPENDED, suspend, False)
        await rounds.one(arrival, RESUMED, resume, False)
    with GcWatch() as watch:
        for _ in range(SCALE_EVENT_ROUNDS):
            await rounds.one(arrival, SUSPENDED, suspend, True)
            await rounds.one(arrival, RESUMED, resume, True)
    return rounds.report() | {"settle": settle, "gc": watch.report()}


async def idle_cpu(seconds: float = 2.0) -> float:
    cpu0, t0 = time.process_time(), time.perf_counter()
    await anyio.sleep(seconds)
    return round((time.process_time() - cpu0) / (time.perf_counter() - t0), 4)


async def scale_avirt(guests: int, accel: str, concurrency: int) -> dict[str, Any]:
    raise_nofile()
    with scratch("avirt-bench-ev-") as tmp:
        doms: list[avirt.Domain] = []
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            try:
                await conn.capabilities()
                sem = anyio.Semaphore(concurrency)
                warm = [await conn.define_xml(guest_xml(f"w{i}", accel)) for i in range(WARMUP_GUESTS)]
                doms += warm
                async with anyio.create_task_group() as group:
                    for dom in warm:
                        group.start_soon(lambda d: limited(sem, d.start, shield=True, paused=True), dom)
                await conn.list_domains()
                await avirt_cleanup(warm, concurrency)
                doms.clear()
                pool_kib = await grow_worker_pool(concurrency)

                mem_before, objects_before, rss_before = mem_available_kib(), gc_objects(), rss_kib()
                t0 = time.perf_counter()
                for i in range(guests):
                    doms.append(await conn.define_xml(guest_xml(f"s{i:04d}", accel)))
                t1, cpu1 = time.perf_counter(), time.process_time()
                async with anyio.create_task_group() as group:
                    for dom in doms:
                        group.start_soon(lambda d: limited(sem, d.start, shield=True, paused=True), dom)
                t2, cpu2 = time.perf_counter(), time.process_time()
                rss_after, objects_after, full_ms = rss_kib(), gc_objects(), gc_full_ms()
                await anyio.sleep(1)
                mem_after = mem_available_kib()
                states = {(await d.state())[0] for d in doms}
                if states != {avirt.DomainState.PAUSED}:
                    raise RuntimeError(f"expected every guest PAUSED, found {sorted(s.name for s in states)}")
                idle = await idle_cpu()
                list_ms, list_state_ms = [], []
                for _ in range(50):
                    t = time.perf_counter()
                    listed = await conn.list_domains()
                    list_ms.append((time.perf_counter() - t) * 1000)
                assert len(listed) == guests
                for _ in range(20):
                    t = time.perf_counter()
                    await conn.list_domains(state=avirt.DomainState.PAUSED)
                    list_state_ms.append((time.perf_counter() - t) * 1000)

                sample = doms[0]
                arrival = Arrival()
                async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
                    async def read() -> None:
                        async for ev in stream:
                            if ev.domain == sample.name:
                                assert isinstance(ev, LifecycleEvent)
                                arrival.hit(ev.type, ev.timestamp)

                    async with anyio.create_task_group() as group:
                        group.start_soon(read)
                        event = await sample_rounds(tmp, arrival, sample.suspend, sample.resume)
                        group.cancel_scope.cancel()
                fds, threads = open_fds(), proc_status("Threads")
                t3 = time.perf_counter()
                await avirt_cleanup(doms, concurrency)
                t4 = time.perf_counter()
                doms.clear()
            finally:
                await avirt_cleanup(doms, concurrency)
    return {"guests": guests, "define_wall_s": round(t1 - t0, 2), "start_wall_s": round(t2 - t1, 2),
            "start_cpu_s": round(cpu2 - cpu1, 2), "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "rss_per_guest_kib": round((rss_after - rss_before) / guests, 1), "worker_pool_kib": pool_kib,
            "gc_objects": objects_after, "gc_full_ms": full_ms,
            "gc_objects_per_guest": round((objects_after - objects_before) / guests, 1),
            "host_mib_per_guest": round((mem_before - mem_after) / guests / 1024, 1), "fds": fds,
            "threads": threads, "idle_cpu": idle, "list_ms": p50_p99(list_ms),
            "list_state_ms": p50_p99(list_state_ms), "event": event, "stop_wall_s": round(t4 - t3, 2)}


async def scale_raw(guests: int, accel: str, concurrency: int) -> dict[str, Any]:
    raise_nofile()
    with scratch("avirt-bench-ev-raw-") as tmp:
        raw = RawBaseline(tmp, accel)
        try:
            sem = anyio.Semaphore(concurrency)
            async with anyio.create_task_group() as group:
                for i in range(WARMUP_GUESTS):
                    group.start_soon(lambda n: limited(sem, raw.start, n, shield=True, paused=True), f"w{i}")
            await raw.stop_all(concurrency)
            pool_kib = await grow_worker_pool(concurrency)

            mem_before, objects_before, rss_before = mem_available_kib(), gc_objects(), rss_kib()
            t1, cpu1 = time.perf_counter(), time.process_time()
            async with anyio.create_task_group() as group:
                for i in range(guests):
                    group.start_soon(lambda n: limited(sem, raw.start, n, shield=True, paused=True),
                                     f"s{i:04d}")
            t2, cpu2 = time.perf_counter(), time.process_time()
            rss_after, objects_after, full_ms = rss_kib(), gc_objects(), gc_full_ms()
            await anyio.sleep(1)
            mem_after = mem_available_kib()
            idle = await idle_cpu()

            sample = raw.live["s0000"].client
            arrival = Arrival()
            kinds = {name: kind for kind, name in RAW_NAME.items()}
            listener = EventListener(tuple(kinds))
            with sample.listen(listener):
                async def read() -> None:
                    while True:
                        msg = await listener.get()
                        arrival.hit(kinds[str(msg["event"])], qmp_timestamp(msg))

                async def suspend() -> None:
                    await sample.execute("stop")

                async def resume() -> None:
                    await sample.execute("cont")

                async with anyio.create_task_group() as group:
                    group.start_soon(read)
                    event = await sample_rounds(tmp, arrival, suspend, resume)
                    group.cancel_scope.cancel()
            fds, threads = open_fds(), proc_status("Threads")
            t3 = time.perf_counter()
            await raw.stop_all(concurrency)
            t4 = time.perf_counter()
        finally:
            await raw.stop_all(concurrency)
    return {"guests": guests, "start_wall_s": round(t2 - t1, 2), "start_cpu_s": round(cpu2 - cpu1, 2),
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "rss_per_guest_kib": round((rss_after - rss_before) / guests, 1), "worker_pool_kib": pool_kib,
            "gc_objects": objects_after, "gc_full_ms": full_ms,
            "gc_objects_per_guest": round((objects_after - objects_before) / guests, 1),
            "host_mib_per_guest": round((mem_before - mem_after) / guests / 1024, 1), "fds": fds,
            "threads": threads, "idle_cpu": idle, "event": event, "stop_wall_s": round(t4 - t3, 2)}


# -- (4) simulated --------------------------------------------------------------------------------------


def simulated_available() -> bool:
    return os.path.exists(os.path.join(BENCH_DIR, "events_sim.py"))


async def simulated(monitors: int) -> dict[str, Any]:
    sys.path.insert(0, BENCH_DIR)
    try:
        from events_sim import simulated_scale  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:
        return {"available": False, "error": f"cannot import bench/events_sim.py: {e}"}
    kwargs: dict[str, Any] = {"monitors": monitors}
    if "json_out" in inspect.signature(simulated_scale).parameters:
        kwargs["json_out"] = True  # figures as a dict, no table of its own on stdout
    result = await simulated_scale(**kwargs)
    return dict(result) if isinstance(result, dict) else {"result": result}


# -- children -------------------------------------------------------------------------------------------


def run_child(spec: str, args: argparse.Namespace, count: int) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter; its stdout is one JSON object."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", spec, "--child-count", str(count),
            "--accel", args.accel, "--concurrency", str(args.concurrency)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        # The child got the SIGINT too and is cleaning up its guests: let it finish, do not kill it.
        proc.wait()
        raise
    if proc.returncode != 0:
        return {"error": f"{spec} child failed with status {proc.returncode} (see stderr)"}
    try:
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": f"{spec} child printed no JSON object"}


def child_main(spec: str, count: int, accel: str, concurrency: int) -> None:
    # Whatever the scenario prints goes to stderr: stdout carries only the JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        if spec == "scale-avirt":
            result = anyio.run(scale_avirt, count, accel, concurrency)
        elif spec == "scale-raw":
            result = anyio.run(scale_raw, count, accel, concurrency)
        elif spec == "simulated":
            result = anyio.run(simulated, count)
        else:
            raise SystemExit(f"unknown child {spec}")
    print(json.dumps(result, default=str))


def scale_size(requested: int) -> tuple[int, bool]:
    cap = int(mem_available_kib() * MEM_SHARE / (MIB_PER_PAUSED_GUEST * 1024))
    return (min(requested, cap), requested > cap)


# -- report ---------------------------------------------------------------------------------------------


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    lat = report.get("latency", {})
    rows: list[tuple[str, float | None, float, str]] = []
    for label, key in (("stream", "avirt_stream"), ("callback", "avirt_callback")):
        rows += [
            (f"(1) {label} p50 / raw p50", _get(lat, "ratios", f"{label}_p50"), TARGETS["p50_ratio"], "x"),
            (f"(1) {label} p99 / raw p99", _get(lat, "ratios", f"{label}_p99"), TARGETS["p99_ratio"], "x"),
            (f"(1) {label} p50 vs libvirt/5", _get(lat, key, "suspended", "ms", "p50"),
             round(LIBVIRT_BEST_P50_MS / TARGETS["libvirt_factor"], 3), "ms"),
            (f"(1) {label} p99 vs libvirt/5", _get(lat, key, "suspended", "ms", "p99"),
             round(LIBVIRT_BEST_P99_MS / TARGETS["libvirt_factor"], 3), "ms"),
        ]
    fan = report.get("fanin", {}).get("avirt", {})
    rows += [("(2) fan-in EventsLostError count", _get(fan, "lost"), 0, "events"),
             ("(2) fan-in events missing", _get(fan, "missing"), 0, "events")]
    scale = report.get("scale")
    if scale is not None:
        rows.append(("(3) controller RSS per idle guest", _get(scale, "avirt", "rss_per_guest_kib"),
                     TARGETS["rss_kib"], "KiB"))
    out: list[dict[str, Any]] = []
    for name, value, limit, unit in rows:
        if value is None:
            ok = None
        elif unit == "events":
            ok = value <= limit
        elif unit == "KiB":
            ok = value < limit
        else:
            ok = value <= limit
        out.append({"name": name, "value": value, "limit": limit, "unit": unit, "ok": ok})
    # (4)'s own targets, as bench/events_sim.py judged them (its limits are text, e.g. ">= 20,000").
    for t in (report.get("simulated") or {}).get("targets") or []:
        if isinstance(t, dict):
            value = t.get("value")
            out.append({"name": f"(4) {t.get('name', '?')}",
                        "value": round(value, 1) if isinstance(value, float) else value,
                        "limit": str(t.get("target", "")), "unit": str(t.get("unit", "")), "ok": t.get("ok")})
    return out


def _short(value: Any) -> str:
    """A figure for the table: floats to 4 significant digits (whole from 1,000 up), the rest as they are."""
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _fmt_pct(p: dict[str, Any]) -> str:
    if not p:
        return "n/a"
    return f"{p['p50']:8.3f}{p['p90']:8.3f}{p['p99']:8.3f}{p['max']:8.3f}"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"avirt event benchmark  (QEMU {m['qemu_version']}, accel {m['accel']}, {m['cpus']} CPUs, "
          f"load at start/end {m['loadavg_start'][0]:.2f}/{m.get('loadavg_end', [0.0])[0]:.2f}, "
          f"MemAvailable {m['mem_available_mib']} MiB, "
          f"nofile {m['nofile'][0]})")
    if m["other_qemu_at_start"]:
        print(f"WARNING: {m['other_qemu_at_start']} other QEMU process(es) were running at start: "
              "wall-clock figures are unreliable; rerun on an idle machine")
    print()
    lat = report["latency"]
    if "error" in lat:
        print(f"(1) latency: ERROR: {lat['error']}")
    else:
        print(f"(1) call -> event at the subscriber, one running guest, {lat['rounds']} rounds, ms")
        print(f"    {'':24}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   {'call p50':>8}"
              f"  {'cmd->emit':>10}  {'emit->sub':>10} (p50/p99)")
        for label, key in (("avirt stream", "avirt_stream"), ("avirt callback", "avirt_callback"),
                           ("raw qemu.qmp", "raw")):
            for kind in ("suspended", "resumed"):
                r = lat[key][kind]
                ce, es = r["cmd_to_emit_ms"], r["emit_to_sub_ms"]
                split = (f"{ce['p50']:5.3f}/{ce['p99']:5.3f}  {es['p50']:5.3f}/{es['p99']:5.3f}"
                         if ce and es else "n/a")
                name = f"{label if kind == 'suspended' else '':18}{kind:10}"
                print(f"    {name}{_fmt_pct(r['ms'])}   {r['call_ms']['p50']:8.3f}  {split}")
        ra = lat["ratios"]
        print(f"    avirt/raw (SUSPENDED): stream p50 {ra['stream_p50']:.2f}x p99 {ra['stream_p99']:.2f}x; "
              f"callback p50 {ra['callback_p50']:.2f}x p99 {ra['callback_p99']:.2f}x")
        if "gc" in lat:
            print("    GC pauses during each variant's rounds (count/max ms): " + ";  ".join(
                f"{key} " + " ".join(f"{g} {v['count']}/{v['max_ms']:.1f}" for g, v in pauses.items())
                for key, pauses in lat["gc"].items()))
        raw_s = lat["raw"]["suspended"]["ms"]
        bar = LIBVIRT_BEST_P50_MS / TARGETS["libvirt_factor"]
        print(f"    libvirt (reference) p50 {LIBVIRT_BEST_P50_MS} ms / avirt stream p50 = "
              f"{LIBVIRT_BEST_P50_MS / lat['avirt_stream']['suspended']['ms']['p50']:.1f}x, "
              f"/ raw p50 = {LIBVIRT_BEST_P50_MS / raw_s['p50']:.1f}x;")
        print(f"    the 5x bar ({bar:.3f} ms) is {'below' if raw_s['p50'] > bar else 'above'} what bare "
              "qemu.qmp does here")
        if "profile" in lat:
            print("    --profile, SUSPENDED, p50/p99 ms between stages (t0 = just before the call):")
            for key, stages in lat["profile"].items():
                print(f"      {key:16}" + "  ".join(f"{k} {v['p50']:.3f}/{v['p99']:.3f}"
                                                    for k, v in stages.items()))
    print()
    fan = report["fanin"]
    print("(2) fan-in: every guest loops suspend+resume; events delivered to one stream (avirt) or to one "
          "listener per client (raw)")
    print(f"    {'':7}{'guests':>7}{'events/s':>10}{'per guest mean/min/max':>24}{'calls/s':>9}"
          f"{'lost':>5}{'missing':>8}{'ctl cpu':>8}{'us/call':>8}{'qemu cpu':>9}{'start s':>8}")
    for kind in ("avirt", "raw"):
        r = fan[kind]
        if "error" in r:
            print(f"    {kind:7}ERROR: {r['error']}")
            continue
        g = r["per_guest_events_per_s"]
        per = f"{g['mean']:.1f}/{g['min']:.1f}/{g['max']:.1f}"
        print(f"    {kind:7}{r['guests']:7d}{r['events_per_s']:10.1f}{per:>24}{r['calls_per_s']:9.1f}"
              f"{r['lost']:5d}{r['missing']:8d}{r['controller_cpu']:8.2f}{r['controller_us_per_call']:8.0f}"
              f"{r['guests_cpu_loop']:9.2f}"
              f"{r['start_wall_s']:8.2f}")
    if "error" not in fan["avirt"] and "error" not in fan["raw"] and fan["raw"]["events_per_s"]:
        print(f"    avirt/raw events/s = {fan['avirt']['events_per_s'] / fan['raw']['events_per_s']:.2f}x "
              f"over {fan['avirt']['duration_s']:g} s (cpu columns: CPUs in use, of "
              f"{report['machine']['cpus']})")
    print()
    scale = report.get("scale")
    if scale is None:
        print("(3) scale, real: skipped")
    else:
        capped = " (capped by memory)" if scale["capped"] else ""
        print(f"(3) scale, real: {scale['guests']} paused guests{capped}, requested {scale['requested']}")
        print(f"    {'':7}{'define s':>9}{'start s':>8}{'cpu s':>7}{'KiB/guest':>10}{'objs/guest':>11}"
              f"{'host MiB/g':>11}{'fds':>6}{'thr':>5}{'idle cpu':>9}{'stop s':>8}")
        for kind in ("avirt", "raw"):
            r = scale[kind]
            if "error" in r:
                print(f"    {kind:7}ERROR: {r['error']}")
                continue
            define = f"{r['define_wall_s']:9.2f}" if "define_wall_s" in r else f"{'-':>9}"
            print(f"    {kind:7}{define}{r['start_wall_s']:8.2f}{r['start_cpu_s']:7.2f}"
                  f"{r['rss_per_guest_kib']:10.1f}{r['gc_objects_per_guest']:11.1f}"
                  f"{r['host_mib_per_guest']:11.1f}{r['fds']:6d}"
                  f"{r['threads']:5d}{r['idle_cpu']:9.4f}{r['stop_wall_s']:8.2f}")
        a = scale["avirt"]
        if "error" not in a:
            print(f"    avirt list_domains(): p50 {a['list_ms']['p50']:.3f} ms, "
                  f"p99 {a['list_ms']['p99']:.3f} ms; with state=PAUSED: "
                  f"p50 {a['list_state_ms']['p50']:.3f} ms, p99 {a['list_state_ms']['p99']:.3f} ms")
        print(f"    event latency on a sample guest while all exist, {SCALE_EVENT_ROUNDS} rounds, ms")
        print(f"      {'':17}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   GC pauses meanwhile: count/max ms")
        for kind in ("avirt", "raw"):
            r = scale[kind]
            if "error" in r:
                continue
            gcs = "  ".join(f"{g} {v['count']}/{v['max_ms']:.1f}" for g, v in r["event"]["gc"].items())
            for ev in ("suspended", "resumed"):
                label = f"{kind if ev == 'suspended' else '':7}{ev:10}"
                print(f"      {label}{_fmt_pct(r['event'][ev]['ms'])}   {gcs if ev == 'suspended' else ''}")
        if "error" not in a and "error" not in scale["raw"]:
            am, rm = a["event"]["suspended"]["ms"], scale["raw"]["event"]["suspended"]["ms"]
            print(f"      avirt/raw (SUSPENDED): p50 {am['p50'] / rm['p50']:.2f}x, "
                  f"p99 {am['p99'] / rm['p99']:.2f}x")
        if "error" not in a and "error" not in scale["raw"]:
            print(f"    GC-tracked objects: avirt {a['gc_objects']}, raw {scale['raw']['gc_objects']}; "
                  f"one full collection takes avirt {a['gc_full_ms']:.1f} ms, "
                  f"raw {scale['raw']['gc_full_ms']:.1f} ms (a pause every subscriber waits out)")
        if "error" not in a:
            print(f"    (avirt's worker-thread pool, grown before measuring and not counted per guest: "
                  f"{a['worker_pool_kib']} KiB)")
    print()
    sim = report.get("simulated")
    if sim is None:
        print("(4) simulated: skipped")
    elif sim.get("available") is False:
        print("simulated: not available")
    else:
        print("(4) simulated (bench/events_sim.py simulated_scale; its targets are under Targets):")
        for key, value in sim.items():
            if key == "targets":
                continue
            if isinstance(value, dict):
                value = ", ".join(f"{k}={_short(v)}" for k, v in value.items())
            print(f"    {key}: {_short(value)}")
    print()
    print("Targets")
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{_short(t['value'])} {t['unit']}"
        verdict = {True: "PASS", False: "MISS"}.get(t["ok"], "ERROR")
        if isinstance(t["limit"], str):
            limit = f"{t['limit']} {t['unit']}"
        else:
            limit = f"{'<' if t['unit'] == 'KiB' else '<='} {t['limit']:g} {t['unit']}"
        print(f"    {t['name']:40}{value:>16}   {limit:>12}   {verdict}")
    print()
    ref = report["libvirt_reference"]
    print(f"Reference: {ref['source']}")
    print(f"    suspend/resume call -> lifecycle callback p50       {ref['suspend_to_callback_p50_ms']} ms")
    print(f"    ... p99, the call blocking the asyncio loop         "
          f"{ref['suspend_to_callback_p99_ms_call_blocking_loop']} ms")
    print(f"    ... p99, the call in a worker thread                "
          f"{ref['suspend_to_callback_p99_ms_call_in_worker_thread']} ms")
    print(f"    bare qemu.qmp query-status round trip p50 / p99     {ref['bare_qmp_query_status_p50_ms']} / "
          f"{ref['bare_qmp_query_status_p99_ms']} ms")


async def parent_part(func: Callable[..., Awaitable[dict[str, Any]]], *args: Any) -> dict[str, Any]:
    try:
        return await func(*args)
    except Exception as e:  # one failed part must not hide the others' figures
        return {"error": f"{type(e).__name__}: {e}"}


async def in_process_parts(args: argparse.Namespace) -> dict[str, Any]:
    machine = await machine_info(args.accel)
    accel = machine["accel"]
    lat = await parent_part(latency, args.rounds, accel, args.profile)
    fan = {"avirt": await parent_part(fanin_avirt, args.fanin, args.duration, accel, args.concurrency),
           "raw": await parent_part(fanin_raw, args.fanin, args.duration, accel, args.concurrency)}
    return {"machine": machine, "latency": lat, "fanin": fan}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--rounds", type=int, default=1000, help="(1) suspend+resume rounds (default 1000)")
    parser.add_argument("--fanin", type=int, default=100, help="(2) guests looping at once (default 100)")
    parser.add_argument("--duration", type=float, default=5.0, help="(2) seconds of looping (default 5)")
    parser.add_argument("--real-scale", type=int, default=1000,
                        help="(3) paused guests watched by one controller (default 1000; 0 skips)")
    parser.add_argument("--simulated", type=int, default=10000,
                        help="(4) monitors for bench/events_sim.py simulated_scale (default 10000; 0 skips)")
    parser.add_argument("--concurrency", type=int, default=50, help="starts/destroys at a time (default 50)")
    parser.add_argument("--accel", choices=("kvm", "tcg", "auto"), default="tcg",
                        help="guests' accelerator (default tcg: a running KVM guest spins a core here)")
    parser.add_argument("--profile", action="store_true", help="(1) also time the stages of avirt's path")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.child_count, args.accel, args.concurrency)
        return
    if args.rounds < 2 or args.fanin < 1 or args.duration <= 0 or args.real_scale < 0 or args.simulated < 0:
        parser.error("--rounds must be >= 2, --fanin >= 1, --duration > 0, the others >= 0")

    report = anyio.run(in_process_parts, args)
    args.accel = report["machine"]["accel"]
    if args.real_scale:
        guests, capped = scale_size(args.real_scale)
        report["scale"] = {"requested": args.real_scale, "guests": guests, "capped": capped,
                           "avirt": run_child("scale-avirt", args, guests),
                           "raw": run_child("scale-raw", args, guests)}
    if args.simulated:
        report["simulated"] = (run_child("simulated", args, args.simulated) if simulated_available()
                               else {"available": False})
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["targets"] = targets(report)
    report["libvirt_reference"] = LIBVIRT_REFERENCE
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
