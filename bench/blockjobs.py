"""Block-job benchmark: avirt's block commit versus a bare QEMU + QMP baseline, on this machine.

What it measures
----------------
Every job runs on a fresh copy of the same qcow2 chain (1 GiB virtual, ``--layer-mib`` L = 128 MiB
written per layer, overlapping, offsets in MiB)::

    base   0x11 @ 0 .. L        snap1  0x22 @ L/2 .. 3L/2
    snap2  0x33 @ L .. 2L       active 0x44 @ 3L/2 .. 5L/2

so the guest sees 0x11 @ 0, 0x22 @ L/2, 0x33 @ L, 0x44 @ 3L/2 (.. 5L/2). The disk is the only device of a
firmware-only q35 guest with 64 MiB, running (``start()``, not paused). Per run, avirt and raw alternate
(which goes first alternates from run to run), after one untimed warm-up job of each kind and side:

(a) **Active commit**, all of it into base: from just before ``dom.block_commit("vda")`` until
    ``job.pivot()`` has returned COMPLETED (``wait_ready()`` in between), i.e. READY, then job-complete,
    then avirt's own settling. Reported also split at READY.
(b) **Intermediate commit** ``top="vda[1]"`` (snap2), ``base="vda[3]"`` (base): from just before
    ``block_commit()`` until ``await job`` has returned.
(c) **Completion delay**: from QEMU's own timestamp of ``BLOCK_JOB_COMPLETED`` (the ``timestamp`` of the
    ``BlockJobEvent`` avirt delivers, QEMU's wall clock) to ``pivot()`` / ``await job`` returning
    (``time.time()``), median and max over all avirt jobs of (a) and (b).

Targets: (a) and (b) medians within 1.05x of the raw baseline's; (c) under 5 ms (median, and max);
every job's data verified.

**What (c) cannot go below.** Between QEMU's end event and the caller's return avirt must, by its own
guarantees, read the result and dismiss the job, re-read the chain (``query-block``; QEMU answers one
command at a time, so that is a second round trip), and write the persistent XML durably (fsync of the file
and of its directory) beside the live XML and jobs.json. With a TCG guest taking one of this machine's two
cores, one QMP round trip costs QEMU about 1.1 ms (the raw side's ``job-dismiss``) and a durable write about
0.9 ms alone, several when the writes contend with QEMU for the other core: 7.9 ms median was measured
here (against 9.6 ms before the chain re-read stopped asking ``query-named-block-nodes`` for known
files). The 5 ms target holds only where QMP round trips are well under a millisecond; dropping the fsync
or reporting the end before the XML says it would meet it by giving up what the job promises.

**Where the time goes.** Unless ``--no-trace``, the benchmark wraps a few avirt internals *from the
outside* (nothing in avirt is edited): the driver's QMP event entry point, ``OnlineJobs._finish``,
``refresh_chains``, ``_chains_changed``, ``_record``, the host's ``write_atomic`` and ``Monitor.execute``.
Each wrapper takes two ``time.time()`` readings (about a microsecond). From them it reports, per job kind,
the median of each step between ``BLOCK_JOB_COMPLETED`` and the caller's return (event delivery, the wait
for ``concluded``, ``query-jobs``, ``job-dismiss``, the chain re-read, the fsync'ed XML and jobs.json
writes, the wake-up of the waiting caller), and what happens between the ``block_commit()`` call and
QEMU receiving ``block-commit``. If a wrapped name is missing (avirt changed), that step is just absent.

**Data check.** After every job, of both sides and outside the timed window (QEMU already stopped),
``qemu-io -r -U`` reads the patterns back: after (a) base *alone* (no backing) must hold the whole guest
view; after (b) active through its chain must still show the guest view, base alone must hold 0x11, 0x22
and 0x33, and ``qemu-img info --backing-chain`` of active must be active -> base. A job that "wins" by
not copying fails here; any failure is listed and the exit status is 1.

How the baseline is made fair
-----------------------------
The raw baseline runs **the very same QEMU command**: argv from avirt's own
``avirt.drivers.qemu.cmdline.build_argv`` for the same parsed XML, with ``chains={"vda": [Layer(base),
Layer(snap1), Layer(snap2), Layer(active)]}`` (bottom first, as avirt's driver builds it: absolute paths,
format qcow2), the same accelerator and a pid file; the warm-up avirt job checks that the ``-blockdev``
and ``-device`` arguments equal those of avirt's running QEMU (``argv_match``). It is spawned as avirt
spawns it: a listening unix socket whose fd (``qmp_fd``) is passed to ``setsid -f qemu-system-x86_64 ...``
through ``anyio.run_process``, then a bare ``qemu.qmp.QMPClient`` connects and sends ``cont``.

It then sends **the QMP commands avirt sends** (see ``avirt/drivers/qemu/blockjobs.py``), with the same
arguments, in the same order, job ids of the same form and avirt's node names (``vda-1`` = base ...
``vda-4`` = active): active commit ``block-commit {"job-id", "device": "vda-4", "base-node": "vda-1",
"auto-dismiss": false}``, wait for READY (``BLOCK_JOB_READY`` or ``JOB_STATUS_CHANGE`` ready, whichever
comes first, as avirt does), ``job-complete {"id"}``, wait for ``JOB_STATUS_CHANGE`` concluded,
``job-dismiss {"id"}``; intermediate commit ``block-commit`` with ``"top-node": "vda-3"`` and
``"backing-file": <base path>`` added, wait for concluded, ``job-dismiss``. What the raw side does **not**
do is avirt's overhead being measured: jobs.json written (fsync) before the job and after it, the
``query-jobs`` check of the result, re-reading the chain (``query-block`` + ``query-named-block-nodes``),
closing the nodes the job took out of the chain (``blockdev-del`` of each format and protocol node, so
their files are unlocked), rewriting the live and persistent XML (atomic, fsync'ed), and the handle and
event machinery. (If avirt changes the commands it sends to run a job, this baseline must follow.)

Both sides get identical preparation, untimed: a fresh chain (``cp --reflink=auto`` of a chain prepared
once, ``qemu-img rebase -u`` to point each copy at its copied backing file, then ``fdatasync`` of the
copies so no writeback of the copy runs during the job; the page cache stays warm), QEMU started and
given ``SETTLE_S`` to get through its firmware, then the timed job, then QEMU stopped and the data check.
Images and avirt's state directory both live in one temporary directory (ext4 ``/tmp`` here).

How to run
----------
::

    .venv/bin/python bench/blockjobs.py                     # table, 5 runs, 128 MiB layers, accel auto
    .venv/bin/python bench/blockjobs.py --json              # one JSON object on stdout
    .venv/bin/python bench/blockjobs.py --runs 9 --layer-mib 64 --accel tcg --no-trace

``--accel auto`` uses KVM if ``Connection.capabilities()`` says QEMU can use it, else TCG. Know that with
KVM on this machine (the PVM ``/dev/kvm``) the guest's vCPU thread spins a whole core (SeaBIOS never gets
to idle), for avirt and raw alike, so the job, QEMU's main loop and the controller share the other core;
under TCG the firmware goes idle within the settle time and the figures vary less. Run it on an otherwise
idle machine: all figures are wall-clock times (the table warns when other QEMU processes were running at
the start or the end). The default run takes about a minute.

JSON keys (``--json``)
----------------------
* ``machine``: ``cpus``, ``loadavg_start`` and ``loadavg_end`` (1/5/15 min), ``other_qemu_at_start`` and
  ``other_qemu_at_end`` (QEMU processes not ours: above 0 makes the figures suspect), ``qemu_version``,
  ``kvm_usable``, ``accel``.
* ``config``: ``runs``, ``layer_mib``, ``virtual_mib``, ``settle_s``, ``trace`` (bool).
* ``active`` and ``intermediate``: {``avirt``, ``raw``}, each with ``total_ms`` = {``median``, ``p10``,
  ``p90``, ``min``, ``max``} and ``samples_ms`` (every run, in order); ``active`` sides also have
  ``to_ready_ms`` and ``ready_to_end_ms`` (medians); plus ``ratio`` = avirt median / raw median.
* ``delay``: ``avirt`` = {``active``, ``intermediate``, ``all``}, each {``median_ms``, ``max_ms``,
  ``samples_ms``}: QEMU's BLOCK_JOB_COMPLETED timestamp -> ``pivot()``/``await job`` returned; ``raw`` the
  same shape for BLOCK_JOB_COMPLETED -> ``job-dismiss`` returned (the floor a QMP client can reach).
* ``breakdown`` (absent with ``--no-trace``): {``active``, ``intermediate``} -> {``avirt``, ``raw``} ->
  parts ``after`` (BLOCK_JOB_COMPLETED -> the caller resumes; avirt's steps add up to its delay),
  ``before`` (the call -> QEMU answered ``block-commit``) and ``pivot`` (active only: READY arrives -> QEMU
  answered ``job-complete``), each {step: {``median``, ``max``}} in ms, steps in path order. avirt's step
  names are its outermost traced calls with the traced calls inside them in brackets (e.g.
  ``_chains_changed [write domain.xml, write live.xml]``); ``gaps`` is the untraced rest. ``not_traced``
  lists wrapped names that avirt no longer has.
* ``argv_match``: the raw QEMU's ``-blockdev``/``-device`` arguments equal avirt's (null: not compared).
* ``verification``: ``checks`` (jobs verified), ``failures`` (list of messages; empty = all good).
* ``targets``: list of {``name``, ``value``, ``limit``, ``unit``, ``ok``}.
* ``libvirt_reference``: libvirt 9.0's figures on this machine (static text, not measured here).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
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
from qemu.qmp import EventListener
from rawqemu import RawGuest, count_qemu_processes, kill_leftovers

import avirt
from avirt import BlockJobStatus, EventKind
from avirt.config import parse_domain_xml
from avirt.drivers.qemu.cmdline import Layer, build_argv

VIRTUAL_MIB = 1024
#: Seconds a freshly started guest gets before the job (SeaBIOS probes the disk, then idles).
SETTLE_S = 0.5
#: Deadline for any one QMP connect/command or job of the baseline, and for any avirt job.
TIMEOUT = 60.0
QMP_TIMEOUT = 10.0
DISK = "vda"

LIBVIRT_REFERENCE = {
    "source": "libvirt 9.0 (libvirtd + QEMU 7.2) on this machine, same chain "
              "(static text, not measured here)",
    "active_commit_ms": "643-699",
    "active_commit_virsh_wait_s": "1.06-1.11 (virsh blockcommit --wait polls every 0.5 s)",
    "intermediate_commit_ms": "200-287",
}

TARGETS = {"ratio": 1.05, "delay_ms": 5.0}


# -- the chain ------------------------------------------------------------------------------------------

NAMES = ("base", "snap1", "snap2", "active")
PATTERNS = (0x11, 0x22, 0x33, 0x44)


def layer_spec(layer_mib: int) -> list[tuple[str, int, int]]:
    """(name, pattern, offset MiB) per layer, bottom first; each layer writes ``layer_mib`` MiB."""
    half = layer_mib // 2
    return [(name, pattern, i * half) for i, (name, pattern) in enumerate(zip(NAMES, PATTERNS, strict=True))]


def guest_view(layer_mib: int) -> list[tuple[int, int, int]]:
    """What the guest sees through the full chain: (pattern, offset MiB, length MiB)."""
    half = layer_mib // 2
    return [(0x11, 0, half), (0x22, half, half), (0x33, 2 * half, half), (0x44, 3 * half, layer_mib)]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def build_proto(directory: Path, layer_mib: int) -> None:
    """The chain every job copies (built once; qemu-io writes the patterns)."""
    directory.mkdir()
    previous: Path | None = None
    for name, pattern, offset in layer_spec(layer_mib):
        path = directory / f"{name}.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if previous is not None:
            argv += ["-F", "qcow2", "-b", str(previous)]
        _run([*argv, str(path), f"{VIRTUAL_MIB}M"])
        _run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset}M {layer_mib}M", str(path)])
        previous = path
    problems = read_patterns(directory / "active.qcow2", guest_view(layer_mib))
    if problems:
        raise RuntimeError(f"the prepared chain is wrong: {problems}")


def fresh_chain(proto: Path, directory: Path) -> dict[str, Path]:
    """A copy of the prepared chain whose headers point at the copies, flushed to disk (cache stays warm)."""
    directory.mkdir()
    paths = {name: directory / f"{name}.qcow2" for name in NAMES}
    _run(["cp", "--reflink=auto", *(str(proto / f"{name}.qcow2") for name in NAMES), str(directory)])
    for below, name in itertools.pairwise(NAMES):
        _run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(paths[below]), str(paths[name])])
    for path in paths.values():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return paths


def read_patterns(image: Path, expected: Sequence[tuple[int, int, int]], *, alone: bool = False) -> list[str]:
    """Mismatches between ``image`` (through its chain, or its own clusters only) and ``expected``."""
    target = (f'json:{{"driver":"qcow2","backing":null,"file":{{"driver":"file","filename":"{image}"}}}}'
              if alone else str(image))
    argv = ["qemu-io", "-r", "-U"] + ([] if alone else ["-f", "qcow2"])
    for pattern, offset, length in expected:
        argv += ["-c", f"read -P {pattern:#x} {offset}M {length}M"]
    result = subprocess.run([*argv, target], capture_output=True, text=True)
    reads_ok = sum(line.startswith("read ") for line in result.stdout.splitlines())
    if result.returncode != 0 or "fail" in result.stdout.lower() or reads_ok != len(expected):
        where = f"{image.name}{' alone' if alone else ''}"
        return [f"{where}: {result.stdout.strip()} {result.stderr.strip()}".strip()]
    return []


def backing_files(image: Path) -> list[str]:
    out = _run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(image)]).stdout
    return [layer["filename"] for layer in json.loads(out)]


def verify(kind: str, paths: dict[str, Path], layer_mib: int) -> list[str]:
    """Check the images after a job (QEMU already stopped). Returns the problems found."""
    half = layer_mib // 2
    if kind == "active":
        problems = read_patterns(paths["base"], guest_view(layer_mib), alone=True)
        if (chain := backing_files(paths["base"])) != [str(paths["base"])]:
            problems.append(f"base still has a backing chain: {chain}")
        return problems
    problems = read_patterns(paths["active"], guest_view(layer_mib))
    base_alone = [(0x11, 0, half), (0x22, half, half), (0x33, 2 * half, layer_mib)]
    problems += read_patterns(paths["base"], base_alone, alone=True)
    if (chain := backing_files(paths["active"])) != [str(paths["active"]), str(paths["base"])]:
        problems.append(f"active's chain is {chain}, expected active -> base")
    return problems


def guest_xml(name: str, accel: str, disk: Path) -> str:
    dom_type = "kvm" if accel == "kvm" else "qemu"
    return (f"<domain type='{dom_type}'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>"
            "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='{DISK}' bus='virtio'/></disk></devices></domain>")


# -- small helpers --------------------------------------------------------------------------------------




def qemu_argv_of(guest_name: str) -> list[str] | None:
    """The command line of the running QEMU of ``guest_name`` (its ``-name guest=NAME,...``)."""
    marker = f"guest={guest_name},".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]).startswith(b"qemu-system") and any(a.startswith(marker) for a in argv):
            return [a.decode() for a in argv if a]
    return None


def device_args(argv: Sequence[str]) -> list[str]:
    """The ``-blockdev`` and ``-device`` arguments of a QEMU argv."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-blockdev", "-device")]




