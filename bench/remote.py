"""Remote benchmark: avirt over SSH (``qemu+ssh://`` to this same machine) beside avirt on the local host.

Three sides: ``local`` (``qemu:///session``), ``ssh`` (``qemu+ssh://...?mode=direct``: QEMU driven from
here over many SSH channels, a forwarded monitor socket per guest) and ``serve`` (``mode=serve``: the
avirt on the host, ``avirt serve --stdio``, in ONE SSH channel; the remote command is this checkout run
by this interpreter, ``tests/sshd.py``'s ``avirt_command``).

What it measures
----------------
One OpenSSH server is started on 127.0.0.1 with keys and a config of its own (``tests/sshd.py``, the
same server the tests use), so the remote host is this machine reached only through SSH: the figures
are what the SSH transport costs (encryption, channels, the relays of ``avirt/hosts/sshio.py``, SFTP
for state files, remote commands for processes), not a network's latency. Both sides run the same
diskless q35 guest (64 MiB, firmware only, TCG by default).

(0) **The transport.** One SFTP request (a stat) and one remote command (``exec true``), 30 times each
    on an SSH connection of its own: a command pays for a session channel, the remote user's shell
    (with whatever its rc files do: bash sources ``~/.bashrc`` for commands run by sshd) and the exec,
    and avirt's SSH host runs one for each QEMU start, signal and liveness check.

(1) **Lifecycle latency.** ``define_xml`` + ``start()`` + ``destroy()`` + ``undefine()`` of one guest,
    ``--runs`` times (default 20) per side, as ``bench/lifecycle.py`` does it; a connection per side is
    open at once and their cycles take turns (which side goes first rotates too), after one untimed
    warm-up cycle each. Reported: median, p10, p90 of the cycle and the median of each call, per side,
    and the ratios of the medians, ssh / local and serve / local.

(2) **Event latency.** One running guest per side; ``suspend()`` then ``resume()``, ``--rounds`` times
    (default 500), with an event stream subscribed to that guest's LIFECYCLE events, measured as
    ``bench/events.py`` measures its stream subscriber: from just before the call to the SUSPENDED (or
    RESUMED) event reaching the reader, and split at QEMU's own event timestamp (QEMU and the controller
    share this machine's wall clock, so the split is exact here): "cmd->emit" (the command reaching QEMU
    through the transport and QEMU stopping its vCPU) and "emit->sub" (the event travelling from QEMU to
    the subscriber: for SSH, QEMU's socket -> sshd -> the SSH connection -> the relay -> the monitor).
    The sides take turns in blocks of ``BLOCK`` rounds after ``WARMUP_ROUNDS`` untimed ones each, so
    drift hits both. Reported: p50, p90, p99, max per side and the ratios SSH / local at p50 and p99,
    for the whole path and for emit->sub alone.

(3) **One SSH connection watching a fleet.** ``--guests`` (default 200) guests are defined and started
    paused (``start(paused=True)``, ``--concurrency`` at a time, default 50) through ONE ``qemu+ssh``
    connection, and, for the ratio, through one local connection. Each side runs in a fresh Python
    process (so the RSS figure is about guests; an untimed warm-up round of ``WARMUP_GUESTS`` guests
    comes first, as in ``bench/lifecycle.py``). Reported: seconds to define them all and to start them
    all, the controller's RSS growth per guest, its open fds, its CPU use while all sit idle, and on
    the SSH side what the remote end keeps per guest (processes under the sshd session, their memory
    (PSS) and CPU while idle: the exit watcher's ``tail --pid`` per guest). Then proof that every guest is
    monitored: all are resumed, then all suspended (``--concurrency`` calls at a time), and ONE stream
    subscribed to every LIFECYCLE event must receive a RESUMED and then a SUSPENDED event from each guest
    (missing or lost events are counted); reported per round: wall seconds until the last event arrived,
    and the per-guest latency (call -> event, and emit->sub) at p50 and p99. Then all are destroyed
    (timed) and undefined.

Reading the SSH figures: the SSH host runs one remote command per QEMU start and per signal (a
session channel, then the user's shell, then exec: (0) measures that floor, and on a machine whose
``~/.bashrc`` does real work it dominates every start), and learns that a QEMU has ended from the
remote ``tail --pid``, which sees the process only once it has been reaped; QEMU daemonizes, so its
parent is the host's init, and whatever that init takes to reap an orphan is part of every
``destroy()`` over SSH (a local controller learns the end from a pidfd, at the exit itself).

Everything is cleaned up also on an error or Ctrl-C: each part destroys and undefines its guests in a
shielded ``finally``; after it every QEMU whose command line names this run's temporary directory is
killed (``rawqemu.kill_leftovers``: the remote host is this machine, so that reaches the remote guests
too), and the sshd is stopped last.

Targets
-------
* (1) the lifecycle cycle through the remote avirt (serve) within 1.5x of local, median.
* (2) event latency over SSH within 2x of local at p50, for the whole path (call -> subscriber) and for
  the delivery alone (QEMU's timestamp -> subscriber).
* (3) every guest of the fleet monitored: no event missing or lost in either round.
The other figures have no bar; the table prints them beside the local ones with the ratios.

How to run
----------
::

    .venv/bin/python bench/remote.py                    # everything, table
    .venv/bin/python bench/remote.py --json             # one JSON object on stdout
    .venv/bin/python bench/remote.py --runs 5 --rounds 50 --guests 10      # a quick look

Needs an OpenSSH server binary (Debian's openssh-server; it is started as this user, nothing of the
machine's own SSH setup is read or changed), ``flock`` and ``tail``. Run it on an otherwise idle
machine: the figures are wall-clock times (the table warns when other QEMU processes were running at
the start).

JSON keys (``--json``)
----------------------
* ``machine``: ``cpus``, ``loadavg_start``, ``loadavg_end``, ``other_qemu_at_start``, ``qemu_version``,
  ``kvm_usable``, ``accel``, ``mem_available_mib``, ``nofile``, ``openssh`` (``sshd -V``'s line).
* ``transport``: ``sftp_stat_ms`` and ``command_ms`` ({``p50``, ``p99``}): one SFTP request and one
  remote command (``exec true``) on an SSH connection to the same server; or ``error``.
* ``lifecycle``: ``runs``; ``local`` and ``ssh``, each with ``total_ms`` = {``median``, ``p10``, ``p90``,
  ``min``, ``max``}, ``samples_ms`` and ``phases_ms`` = {``define``, ``start``, ``destroy``,
  ``undefine``: median}, and ``serve`` alike; ``ratio`` = ssh median / local median, ``serve_ratio`` =
  serve median / local median; or ``error``.
* ``events``: ``rounds``, ``settle`` (see ``bench/events.py``'s ``wait_settled``); ``local`` and ``ssh``,
  each {``suspended``, ``resumed``}, each with ``ms`` = {``p50``, ``p90``, ``p99``, ``max``, ``mean``},
  ``call_ms``, ``cmd_to_emit_ms`` and ``emit_to_sub_ms`` ({``p50``, ``p99``}); ``ratios`` = {``p50``,
  ``p99``, ``emit_to_sub_p50``, ``emit_to_sub_p99``} (ssh / local, SUSPENDED), and ``serve`` and
  ``serve_ratios`` alike; or ``error``.
* ``fleet``: ``requested``, ``guests`` (after a memory cap: 70 % of MemAvailable at 16 MiB per paused
  guest), ``capped``; ``local`` and ``ssh``, each with ``guests``, ``define_wall_s``, ``start_wall_s``,
  ``start_cpu_s``, ``rss_before_kib``, ``rss_after_kib``, ``rss_per_guest_kib``, ``fds``, ``threads``,
  ``idle_cpu`` (controller CPU seconds per wall second, all idle), ``rounds`` = {``resumed``,
  ``suspended``}, each {``wall_s``, ``received``, ``missing``, ``lost``, ``ms`` and ``emit_to_sub_ms``
  ({``p50``, ``p99``})}, ``stop_wall_s``; the ``ssh`` and ``serve`` sides also ``remote`` =
  {``processes``, ``pss_kib``, ``idle_cpu``} (the processes the fleet added under the sshd),
  ``existing_rss_growth_per_guest_kib`` (what those already there grew by: the remote avirt in
  serve)}; or ``error``. ``ratios`` = {``start_wall``, ``rss_per_guest``, ``resume_round_wall``}
  (ssh / local), ``serve_ratios`` the same for serve.
* ``targets``: list of {``name``, ``value``, ``limit``, ``unit``, ``ok``} (``ok`` null: figure missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncssh
from events import (
    MEM_SHARE,
    MIB_PER_PAUSED_GUEST,
    RESUMED,
    SUSPENDED,
    TIMEOUT,
    Arrival,
    Rounds,
    avirt_cleanup,
    cpu_ticks,
    idle_cpu,
    limited,
    mem_available_kib,
    open_fds,
    p50_p99,
    raise_nofile,
    scratch,
    wait_settled,
)
from lifecycle import (
    grow_worker_pool,
    guest_xml,
    median_ms,
    proc_status,
    rss_kib,
    shielded,
    summary,
    timed_cycle,
)
from rawqemu import count_qemu_processes, kill_leftovers

import avirt
from avirt.errors import EventsLostError
from avirt.events.model import EventKind, LifecycleEvent, LifecycleType

# The SSH server of the tests (tests/sshd.py) lives one directory up, in the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import sshd as test_sshd

#: Untimed suspend+resume rounds per side before (2) measures, and rounds per block (sides take turns).
WARMUP_ROUNDS = 30
BLOCK = 50
#: Guests in the untimed warm-up round of each (3) child.
WARMUP_GUESTS = 5

#: The sides, as the report names them: this machine, SSH driving the host directly (mode=direct), SSH
#: through the host's own avirt (mode=serve).
SIDES = ("local", "ssh", "serve")

TARGETS = {"event_p50_ratio": 2.0, "serve_lifecycle_ratio": 1.5}


# -- helpers ----------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (walks /proc once)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def pss_sum_kib(pids: Sequence[int]) -> int:
    """The memory these processes use together (proportional set size: shared pages counted once)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total


