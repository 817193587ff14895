"""A fake QEMU monitor: thousands of QMP peers per process, for scale and fault-injection tests only.

Why it exists: the event path (monitor -> driver -> bus -> subscriber) must be measured at rates and
scales that real QEMU cannot reach on a 2-core machine (a million events through one monitor, ten
thousand monitors at once), and some faults (a monitor that hangs up while its process lives, one that
stops answering) are hard to provoke in QEMU. Everything else is tested against real QEMU.

Why it can be trusted: every message it sends has the exact shape real QEMU 7.2 sends, taken from
``tests/data/qmp-transcript.jsonl`` (recorded from a real QEMU by ``tests/data/record_qmp.py``): the greeting
is replayed verbatim; replies, errors and events use QEMU's separators (``", "``, ``": "``), key order
(``return`` then ``id``; ``id`` *before* ``error``; ``timestamp``, ``event``, ``data``) and ``\\r\\n`` line
ends; an event that a command causes is sent before the command's reply, as QEMU does. ``tests/test_soak.py``
checks the fake against the transcript byte for byte. Requests are parsed as a JSON *stream*, not by
lines, because ``qemu.qmp`` sends each request with no line end at all.

What a fake guest is: for each guest it creates the run directory that avirt's reconnect logic expects
(``run/<name>/live.xml``, ``qemu.pid``, ``qmp.sock``; see ``avirt/drivers/qemu/state.py``), so that
``avirt.connect(state_dir=...)`` re-attaches to it as to a QEMU started by an earlier controller. The pid
file holds this process's own pid (alive; one pid for every guest), so **never destroy a fake guest**:
``quit`` makes the fake close that guest's monitor (as QEMU would), but avirt then waits on a pidfd for a
process that does not exit. Close the connection instead; the guests keep "running".

Supported commands: ``qmp_capabilities``, ``query-status``, ``stop``, ``cont``, ``system_reset``, ``quit``
(SHUTDOWN, reply, then close, as QEMU), anything else -> ``CommandNotFound``; like QEMU, a guest serves one
client at a time (a second one is greeted only once the first has gone). Fake-only extensions:

* QMP command ``x-avirt-burst {"count": N, "events": [...], "rate": R}``: emit N events on this monitor,
  cycling through ``events`` (names, or ``{"event": NAME, "data": {...}}``; default STOP, RESUME), as fast
  as the client reads (``rate`` omitted) or at R events/s. The reply, ``{"sent": N}``, comes *after* the
  last event: once ``await dom.qemu_monitor_command("x-avirt-burst", ...)`` returns, the controller has
  dispatched every event of the burst (same socket, FIFO), which is a synchronisation point with no sleep.
* A control socket (``--control``, default ``<state_dir>/fakeqmp.ctl``), one JSON request per line, one JSON
  reply per line: ``{"op": "burst", "guests": [names] | null, "count": N, "events": [...], "rate": R}``
  (every listed, connected guest at once; ``rate`` per guest; reply ``{"sent": total, "guests": k,
  "seconds": t}`` once all is written), ``{"op": "stats"}``, ``{"op": "hangup", "guests": [...]}``
  (drop the connection with no SHUTDOWN: a monitor that breaks while its "QEMU" lives), ``{"op": "mute",
  "guests": [...], "on": true}`` (read commands but never answer them).

Run it::

    python -m tests.fakeqmp --state-dir D --guests N [--prefix g] [--control PATH] [--status running]

It prints one line ``FAKEQMP READY {"pid": P, "guests": N, "shards": [{"pid", "guests", "control",
"range"}, ...]}`` on stdout once every socket listens, serves until SIGTERM or SIGINT (or, with
``--exit-on-stdin-eof``, until its parent dies), then removes the run directories it created. A process
can hold only so many descriptors (here the hard RLIMIT_NOFILE is 20,000 and root cannot raise it) and
each guest costs two (listening socket + connection), so past ~9,800 guests the fake *shards* itself: the
process you start serves the first range and starts one more process per further range, each with its own
pid (in its guests' pid files) and control socket (``<control>.<i>``). Tests use :func:`fake_guests`,
whose :class:`FakeGuests` hides the shards.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import socket
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

TRANSCRIPT = Path(__file__).resolve().parent / "data" / "qmp-transcript.jsonl"
READY_PREFIX = "FAKEQMP READY "
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Events per write when bursting: large enough to amortise the write call, small enough (~40 KB) that
#: replies to the controller's own commands (query-status after a STOP) are not held back for long.
CHUNK = 512
#: Default burst pattern: a guest that flaps between paused and running.
DEFAULT_EVENTS: tuple[str, ...] = ("STOP", "RESUME")

LIVE_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices></devices>
</domain>
"""


