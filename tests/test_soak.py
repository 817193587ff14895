"""The event path at scale, against the fake QMP peer (``tests/fakeqmp.py``), and the fake against QEMU.

Why a fake: a million events through one monitor, or a STOP storm, cannot be had from a real QEMU on two
cores. The fake is trusted only as far as the first tests here show: its greeting, replies and events are,
byte for byte (timestamps aside), what a real QEMU 7.2 sent for the same requests
(``tests/data/qmp-transcript.jsonl``, recorded by ``tests/data/record_qmp.py``), and the requests in that
transcript are the bytes ``qemu.qmp`` itself sends.

The soak then drives the whole controller stack (``qemu.qmp`` client -> ``Monitor`` -> ``QemuDriver`` ->
``EventBus`` -> a subscriber's stream) and checks that nothing is lost, reordered or retained per event.
No test sleeps to synchronise: the fake answers ``x-avirt-burst`` only after the burst's last event, on
the same socket, so when ``qemu_monitor_command`` returns the controller has dispatched every event; the
tests then wait, under ``anyio.fail_after``, for their subscriber to have read them.

Figures (rates, RSS) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from qemu.qmp import QMPClient

import avirt
from avirt import DomainState
from avirt.errors import EventsLostError
from avirt.events import (
    ControlErrorEvent,
    Event,
    EventKind,
    EventStream,
    LifecycleEvent,
    LifecycleType,
    QMPEvent,
)
from tests.fakeqmp import fake_guests, load_transcript

pytestmark = pytest.mark.anyio

TIMESTAMP = re.compile(r'"seconds": \d+, "microseconds": \d+')
RESET_DATA = {"guest": False, "reason": "host-qmp-system-reset"}
#: The soak's events: two shapes QEMU sent in the transcript, one with ``data``, neither of which makes the
#: controller send a command back (a STOP does: see test_stop_storm).
SOAK_PATTERN: list[Any] = ["RESUME", {"event": "RESET", "data": RESET_DATA}]
SOAK_NAMES = ["RESUME", "RESET"]
SOAK_EVENTS = 1_000_000
BURST = 100_000
#: Room for what the monitor dispatches in one go: qemu.qmp's reader runs through everything buffered
#: (up to ~256 KiB per read, ~3,000 events) without yielding, so the reader of a stream gets no chance to
#: run in between; 16,384 is comfortably above that (see test_default_queue_keeps_up_with_one_monitor).
QUEUE = 16_384


def rss_kib() -> int:
    """Resident memory, after handing the C heap's free pages back to the kernel: in a test process
    that has already run hundreds of tests, RSS otherwise also counts memory that is free but kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Progress:
    """A count that a test can wait on without polling: ``await progress.reached(n)``."""

    def __init__(self) -> None:
        self.count = 0
        self._target = 0
        self._event = anyio.Event()

    def add(self, n: int = 1) -> None:
        self.count += n
        if self._target and self.count >= self._target:
            self._event.set()

    async def reached(self, target: int, timeout: float) -> None:
        with anyio.fail_after(timeout):
            if self.count < target:
                self._target, self._event = target, anyio.Event()
                await self._event.wait()


async def burst(dom: avirt.Domain, count: int, events: Sequence[Any]) -> None:
    result = await dom.qemu_monitor_command("x-avirt-burst", {"count": count, "events": list(events)})
    assert result == {"sent": count}


# -- the fake is QEMU-shaped ---------------------------------------------------------------------------------


def test_transcript_requests_are_the_bytes_qemu_qmp_sends() -> None:
    """The recorder sent what avirt's client sends: compact JSON, no line end, no id on negotiation."""
    requests = [raw for direction, raw in load_transcript() if direction == "out"]
    negotiation = QMPClient.make_execute_msg("qmp_capabilities", {"enable": ["oob"]})
    assert bytes(negotiation).decode() in requests
    ours = [raw for raw in requests if str(json.loads(raw).get("id")).startswith("__qmp#")]
    assert len(ours) >= 9  # the others probe QEMU's refusal before negotiation and its string escapes
    for number, raw in enumerate(ours):
        msg = QMPClient.make_execute_msg(json.loads(raw)["execute"])
        msg["id"] = f"__qmp#{number:05d}"  # what QMPClient._execute assigns, in order from 0
        assert raw == bytes(msg).decode()