def rss_sum_kib(pids: Sequence[int]) -> int:
    """The resident memory of these processes, summed (those that ended count nothing)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total


def openssh_version() -> str:
    out = subprocess.run([test_sshd.SSHD, "-V"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().splitlines()[0] if (out.stderr or out.stdout) else "?"


@contextlib.contextmanager
def ssh_server(root: Path) -> Any:
    """The tests' sshd on 127.0.0.1, stopped (with whatever sessions it still serves) on the way out."""
    server = test_sshd.start(root)
    try:
        yield server
    finally:
        server.drop_connections()
        server.stop()


# -- (0) the transport ----------------------------------------------------------------------------------


async def transport(server: test_sshd.SSHServer, samples: int = 30) -> dict[str, Any]:
    """What one SFTP request and one remote command cost on this connection, as avirt's SSH host issues
    them: the floor under every figure below (a command pays for a session channel, the user's login
    shell with whatever its rc files do, and the exec)."""
    async with asyncssh.connect("127.0.0.1", server.port, username=server.user,
                                client_keys=[str(server.keyfile)], known_hosts=str(server.known_hosts),
                                config=None) as conn:
        sftp = await conn.start_sftp_client()
        out: dict[str, Any] = {}
        for key, op in (("sftp_stat_ms", lambda: sftp.exists("/")),
                        ("command_ms", lambda: conn.run("exec true", check=True))):
            await op()
            ms = []
            for _ in range(samples):
                t = time.perf_counter()
                await op()
                ms.append((time.perf_counter() - t) * 1000)
            out[key] = p50_p99(ms)
        sftp.exit()
    return out