def load_transcript(path: Path = TRANSCRIPT) -> list[tuple[str, str]]:
    """The recorded exchange as ``(direction, raw)`` pairs; ``in`` = QEMU -> controller."""
    with path.open() as f:
        return [(r["direction"], r["raw"]) for r in map(json.loads, f)]


def recorded_greeting(path: Path = TRANSCRIPT) -> bytes:
    direction, raw = load_transcript(path)[0]
    assert direction == "in" and raw.startswith('{"QMP"'), "the transcript must start with the greeting"
    return raw.encode()


# -- QEMU's wire format ------------------------------------------------------------------------------------
# QEMU's JSON writer uses the separators of Python's json.dumps (", " and ": ") and the same short escapes
# (\" \\ \b \f \n \r \t, "/" left alone), but writes every other character outside printable ASCII,
# DEL included, as an upper-case \uXXXX (surrogate pairs above U+FFFF): see the transcript's echoed ids.

_ESCAPE = re.compile(r"\\(u[0-9a-f]{4}|.)|\x7f")


def _upper_escape(match: re.Match[str]) -> str:
    if match.group(0) == "\x7f":
        return "\\u007F"
    escape = match.group(1)
    return "\\u" + escape[1:].upper() if escape[0] == "u" else match.group(0)


def _json(value: object) -> str:
    """``value`` as QEMU writes it: json.dumps, then QEMU's spelling of the \\u escapes."""
    text = json.dumps(value)
    return _ESCAPE.sub(_upper_escape, text) if "\\" in text or "\x7f" in text else text


def reply(result: object, id_: object = None, has_id: bool = False) -> bytes:
    """``{"return": R, "id": I}``: QEMU puts ``id`` last in a success reply, and leaves it out when the
    request had none."""
    tail = f', "id": {_json(id_)}' if has_id else ""
    return f'{{"return": {_json(result)}{tail}}}\r\n'.encode()


def error(cls: str, desc: str, id_: object = None, has_id: bool = False) -> bytes:
    """``{"id": I, "error": {...}}``: unlike a success reply, QEMU puts ``id`` *first* in an error reply."""
    head = f'"id": {_json(id_)}, ' if has_id else ""
    return f'{{{head}"error": {{"class": {_json(cls)}, "desc": {_json(desc)}}}}}\r\n'.encode()


def event_template(name: str, data: dict[str, Any] | None = None) -> bytes:
    """A ``bytes %`` template of one event, filled with ``(seconds, microseconds)``: rendering a burst
    then costs one formatting operation per event."""
    tail = f'"event": {_json(name)}' + (f', "data": {_json(data)}' if data is not None else "") + "}\r\n"
    return b'{"timestamp": {"seconds": %d, "microseconds": %d}, ' + tail.replace("%", "%%").encode()


def event(name: str, data: dict[str, Any] | None = None, now_ns: int | None = None) -> bytes:
    micros = (time.time_ns() if now_ns is None else now_ns) // 1000
    return event_template(name, data) % divmod(micros, 1_000_000)