async def test_fake_answers_byte_for_byte_as_the_recorded_qemu(state_dir: Path) -> None:
    """Replay the recorded requests to a fake guest in QEMU's start state (``-S``: prelaunch)."""
    transcript = load_transcript()
    async with fake_guests(state_dir, 1, status="prelaunch") as fake:
        path = state_dir / "run" / fake.names[0] / "qmp.sock"
        async with await anyio.connect_unix(path) as stream:
            received = BufferedByteReceiveStream(stream)
            with anyio.fail_after(10):
                for direction, raw in transcript:
                    if direction == "out":
                        await stream.send(raw.encode())
                        continue
                    line = (await received.receive_until(b"\r\n", 1 << 16)).decode() + "\r\n"
                    assert TIMESTAMP.sub("T", line) == TIMESTAMP.sub("T", raw)
                    if "timestamp" in line:
                        stamp = json.loads(line)["timestamp"]
                        assert abs(stamp["seconds"] + stamp["microseconds"] / 1e6 - time.time()) < 60
                with pytest.raises(anyio.EndOfStream):  # quit: SHUTDOWN, the reply, then EOF, as QEMU
                    await received.receive()
    assert transcript[0][1].startswith('{"QMP": ')  # the greeting was compared too, verbatim


async def test_avirt_reattaches_to_fake_guests(state_dir: Path) -> None:
    async with fake_guests(state_dir, 3) as fake, \
            avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        domains = await conn.list_domains()
        assert [d.name for d in domains] == fake.names
        for dom in domains:
            assert (await dom.state())[0] is DomainState.RUNNING
        dom = domains[1]
        async with conn.events(kinds={EventKind.LIFECYCLE}, domain=dom) as stream:
            await dom.suspend()
            assert await dom.state() == (DomainState.PAUSED, "user")
            await dom.resume()
            assert await dom.state() == (DomainState.RUNNING, "unpaused")
            with anyio.fail_after(5):
                seen = [await stream.__anext__(), await stream.__anext__()]
        assert [(e.type, e.detail) for e in seen if isinstance(e, LifecycleEvent)] == [
            (LifecycleType.SUSPENDED, "paused"), (LifecycleType.RESUMED, "unpaused")]
        commands = (await fake.stats())["commands"]
        assert commands["qmp_capabilities"] == 3 and commands["stop"] == 1 and commands["cont"] == 1


