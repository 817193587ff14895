"""Event delivery at scale, against simulated guests: thousands of fake QEMU monitors, one controller.

What it measures
----------------
A fake QMP peer (``tests/fakeqmp.py``: QEMU-shaped bytes, checked against a recording of real QEMU by
``tests/test_soak.py``) serves ``monitors`` guests from the state directory; ``avirt.connect()`` then
re-attaches to every one of them through the real controller stack (qemu.qmp client -> Monitor -> driver
-> event bus). Reported:

* **connect**: seconds until ``connect()`` returns with every monitor connected and negotiated (each
  guest: read ``live.xml`` and the pid file, check the pid, QMP greeting + ``qmp_capabilities``,
  ``query-status``, a supervisor task with a pidfd). Also the controller's CPU seconds for it.
* **RSS per monitor**: the controller's ``VmRSS`` growth over ``connect()`` divided by ``monitors``
  (``gc.collect()`` before each reading), in KiB; target < 50 KiB per idle monitored guest.
* **throughput**: ``emitters`` guests (default 1,000) each burst ``events_per_monitor`` events at once, as
  fast as the controller reads them; one stream (``kinds={EventKind.QMP}``) receives them. Events/s =
  events received / seconds from the request to the last receipt; target >= 20,000 events/s (the issue:
  "at least 20,000 events/s delivered from 1,000 simulated guests on one core" — the controller is one
  thread, so it uses one core; the fake runs in other processes). Also the controller's CPU per event,
  which unlike the wall-clock rate does not depend on what else runs on the machine, and the latency
  (receipt minus the fake's QEMU-style timestamp): in a burst that is mostly queueing.
* **latency under load**: the same guests emit at a steady ``paced_rate`` events/s in total (default
  20,000/s, spread evenly) for ``paced_seconds``; p50/p99/max of receipt time minus the event's
  timestamp (taken by the fake right before it writes the event; same host clock), and the share of a
  core the controller needs for that rate.

Events are RESUME and RESET alternately (``pattern="resume-reset"``), shapes QEMU sent in the transcript
and neither of which makes the controller send a command back; ``pattern="stop-resume"`` makes every
other event a STOP, which the driver answers with a ``query-status`` (see the soak test's STOP storm).

Limits of this machine
----------------------
The controller holds two descriptors per guest (the monitor's socket and the supervisor's pidfd), and so
does the fake (a listening socket and the accepted connection). Here the hard RLIMIT_NOFILE is 20,000 and
root cannot raise it (no CAP_SYS_RESOURCE), so the controller can watch at most about 9,700 guests: a
request for more is clamped, and the report says so (``monitors_requested``, ``limited_by``). The fake
splits itself over several processes for the same reason. Wall-clock figures move with the load of the
machine (other sessions share its two cores; see ``/proc/pressure/cpu``): compare CPU figures first.

How to run
----------
::

    .venv/bin/python bench/events_sim.py --monitors 10000            # table
    .venv/bin/python bench/events_sim.py --monitors 10000 --json     # one JSON object on stdout
    .venv/bin/python bench/events_sim.py --monitors 2000 --emitters 500 --events-per-monitor 200

From code (``bench/events.py``): ``report = await simulated_scale(monitors=..., json_out=True)`` returns the
figures as a dict and prints nothing on stdout (``json_out=False`` prints the table); progress goes to
stderr. Run it in a process of its own: it raises RLIMIT_NOFILE and its RSS figure is about the process.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import anyio

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, or imported by bench/events.py
    sys.path.insert(0, str(REPO_ROOT))

import avirt  # noqa: E402
from avirt.errors import EventsLostError  # noqa: E402
from avirt.events import EventKind, EventStream  # noqa: E402
from tests.fakeqmp import FakeGuests, fake_guests, raise_nofile  # noqa: E402

#: Descriptors the controller needs besides two per guest (stdio, epoll, lock, worker threads, imports).
CONTROLLER_FD_RESERVE = 600
RSS_TARGET_KIB = 50.0
RATE_TARGET = 20_000.0

PATTERNS: dict[str, list[Any]] = {
    "resume-reset": ["RESUME",
                     {"event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"}}],
    "stop-resume": ["STOP", "RESUME"],
}


def _log(message: str) -> None:
    print(f"[events_sim] {message}", file=sys.stderr, flush=True)


def _rss_kib() -> int:
    gc.collect()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _pct(sorted_values: array[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


class _GCWatch:
    """Time spent in the cyclic garbage collector (``gc.callbacks``), per generation, while installed.

    Why: the collector stops the event loop. Its full (generation 2) pass walks every tracked object, and
    the controller holds ~200 of them per monitored guest, so that pause grows with the guests watched.
    """

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._start = 0.0

    def __enter__(self) -> _GCWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        took = time.perf_counter() - self._start
        generation = info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)

    def figures(self) -> dict[str, Any]:
        return {"collections": list(self.count), "seconds": sum(self.seconds),
                "gen2_collections": self.count[2], "longest_ms": self.longest * 1e3}


async def _loop_lag(samples: array[float], period: float = 0.005) -> None:
    """How late the event loop runs a timer: what any task (a reply, a subscriber) waits on top."""
    while True:
        start = time.perf_counter()
        await anyio.sleep(period)
        samples.append(time.perf_counter() - start - period)


class _Receiver:
    """One stream's reader: counts events and losses, keeps each event's latency, wakes a waiter at N."""

    def __init__(self) -> None:
        self.count = 0
        self.lost = 0
        self.latencies = array("d")
        self.last = 0.0
        self._target = 0
        self._reached = anyio.Event()

    def expect(self, total: int) -> None:
        """Start a phase: ``total`` more events (received or lost) end it."""
        self.latencies = array("d")
        self._target = self.count + self.lost + total
        self._reached = anyio.Event()

    async def wait(self, timeout: float) -> None:
        with anyio.fail_after(timeout):
            await self._reached.wait()

    async def run(self, stream: EventStream) -> None:
        now = time.time
        while True:
            try:
                event = await stream.__anext__()
            except EventsLostError as e:
                self.lost += e.count
            except StopAsyncIteration:
                return
            else:
                self.last = now()
                self.latencies.append(self.last - event.timestamp)
                self.count += 1
            if self._target and self.count + self.lost >= self._target:
                self._reached.set()


def _fd_budget(requested: int) -> tuple[int, str | None]:
    """How many guests this process may watch: two descriptors each, within the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    raise_nofile(2 * requested + CONTROLLER_FD_RESERVE)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    possible = (soft - CONTROLLER_FD_RESERVE) // 2
    if possible >= requested:
        return requested, None
    return max(1, possible), (f"RLIMIT_NOFILE: hard limit {hard} (not raisable here) allows "
                              f"{possible} guests at 2 descriptors each")