# -- (1) lifecycle --------------------------------------------------------------------------------------


async def lifecycle(runs: int, accel: str, conns: dict[str, avirt.Connection]) -> dict[str, Any]:
    phases = ("total", "define", "start", "destroy", "undefine")
    times: dict[str, dict[str, list[float]]] = {side: {k: [] for k in phases} for side in conns}
    doms: list[avirt.Domain] = []

    async def cycle(side: str, conn: avirt.Connection, name: str, record: bool) -> None:
        phases = await timed_cycle(conn, name, accel, doms)
        if record:
            for key, value in phases.items():
                times[side][key].append(value)

    try:
        for side, conn in conns.items():
            await cycle(side, conn, f"warm-{side}", False)
        for i in range(runs):
            for side in turns(list(conns), i):
                await cycle(side, conns[side], f"{side}{i}", True)
    finally:
        await avirt_cleanup(doms, 4)
    result: dict[str, Any] = {"runs": runs}
    for side, t in times.items():
        result[side] = {"total_ms": summary(t["total"]),
                        "samples_ms": [round(v * 1000, 1) for v in t["total"]],
                        "phases_ms": {k: median_ms(v) for k, v in t.items() if k != "total"}}
    local = result["local"]["total_ms"]["median"]
    result["ratio"] = round(result["ssh"]["total_ms"]["median"] / local, 3)
    if "serve" in result:
        result["serve_ratio"] = round(result["serve"]["total_ms"]["median"] / local, 3)
    return result