# -- the soak ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
async def test_soak_a_million_events_through_one_monitor(state_dir: Path) -> None:
    """1,000,000 events through one monitor into one stream: all delivered, in order, and memory flat.

    ``seq`` must grow by exactly one per event: only QMP events are subscribed, so no other event takes a
    number. Memory is read (after ``gc.collect()``) once 100,000 events have passed and again after
    1,000,000: per-event retention anywhere (qemu.qmp's listener queues and history, the bus, the driver)
    would show as ~900,000 objects and tens of MiB.
    """
    async with fake_guests(state_dir, 1) as fake, \
            avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = (await conn.list_domains())[0]
        progress = Progress()
        faults: list[str] = []

        async def consume(stream: EventStream) -> None:
            seq = None
            names, k = SOAK_NAMES, len(SOAK_NAMES)
            async for event in stream:
                assert isinstance(event, QMPEvent)
                n = progress.count
                if (seq is not None and event.seq != seq + 1) or event.name != names[n % k] or \
                        event.domain != dom.name:
                    faults.append(f"event {n}: {event}")
                seq = event.seq
                progress.add()

        samples: dict[str, float] = {}
        async with anyio.create_task_group() as group, \
                conn.events(kinds={EventKind.QMP}, max_queue=QUEUE) as stream:
            group.start_soon(consume, stream)
            gc.collect()
            samples["rss_start_kib"] = rss_kib()
            start = time.perf_counter()
            cpu = time.process_time()
            for sent in range(BURST, SOAK_EVENTS + 1, BURST):
                await burst(dom, BURST, SOAK_PATTERN)
                await progress.reached(sent, timeout=120)
                if sent == BURST:
                    gc.collect()
                    samples["rss_100k_kib"] = rss_kib()
                    samples["objects_100k"] = len(gc.get_objects())
            elapsed = time.perf_counter() - start
            samples["controller_cpu_s"] = time.process_time() - cpu
            gc.collect()
            samples["rss_1m_kib"] = rss_kib()
            samples["objects_1m"] = len(gc.get_objects())
            group.cancel_scope.cancel()
        stats = await fake.stats()

    growth = samples["rss_1m_kib"] - samples["rss_100k_kib"]
    print(f"\nsoak: {SOAK_EVENTS:,} events in {elapsed:.1f} s = {SOAK_EVENTS / elapsed:,.0f} events/s "
          f"(controller CPU {samples['controller_cpu_s']:.1f} s, "
          f"{samples['controller_cpu_s'] / SOAK_EVENTS * 1e6:.1f} us/event); RSS start "
          f"{samples['rss_start_kib']:,.0f} KiB, after 100k {samples['rss_100k_kib']:,.0f} KiB, after 1M "
          f"{samples['rss_1m_kib']:,.0f} KiB (growth {growth:+,.0f} KiB); gc objects "
          f"{samples['objects_100k']:,.0f} -> {samples['objects_1m']:,.0f}")
    assert not faults, faults[:5]
    assert progress.count == SOAK_EVENTS
    assert stats["sent"] == SOAK_EVENTS
    assert growth < 5 * 1024, "controller memory grows with the number of events"
    assert samples["objects_1m"] - samples["objects_100k"] < 10_000