def _templates(spec: Iterable[str | dict[str, Any]] | None) -> list[tuple[bytes, str]]:
    """Burst event specs -> (template, name) pairs."""
    out = []
    for item in spec or DEFAULT_EVENTS:
        if isinstance(item, str):
            out.append((event_template(item), item))
        else:
            out.append((event_template(str(item["event"]), item.get("data")), str(item["event"])))
    if not out:
        raise ValueError("events must not be empty")
    return out


#: Events that change the runstate QEMU reports in query-status.
_RUNSTATE_AFTER = {"STOP": "paused", "RESUME": "running"}


# -- one guest, one session --------------------------------------------------------------------------------


@dataclass
class FakeGuest:
    name: str
    path: str
    status: str = "running"
    session: Session | None = None
    waiting: deque[Session] = field(default_factory=deque)
    server: asyncio.AbstractServer | None = None
    muted: bool = False

    def attach(self, session: Session) -> None:
        """QEMU greets one client at a time; later ones wait in the listen backlog, ungreeted."""
        if self.session is None:
            self.session = session
            session.greet()
        else:
            self.waiting.append(session)

    def detach(self, session: Session) -> None:
        if self.session is session:
            self.session = None
            while self.waiting and self.session is None:
                nxt = self.waiting.popleft()
                if not nxt.closed:
                    self.session = nxt
                    nxt.greet()
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(session)