async def simulated_scale(monitors: int = 10000, events_per_monitor: int = 100, json_out: bool = False, *,
                          emitters: int = 1000, paced_rate: float = RATE_TARGET, paced_seconds: float = 3.0,
                          pattern: str = "resume-reset", gc_freeze: bool = False) -> dict[str, Any]:
    """Run the simulation (see the module docstring) and return its figures.

    ``json_out=False`` prints a table on stdout; ``json_out=True`` prints nothing there (the caller
    serialises the dict). Progress lines go to stderr either way. ``gc_freeze=True`` calls
    ``gc.freeze()`` once every monitor is up (what an application can do today so that the collector's
    full passes skip the long-lived per-guest objects); the default measures avirt as it is.
    """
    requested = monitors
    monitors, limited_by = _fd_budget(monitors)
    if limited_by:
        _log(f"clamped to {monitors} monitors: {limited_by}")
    emitters = min(emitters, monitors)
    events = PATTERNS[pattern]
    report: dict[str, Any] = {"monitors_requested": requested, "monitors": monitors, "limited_by": limited_by,
                              "emitters": emitters, "events_per_monitor": events_per_monitor,
                              "pattern": pattern, "cpus": os.cpu_count(), "gc_freeze": gc_freeze}
    with tempfile.TemporaryDirectory(prefix="avirt-events-sim-") as tmp:
        state_dir = Path(tmp) / "state"
        _log(f"starting the fake with {monitors} guests")
        start = time.perf_counter()
        async with fake_guests(state_dir, monitors, ready_timeout=600) as fake:
            report["fake_setup_s"] = time.perf_counter() - start
            report["fake_processes"] = len(fake.shards)
            async with contextlib.AsyncExitStack() as stack:
                conn = await _connect_phase(stack, state_dir, fake, report)
                if gc_freeze:
                    gc.freeze()
                    stack.callback(gc.unfreeze)
                names = fake.names[:emitters]
                receiver = _Receiver()
                stream = await stack.enter_async_context(
                    conn.events(kinds={EventKind.QMP}, max_queue=max(emitters * events_per_monitor, 1024)))
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)
                group.start_soon(receiver.run, stream)
                report["burst"] = await _burst_phase(conn, fake, names, events_per_monitor, events, receiver)
                report["paced"] = await _paced_phase(fake, names, paced_rate, paced_seconds, events, receiver)
                report["rss_after_events_kib"] = _rss_kib()
                start = time.perf_counter()
            report["close_s"] = time.perf_counter() - start
    report["targets"] = [
        {"name": "rss_per_monitor_kib", "target": f"< {RSS_TARGET_KIB:g}", "unit": "KiB",
         "value": report["rss_per_monitor_kib"], "ok": report["rss_per_monitor_kib"] < RSS_TARGET_KIB},
        {"name": "burst.events_per_s", "target": f">= {RATE_TARGET:,.0f} (from {emitters} guests)",
         "unit": "events/s", "value": report["burst"]["events_per_s"],
         "ok": report["burst"]["events_per_s"] >= RATE_TARGET},
    ]
    if not json_out:
        print(format_table(report))
    return report