@pytest.mark.timeout(300)
async def test_stop_storm_is_delivered_in_order(state_dir: Path) -> None:
    """A guest flapping STOP/RESUME: every raw event arrives in order and the final state is right.

    Each STOP nobody asked for makes the driver ask ``query-status`` why (Reaction.REFINE), one task and
    one round trip per STOP: the fake counts them, and the figures show what that costs.
    """
    count = 20_000
    async with fake_guests(state_dir, 1) as fake, \
            avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = (await conn.list_domains())[0]
        progress = Progress()
        names: list[str] = []
        async with anyio.create_task_group() as group, \
                conn.events(kinds={EventKind.QMP}, max_queue=QUEUE) as stream:

            async def consume() -> None:
                seq = 0
                async for event in stream:
                    assert isinstance(event, QMPEvent) and event.seq > seq
                    seq = event.seq
                    names.append(event.name)
                    progress.add()

            group.start_soon(consume)
            before = (await fake.stats())["commands"].get("query-status", 0)
            gc.collect()
            rss = rss_kib()
            start, cpu = time.perf_counter(), time.process_time()
            await burst(dom, count, ["STOP", "RESUME"])
            await progress.reached(count, timeout=120)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            peak = rss_kib() - rss
            # The last event was a RESUME: whatever the pending query-status answers say, it runs.
            assert await dom.state() == (DomainState.RUNNING, "unpaused")
            group.cancel_scope.cancel()
        queries = (await fake.stats())["commands"].get("query-status", 0) - before
    print(f"\nSTOP storm: {count:,} events in {elapsed:.1f} s = {count / elapsed:,.0f} events/s, "
          f"controller CPU {cpu / count * 1e6:.0f} us/event, {queries:,} query-status for "
          f"{count // 2:,} STOPs, RSS {peak:+,} KiB")
    assert names == ["STOP", "RESUME"] * (count // 2)


# -- a subscriber that falls behind --------------------------------------------------------------------------


async def test_losses_add_up_exactly_for_a_slow_subscriber(state_dir: Path) -> None:
    """With the default queue and a deliberately slow reader, every event is received or counted lost.

    Stronger than a sum: each ``EventsLostError`` must account for exactly the gap in ``seq`` that
    follows it (the queue drops its oldest events), for a stream and for a callback subscription alike.
    """
    count = 100_000
    async with fake_guests(state_dir, 1) as _fake, \
            avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = (await conn.list_domains())[0]
        done = Progress()
        stream_seen = {"received": 0, "lost": 0}
        callback_seen = {"received": 0}
        gaps: list[str] = []

        async def slow_reader(stream: EventStream) -> None:
            last, lost_since = 0, 0
            while True:
                try:
                    event = await stream.__anext__()
                except EventsLostError as e:
                    stream_seen["lost"] += e.count
                    lost_since += e.count
                    continue
                except StopAsyncIteration:
                    return
                if last and event.seq != last + 1 + lost_since:
                    gaps.append(f"after seq {last}: {lost_since} lost but next is {event.seq}")
                last, lost_since = event.seq, 0
                stream_seen["received"] += 1
                if stream_seen["received"] + stream_seen["lost"] == count:
                    done.add()
                await anyio.lowlevel.checkpoint()  # deliberately slow: let everyone else run after each event

        def on_event(event: Event) -> None:
            callback_seen["received"] += 1
            if callback_seen["received"] + subscription.lost == count:
                done.add()

        subscription = conn.subscribe(on_event, kinds={EventKind.QMP})
        async with anyio.create_task_group() as group, conn.events(kinds={EventKind.QMP}) as stream:
            group.start_soon(slow_reader, stream)
            await burst(dom, count, SOAK_PATTERN)
            await done.reached(2, timeout=60)
            group.cancel_scope.cancel()
        subscription.cancel()
    print(f"\nslow subscriber: stream received {stream_seen['received']:,}, lost {stream_seen['lost']:,}; "
          f"callback received {callback_seen['received']:,}, lost {subscription.lost:,}")
    assert not gaps, gaps[:5]
    assert stream_seen["received"] + stream_seen["lost"] == count and stream_seen["lost"] > 0
    assert callback_seen["received"] + subscription.lost == count


async def test_default_queue_keeps_up_with_one_monitor(state_dir: Path) -> None:
    """A reader that does nothing but count must not lose events to a single monitor's burst."""
    count = 100_000
    async with fake_guests(state_dir, 1) as _fake, \
            avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = (await conn.list_domains())[0]
        seen = {"received": 0, "lost": 0}
        done = Progress()

        async def reader(stream: EventStream) -> None:
            while True:
                try:
                    await stream.__anext__()
                    seen["received"] += 1
                except EventsLostError as e:
                    seen["lost"] += e.count
                if seen["received"] + seen["lost"] == count:
                    done.add()

        async with anyio.create_task_group() as group, conn.events(kinds={EventKind.QMP}) as stream:
            group.start_soon(reader, stream)
            await burst(dom, count, SOAK_PATTERN)
            await done.reached(1, timeout=60)
            group.cancel_scope.cancel()
    assert seen["lost"] == 0, f"{seen['lost']:,} of {count:,} events lost"


# -- faults --------------------------------------------------------------------------------------------------


async def test_monitor_that_hangs_up_while_qemu_lives_is_a_control_error(state_dir: Path) -> None:
    """The fake drops one guest's connection with no SHUTDOWN; its "QEMU" (the fake's pid) lives on."""
    async with fake_guests(state_dir, 2) as fake, \
            avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        async with conn.events(kinds={EventKind.CONTROL_ERROR}) as stream:
            await fake.hangup([fake.names[0]])
            with anyio.fail_after(20):  # the driver gives QEMU 5 s to exit before it calls this an error
                event = await stream.__anext__()
        assert isinstance(event, ControlErrorEvent) and event.domain == fake.names[0]
        other = await conn.lookup(fake.names[1])
        assert (await other.qemu_monitor_command("query-status"))["status"] == "running"