def turns(sides: list[str], i: int) -> list[str]:
    """The sides in the order of turn ``i``: each goes first in turn, so drift hits all alike."""
    k = i % len(sides)
    return sides[k:] + sides[:k]


# -- (2) event latency ----------------------------------------------------------------------------------


async def event_latency(rounds: int, accel: str, root: Path, conns: dict[str, avirt.Connection]
                        ) -> dict[str, Any]:
    sides = {side: (conn, Rounds()) for side, conn in conns.items()}
    doms: dict[str, avirt.Domain] = {}
    try:
        for side, (conn, _) in sides.items():
            doms[side] = await conn.define_xml(guest_xml(f"lat-{side}", accel))
            await shielded(doms[side].start, paused=False)
        settle = await wait_settled(root)

        async def block(side: str, count: int, record: bool) -> None:
            conn, rec = sides[side]
            dom = doms[side]
            arrival = Arrival()
            async with conn.events(kinds={EventKind.LIFECYCLE}, domain=dom) as stream:
                async def read() -> None:
                    async for ev in stream:
                        assert isinstance(ev, LifecycleEvent)
                        arrival.hit(ev.type, ev.timestamp)

                async with anyio.create_task_group() as group:
                    group.start_soon(read)
                    for _ in range(count):
                        await rec.one(arrival, SUSPENDED, dom.suspend, record)
                        await rec.one(arrival, RESUMED, dom.resume, record)
                    group.cancel_scope.cancel()

        for side in sides:
            await block(side, WARMUP_ROUNDS, False)
        done, turn = 0, 0
        while done < rounds:
            count = min(BLOCK, rounds - done)
            for side in turns(list(sides), turn):
                await block(side, count, True)
            done += count
            turn += 1
    finally:
        await avirt_cleanup(list(doms.values()), 2)
    result: dict[str, Any] = {"rounds": rounds, "settle": settle}
    for side, (_, rec) in sides.items():
        result[side] = rec.report()
    loc = result["local"]["suspended"]
    for side, key in (("ssh", "ratios"), ("serve", "serve_ratios")):
        if side not in result:
            continue
        ssh = result[side]["suspended"]
        result[key] = {
            "p50": round(ssh["ms"]["p50"] / loc["ms"]["p50"], 3),
            "p99": round(ssh["ms"]["p99"] / loc["ms"]["p99"], 3),
            "emit_to_sub_p50": round(ssh["emit_to_sub_ms"]["p50"] / loc["emit_to_sub_ms"]["p50"], 3),
            "emit_to_sub_p99": round(ssh["emit_to_sub_ms"]["p99"] / loc["emit_to_sub_ms"]["p99"], 3),
        }
    return result


async def in_process_parts(args: argparse.Namespace, root: Path, server: test_sshd.SSHServer
                           ) -> dict[str, Any]:
    """(1) and (2), with one local and one SSH connection open side by side."""
    async with avirt.connect("qemu:///session", state_dir=root / "local") as local, \
            avirt.connect(server.uri(root / "remote", mode="direct")) as remote, \
            avirt.connect(server.uri(root / "remote-serve", mode="serve")) as served:
        conns = {"local": local, "ssh": remote, "serve": served}
        caps = await local.capabilities()
        accel = ("kvm" if caps["kvm"] else "tcg") if args.accel == "auto" else args.accel
        if accel == "kvm" and not caps["kvm"]:
            raise SystemExit("--accel kvm: KVM is not usable here (capabilities()['kvm'] is false)")
        machine = {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                   "other_qemu_at_start": count_qemu_processes(), "qemu_version": caps["qemu_version"],
                   "kvm_usable": caps["kvm"], "accel": accel,
                   "mem_available_mib": mem_available_kib() // 1024,
                   "nofile": raise_nofile(), "openssh": openssh_version()}
        wire = await part(transport, server)
        life = await part(lifecycle, args.runs, accel, conns)
        ev = await part(event_latency, args.rounds, accel, root, conns)
    return {"machine": machine, "transport": wire, "lifecycle": life, "events": ev}


async def part(func: Callable[..., Awaitable[dict[str, Any]]], *args: Any) -> dict[str, Any]:
    try:
        return await func(*args)
    except Exception as e:  # one failed part must not hide the others' figures
        return {"error": f"{type(e).__name__}: {e}"}


# -- (3) the fleet (each side in a child process) --------------------------------------------------------