class Session(asyncio.Protocol):
    """One client connection on one guest's monitor socket."""

    def __init__(self, fake: FakeQMP, guest: FakeGuest) -> None:
        self.fake = fake
        self.guest = guest
        self.transport: asyncio.Transport | None = None
        self.negotiated = False
        self.closed = False
        self._buf = ""
        self._early = b""  # what a waiting (not yet greeted) client sent
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._bursts: set[asyncio.Task[None]] = set()

    # asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Room for a few chunks: the burst writer waits (pause_writing) instead of buffering without end.
        transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
        self.guest.attach(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        for task in self._bursts:
            task.cancel()
        self.guest.detach(self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.guest.session is not self:
            self._early += data  # not greeted yet: QEMU would not read it yet either
            return
        self._feed(data)

    def greet(self) -> None:
        self.write(self.fake.greeting)
        if self._early:
            early, self._early = self._early, b""
            self._feed(early)

    # requests ------------------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            self._buf += self._utf8.decode(data)  # incremental: a code point may be split across reads
        except UnicodeDecodeError:
            self._utf8.reset()
            self._buf = ""
            self.write(error("GenericError", "Invalid UTF-8 in QMP input"))
            return
        # A JSON stream, not lines: qemu.qmp sends each request with no line end at all. Thousands of
        # requests can arrive in one read (a query-status per STOP of a burst): parse by index and cut
        # the buffer once, or the parse is quadratic.
        text, pos, n = self._buf, 0, len(self._buf)
        while True:
            while pos < n and text[pos] in " \t\r\n":
                pos += 1
            if pos == n:
                self._buf = ""
                return
            try:
                msg, pos = self._decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                self._buf = text[pos:]
                if len(self._buf) > 1 << 20:  # not an incomplete request but garbage: answer, then reset
                    self._buf = ""
                    self.write(error("GenericError", "JSON parse error, request too large"))
                return
            self.handle(msg)

    def handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.write(error("GenericError", "QMP input must be a JSON object"))
            return
        has_id = "id" in msg
        id_ = msg.get("id")
        command = msg.get("execute")
        args = msg.get("arguments") or {}
        if self.guest.muted:
            return
        if not isinstance(command, str):
            self.write(error("GenericError", "QMP input lacks member 'execute'", id_, has_id))
            return
        self.fake.commands[command] += 1
        if not self.negotiated:
            if command == "qmp_capabilities":
                self.negotiated = True
                self.write(reply({}, id_, has_id))
            else:
                self.write(error("CommandNotFound",
                                 "Expecting capabilities negotiation with 'qmp_capabilities'", id_, has_id))
            return
        guest = self.guest
        if command == "query-status":
            self.write(reply({"status": guest.status, "singlestep": False,
                              "running": guest.status == "running"}, id_, has_id))
        elif command == "stop":
            if guest.status == "running":
                guest.status = "paused"
                self.write(event("STOP"))
            self.write(reply({}, id_, has_id))
        elif command == "cont":
            if guest.status != "running":
                guest.status = "running"
                self.write(event("RESUME"))
            self.write(reply({}, id_, has_id))
        elif command == "system_reset":
            self.write(event("RESET", {"guest": False, "reason": "host-qmp-system-reset"}))
            self.write(reply({}, id_, has_id))
        elif command == "quit":
            # QEMU 7.2: the SHUTDOWN event, then the reply, then EOF (see the transcript).
            self.write(event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
            self.write(reply({}, id_, has_id))
            self.fake.quit_guest(guest)
        elif command == "qmp_capabilities":
            self.write(error("CommandNotFound",
                             "Capabilities negotiation is already complete, command ignored", id_, has_id))
        elif command == "x-avirt-burst":
            try:
                templates = _templates(args.get("events"))
                count = int(args.get("count", 1))
                rate = float(args["rate"]) if args.get("rate") else None
            except (TypeError, ValueError, KeyError) as e:
                self.write(error("GenericError", f"x-avirt-burst: {e}", id_, has_id))
                return
            task = asyncio.get_running_loop().create_task(
                self._burst_then_reply(templates, count, rate, id_, has_id))
            self._bursts.add(task)
            task.add_done_callback(self._bursts.discard)
        else:
            self.write(error("CommandNotFound", f"The command {command} has not been found", id_, has_id))

    # output ----------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def burst(self, templates: Sequence[tuple[bytes, str]], count: int, rate: float | None) -> int:
        """Emit ``count`` events (cycling ``templates``) as fast as the client reads, or at ``rate``/s.

        Each event's timestamp is taken when it is rendered, right before it is written, so that the
        receiver's latency (its clock minus the timestamp) includes the time spent in socket buffers.
        """
        sent = 0
        start = time.monotonic()
        k = len(templates)
        while sent < count and not self.closed:
            await self._can_write.wait()
            if self.closed:
                break
            if rate is None:
                n = min(CHUNK, count - sent)
            else:
                due = min(count, int((time.monotonic() - start) * rate) + 1)
                if due <= sent:
                    await asyncio.sleep(sent / rate - (time.monotonic() - start))
                    continue
                n = min(CHUNK, due - sent)
            time_ns = time.time_ns
            parts = []
            for i in range(sent, sent + n):
                parts.append(templates[i % k][0] % divmod(time_ns() // 1000, 1_000_000))
            self.write(b"".join(parts))
            last = templates[(sent + n - 1) % k][1]
            self.guest.status = _RUNSTATE_AFTER.get(last, self.guest.status)
            sent += n
            self.fake.sent += n
            if rate is None:
                await asyncio.sleep(0)  # let other sessions and the reply to other commands through
        return sent

    async def _burst_then_reply(self, templates: Sequence[tuple[bytes, str]], count: int, rate: float | None,
                                id_: object, has_id: bool) -> None:
        sent = await self.burst(templates, count, rate)
        self.write(reply({"sent": sent}, id_, has_id))


# -- the process: many guests, a control socket ------------------------------------------------------------


class FakeQMP:
    def __init__(self, state_dir: str, names: Sequence[str], control: str | None = None,
                 status: str = "running") -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.join(self.state_dir, "run")
        self.control = control or os.path.join(self.state_dir, "fakeqmp.ctl")
        self.greeting = recorded_greeting()
        self.guests = {n: FakeGuest(n, os.path.join(self.run_dir, n, "qmp.sock"), status) for n in names}
        self.sent = 0
        #: Commands received, by name, over all guests: shows what the controller asked (e.g. a
        #: query-status per STOP).
        self.commands: Counter[str] = Counter()
        self._control_server: asyncio.AbstractServer | None = None

    def prepare(self) -> None:
        """Write each guest's run directory as avirt's ``StateDir.prepare_run`` and QEMU would leave it.

        Plain writes, not temp-file + fsync + rename: this is test set-up, and 10,000 fsyncs would
        dominate the benchmark's set-up time.
        """
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        pid = str(os.getpid())
        for name in self.guests:
            d = os.path.join(self.run_dir, name)
            shutil.rmtree(d, ignore_errors=True)
            os.mkdir(d, 0o700)
            with open(os.path.join(d, "live.xml"), "w") as f:
                f.write(LIVE_XML.format(name=name, uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"fakeqmp:{name}")))
            with open(os.path.join(d, "qemu.pid"), "w") as f:
                f.write(pid + "\n")

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for guest in self.guests.values():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(guest.path)
            os.chmod(guest.path, 0o600)
            sock.listen(64)
            guest.server = await loop.create_unix_server(functools.partial(Session, self, guest), sock=sock)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)
        self._control_server = await asyncio.start_unix_server(self._control_client, path=self.control)

    def quit_guest(self, guest: FakeGuest) -> None:
        """``quit``: QEMU closes the monitor, removes its socket and stops listening."""
        session = guest.session
        if session is not None and session.transport is not None:
            session.transport.close()  # after the buffered SHUTDOWN and reply have been written
        if guest.server is not None:
            guest.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(guest.path)

    def cleanup(self) -> None:
        for guest in self.guests.values():
            shutil.rmtree(os.path.dirname(guest.path), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)

    def ready_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "guests": len(self.guests), "control": self.control}

    # control socket ------------------------------------------------------------------------------------

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await self._control(json.loads(line))
                except Exception as e:  # a bad request must not end the fake
                    answer = {"error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _select(self, names: Iterable[str] | None) -> list[FakeGuest]:
        return list(self.guests.values()) if names is None else [self.guests[n] for n in names]

    async def _control(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "stats":
            connected = sum(1 for g in self.guests.values() if g.session is not None)
            return {"guests": len(self.guests), "connected": connected, "sent": self.sent,
                    "commands": dict(self.commands)}
        if op == "burst":
            templates = _templates(req.get("events"))
            count = int(req.get("count", 1))
            rate = float(req["rate"]) if req.get("rate") else None
            sessions = [g.session for g in self._select(req.get("guests"))
                        if g.session is not None and g.session.negotiated and not g.muted]
            start = time.monotonic()
            sent = await asyncio.gather(*(s.burst(templates, count, rate) for s in sessions))
            return {"sent": sum(sent), "guests": len(sessions), "seconds": time.monotonic() - start}
        if op == "hangup":
            guests = self._select(req.get("guests"))
            for g in guests:
                if g.session is not None and g.session.transport is not None:
                    g.session.transport.abort()
            return {"guests": len(guests)}
        if op == "mute":
            guests = self._select(req.get("guests"))
            for g in guests:
                g.muted = bool(req.get("on", True))
            return {"guests": len(guests)}
        raise ValueError(f"unknown op {op!r}")


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``needed``; return the limit now in force.

    The hard limit is raised too where the process may (CAP_SYS_RESOURCE); in this sandbox it may not
    (hard limit 20,000), which is why the fake shards itself over several processes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, PermissionError):
            needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


#: File descriptors a fake process keeps for itself (stdio, epoll, control socket, imports...).
FD_RESERVE = 256


def fd_capacity() -> int:
    """How many file descriptors one process may get here (the hard limit, or a generous cap)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else int(hard)


def shard_count(guests: int) -> int:
    """Processes needed: each guest costs the fake two descriptors (listening socket + connection)."""
    per_process = max(1, (fd_capacity() - FD_RESERVE) // 2)
    return max(1, -(-guests // per_process))


def shard_range(guests: int, index: int, shards: int) -> tuple[int, int]:
    return guests * index // shards, guests * (index + 1) // shards


def guest_names(count: int, prefix: str = "g") -> list[str]:
    width = max(5, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def _control_path(base: str, index: int) -> str:
    return base if index == 0 else f"{base}.{index}"


async def _main(args: argparse.Namespace) -> None:
    """Serve one shard; shard 0 (the process started by the user) also starts and stops the others.

    Why shards: a fake guest costs two descriptors (its listening socket and the controller's
    connection), and a process here may hold at most the hard RLIMIT_NOFILE (20,000, which root cannot
    raise in this sandbox): 10,000 guests need two processes.
    """
    names = guest_names(args.guests, args.prefix)
    control = args.control or os.path.join(os.path.abspath(args.state_dir), "fakeqmp.ctl")
    shards = args.shards or shard_count(len(names))
    start, end = shard_range(len(names), args.shard_index, shards)
    raise_nofile(2 * (end - start) + FD_RESERVE)
    fake = FakeQMP(args.state_dir, names[start:end], _control_path(control, args.shard_index), args.status)
    children: list[asyncio.subprocess.Process] = []
    try:
        if args.shard_index == 0:  # the other shards first: they set up their guests meanwhile
            for index in range(1, shards):
                child = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.fakeqmp", "--state-dir", args.state_dir,
                    "--guests", str(args.guests), "--prefix", args.prefix, "--control", control,
                    "--status", args.status, "--shards", str(shards), "--shard-index", str(index),
                    "--exit-on-stdin-eof", cwd=REPO_ROOT, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE)
                children.append(child)
        fake.prepare()
        await fake.serve()
        infos = [{**fake.ready_info(), "range": [start, end]}]
        for child in children:
            assert child.stdout is not None
            line = (await child.stdout.readline()).decode()
            if not line.startswith(READY_PREFIX):
                raise RuntimeError(f"a fakeqmp shard did not start: {line!r}")
            infos.append(json.loads(line.removeprefix(READY_PREFIX)))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.exit_on_stdin_eof:
            # The parent holds our stdin open and never writes: EOF means it died, even by SIGKILL, and a
            # fake must not outlive its test (its pid would stay in pid files, "alive").
            stdin = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
            watcher = loop.create_task(stdin.read())
            watcher.add_done_callback(lambda _t: stop.set())
        if args.shard_index == 0:
            ready = {"pid": os.getpid(), "guests": len(names), "shards": infos}
        else:
            ready = infos[0]
        print(READY_PREFIX + json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        for child in children:
            await child.wait()
        fake.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve fake QEMU monitors for avirt scale tests.")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--guests", type=int, required=True)
    parser.add_argument("--prefix", default="g")
    parser.add_argument("--control", default=None, help="control socket (default <state_dir>/fakeqmp.ctl); "
                        "shard i > 0 listens on <control>.<i>")
    parser.add_argument("--status", default="running", choices=["running", "paused", "prelaunch"],
                        help="every guest's runstate at start (query-status)")
    parser.add_argument("--shards", type=int, default=0, help="processes (default: as file limits need)")
    parser.add_argument("--shard-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="stop when stdin reaches EOF (the parent that holds it died)")
    asyncio.run(_main(parser.parse_args(argv)))


# -- the test side -----------------------------------------------------------------------------------------


@dataclass
class Shard:
    pid: int
    control: str
    start: int
    end: int


@dataclass
class FakeGuests:
    """A running fake (see :func:`fake_guests`): its guests' names, its processes and control sockets.

    Requests that name guests go to the shards that serve them; ``guests=None`` means every guest, and
    goes to every shard at once. Answers are summed over the shards (``seconds``: the slowest).
    """

    names: list[str]
    pid: int
    shards: list[Shard]

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.shards]

    async def _ask(self, control: str, request: dict[str, Any]) -> dict[str, Any]:
        async with await anyio.connect_unix(control) as stream:
            await stream.send(json.dumps(request).encode() + b"\n")
            line = await BufferedByteReceiveStream(stream).receive_until(b"\n", 1 << 20)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fakeqmp {request.get('op')}: {answer['error']}")
        return answer

    async def request(self, op: str, guests: Sequence[str] | None = None, **fields: Any) -> dict[str, Any]:
        """One control request to every shard concerned; a burst's answer comes once all is written."""
        plan: list[tuple[Shard, list[str] | None]] = []
        if guests is None:
            plan = [(shard, None) for shard in self.shards]
        else:
            index = {name: i for i, name in enumerate(self.names)}
            for shard in self.shards:
                mine = [g for g in guests if shard.start <= index[g] < shard.end]
                if mine:
                    plan.append((shard, mine))
        answers: list[dict[str, Any]] = [{} for _ in plan]

        async def ask(i: int, shard: Shard, names: list[str] | None) -> None:
            answers[i] = await self._ask(shard.control, {"op": op, "guests": names, **fields})

        async with anyio.create_task_group() as group:
            for i, (shard, names) in enumerate(plan):
                group.start_soon(ask, i, shard, names)
        merged: dict[str, Any] = {}
        for answer in answers:
            for key, value in answer.items():
                if key == "seconds":
                    merged[key] = max(merged.get(key, 0.0), value)
                elif isinstance(value, dict):
                    into = merged.setdefault(key, {})
                    for k, v in value.items():
                        into[k] = into.get(k, 0) + v
                else:
                    merged[key] = merged.get(key, 0) + value
        return merged

    async def burst(self, count: int, *, guests: Sequence[str] | None = None,
                    events: Sequence[str | dict[str, Any]] | None = None,
                    rate: float | None = None) -> dict[str, Any]:
        """``count`` events on each listed (connected) guest at once; ``rate`` is per guest (ev/s)."""
        return await self.request("burst", guests, count=count, events=events, rate=rate)

    async def stats(self) -> dict[str, Any]:
        return await self.request("stats")

    async def hangup(self, guests: Sequence[str]) -> dict[str, Any]:
        return await self.request("hangup", guests)

    async def mute(self, guests: Sequence[str], on: bool = True) -> dict[str, Any]:
        return await self.request("mute", guests, on=on)


@contextlib.asynccontextmanager
async def fake_guests(state_dir: str | os.PathLike[str], count: int, *, prefix: str = "g",
                      status: str = "running", ready_timeout: float = 120.0) -> AsyncIterator[FakeGuests]:
    """Run ``python -m tests.fakeqmp`` with ``count`` guests in ``state_dir`` until the block ends.

    Connect avirt to ``state_dir`` *inside* the block and close it before the block ends (the fake's exit
    would otherwise look like ``count`` crashed guests). On exit the fake gets SIGTERM (it removes its run
    directories), then SIGKILL if it lingers.
    """
    control = os.path.join(os.path.abspath(state_dir), "fakeqmp.ctl")
    os.makedirs(state_dir, exist_ok=True)
    argv = [sys.executable, "-m", "tests.fakeqmp", "--state-dir", os.fspath(state_dir),
            "--guests", str(count), "--prefix", prefix, "--control", control, "--status", status,
            "--exit-on-stdin-eof"]
    process = await anyio.open_process(argv, cwd=REPO_ROOT, stderr=None)  # stdin: a pipe we hold
    try:
        assert process.stdout is not None
        with anyio.fail_after(ready_timeout):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 1 << 20)
        text = line.decode()
        if not text.startswith(READY_PREFIX):
            raise RuntimeError(f"fakeqmp did not start: {text!r}")
        info = json.loads(text.removeprefix(READY_PREFIX))
        shards = [Shard(s["pid"], s["control"], *s["range"]) for s in info["shards"]]
        yield FakeGuests(guest_names(count, prefix), info["pid"], shards)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(30):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()


if __name__ == "__main__":
    main()