async def _connect_phase(stack: contextlib.AsyncExitStack, state_dir: Path, fake: FakeGuests,
                         report: dict[str, Any]) -> avirt.Connection:
    """connect() re-attaches to every fake guest: its time, and what each watched guest costs in memory."""
    monitors = report["monitors"]
    rss0 = _rss_kib()
    objects0 = len(gc.get_objects())
    _log("connecting")
    start, cpu = time.perf_counter(), time.process_time()
    conn = await stack.enter_async_context(avirt.connect("qemu:///session", state_dir=state_dir))
    report["connect_s"] = time.perf_counter() - start
    report["connect_cpu_s"] = time.process_time() - cpu
    rss1 = _rss_kib()
    connected = (await fake.stats())["connected"]
    if connected != monitors:
        raise RuntimeError(f"only {connected} of {monitors} monitors are connected")
    report["rss_before_kib"] = rss0
    report["rss_connected_kib"] = rss1
    report["rss_per_monitor_kib"] = (rss1 - rss0) / monitors
    report["gc_objects_per_monitor"] = (len(gc.get_objects()) - objects0) / monitors
    start = time.perf_counter()
    gc.collect()  # what a full collection (generation 2) stops the loop for, with every guest watched
    report["full_gc_pause_ms"] = (time.perf_counter() - start) * 1e3
    _log(f"{monitors} monitors connected in {report['connect_s']:.1f} s, "
         f"{report['rss_per_monitor_kib']:.1f} KiB each")
    return conn


async def _burst_phase(conn: avirt.Connection, fake: FakeGuests, names: list[str], per_guest: int,
                       events: list[Any], receiver: _Receiver) -> dict[str, Any]:
    """Every emitter bursts at once, as fast as the controller reads; a second, ordinary subscriber
    (default ``max_queue``) that only counts shows whether a subscriber that is not sized for the burst
    keeps up."""
    total = len(names) * per_guest
    _log(f"throughput: {len(names)} guests x {per_guest} events, as fast as possible")
    plain = _Receiver()
    async with conn.events(kinds={EventKind.QMP}) as plain_stream, anyio.create_task_group() as group:
        group.start_soon(plain.run, plain_stream)
        receiver.expect(total)
        plain.expect(total)
        wall, cpu = time.time(), time.process_time()
        answer = await fake.burst(per_guest, guests=names, events=events)
        await receiver.wait(timeout=600)
        seconds = receiver.last - wall
        await plain.wait(timeout=60)
        cpu = time.process_time() - cpu
        group.cancel_scope.cancel()
    latencies = array("d", sorted(receiver.latencies))
    figures = {
        "events": total, "sent": answer["sent"], "received": len(latencies), "lost": receiver.lost,
        "seconds": seconds, "events_per_s": len(latencies) / seconds, "controller_cpu_s": cpu,
        "cpu_us_per_event": cpu / max(1, len(latencies)) * 1e6,
        "latency_p50_ms": _pct(latencies, 50) * 1e3, "latency_p99_ms": _pct(latencies, 99) * 1e3,
        "default_queue_received": plain.count, "default_queue_lost": plain.lost,
    }
    _log(f"throughput: {figures['events_per_s']:,.0f} events/s")
    return figures