def summary(values_ms: Sequence[float]) -> dict[str, float]:
    ms = sorted(values_ms)
    deciles = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median": round(statistics.median(ms), 2), "p10": round(deciles[0], 2),
            "p90": round(deciles[8], 2), "min": round(ms[0], 2), "max": round(ms[-1], 2)}


def med(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(func, *args))


# -- tracing avirt from the outside ---------------------------------------------------------------------


@dataclass
class Span:
    label: str
    start: float  # time.time()
    end: float


@dataclass
class Tracer:
    """Wraps a few avirt internals (instance attributes, and ``Monitor.execute``) to time its steps."""

    spans: list[Span] = field(default_factory=list)
    events: list[tuple[str, float, float | None]] = field(default_factory=list)  # (what, arrival, qemu ts)
    _undo: list[Callable[[], None]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def install(self, conn: avirt.Connection) -> None:
        driver = getattr(conn, "_driver", None)
        jobs = getattr(driver, "jobs", None)
        self._wrap_sync_events(driver)
        self._wrap(jobs, "_finish", lambda a: "_finish")
        self._wrap(jobs, "refresh_chains", lambda a: "refresh_chains")
        self._wrap(jobs, "_record", lambda a: "_record")
        self._wrap(driver, "_chains_changed", lambda a: "_chains_changed")
        self._wrap(getattr(driver, "host", None), "write_atomic", lambda a: f"write {os.path.basename(a[0])}")
        try:
            from avirt.qmp.monitor import Monitor
        except ImportError:
            self.missing.append("Monitor.execute")
        else:
            self._wrap(Monitor, "execute", lambda a: f"qmp {a[1]}", on_class=True)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def clear(self) -> None:
        self.spans.clear()
        self.events.clear()

    def _wrap(self, owner: Any, attr: str, label: Callable[[tuple[Any, ...]], str], *,
              on_class: bool = False) -> None:
        original = getattr(owner, attr, None) if owner is not None else None
        if original is None:
            self.missing.append(attr)
            return
        spans = self.spans

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return await original(*args, **kwargs)
            finally:
                spans.append(Span(label(args), start, time.time()))

        setattr(owner, attr, wrapper)
        if on_class:
            self._undo.append(lambda: setattr(owner, attr, original))
        else:
            self._undo.append(lambda: delattr(owner, attr))

    def _wrap_sync_events(self, driver: Any) -> None:
        original = getattr(driver, "_on_qmp_event", None) if driver is not None else None
        if original is None:
            self.missing.append("_on_qmp_event")
            return
        events = self.events

        def wrapper(guest: Any, msg: dict[str, Any]) -> Any:
            name = msg.get("event", "")
            if name.startswith(("JOB_", "BLOCK_JOB_")):
                status = (msg.get("data") or {}).get("status")
                stamp = msg.get("timestamp") or {}
                qemu_ts = stamp["seconds"] + stamp["microseconds"] / 1e6 if stamp else None
                events.append((f"{name}:{status}" if status else name, time.time(), qemu_ts))
            return original(guest, msg)

        driver._on_qmp_event = wrapper
        self._undo.append(lambda: delattr(driver, "_on_qmp_event"))

    def analyse(self, called: float, returned: float) -> dict[str, dict[str, float]] | None:
        """The last job's steps in ms: ``after`` (BLOCK_JOB_COMPLETED -> caller resumes, adding up to the
        delay), ``before`` (``block_commit()`` called -> QEMU answered ``block-commit``) and, for an active
        commit, ``pivot`` (READY arrives -> QEMU answered ``job-complete``)."""
        def arrival(*what: str) -> tuple[float, float | None] | None:
            return next(((t, q) for w, t, q in self.events if w in what), None)

        completed, concluded = arrival("BLOCK_JOB_COMPLETED"), arrival("JOB_STATUS_CHANGE:concluded")
        finish = next((s for s in self.spans if s.label == "_finish"), None)
        if completed is None or concluded is None or finish is None or completed[1] is None:
            return None
        after = {
            "QEMU BLOCK_JOB_COMPLETED -> event in avirt": completed[0] - completed[1],
            "-> JOB_STATUS_CHANGE concluded arrives": concluded[0] - completed[0],
            "-> _finish task starts": finish.start - concluded[0],
        }
        after |= self._steps(finish.start, finish.end, exclude=finish)
        after["_finish ends -> caller resumes"] = returned - finish.end
        out = {"after": after}
        commit = next((s for s in self.spans if s.label == "qmp block-commit"), None)
        if commit is not None:
            out["before"] = self._steps(called, commit.end)
        ready = arrival("JOB_STATUS_CHANGE:ready", "BLOCK_JOB_READY")
        complete = next((s for s in self.spans if s.label == "qmp job-complete"), None)
        if ready is not None and complete is not None:
            out["pivot"] = {"READY arrives -> job-complete sent": complete.start - ready[0],
                            "job-complete round trip": complete.end - complete.start}
        return {part: {k: v * 1000 for k, v in steps.items()} for part, steps in out.items()}

    def _steps(self, start: float, end: float, exclude: Span | None = None) -> dict[str, float]:
        """The outermost traced calls within [start, end], in order (each named with the calls inside it;
        repeats of one call merged), and the untraced rest ("gaps")."""
        inner = [s for s in self.spans if s is not exclude and start <= s.start and s.end <= end]

        def within(s: Span, o: Span) -> bool:
            return o is not s and o.start <= s.start and s.end <= o.end

        steps: dict[str, float] = {}
        names: list[str] = []
        for span in sorted((s for s in inner if not any(within(s, o) for o in inner)), key=lambda s: s.start):
            nested = sorted({n.label for n in inner if within(n, span)})
            name = span.label.removeprefix("qmp ") + (f" [{', '.join(nested)}]" if nested else "")
            if names and names[-1].removesuffix(" (all calls)") == name:
                steps[f"{name} (all calls)"] = steps.pop(names[-1]) + span.end - span.start
                names[-1] = f"{name} (all calls)"
            else:
                steps[name] = span.end - span.start
                names.append(name)
        gaps = (end - start) - sum(steps.values())
        steps["gaps (untraced: serialising XML, scheduling, bookkeeping)"] = gaps
        return steps


# -- the raw baseline -----------------------------------------------------------------------------------


def raw_argv(name: str, accel: str, paths: dict[str, Path], qmp_fd: int, pidfile: str) -> list[str]:
    """avirt's own argv for this guest: XML parsed by avirt, the chain bottom first as its driver has it."""
    cfg = parse_domain_xml(guest_xml(name, accel, paths["active"]))
    chains = {DISK: [Layer(str(paths[n]), "qcow2") for n in NAMES]}
    return build_argv(cfg, chains=chains, accel=accel, monitor=f"fd={qmp_fd}", pidfile=pidfile)


class RawBaseline:
    """QEMU spawned as avirt spawns it, driven by a bare QMPClient with avirt's block-job commands."""

    def __init__(self, root: Path, accel: str) -> None:
        self.root = root
        self.accel = accel
        self.live: dict[str, RawGuest] = {}
        self._ids = itertools.count(1)

    async def start(self, name: str, paths: dict[str, Path]) -> RawGuest:
        guest = self.live[name] = await rawqemu.spawn(
            name, self.root / name, lambda fd, pidfile: raw_argv(name, self.accel, paths, fd, pidfile),
            cont=True)
        return guest

    async def commit(self, name: str, paths: dict[str, Path], *, active: bool) -> dict[str, float]:
        """One commit, as avirt sends it. Returns wall times (time.time()) of its milestones."""
        client = self.live[name].client
        kind = "active-commit" if active else "commit"
        job_id = f"{kind}-{DISK}-{next(self._ids)}"
        # avirt's node names: vda-1 = base ... vda-4 = active; device = the top (root) node.
        args: dict[str, Any] = {"job-id": job_id, "device": f"{DISK}-4", "base-node": f"{DISK}-1",
                                "auto-dismiss": False}
        if not active:
            args["top-node"] = f"{DISK}-3"  # vda[1] = snap2
            args["backing-file"] = str(paths["base"])
        marks: dict[str, float] = {}
        listener = EventListener(("JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED",
                                  "BLOCK_JOB_CANCELLED"))

        async def until(*wanted: str) -> None:
            async for msg in listener:
                ev: dict[str, Any] = dict(msg)
                data = ev.get("data") or {}
                if (data.get("id") or data.get("device")) != job_id:
                    continue
                what = ev["event"] + (f":{data['status']}" if "status" in data else "")
                now = time.time()
                if what == "BLOCK_JOB_COMPLETED":
                    stamp = ev["timestamp"]
                    marks["completed_qemu"] = stamp["seconds"] + stamp["microseconds"] / 1e6
                    marks["completed_arrival"] = now
                    if data.get("error"):
                        raise RuntimeError(f"raw {job_id} failed: {data['error']}")
                if what == "BLOCK_JOB_CANCELLED":
                    raise RuntimeError(f"raw {job_id} was cancelled")
                if what in wanted:
                    marks["ready_arrival" if "READY" in what.upper() else "concluded_arrival"] = now
                    return

        with client.listen(listener), anyio.fail_after(TIMEOUT):
            marks["call"] = time.time()
            await client.execute("block-commit", args)
            marks["commit_returned"] = time.time()
            if active:
                await until("BLOCK_JOB_READY", "JOB_STATUS_CHANGE:ready")
                marks["ready"] = marks["complete_sent"] = time.time()
                await client.execute("job-complete", {"id": job_id})
                marks["complete_returned"] = time.time()
            await until("JOB_STATUS_CHANGE:concluded")
            await client.execute("job-dismiss", {"id": job_id})
            marks["end"] = time.time()
        return marks

    async def stop(self, name: str) -> None:
        await rawqemu.stop(self.live.pop(name))

    async def stop_all(self) -> None:
        with anyio.CancelScope(shield=True):
            for name in list(self.live):
                with contextlib.suppress(Exception):
                    await self.stop(name)
        kill_leftovers(self.root)


async def shielded(func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Run a start to its end even on Ctrl-C, so the cleanup knows every QEMU."""
    with anyio.CancelScope(shield=True):
        return await func(*args, **kwargs)


# -- the benchmark --------------------------------------------------------------------------------------


@dataclass
class Results:
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "active/avirt" -> phase -> ms
    delays: dict[str, list[float]] = field(default_factory=dict)  # "active/avirt" -> ms
    #: "active/avirt/after" (or before, pivot; raw too) -> one {step: ms} per job
    steps: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    checks: int = 0
    argv_match: bool | None = None

    def add(self, key: str, phases: dict[str, float]) -> None:
        slot = self.times.setdefault(key, {})
        for phase, ms in phases.items():
            slot.setdefault(phase, []).append(ms)


class Bench:
    def __init__(self, conn: avirt.Connection, tmp: Path, proto: Path, accel: str, layer_mib: int,
                 tracer: Tracer | None) -> None:
        self.conn = conn
        self.tmp = tmp
        self.proto = proto
        self.accel = accel
        self.layer_mib = layer_mib
        self.tracer = tracer
        self.raw = RawBaseline(tmp / "raw", accel)
        self.doms: list[avirt.Domain] = []
        self.res = Results()
        self._n = itertools.count()

    async def chain(self, label: str) -> dict[str, Path]:
        paths: dict[str, Path] = await in_thread(fresh_chain, self.proto,
                                                 self.tmp / "images" / f"{label}-{next(self._n)}")
        return paths

    async def check(self, kind: str, side: str, paths: dict[str, Path]) -> None:
        problems = await in_thread(verify, kind, paths, self.layer_mib)
        self.res.checks += 1
        self.res.failures += [f"{kind}/{side}: {p}" for p in problems]
        await in_thread(shutil.rmtree, paths["base"].parent)

    async def avirt_job(self, kind: str, record: bool, compare_argv: bool = False) -> None:
        paths = await self.chain(f"a-{kind}")
        name = f"bj-{paths['base'].parent.name}"
        dom = await self.conn.define_xml(guest_xml(name, self.accel, paths["active"]))
        self.doms.append(dom)
        await shielded(dom.start)
        if compare_argv and (ours := qemu_argv_of(name)) is not None:
            self.res.argv_match = device_args(ours) == device_args(raw_argv(name, self.accel, paths, 0, "-"))
        await anyio.sleep(SETTLE_S)
        tracer = self.tracer
        async with self.conn.events(kinds={EventKind.BLOCK_JOB}, domain=dom) as stream:
            if tracer is not None:
                tracer.clear()
            with anyio.fail_after(TIMEOUT):
                t0 = t_ready = time.perf_counter()
                w0 = time.time()
                job = await dom.block_commit(DISK) if kind == "active" else \
                    await dom.block_commit(DISK, top=f"{DISK}[1]", base=f"{DISK}[3]")
                if kind == "active":
                    await job.wait_ready()
                    t_ready = time.perf_counter()
                    status = await job.pivot()
                else:
                    status = await job
                t1, w1 = time.perf_counter(), time.time()
            if status is not BlockJobStatus.COMPLETED:
                raise RuntimeError(f"avirt {kind} commit ended {status}")
            with anyio.fail_after(5):
                completed = None
                async for event in stream:
                    if getattr(event, "status", None) is BlockJobStatus.COMPLETED:
                        completed = event
                        break
        assert completed is not None
        live_xml = await dom.xml()
        expected_top = paths["base"] if kind == "active" else paths["active"]
        if f"<source file=\"{expected_top}\"/>" not in live_xml or await dom.block_job(DISK) is not None:
            self.res.failures.append(f"{kind}/avirt: live XML or job table not settled after the job")
        await dom.destroy()
        await dom.undefine()
        self.doms.remove(dom)
        await self.check(kind, "avirt", paths)
        if not record:
            return
        key = f"{kind}/avirt"
        phases = {"total": (t1 - t0) * 1000}
        if kind == "active":
            phases |= {"to_ready": (t_ready - t0) * 1000, "ready_to_end": (t1 - t_ready) * 1000}
        self.res.add(key, phases)
        self.res.delays.setdefault(key, []).append((w1 - completed.timestamp) * 1000)
        if tracer is not None and (steps := tracer.analyse(w0, w1)) is not None:
            for part, values in steps.items():
                self.res.steps.setdefault(f"{key}/{part}", []).append(values)

    async def raw_job(self, kind: str, record: bool) -> None:
        paths = await self.chain(f"r-{kind}")
        name = f"bj-{paths['base'].parent.name}"
        try:
            await shielded(self.raw.start, name, paths)
            await anyio.sleep(SETTLE_S)
            t0 = time.perf_counter()
            marks = await self.raw.commit(name, paths, active=kind == "active")
            t1 = time.perf_counter()
        finally:
            if name in self.raw.live:
                await self.raw.stop(name)
        await self.check(kind, "raw", paths)
        if not record:
            return
        key = f"{kind}/raw"
        phases = {"total": (t1 - t0) * 1000}
        if kind == "active":
            phases |= {"to_ready": (marks["ready"] - marks["call"]) * 1000,
                       "ready_to_end": (marks["end"] - marks["ready"]) * 1000}
        self.res.add(key, phases)
        self.res.delays.setdefault(key, []).append((marks["end"] - marks["completed_qemu"]) * 1000)
        m = marks
        steps = {"after": {
            "QEMU BLOCK_JOB_COMPLETED -> event in client": m["completed_arrival"] - m["completed_qemu"],
            "-> JOB_STATUS_CHANGE concluded arrives": m["concluded_arrival"] - m["completed_arrival"],
            "job-dismiss": m["end"] - m["concluded_arrival"],
        }, "before": {"block-commit round trip": m["commit_returned"] - m["call"]}}
        if kind == "active":
            steps["pivot"] = {"READY arrives -> job-complete sent": m["complete_sent"] - m["ready_arrival"],
                              "job-complete round trip": m["complete_returned"] - m["complete_sent"]}
        for part, values in steps.items():
            self.res.steps.setdefault(f"{key}/{part}", []).append({k: v * 1000 for k, v in values.items()})

    async def run(self, runs: int) -> None:
        # Untimed warm-up of every path (imports, QEMU's binary and the images in the page cache).
        await self.avirt_job("active", record=False, compare_argv=True)
        await self.raw_job("active", record=False)
        await self.avirt_job("intermediate", record=False)
        await self.raw_job("intermediate", record=False)
        for i in range(runs):
            for kind in ("active", "intermediate"):
                pair: list[Callable[[], Awaitable[None]]] = [functools.partial(self.avirt_job, kind, True),
                                                             functools.partial(self.raw_job, kind, True)]
                for job in pair if i % 2 == 0 else reversed(pair):
                    await job()

    async def cleanup(self) -> None:
        with anyio.CancelScope(shield=True):
            for dom in list(self.doms):
                with contextlib.suppress(Exception):
                    if (await dom.state())[0] is not avirt.DomainState.SHUTOFF:
                        await dom.destroy()
                with contextlib.suppress(Exception):
                    await dom.undefine()
            await self.raw.stop_all()


async def bench(runs: int, layer_mib: int, accel_opt: str, trace: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-blockjobs-"))
    loadavg, others = list(os.getloadavg()), count_qemu_processes()
    tracer = Tracer() if trace else None
    try:
        (tmp / "raw").mkdir()
        (tmp / "images").mkdir()
        await in_thread(build_proto, tmp / "proto", layer_mib)
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            caps = await conn.capabilities()
            accel = ("kvm" if caps["kvm"] else "tcg") if accel_opt == "auto" else accel_opt
            if accel == "kvm" and not caps["kvm"]:
                raise SystemExit("--accel kvm: KVM is not usable here (capabilities()['kvm'] is false)")
            machine = {"cpus": os.cpu_count(), "loadavg_start": loadavg, "other_qemu_at_start": others,
                       "qemu_version": caps.get("qemu_version"), "kvm_usable": caps["kvm"], "accel": accel}
            b = Bench(conn, tmp, tmp / "proto", accel, layer_mib, tracer)
            if tracer is not None:
                tracer.install(conn)
            try:
                await b.run(runs)
            finally:
                if tracer is not None:
                    tracer.uninstall()
                await b.cleanup()
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    machine["other_qemu_at_end"] = count_qemu_processes()
    machine["loadavg_end"] = list(os.getloadavg())
    return report(machine, b.res, runs, layer_mib, tracer)


# -- report ---------------------------------------------------------------------------------------------


def report(machine: dict[str, Any], res: Results, runs: int, layer_mib: int,
           tracer: Tracer | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": machine,
        "config": {"runs": runs, "layer_mib": layer_mib, "virtual_mib": VIRTUAL_MIB, "settle_s": SETTLE_S,
                   "trace": tracer is not None},
    }
    for kind in ("active", "intermediate"):
        section: dict[str, Any] = {}
        for side in ("avirt", "raw"):
            t = res.times[f"{kind}/{side}"]
            entry: dict[str, Any] = {"total_ms": summary(t["total"]),
                                     "samples_ms": [round(v, 1) for v in t["total"]]}
            if kind == "active":
                entry["to_ready_ms"] = med(t["to_ready"])
                entry["ready_to_end_ms"] = med(t["ready_to_end"])
            section[side] = entry
        medians = [section[side]["total_ms"]["median"] for side in ("avirt", "raw")]
        section["ratio"] = round(medians[0] / medians[1], 3)
        out[kind] = section

    def delays(side: str) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for kind in ("active", "intermediate"):
            v = res.delays[f"{kind}/{side}"]
            d[kind] = {"median_ms": med(v), "max_ms": round(max(v), 3),
                       "samples_ms": [round(x, 2) for x in v]}
        both = res.delays[f"active/{side}"] + res.delays[f"intermediate/{side}"]
        d["all"] = {"median_ms": med(both), "max_ms": round(max(both), 3)}
        return d

    out["delay"] = {"avirt": delays("avirt"), "raw": delays("raw")}
    if tracer is not None:
        out["breakdown"] = {kind: {side: {part: step_stats(res.steps.get(f"{kind}/{side}/{part}", []))
                                          for part in ("after", "before", "pivot")
                                          if f"{kind}/{side}/{part}" in res.steps}
                                   for side in ("avirt", "raw")}
                            for kind in ("active", "intermediate")}
        if tracer.missing:
            out["breakdown"]["not_traced"] = tracer.missing
    out["argv_match"] = res.argv_match
    out["verification"] = {"checks": res.checks, "failures": res.failures}
    delay = out["delay"]["avirt"]["all"]
    rows = [
        ("(a) active commit, avirt/raw median", out["active"]["ratio"], TARGETS["ratio"], "x"),
        ("(b) intermediate commit, avirt/raw median", out["intermediate"]["ratio"], TARGETS["ratio"], "x"),
        ("(c) COMPLETED -> caller, median", delay["median_ms"], TARGETS["delay_ms"], "ms"),
        ("(c) COMPLETED -> caller, max", delay["max_ms"], TARGETS["delay_ms"], "ms"),
        ("data verified: failed checks", len(res.failures), 0, "jobs"),
    ]
    out["targets"] = [{"name": n, "value": v, "limit": lim, "unit": u,
                       "ok": v <= lim if u in ("x", "jobs") else v < lim} for n, v, lim, u in rows]
    out["libvirt_reference"] = LIBVIRT_REFERENCE
    return out


def step_stats(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{step: {median, max}} over jobs, steps in the order first seen."""
    steps = list(dict.fromkeys(step for sample in samples for step in sample))
    return {step: {"median": med(values), "max": round(max(values), 3)}
            for step in steps if (values := [s[step] for s in samples if step in s])}


def print_breakdown(bd: dict[str, Any]) -> None:
    parts = (("after", "after BLOCK_JOB_COMPLETED, until the caller resumes"),
             ("before", "before the job: block_commit() called -> QEMU answered block-commit"),
             ("pivot", "the pivot (active commit): READY -> QEMU answered job-complete"))
    print()
    print("where the time goes, ms: median (max) per step, active commit | intermediate commit")
    for part, title in parts:
        for side in ("avirt", "raw"):
            rows: dict[str, dict[str, dict[str, float]]] = {}
            for kind in ("active", "intermediate"):
                for step, stat in bd[kind][side].get(part, {}).items():
                    rows.setdefault(step, {})[kind] = stat
            if not rows:
                continue
            print(f"  {side}, {title}")
            for step, by_kind in rows.items():
                cells = [f"{by_kind[k]['median']:7.2f} ({by_kind[k]['max']:6.2f})" if k in by_kind
                         else f"{'-':>16}" for k in ("active", "intermediate")]
                label = step if len(step) <= 62 else step[:59] + "..."
                print(f"    {label:62}{cells[0]} |{cells[1]}")
    if bd.get("not_traced"):
        print(f"  (not traced, missing in avirt: {', '.join(bd['not_traced'])})")


def print_table(r: dict[str, Any]) -> None:
    m, c = r["machine"], r["config"]
    print(f"avirt block-job benchmark  (QEMU {m['qemu_version']}, accel {m['accel']}, {m['cpus']} CPUs, "
          f"load at start {m['loadavg_start'][0]:.2f})")
    print(f"chain: base + 3 overlays, {c['layer_mib']} MiB written per layer, {c['virtual_mib']} MiB "
          f"virtual; {c['runs']} runs, avirt and raw alternating; fresh chain per job")
    if m["other_qemu_at_start"] or m["other_qemu_at_end"]:
        print(f"WARNING: other QEMU processes were running (at start {m['other_qemu_at_start']}, at end "
              f"{m['other_qemu_at_end']}): wall-clock figures are unreliable; rerun on an idle machine")
    if r["argv_match"] is False:
        print("WARNING: the raw QEMU's -blockdev/-device arguments differ from avirt's")
    print()
    print("call -> completed, ms")
    print(f"    {'':36}{'median':>9}{'p10':>9}{'p90':>9}{'min':>9}{'max':>9}")
    for kind, title in (("active", "(a) active commit (READY + pivot)"),
                        ("intermediate", "(b) intermediate commit vda[1]->vda[3]")):
        print(f"    {title}")
        for side, label in (("avirt", "avirt"), ("raw", "raw QEMU+QMPClient")):
            t = r[kind][side]["total_ms"]
            cells = "".join(f"{t[k]:9.1f}" for k in ("median", "p10", "p90", "min", "max"))
            print(f"      {label:34}{cells}")
        if kind == "active":
            a, w = r[kind]["avirt"], r[kind]["raw"]
            print(f"      split at READY (median): avirt {a['to_ready_ms']:.1f} + "
                  f"{a['ready_to_end_ms']:.1f}, raw {w['to_ready_ms']:.1f} + {w['ready_to_end_ms']:.1f}")
        overhead = r[kind]["avirt"]["total_ms"]["median"] - r[kind]["raw"]["total_ms"]["median"]
        print(f"      ratio avirt/raw = {r[kind]['ratio']:.3f}x   (overhead {overhead:+.1f} ms)")
    print()
    print("(c) QEMU's BLOCK_JOB_COMPLETED timestamp -> caller resumes, ms")
    print(f"    {'':44}{'median':>9}{'max':>9}")
    for side, label in (("avirt", "avirt (pivot()/await job)"), ("raw", "raw (job-dismiss returned)")):
        for kind in ("active", "intermediate"):
            d = r["delay"][side][kind]
            print(f"    {label + ', ' + kind:44}{d['median_ms']:9.2f}{d['max_ms']:9.2f}")
    if "breakdown" in r:
        print_breakdown(r["breakdown"])
    print()
    v = r["verification"]
    verdict = f"{len(v['failures'])} FAILED" if v["failures"] else "all good"
    print(f"data verified after {v['checks']} jobs (qemu-io pattern reads, backing chain): {verdict}")
    for failure in v["failures"]:
        print(f"    {failure}")
    print()
    print("Targets")
    for t in r["targets"]:
        verdict = "PASS" if t["ok"] else "MISS"
        limit = f"{'<=' if t['unit'] in ('x', 'jobs') else '<'} {t['limit']:g} {t['unit']}"
        print(f"    {t['name']:44}{t['value']:>10g} {t['unit']:<4}  {limit:>10}   {verdict}")
    print()
    ref = r["libvirt_reference"]
    print(f"Reference: {ref['source']}")
    print(f"    active commit, call -> completed        {ref['active_commit_ms']} ms")
    print(f"      (virsh blockcommit --wait reports     {ref['active_commit_virsh_wait_s']})")
    print(f"    intermediate commit, call -> completed  {ref['intermediate_commit_ms']} ms")


@contextlib.contextmanager
def _no_sigint_traceback() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted (cleaned up)", file=sys.stderr)
        raise SystemExit(130) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--runs", type=int, default=5, help="timed jobs per kind and side (default 5)")
    parser.add_argument("--layer-mib", type=int, default=128, help="MiB written per layer (default 128)")
    parser.add_argument("--accel", choices=("kvm", "tcg", "auto"), default="auto")
    parser.add_argument("--no-trace", action="store_true",
                        help="do not wrap avirt internals (no breakdown of where the time goes)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if not 2 <= args.layer_mib <= 2 * VIRTUAL_MIB // 5 or args.layer_mib % 2:
        parser.error(f"--layer-mib must be even, between 2 and {2 * VIRTUAL_MIB // 5}")
    with _no_sigint_traceback():
        result = anyio.run(bench, args.runs, args.layer_mib, args.accel, not args.no_trace)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    if result["verification"]["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