class FleetRound:
    """One event per guest expected, of one lifecycle type: when each arrived, and QEMU's timestamp."""

    def __init__(self, want: LifecycleType, names: Sequence[str]) -> None:
        self.want = want
        self.t_call: dict[str, float] = {}
        self.arrived: dict[str, tuple[float, float, float | None]] = {}  # perf, wall, qemu
        self.pending = set(names)
        self.lost = 0
        self.all_in = anyio.Event()

    def hit(self, ev: LifecycleEvent) -> None:
        if ev.type is not self.want or ev.domain not in self.pending:
            return
        self.pending.discard(ev.domain)
        self.arrived[ev.domain] = (time.perf_counter(), time.time(), ev.timestamp)
        if not self.pending:
            self.all_in.set()

    def report(self, t0: float) -> dict[str, Any]:
        last = max((a[0] for a in self.arrived.values()), default=t0)
        return {"wall_s": round(last - t0, 3), "received": len(self.arrived), "missing": len(self.pending),
                "lost": self.lost,
                "ms": p50_p99([(a[0] - self.t_call[n]) * 1000 for n, a in self.arrived.items()]),
                "emit_to_sub_ms": p50_p99([(a[1] - a[2]) * 1000 for a in self.arrived.values() if a[2]])}


async def fleet_round(conn: avirt.Connection, doms: Sequence[avirt.Domain], want: LifecycleType,
                      call: Callable[[avirt.Domain], Awaitable[None]], concurrency: int) -> dict[str, Any]:
    """``call`` on every guest (``concurrency`` at a time); one stream must see ``want`` from each."""
    rnd = FleetRound(want, [d.name for d in doms])
    sem = anyio.Semaphore(concurrency)
    async with conn.events(kinds={EventKind.LIFECYCLE}, max_queue=4 * len(doms) + 64) as stream:
        async def read() -> None:
            while True:
                try:
                    async for ev in stream:
                        assert isinstance(ev, LifecycleEvent)
                        rnd.hit(ev)
                    return
                except EventsLostError as e:
                    rnd.lost += e.count

        async def one(dom: avirt.Domain) -> None:
            async with sem:
                rnd.t_call[dom.name] = time.perf_counter()
                await call(dom)

        async with anyio.create_task_group() as group:
            group.start_soon(read)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as calls:
                for dom in doms:
                    calls.start_soon(one, dom)
            with anyio.move_on_after(TIMEOUT):
                await rnd.all_in.wait()
            group.cancel_scope.cancel()
    return rnd.report(t0)


async def fleet(uri: str, state_dir: Path | None, guests: int, accel: str, concurrency: int,
                sshd_pid: int) -> dict[str, Any]:
    raise_nofile()
    doms: list[avirt.Domain] = []
    async with avirt.connect(uri, state_dir=state_dir) as conn:
        try:
            await conn.capabilities()
            sem = anyio.Semaphore(concurrency)
            warm = [await conn.define_xml(guest_xml(f"w{i}", accel)) for i in range(WARMUP_GUESTS)]
            doms += warm
            async with anyio.create_task_group() as group:
                for dom in warm:
                    group.start_soon(lambda d: limited(sem, d.start, shield=True, paused=True), dom)
            await avirt_cleanup(warm, concurrency)
            doms.clear()
            await grow_worker_pool(concurrency)

            remote_before = descendants(sshd_pid) if sshd_pid else []
            # In mode=serve the remote avirt already runs under sshd: what it grows by is its cost per guest.
            remote_rss_before = rss_sum_kib(remote_before)
            rss_before = rss_kib()
            t0 = time.perf_counter()
            for i in range(guests):
                doms.append(await conn.define_xml(guest_xml(f"g{i:04d}", accel)))
            t1, cpu1 = time.perf_counter(), time.process_time()
            async with anyio.create_task_group() as group:
                for dom in doms:
                    group.start_soon(lambda d: limited(sem, d.start, shield=True, paused=True), dom)
            t2, cpu2 = time.perf_counter(), time.process_time()
            rss_after = rss_kib()
            states = {(await d.state())[0] for d in doms}
            if states != {avirt.DomainState.PAUSED}:
                raise RuntimeError(f"expected every guest PAUSED, found {sorted(s.name for s in states)}")
            remote: dict[str, Any] = {}
            if sshd_pid:
                pids = [p for p in descendants(sshd_pid) if p not in remote_before]
                hz = os.sysconf("SC_CLK_TCK")
                ticks0, w0 = cpu_ticks(pids), time.perf_counter()
                idle = await idle_cpu()
                remote = {"processes": len(pids), "pss_kib": pss_sum_kib(pids),
                          "idle_cpu": round((cpu_ticks(pids) - ticks0) / hz / (time.perf_counter() - w0), 4),
                          "existing_rss_growth_per_guest_kib":
                              round((rss_sum_kib(remote_before) - remote_rss_before) / guests, 1)}
            else:
                idle = await idle_cpu()
            fds, threads = open_fds(), proc_status("Threads")
            rounds = {
                "resumed": await fleet_round(conn, doms, RESUMED, lambda d: d.resume(), concurrency),
                "suspended": await fleet_round(conn, doms, SUSPENDED, lambda d: d.suspend(), concurrency),
            }
            t3 = time.perf_counter()
            async with anyio.create_task_group() as group:
                for dom in doms:
                    group.start_soon(limited, sem, dom.destroy)
            t4 = time.perf_counter()
        finally:
            await avirt_cleanup(doms, concurrency)
    result = {"guests": guests, "define_wall_s": round(t1 - t0, 2), "start_wall_s": round(t2 - t1, 2),
              "start_cpu_s": round(cpu2 - cpu1, 2), "rss_before_kib": rss_before, "rss_after_kib": rss_after,
              "rss_per_guest_kib": round((rss_after - rss_before) / guests, 1), "fds": fds,
              "threads": threads,
              "idle_cpu": idle, "rounds": rounds, "stop_wall_s": round(t4 - t3, 2)}
    if remote:
        result["remote"] = remote
    return result