async def _paced_phase(fake: FakeGuests, names: list[str], rate: float, seconds: float, events: list[Any],
                       receiver: _Receiver) -> dict[str, Any]:
    """Every emitter at ``rate / len(names)`` events/s: latency, the loop's own lag, and the collector."""
    per_guest = rate / len(names)
    count = max(1, round(per_guest * seconds))
    _log(f"latency: {len(names)} guests x {per_guest:g} events/s for {seconds:g} s")
    lost_before = receiver.lost
    receiver.expect(count * len(names))
    lags: array[float] = array("d")
    with _GCWatch() as collector:
        async with anyio.create_task_group() as group:
            group.start_soon(_loop_lag, lags)
            start, cpu = time.perf_counter(), time.process_time()
            await fake.burst(count, guests=names, events=events, rate=per_guest)
            await receiver.wait(timeout=seconds * 10 + 60)
            took = time.perf_counter() - start
            cpu = time.process_time() - cpu
            group.cancel_scope.cancel()
    latencies = array("d", sorted(receiver.latencies))
    lags = array("d", sorted(lags))
    figures = {
        "target_events_per_s": rate, "events": count * len(names), "received": len(latencies),
        "lost": receiver.lost - lost_before, "seconds": took, "events_per_s": len(latencies) / took,
        "controller_core_share": cpu / took,
        "latency_p50_ms": _pct(latencies, 50) * 1e3, "latency_p99_ms": _pct(latencies, 99) * 1e3,
        "latency_max_ms": _pct(latencies, 100) * 1e3,
        "loop_lag_p50_ms": _pct(lags, 50) * 1e3, "loop_lag_p99_ms": _pct(lags, 99) * 1e3,
        "gc": collector.figures(),
    }
    _log(f"latency: p99 {figures['latency_p99_ms']:.1f} ms")
    return figures


def format_table(r: dict[str, Any]) -> str:
    b, p = r["burst"], r["paced"]
    rows = [
        ("monitors (requested)", f"{r['monitors']:,} ({r['monitors_requested']:,})"),
        ("fake processes / set-up", f"{r['fake_processes']} / {r['fake_setup_s']:.1f} s"),
        ("connect() until all monitors are up",
         f"{r['connect_s']:.1f} s (CPU {r['connect_cpu_s']:.1f} s, "
         f"{r['connect_cpu_s'] / r['monitors'] * 1e3:.2f} ms/monitor)"),
        ("controller RSS per monitor", f"{r['rss_per_monitor_kib']:.1f} KiB (target < {RSS_TARGET_KIB:g}), "
                                       f"{r['gc_objects_per_monitor']:.0f} GC-tracked objects"),
        ("full GC pause with all monitors", f"{r['full_gc_pause_ms']:.0f} ms"),
        ("RSS before / connected / after events",
         f"{r['rss_before_kib']:,} / {r['rss_connected_kib']:,} / {r['rss_after_events_kib']:,} KiB"),
        (f"burst: {r['emitters']:,} guests x {r['events_per_monitor']:,} events",
         f"{b['events_per_s']:,.0f} events/s (target >= {RATE_TARGET:,.0f}), received {b['received']:,}, "
         f"lost {b['lost']:,}"),
        ("burst: controller CPU per event", f"{b['cpu_us_per_event']:.1f} us"),
        ("burst: a default-queue (1024) stream", f"received {b['default_queue_received']:,}, "
                                                 f"lost {b['default_queue_lost']:,}"),
        ("burst: latency p50 / p99 (queueing)", f"{b['latency_p50_ms']:.1f} / {b['latency_p99_ms']:.1f} ms"),
        (f"paced {p['target_events_per_s']:,.0f} events/s: delivered",
         f"{p['events_per_s']:,.0f} events/s, lost {p['lost']:,}, "
         f"controller core {p['controller_core_share']:.0%}"),
        ("paced: latency p50 / p99 / max",
         f"{p['latency_p50_ms']:.2f} / {p['latency_p99_ms']:.2f} / {p['latency_max_ms']:.2f} ms"),
        ("paced: loop lag p50 / p99", f"{p['loop_lag_p50_ms']:.1f} / {p['loop_lag_p99_ms']:.1f} ms"),
        ("paced: garbage collector", f"{p['gc']['seconds'] * 1e3:.0f} ms in {sum(p['gc']['collections'])} "
                                     f"collections ({p['gc']['gen2_collections']} full), longest "
                                     f"{p['gc']['longest_ms']:.0f} ms"),
        ("close()", f"{r['close_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"avirt simulated scale ({r['pattern']}, {r['cpus']} CPUs"
             f"{', gc.freeze() after connect' if r['gc_freeze'] else ''})"]
    if r["limited_by"]:
        lines.append(f"NOTE: {r['limited_by']}")
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += [f"  target {t['name']}: {'ok' if t['ok'] else 'MISSED'}" for t in r["targets"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--monitors", type=int, default=10000)
    parser.add_argument("--events-per-monitor", type=int, default=100)
    parser.add_argument("--emitters", type=int, default=1000, help="guests that emit (default 1000)")
    parser.add_argument("--rate", type=float, default=RATE_TARGET, help="paced phase, events/s in total")
    parser.add_argument("--seconds", type=float, default=3.0, help="paced phase duration")
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="resume-reset")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once all monitors are up")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    report = anyio.run(lambda: simulated_scale(
        args.monitors, args.events_per_monitor, args.json, emitters=args.emitters, paced_rate=args.rate,
        paced_seconds=args.seconds, pattern=args.pattern, gc_freeze=args.gc_freeze))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
