"""Clients benchmark: what going through the holder of a state directory costs a client, on this machine.

One program holds a state directory (this script's main process, which ``connect()`` makes the holder);
others connect to it and are its clients (``avirt/served/``: each call a msgpack-RPC request on
``<state_dir>/avirt.sock``, the holder's events streamed to each client). The clients run in another
Python process, started by this script with ``--role``, so every figure includes the socket, both
event loops and both processes' scheduling, as a real client's would.

What it measures
----------------
(a) **Calls.** ``dom.state()`` and ``conn.list_domains()``, ``--calls`` times each (default 2,000) after
    ``WARMUP`` untimed ones, in the holder itself and from a client connection in the other process
    (one guest, ``lat``, running). BASELINE: the same call in the holder. Reported: p50 and p99 (ms) of
    each, and the client's extra time at p50 and p99.
(b) **Event latency.** From just before ``dom.suspend()`` to the SUSPENDED lifecycle event reaching a
    stream of the same program (``conn.events(kinds={LIFECYCLE}, domain="lat")``), then ``resume()``,
    ``--rounds`` times (default 300): in the holder (BASELINE: call and subscriber in the holder) and in
    the client (its call goes through the holder, QEMU pauses, the event comes back over the socket).
    Reported: p50 and p99 (ms) and the ratio client / holder. The two are measured some seconds apart,
    so on a machine whose other work comes and goes the ratio says as much about that work as about
    avirt; hence also **(b, alternating)**: the same rounds, ``--rounds`` of each, in blocks of
    ``BLOCK`` taken in turn by the holder and by the client, so that both see the same machine (the
    client is connected during the holder's blocks too, and receives their events).
(c) **Fan-out.** ``--guests`` (default 100) QEMUs started paused (no OS, 32 MiB, TCG), ``--clients``
    (default 50) client connections in the other process, each with one stream subscribed to every event
    (``conn.events()``). The holder resumes every guest at once, then suspends every guest at once: a
    burst of 2 x guests lifecycle events (and their raw QMP events), each to be delivered to every
    client (a client's ``connect()`` returns once the holder has subscribed it, so none misses the
    start of the burst). Reported:
    lifecycle events delivered against expected (2 x guests x clients), events lost
    (``EventsLostError`` counts), and the latency of each delivery from QEMU's own timestamp of the event
    (the same wall clock in both processes) to the client's stream, p50/p99/max; BASELINE: the same
    latency at a stream of the holder's own during the same burst.

Targets: (a) the client at most 0.3 ms above the holder at p50, for both calls; (b) the client's p50
within 1.5x of the holder's, measured in turns; (c) every event delivered to every client, none lost.

Why (b)'s target is read from the alternating measurement: it compares a client's subscriber with the
holder's own subscriber, which exist together. In the first measurement the holder's subscriber is
timed before any client has connected, so its figure leaves out what the holder does for its clients
(each event encoded and written to them, and their processes woken on the same two cores); the ratio
then mixes the client's extra latency with the holder's cost of having clients. That first figure is
still printed (with no target), since the holder's cost is worth watching too.

How to run
----------
::

    .venv/bin/python bench/clients.py                   # a table
    .venv/bin/python bench/clients.py --json            # one JSON object on stdout
    .venv/bin/python bench/clients.py --guests 20 --clients 10 --calls 500 --rounds 100

100 paused TCG guests of 32 MiB need about 3 GB of memory. All figures are wall-clock, on whatever else
the machine is doing.

JSON keys (``--json``)
----------------------
``config`` (``calls``, ``rounds``, ``guests``, ``clients``), ``machine`` (``cpus``, ``loadavg``),
``calls``: {``state``, ``list_domains``: {``holder``, ``client``: {``p50``, ``p99``} in ms, ``extra_p50``,
``extra_p99``}}, ``events``: {``holder``, ``client``: {``p50``, ``p99``}, ``ratio_p50``}, ``alternating``:
{``holder``, ``client``: {``p50``, ``p99``}, ``ratio_p50``}, ``fanout``:
{``guests``, ``clients``, ``expected``, ``delivered``, ``lost``, ``client``, ``holder``: {``p50``, ``p99``,
``max``} in ms}, ``targets``: list of {``name``, ``value``, ``limit``, ``unit``, ``ok``}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import avirt
from avirt import EventKind
from avirt.errors import EventsLostError
from avirt.events.model import LifecycleEvent, LifecycleType

WARMUP = 50
#: Rounds per turn in (b, alternating).
BLOCK = 20
EXTRA_P50_LIMIT_MS = 0.3
EVENT_RATIO_LIMIT = 1.5
#: How long a fan-out subscriber waits for its last event before the run counts it as missing.
DELIVERY_DEADLINE = 120.0


def guest_xml(name: str) -> str:
    """No disk, no OS: SeaBIOS finds nothing to boot and idles; paused it costs the machine nothing."""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")


def pct(values_ms: Sequence[float], *, with_max: bool = False) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan")}
    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
    out = {"p50": at(0.5), "p99": at(0.99)}
    if with_max:
        out["max"] = round(ordered[-1], 4)
    return out


async def timed_calls(count: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def suspend_rounds(dom: avirt.Domain, stream: Any, rounds: int) -> list[float]:
    """(b)'s rounds: suspend until SUSPENDED reaches ``stream`` (timed), resume until RESUMED does."""
    async def until(want: LifecycleType) -> None:
        async for ev in stream:
            if isinstance(ev, LifecycleEvent) and ev.type is want:
                return

    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await dom.suspend()
        with anyio.fail_after(30):
            await until(LifecycleType.SUSPENDED)
        samples.append((time.perf_counter() - start) * 1000)
        await dom.resume()
        with anyio.fail_after(30):
            await until(LifecycleType.RESUMED)
    return samples