def run_child(args: argparse.Namespace, side: str, guests: int, uri: str, state_dir: Path | None,
              sshd_pid: int) -> dict[str, Any]:
    """One side of (3) in a fresh interpreter; its stdout is one JSON object."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", side, "--child-uri", uri,
            "--child-state", str(state_dir or ""), "--child-sshd", str(sshd_pid), "--guests", str(guests),
            "--accel", args.accel, "--concurrency", str(args.concurrency)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        # The child got the SIGINT too and is cleaning up its guests: let it finish, do not kill it.
        proc.wait()
        raise
    if proc.returncode != 0:
        return {"error": f"{side} child failed with status {proc.returncode} (see stderr)"}
    try:
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": f"{side} child printed no JSON object"}


def child_main(args: argparse.Namespace) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON object
        result = anyio.run(fleet, args.child_uri, Path(args.child_state) if args.child_state else None,
                           args.guests, args.accel, args.concurrency, args.child_sshd)
    print(json.dumps(result, default=str))


def fleet_size(requested: int) -> tuple[int, bool]:
    cap = int(mem_available_kib() * MEM_SHARE / (MIB_PER_PAUSED_GUEST * 1024))
    return (min(requested, cap), requested > cap)


def fleet_ratios(local: dict[str, Any], ssh: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def get(d: dict[str, Any], *keys: str) -> Any:
        for key in keys:
            d = d.get(key, {}) if isinstance(d, dict) else {}
        return d if isinstance(d, int | float) else None

    return {"start_wall": ratio(get(ssh, "start_wall_s"), get(local, "start_wall_s")),
            "rss_per_guest": ratio(get(ssh, "rss_per_guest_kib"), get(local, "rss_per_guest_kib")),
            "resume_round_wall": ratio(get(ssh, "rounds", "resumed", "wall_s"),
                                       get(local, "rounds", "resumed", "wall_s"))}


# -- report ---------------------------------------------------------------------------------------------


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    ev = report.get("events", {})
    rows: list[tuple[str, Any, float, str]] = [
        ("(1) lifecycle median, serve / local", _get(report, "lifecycle", "serve_ratio"),
         TARGETS["serve_lifecycle_ratio"], "x"),
        ("(2) call -> event p50, SSH / local", _get(ev, "ratios", "p50"), TARGETS["event_p50_ratio"], "x"),
        ("(2) QEMU -> subscriber p50, SSH / local", _get(ev, "ratios", "emit_to_sub_p50"),
         TARGETS["event_p50_ratio"], "x"),
    ]
    for side in ("local", "ssh", "serve"):
        if report.get("fleet") is None:  # --guests 0
            break
        rounds = _get(report, "fleet", side, "rounds")
        missing = None if rounds is None else sum(r["missing"] + r["lost"] for r in rounds.values())
        rows.append((f"(3) {side} fleet: events missing or lost", missing, 0, "events"))
    return [{"name": name, "value": value, "limit": limit, "unit": unit,
             "ok": None if value is None else value <= limit} for name, value, limit, unit in rows]


def _pcts(p: dict[str, Any]) -> str:
    return f"{p['p50']:8.3f}{p['p90']:8.3f}{p['p99']:8.3f}{p['max']:8.3f}" if p else "n/a"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"avirt remote benchmark: qemu+ssh:// to 127.0.0.1 vs qemu:///session  (QEMU {m['qemu_version']}, "
          f"{m['openssh']}, accel {m['accel']}, {m['cpus']} CPUs, load at start/end "
          f"{m['loadavg_start'][0]:.2f}/{m.get('loadavg_end', [0.0])[0]:.2f})")
    if m["other_qemu_at_start"]:
        print(f"WARNING: {m['other_qemu_at_start']} other QEMU process(es) were running at start: "
              "wall-clock figures are unreliable; rerun on an idle machine")
    print()
    wire = report["transport"]
    if "error" in wire:
        print(f"(0) transport: ERROR: {wire['error']}")
    else:
        print(f"(0) over the SSH connection, p50/p99 ms: one SFTP request {wire['sftp_stat_ms']['p50']:.2f}/"
              f"{wire['sftp_stat_ms']['p99']:.2f}, one remote command (exec true) "
              f"{wire['command_ms']['p50']:.1f}/{wire['command_ms']['p99']:.1f}")
    print()
    life = report["lifecycle"]
    if "error" in life:
        print(f"(1) lifecycle: ERROR: {life['error']}")
    else:
        print(f"(1) define+start+destroy+undefine, one guest (q35, 64 MiB, no disk), {life['runs']} runs, ms")
        print(f"    {'':8}{'median':>9}{'p10':>9}{'p90':>9}{'min':>9}{'max':>9}   phases (median): "
              "define / start / destroy / undefine")
        for side in SIDES:
            t, ph = life[side]["total_ms"], life[side]["phases_ms"]
            print(f"    {side:8}{t['median']:9.1f}{t['p10']:9.1f}{t['p90']:9.1f}{t['min']:9.1f}"
                  f"{t['max']:9.1f}"
                  f"   {ph['define']:.1f} / {ph['start']:.1f} / {ph['destroy']:.1f} / {ph['undefine']:.1f}")
        print(f"    ssh (direct) / local (median) = {life['ratio']:.2f}x; "
              f"serve / local = {life['serve_ratio']:.2f}x")
    print()
    ev = report["events"]
    if "error" in ev:
        print(f"(2) event latency: ERROR: {ev['error']}")
    else:
        print(f"(2) call -> event at a stream subscriber, one running guest per side, {ev['rounds']} rounds, "
              "ms")
        print(f"    {'':18}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   {'call p50':>8}"
              f"  {'cmd->emit':>11}  {'emit->sub':>11} (p50/p99)")
        for side in SIDES:
            for kind in ("suspended", "resumed"):
                r = ev[side][kind]
                ce, es = r["cmd_to_emit_ms"], r["emit_to_sub_ms"]
                split = (f"{ce['p50']:5.3f}/{ce['p99']:5.3f}  {es['p50']:5.3f}/{es['p99']:5.3f}"
                         if ce and es else "n/a")
                print(f"    {side if kind == 'suspended' else '':8}{kind:10}{_pcts(r['ms'])}   "
                      f"{r['call_ms']['p50']:8.3f}  {split}")
        for key, label in (("ratios", "ssh (direct)"), ("serve_ratios", "serve")):
            ra = ev[key]
            print(f"    {label} / local (SUSPENDED): call->event p50 {ra['p50']:.2f}x, p99 {ra['p99']:.2f}x; "
                  f"emit->sub p50 {ra['emit_to_sub_p50']:.2f}x, p99 {ra['emit_to_sub_p99']:.2f}x")
    print()
    fl = report.get("fleet")
    if fl is None:
        print("(3) fleet: skipped")
    else:
        capped = " (capped by memory)" if fl["capped"] else ""
        print(f"(3) {fl['guests']} paused guests through one connection{capped}, requested {fl['requested']}")
        print(f"    {'':7}{'define s':>9}{'start s':>8}{'cpu s':>7}{'KiB/guest':>10}{'fds':>6}{'thr':>5}"
              f"{'idle cpu':>9}{'stop s':>8}")
        for side in SIDES:
            r = fl[side]
            if "error" in r:
                print(f"    {side:7}ERROR: {r['error']}")
                continue
            print(f"    {side:7}{r['define_wall_s']:9.2f}{r['start_wall_s']:8.2f}{r['start_cpu_s']:7.2f}"
                  f"{r['rss_per_guest_kib']:10.1f}{r['fds']:6d}{r['threads']:5d}{r['idle_cpu']:9.4f}"
                  f"{r['stop_wall_s']:8.2f}")
        for side in ("ssh", "serve"):
            rem = _get(fl, side, "remote")
            if rem:
                print(f"    {side}: remote end (the sshd session and all below it): {rem['processes']} "
                      f"new processes, {rem['pss_kib'] / 1024:.1f} MiB (PSS), "
                      f"{rem['idle_cpu']:.3f} CPU while idle; the processes already there (the remote "
                      f"avirt, in serve) grew by {rem['existing_rss_growth_per_guest_kib']:.1f} KiB/guest")
        print("    every guest resumed, then suspended; ONE stream must see each guest's event")
        print(f"    {'':7}{'round':10}{'wall s':>8}{'received':>9}{'missing':>8}{'lost':>5}"
              f"{'call->event p50/p99 ms':>24}{'emit->sub p50/p99 ms':>22}")
        for side in SIDES:
            r = fl[side]
            if "error" in r:
                continue
            for kind in ("resumed", "suspended"):
                x = r["rounds"][kind]
                lat = f"{x['ms']['p50']:.2f}/{x['ms']['p99']:.2f}" if x["ms"] else "n/a"
                emit = (f"{x['emit_to_sub_ms']['p50']:.2f}/{x['emit_to_sub_ms']['p99']:.2f}"
                        if x["emit_to_sub_ms"] else "n/a")
                print(f"    {side if kind == 'resumed' else '':7}{kind:10}{x['wall_s']:8.2f}"
                      f"{x['received']:9d}"
                      f"{x['missing']:8d}{x['lost']:5d}{lat:>24}{emit:>22}")
        for key, label in (("ratios", "ssh (direct)"), ("serve_ratios", "serve")):
            print(f"    {label} / local: " + ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} n/a"
                                                       for k, v in fl[key].items()))
    print()
    print("Targets")
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:g} {t['unit']}"
        verdict = {True: "PASS", False: "MISS"}.get(t["ok"], "ERROR")
        print(f"    {t['name']:44}{value:>14}   <= {t['limit']:g} {t['unit']:6}   {verdict}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--runs", type=int, default=20, help="(1) lifecycle cycles per side (default 20)")
    parser.add_argument("--rounds", type=int, default=500,
                        help="(2) suspend+resume rounds per side (default 500)")
    parser.add_argument("--guests", type=int, default=200,
                        help="(3) paused guests through one connection (default 200; 0 skips)")
    parser.add_argument("--concurrency", type=int, default=50, help="(3) calls at a time (default 50)")
    parser.add_argument("--accel", choices=("kvm", "tcg", "auto"), default="tcg",
                        help="guests' accelerator (default tcg: a running KVM guest spins a core here)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-uri", help=argparse.SUPPRESS)
    parser.add_argument("--child-state", help=argparse.SUPPRESS)
    parser.add_argument("--child-sshd", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.runs < 2 or args.rounds < 2 or args.guests < 0 or args.concurrency < 1:
        parser.error("--runs and --rounds must be >= 2, --guests >= 0, --concurrency >= 1")
    reason = test_sshd.missing_reason()
    if reason:
        raise SystemExit(f"cannot run an SSH server here: {reason}")

    with scratch("avirt-bench-remote-") as tmp, ssh_server(tmp / "sshd") as server:
        report = anyio.run(in_process_parts, args, tmp, server)
        args.accel = report["machine"]["accel"]
        if args.guests:
            guests, capped = fleet_size(args.guests)
            local = run_child(args, "local", guests, "qemu:///session", tmp / "fleet-local", 0)
            kill_leftovers(tmp)
            ssh = run_child(args, "ssh", guests, server.uri(tmp / "fleet-ssh", mode="direct"), None,
                            server.process.pid)
            kill_leftovers(tmp)
            serve = run_child(args, "serve", guests, server.uri(tmp / "fleet-serve", mode="serve"), None,
                              server.process.pid)
            kill_leftovers(tmp)
            report["fleet"] = {"requested": args.guests, "guests": guests, "capped": capped,
                               "local": local, "ssh": ssh, "serve": serve,
                               "ratios": fleet_ratios(local, ssh), "serve_ratios": fleet_ratios(local, serve)}
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["targets"] = targets(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