async def measure_calls_and_events(conn: avirt.Connection, calls: int, rounds: int) -> dict[str, Any]:
    """(a) and (b) in whichever program ``conn`` belongs to: the holder or a client."""
    dom = await conn.lookup("lat")
    out: dict[str, Any] = {
        "state": pct(await timed_calls(calls, dom.state)),
        "list_domains": pct(await timed_calls(calls, conn.list_domains)),
    }
    async with conn.events(kinds={EventKind.LIFECYCLE}, domain="lat") as stream:
        await suspend_rounds(dom, stream, WARMUP // 5)
        out["events"] = pct(await suspend_rounds(dom, stream, rounds))
    return out


# -- the client process ------------------------------------------------------------------------------------


async def client_calls(state_dir: str, calls: int, rounds: int) -> None:
    async with avirt.connect(state_dir=state_dir) as conn:
        assert not conn.serving, "the benchmark's client became the holder"
        print(json.dumps(await measure_calls_and_events(conn, calls, rounds)), flush=True)


async def client_rounds(state_dir: str) -> None:
    """(b, alternating)'s client: "ready" once subscribed, then for each count on standard input that many
    rounds, their samples as one JSON line; anything else ends it."""
    async with avirt.connect(state_dir=state_dir) as conn:
        assert not conn.serving, "the benchmark's client became the holder"
        dom = await conn.lookup("lat")
        async with conn.events(kinds={EventKind.LIFECYCLE}, domain="lat") as stream:
            print("ready", flush=True)
            while (line := await anyio.to_thread.run_sync(sys.stdin.readline)).strip().isdigit():
                print(json.dumps(await suspend_rounds(dom, stream, int(line))), flush=True)


async def alternating(conn: avirt.Connection, state_dir: str, rounds: int) -> dict[str, Any]:
    """(b, alternating): blocks of rounds taken in turn by the holder and by a client process."""
    dom = await conn.lookup("lat")
    process = await anyio.open_process(child_argv(state_dir, "rounds"))
    assert process.stdout is not None and process.stdin is not None
    out = BufferedByteReceiveStream(process.stdout)
    own: list[float] = []
    theirs: list[float] = []
    try:
        with anyio.fail_after(60):
            ready = await out.receive_until(b"\n", 1 << 20)
            assert ready == b"ready", ready

        async def client_block(count: int) -> list[float]:
            assert process.stdin is not None
            await process.stdin.send(f"{count}\n".encode())
            with anyio.fail_after(30 + count):
                samples: list[float] = json.loads(await out.receive_until(b"\n", 1 << 24))
            return samples

        async with conn.events(kinds={EventKind.LIFECYCLE}, domain="lat") as stream:
            await suspend_rounds(dom, stream, WARMUP // 5)
            await client_block(WARMUP // 5)
            while len(own) < rounds:
                count = min(BLOCK, rounds - len(own))
                own += await suspend_rounds(dom, stream, count)
                theirs += await client_block(count)
        await process.stdin.send(b"end\n")
        with anyio.fail_after(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    holder_p, client_p = pct(own), pct(theirs)
    return {"holder": holder_p, "client": client_p, "ratio_p50": round(client_p["p50"] / holder_p["p50"], 3)}


async def client_fanout(state_dir: str, clients: int) -> None:
    """``clients`` connections, each streaming every event; "ready" once all are subscribed, then the
    expected number of lifecycle events per stream comes on standard input."""
    lat: list[float] = []
    counts = [0] * clients
    lost = [0]
    expected = [0]
    all_in = anyio.Event()

    async def read(stream: Any, index: int) -> None:
        while True:
            try:
                ev = await anext(stream)
            except StopAsyncIteration:
                return
            except EventsLostError as e:
                lost[0] += e.count or 0
                continue
            if isinstance(ev, LifecycleEvent):
                lat.append((time.time() - ev.timestamp) * 1000)
                counts[index] += 1
                if expected[0] and sum(counts) >= expected[0] * clients:
                    all_in.set()

    conns = [await avirt.connect(state_dir=state_dir) for _ in range(clients)]
    try:
        assert not any(c.serving for c in conns)
        async with anyio.create_task_group() as group:
            streams = [c.events() for c in conns]
            for i, s in enumerate(streams):
                await s.__aenter__()
                group.start_soon(read, s, i)
            print("ready", flush=True)  # connect() returned once each was subscribed to the holder's events
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            expected[0] = int(line)
            if sum(counts) >= expected[0] * clients:
                all_in.set()
            with anyio.move_on_after(DELIVERY_DEADLINE):
                await all_in.wait()
            group.cancel_scope.cancel()
        print(json.dumps({"delivered": sum(counts), "lost": lost[0], "latency": pct(lat, with_max=True)}),
              flush=True)
    finally:
        for c in conns:
            await c.close()


# -- the holder --------------------------------------------------------------------------------------------


def child_argv(state_dir: str, *role: str) -> list[str]:
    return [sys.executable, __file__, "--state-dir", state_dir, "--role", *role]


async def fanout(conn: avirt.Connection, state_dir: str, guests: list[avirt.Domain],
                 clients: int) -> dict[str, Any]:
    expected = 2 * len(guests)
    holder_lat: list[float] = []
    process = await anyio.open_process(child_argv(state_dir, "fanout", str(clients)))
    assert process.stdout is not None and process.stdin is not None
    out = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(120):
            ready = await out.receive_until(b"\n", 1 << 20)
            assert ready == b"ready", ready
        async with conn.events() as stream:
            seen = anyio.Event()

            async def watch() -> None:
                async for ev in stream:
                    if isinstance(ev, LifecycleEvent):
                        holder_lat.append((time.time() - ev.timestamp) * 1000)
                        if len(holder_lat) == expected:
                            seen.set()

            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                for step in ("resume", "suspend"):
                    async with anyio.create_task_group() as burst:
                        for dom in guests:
                            burst.start_soon(getattr(dom, step))
                with anyio.fail_after(60):
                    await seen.wait()
                group.cancel_scope.cancel()
        await process.stdin.send(f"{expected}\n".encode())
        with anyio.fail_after(DELIVERY_DEADLINE + 60):
            result = json.loads(await out.receive_until(b"\n", 1 << 24))
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return {"guests": len(guests), "clients": clients, "expected": expected * clients,
            "delivered": result["delivered"], "lost": result["lost"], "client": result["latency"],
            "holder": pct(holder_lat, with_max=True)}


async def holder(calls: int, rounds: int, guest_count: int, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="avirt-bench-clients-") as root:
        state_dir = str(Path(root) / "state")
        async with avirt.connect(state_dir=state_dir) as conn:
            assert conn.serving, "another program holds the benchmark's fresh state directory"
            guests: list[avirt.Domain] = []
            try:
                lat = await conn.create_xml(guest_xml("lat"))
                guests.append(lat)
                own = await measure_calls_and_events(conn, calls, rounds)
                done = await anyio.run_process(child_argv(state_dir, "calls", str(calls), str(rounds)),
                                               check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"the client failed:\n{done.stderr.decode()}")
                theirs = json.loads(done.stdout)
                turns = await alternating(conn, state_dir, rounds)
                await lat.destroy()
                guests.clear()
                limit = anyio.Semaphore(20)

                async def start(i: int) -> None:
                    async with limit:
                        guests.append(await conn.create_xml(guest_xml(f"g{i}"), paused=True))

                async with anyio.create_task_group() as group:
                    for i in range(guest_count):
                        group.start_soon(start, i)
                fan = await fanout(conn, state_dir, guests, clients)
            finally:
                with anyio.CancelScope(shield=True):
                    for dom in guests:
                        try:
                            await dom.destroy()
                        except avirt.errors.AvirtError:
                            pass
    report_calls = {}
    for call in ("state", "list_domains"):
        h, c = own[call], theirs[call]
        report_calls[call] = {"holder": h, "client": c, "extra_p50": round(c["p50"] - h["p50"], 4),
                              "extra_p99": round(c["p99"] - h["p99"], 4)}
    events = {"holder": own["events"], "client": theirs["events"],
              "ratio_p50": round(theirs["events"]["p50"] / own["events"]["p50"], 3)}
    targets = [
        *({"name": f"(a) {call}: client p50 - holder p50", "value": report_calls[call]["extra_p50"],
           "limit": EXTRA_P50_LIMIT_MS, "unit": "ms",
           "ok": report_calls[call]["extra_p50"] <= EXTRA_P50_LIMIT_MS} for call in report_calls),
        {"name": "(b) suspend -> SUSPENDED: client p50 / holder p50, in turns", "value": turns["ratio_p50"],
         "limit": EVENT_RATIO_LIMIT, "unit": "x", "ok": turns["ratio_p50"] <= EVENT_RATIO_LIMIT},
        {"name": "(c) lifecycle events delivered to every client", "value": fan["delivered"],
         "limit": fan["expected"], "unit": "events",
         "ok": fan["delivered"] == fan["expected"] and fan["lost"] == 0},
    ]
    return {"config": {"calls": calls, "rounds": rounds, "guests": guest_count, "clients": clients},
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "calls": report_calls, "events": events, "alternating": turns, "fanout": fan, "targets": targets}


def print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"clients: a call and an event through the holder of a state directory, from another process "
          f"({cfg['calls']} calls, {cfg['rounds']} suspend/resume rounds)")
    print(f"{'':<28}{'holder p50 / p99':>20}{'client p50 / p99':>20}{'extra p50 / p99':>20}")
    for call, row in report["calls"].items():
        h, c = row["holder"], row["client"]
        print(f"{'(a) ' + call + '()':<28}{h['p50']:>9.3f} / {h['p99']:.3f} ms{c['p50']:>9.3f} / "
              f"{c['p99']:.3f} ms{row['extra_p50']:>+9.3f} / {row['extra_p99']:+.3f} ms")
    e = report["events"]
    print(f"{'(b) holder alone, client':<28}{e['holder']['p50']:>9.3f} / {e['holder']['p99']:.3f} ms"
          f"{e['client']['p50']:>9.3f} / {e['client']['p99']:.3f} ms{e['ratio_p50']:>10.2f}x at p50")
    a = report["alternating"]
    print(f"{'(b) in turns (the target)':<28}{a['holder']['p50']:>9.3f} / {a['holder']['p99']:.3f} ms"
          f"{a['client']['p50']:>9.3f} / {a['client']['p99']:.3f} ms{a['ratio_p50']:>10.2f}x at p50")
    f = report["fanout"]
    print(f"(c) {f['guests']} guests resumed then suspended, {f['clients']} clients subscribed to "
          f"everything: {f['delivered']}/{f['expected']} lifecycle events delivered, {f['lost']} lost")
    print(f"    QEMU's event -> stream: holder p50 {f['holder']['p50']:.1f} / p99 {f['holder']['p99']:.1f} / "
          f"max {f['holder']['max']:.1f} ms; clients p50 {f['client']['p50']:.1f} / "
          f"p99 {f['client']['p99']:.1f} / max {f['client']['max']:.1f} ms")
    for t in report["targets"]:
        print(f"  {'ok  ' if t['ok'] else 'MISS'} {t['name']}: {t['value']} {t['unit']} "
              f"(limit {t['limit']} {t['unit']})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls of each kind in (a)")
    parser.add_argument("--rounds", type=int, default=300, help="suspend/resume rounds in (b)")
    parser.add_argument("--guests", type=int, default=100, help="paused guests in (c)")
    parser.add_argument("--clients", type=int, default=50, help="client connections in (c)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        if args.role[0] == "calls":
            anyio.run(client_calls, args.state_dir, int(args.role[1]), int(args.role[2]))
        elif args.role[0] == "rounds":
            anyio.run(client_rounds, args.state_dir)
        else:
            anyio.run(client_fanout, args.state_dir, int(args.role[1]))
        return
    report = anyio.run(holder, args.calls, args.rounds, args.guests, args.clients)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
