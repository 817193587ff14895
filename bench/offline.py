"""Offline block-job benchmark: avirt's shut-off block commit versus the bare qemu-img command lines,
and the commit-or-pull advisor checked against the clock, on this machine.

What it measures
----------------
**(a) and (b): avirt against bare qemu-img.** Every job runs on a fresh copy of the chain of
``bench/blockjobs.py`` (base and three overlays, 1 GiB virtual, ``--layer-mib`` L = 128 MiB written per
layer, overlapping: base 0x11 @ 0, snap1 0x22 @ L/2, snap2 0x33 @ L, active 0x44 @ 3L/2, in MiB). avirt's
side is a shut-off domain whose disk is the active image; raw runs the command lines a person would type:

(a) **Full commit**, everything into base. avirt: ``await (await dom.block_commit("vda"))``, from the call
    until the job has returned COMPLETED: the chain read with qemu-img's lock probe, the shared-base and
    free-space checks, ``qemu-img commit -p -f qcow2 -b BASE ACTIVE`` with its progress read, and the
    persistent XML rewritten (fsync'ed) with base as the disk's image. Raw: the same ``qemu-img commit
    -p -f qcow2 -b BASE ACTIVE``.
(b) **Intermediate commit** of snap2 into snap1 (``top="vda[1]", shallow=True``). avirt: the same checks,
    ``qemu-img commit -p -f qcow2 -b SNAP1 SNAP2``, then ``qemu-img rebase -u -f qcow2 -F qcow2 -b SNAP1
    ACTIVE`` (no XML write: the disk's image is unchanged). Raw: those two command lines.

Raw runs exactly the argv avirt runs (``-p`` included, its output collected), so the difference is
avirt's own work.

Both sides run their commands through ``anyio.run_process`` / avirt's host, alternate (which goes first
alternates from run to run), after one untimed warm-up job of each kind and side. Target: avirt within
1.03x of raw, as the median of the per-run ratios (avirt's job over the raw job of the same run, run
back to back): on a shared machine the job times drift by 3x between quiet and busy phases, and a pair
sees the same phase. The ratio of the two medians is reported too.

Data check, after every job and outside the timed window: ``qemu-io -r -U`` reads the patterns back
(after (a) base alone holds the whole guest view; after (b) active through its chain still shows it,
snap1 alone holds 0x22 and 0x33, and active's chain is active -> snap1 -> base).

**(c): the advisor.** A base of ``--advice-mib`` MiB, fully written (0x11), under one overlay with 10%, 50%
and 90% of the disk written (0x44 from offset 0). For each, ``avirt.offline.advise_reduce(await
dom.block_chain("vda"))`` gives its advice, then both ways of reducing the chain to one image run through
the domain, each on fresh copies, ``--advice-runs`` times: commit (``block_commit("vda")``: the overlay
into base) and pull (``block_pull("vda")``: base into the overlay, which then has no backing file). The
report says which one was faster (median) and whether the advice picked it; when the two medians differ
by less than 5% (``close``: at 50% both ways move the same bytes) either advice counts as right, and the
table says so. Data checked as above.

Fresh copies are made untimed: ``cp --reflink=auto``, ``qemu-img rebase -u`` to point each copy at its
copied backing file, then ``fdatasync`` so no writeback of the copy runs during the job (the page cache
stays warm), and a ``sync`` so that the writeback of the previous job does not run during this one.
Images and avirt's state directory live in one temporary directory (ext4 ``/tmp`` here).
libvirt 9.0 cannot run either commit on a shut-off guest ("domain is not running").

How to run
----------
::

    .venv/bin/python bench/offline.py                 # table: 5 runs, 128 MiB layers, advisor on 512 MiB
    .venv/bin/python bench/offline.py --json          # one JSON object on stdout
    .venv/bin/python bench/offline.py --runs 9 --layer-mib 64 --advice-mib 256 --advice-runs 3

Run it on an otherwise idle machine: all figures are wall-clock times. About a minute with the defaults.

JSON keys (``--json``)
----------------------
* ``machine``: ``cpus``, ``loadavg_start``, ``loadavg_end``, ``qemu_img`` (its version line).
* ``config``: ``runs``, ``layer_mib``, ``virtual_mib``, ``advice_mib``, ``advice_runs``.
* ``full`` and ``intermediate``: {``avirt``, ``raw``}, each ``total_ms`` = {``median``, ``p10``, ``p90``,
  ``min``, ``max``} and ``samples_ms`` (run by run, in order); ``paired_ratio`` = the median over runs of
  avirt's time / raw's time in the same run (the target figure); ``ratio`` = avirt median / raw median.
* ``checks_ms``: {``median``, ...}: avirt's checks before the first byte (the chain read with qemu-img's
  lock probe, the free-space check), timed on their own once per run: the part of avirt's overhead that
  the bare command lines do not pay for.
* ``advice``: one entry per percentage: ``percent``, ``advice`` (``commit`` or ``pull``), ``reason``,
  ``figures`` (the advisor's), ``commit_ms`` and ``pull_ms`` (medians), ``faster``, ``margin_pct`` (how
  much slower the slower way was), ``close`` (under 5%), ``agreed`` (the advice picked the faster way, or
  the two were close).
* ``verification``: ``checks`` (jobs verified), ``failures`` (list of messages; empty = all good).
* ``targets``: list of {``name``, ``value``, ``limit``, ``unit``, ``ok``}.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import blockjobs
from blockjobs import NAMES, VIRTUAL_MIB, guest_view, in_thread, med, read_patterns, summary

import avirt
from avirt import BlockJobStatus
from avirt.hosts.local import LocalHost
from avirt.offline.safety import check_commit_space, unlocked_chain

TARGET_RATIO = 1.03
#: Two ways whose medians differ by less than this share are a tie: either advice is right.
CLOSE = 0.05
PERCENTS = (10, 50, 90)
DISK = "vda"


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")


def copy_chain(proto: Path, names: Sequence[str], directory: Path) -> dict[str, Path]:
    """A copy of the chain ``names`` (bottom first) whose headers point at the copies, flushed to disk."""
    directory.mkdir()
    paths = {name: directory / f"{name}.qcow2" for name in names}
    _run(["cp", "--reflink=auto", *(str(proto / f"{name}.qcow2") for name in names), str(directory)])
    for below, name in itertools.pairwise(names):
        _run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", str(paths[below]),
              str(paths[name])])
    for path in paths.values():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return paths


def build_advice_proto(directory: Path, size_mib: int, percent: int) -> None:
    directory.mkdir()
    base, top = directory / "base.qcow2", directory / "top.qcow2"
    _run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{size_mib}M"])
    _run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x11 0 {size_mib}M", str(base)])
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)])
    _run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x44 0 {size_mib * percent // 100}M", str(top)])


def chain_of(image: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(image)],
                         capture_output=True, text=True, check=True).stdout
    return [layer["filename"] for layer in json.loads(out)]


def domain_xml(name: str, disk: Path) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
            "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='{DISK}' bus='virtio'/></disk></devices></domain>")


@dataclass
class Results:
    times: dict[str, list[float]] = field(default_factory=dict)
    checks: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, key: str, ms: float | None) -> None:
        if ms is not None:
            self.times.setdefault(key, []).append(ms)

    def verify(self, what: str, problems: list[str]) -> None:
        self.checks += 1
        self.failures += [f"{what}: {p}" for p in problems]


class Bench:
    def __init__(self, conn: avirt.Connection, tmp: Path, layer_mib: int) -> None:
        self.conn, self.tmp, self.layer_mib = conn, tmp, layer_mib
        self.res = Results()
        self._ids = itertools.count()

    def fresh(self, proto: Path, names: Sequence[str]) -> dict[str, Path]:
        paths = copy_chain(proto, names, self.tmp / f"job-{next(self._ids)}")
        os.sync()  # the previous job's writeback must not run during this one
        return paths

    async def define(self, disk: Path) -> avirt.Domain:
        return await self.conn.define_xml(domain_xml(f"off-{next(self._ids)}", disk))

    # -- (a) and (b) --------------------------------------------------------------------------------------

    async def avirt_job(self, kind: str, record: bool) -> None:
        paths = await in_thread(self.fresh, self.tmp / "proto", NAMES)
        dom = await self.define(paths["active"])
        started = time.perf_counter()
        if kind == "full":
            job = await dom.block_commit(DISK)
        else:
            job = await dom.block_commit(DISK, top=f"{DISK}[1]", shallow=True)
        status = await job
        elapsed = (time.perf_counter() - started) * 1000
        if status is not BlockJobStatus.COMPLETED:
            raise RuntimeError(f"avirt {kind} commit ended {status}")
        problems = await in_thread(self.check, kind, paths)
        if kind == "full" and f"<source file='{paths['base']}'/>" not in (await dom.xml()).replace('"', "'"):
            problems.append("the domain's disk is not the base after a full commit")
        await dom.undefine()
        self.res.verify(f"{kind}/avirt", problems)
        self.res.add(f"{kind}/avirt", elapsed if record else None)

    async def raw_job(self, kind: str, record: bool) -> None:
        paths = await in_thread(self.fresh, self.tmp / "proto", NAMES)
        p = {name: str(path) for name, path in paths.items()}
        if kind == "full":
            steps = [["qemu-img", "commit", "-p", "-f", "qcow2", "-b", p["base"], p["active"]]]
        else:
            steps = [["qemu-img", "commit", "-p", "-f", "qcow2", "-b", p["snap1"], p["snap2"]],
                     ["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", p["snap1"],
                      p["active"]]]
        started = time.perf_counter()
        for argv in steps:
            await anyio.run_process(argv)
        elapsed = (time.perf_counter() - started) * 1000
        self.res.verify(f"{kind}/raw", await in_thread(self.check, kind, paths))
        self.res.add(f"{kind}/raw", elapsed if record else None)

    async def safety_checks(self) -> None:
        """What avirt does before the first byte on top of the bare command lines, timed on its own:
        the chain read with the lock probe and the free-space check (one qemu-img run, a statvfs)."""
        paths = await in_thread(self.fresh, self.tmp / "proto", NAMES)
        host = LocalHost()  # the benchmark's images are on this machine
        started = time.perf_counter()
        chain = await unlocked_chain(host, str(paths["active"]), "qcow2")
        await check_commit_space(host, chain, 0, len(chain) - 1)
        self.res.add("checks", (time.perf_counter() - started) * 1000)

    def check(self, kind: str, paths: dict[str, Path]) -> list[str]:
        view = guest_view(self.layer_mib)
        if kind == "full":
            return read_patterns(paths["base"], view, alone=True)
        half = self.layer_mib // 2
        problems = read_patterns(paths["active"], view)
        problems += read_patterns(paths["snap1"], [(0x22, half, half), (0x33, 2 * half, self.layer_mib)],
                                  alone=True)
        expected = [str(paths[n]) for n in ("active", "snap1", "base")]
        if (chain := chain_of(paths["active"])) != expected:
            problems.append(f"active's chain is {chain}, expected {expected}")
        return problems

    async def compare(self, runs: int) -> None:
        await in_thread(blockjobs.build_proto, self.tmp / "proto", self.layer_mib)
        for kind in ("full", "intermediate"):  # warm-up, untimed
            await self.avirt_job(kind, False)
            await self.raw_job(kind, False)
        for i in range(runs):
            for kind in ("full", "intermediate"):
                pair: list[Callable[[], Awaitable[None]]] = [lambda k=kind: self.avirt_job(k, True),
                                                             lambda k=kind: self.raw_job(k, True)]
                for job in pair if i % 2 == 0 else reversed(pair):
                    await job()
            await self.safety_checks()

    # -- (c) the advisor -----------------------------------------------------------------------------------

    async def advice(self, size_mib: int, percent: int, runs: int) -> dict[str, Any]:
        proto = self.tmp / f"advice-{percent}"
        await in_thread(build_advice_proto, proto, size_mib, percent)
        written = size_mib * percent // 100
        view = [(0x44, 0, written), (0x11, written, size_mib - written)]
        advice: avirt.offline.Advice | None = None
        for i in range(runs):
            for way in ("commit", "pull") if i % 2 == 0 else ("pull", "commit"):
                paths = await in_thread(self.fresh, proto, ("base", "top"))
                dom = await self.define(paths["top"])
                if advice is None:
                    advice = avirt.offline.advise_reduce(await dom.block_chain(DISK))
                started = time.perf_counter()
                job = await (dom.block_commit(DISK) if way == "commit" else dom.block_pull(DISK))
                await job
                self.res.add(f"advice-{percent}/{way}", (time.perf_counter() - started) * 1000)
                merged = paths["base"] if way == "commit" else paths["top"]
                self.res.verify(f"advice {percent}% {way}",
                                await in_thread(functools.partial(read_patterns, merged, view, alone=True)))
                await dom.undefine()
        assert advice is not None
        commit_ms, pull_ms = (med(self.res.times[f"advice-{percent}/{w}"]) for w in ("commit", "pull"))
        faster = "commit" if commit_ms <= pull_ms else "pull"
        margin = abs(commit_ms - pull_ms) / min(commit_ms, pull_ms)
        return {"percent": percent, "advice": advice.direction, "reason": advice.reason,
                "figures": advice.figures, "commit_ms": commit_ms, "pull_ms": pull_ms, "faster": faster,
                "margin_pct": round(100 * margin, 1), "close": margin < CLOSE,
                "agreed": advice.direction == faster or margin < CLOSE}


async def bench(runs: int, layer_mib: int, advice_mib: int, advice_runs: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-offline-"))
    version = (await anyio.run_process(["qemu-img", "--version"])).stdout.decode().splitlines()[0]
    machine: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                               "qemu_img": version}
    try:
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            b = Bench(conn, tmp, layer_mib)
            await b.compare(runs)
            advice = [await b.advice(advice_mib, percent, advice_runs) for percent in PERCENTS]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    out: dict[str, Any] = {
        "machine": machine,
        "config": {"runs": runs, "layer_mib": layer_mib, "virtual_mib": VIRTUAL_MIB,
                   "advice_mib": advice_mib, "advice_runs": advice_runs},
    }
    for kind in ("full", "intermediate"):
        section: dict[str, Any] = {}
        for side in ("avirt", "raw"):
            samples = b.res.times[f"{kind}/{side}"]
            section[side] = {"total_ms": summary(samples), "samples_ms": [round(v, 1) for v in samples]}
        medians = [section[side]["total_ms"]["median"] for side in ("avirt", "raw")]
        section["ratio"] = round(medians[0] / medians[1], 3)
        pairs = zip(b.res.times[f"{kind}/avirt"], b.res.times[f"{kind}/raw"], strict=True)
        section["paired_ratio"] = round(statistics.median(a / r for a, r in pairs), 3)
        out[kind] = section
    out["checks_ms"] = summary(b.res.times["checks"])
    out["advice"] = advice
    out["verification"] = {"checks": b.res.checks, "failures": b.res.failures}
    rows = [("(a) full commit, avirt/raw per run, median", out["full"]["paired_ratio"], TARGET_RATIO, "x"),
            ("(b) intermediate commit, same", out["intermediate"]["paired_ratio"], TARGET_RATIO, "x"),
            ("(c) advice missed the faster way", sum(not a["agreed"] for a in advice), 0, "cases"),
            ("data verified: failed checks", len(b.res.failures), 0, "jobs")]
    out["targets"] = [{"name": n, "value": v, "limit": lim, "unit": u, "ok": v <= lim}
                      for n, v, lim, u in rows]
    return out


def print_table(r: dict[str, Any]) -> None:
    m, c = r["machine"], r["config"]
    print(f"avirt offline block-job benchmark  ({m['qemu_img']}, {m['cpus']} CPUs, load at start "
          f"{m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f})")
    print(f"chain: base + 3 overlays, {c['layer_mib']} MiB written per layer, {c['virtual_mib']} MiB "
          f"virtual; {c['runs']} runs, avirt and raw alternating; fresh chain per job; shut-off domain")
    print()
    print("call -> completed, ms")
    print(f"    {'':36}{'median':>9}{'p10':>9}{'p90':>9}{'min':>9}{'max':>9}")
    for kind, title in (("full", "(a) full commit into base"),
                        ("intermediate", "(b) intermediate commit snap2 -> snap1")):
        print(f"    {title}")
        for side, label in (("avirt", "avirt Domain.block_commit"), ("raw", "bare qemu-img command lines")):
            t = r[kind][side]["total_ms"]
            cells = "".join(f"{t[k]:9.1f}" for k in ("median", "p10", "p90", "min", "max"))
            print(f"      {label:34}{cells}")
        overhead = r[kind]["avirt"]["total_ms"]["median"] - r[kind]["raw"]["total_ms"]["median"]
        print(f"      avirt/raw per run, median = {r[kind]['paired_ratio']:.3f}x; ratio of the medians = "
              f"{r[kind]['ratio']:.3f}x   (overhead {overhead:+.1f} ms)")
    print(f"    of which avirt's checks before the first byte (chain read with lock probe, free space): "
          f"median {r['checks_ms']['median']:.1f} ms")
    print()
    print(f"(c) commit or pull? one overlay on a fully written {c['advice_mib']} MiB base, "
          f"median of {c['advice_runs']} runs each way")
    print(f"    {'overlay':>8}{'advice':>8}{'commit ms':>11}{'pull ms':>9}{'faster':>8}{'by':>7}   verdict")
    for a in r["advice"]:
        verdict = ("a tie (within 5%)" if a["close"] else "advice right") if a["agreed"] else "ADVICE WRONG"
        print(f"    {a['percent']:>7}%{a['advice']:>8}{a['commit_ms']:>11.1f}{a['pull_ms']:>9.1f}"
              f"{a['faster']:>8}{a['margin_pct']:>6.1f}%   {verdict}")
    print()
    v = r["verification"]
    verdict = f"{len(v['failures'])} FAILED" if v["failures"] else "all good"
    print(f"data verified after {v['checks']} jobs (qemu-io pattern reads, backing chain): {verdict}")
    for failure in v["failures"]:
        print(f"    {failure}")
    print()
    print("Targets")
    for t in r["targets"]:
        print(f"    {t['name']:44}{t['value']:>10g} {t['unit']:<6} <= {t['limit']:g}   "
              f"{'PASS' if t['ok'] else 'MISS'}")
    print()
    print("Reference: libvirt 9.0 cannot commit on a shut-off guest ('domain is not running').")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--runs", type=int, default=5, help="timed jobs per kind and side (default 5)")
    parser.add_argument("--layer-mib", type=int, default=128, help="MiB written per layer (default 128)")
    parser.add_argument("--advice-mib", type=int, default=512, help="advisor disk size in MiB (default 512)")
    parser.add_argument("--advice-runs", type=int, default=3, help="runs per way and size (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.advice_runs < 1:
        parser.error("--runs and --advice-runs must be >= 1")
    if not 2 <= args.layer_mib <= 2 * VIRTUAL_MIB // 5 or args.layer_mib % 2:
        parser.error(f"--layer-mib must be even, between 2 and {2 * VIRTUAL_MIB // 5}")
    if args.advice_mib < 10:
        parser.error("--advice-mib must be >= 10")
    try:
        result = anyio.run(bench, args.runs, args.layer_mib, args.advice_mib, args.advice_runs)
    except KeyboardInterrupt:
        print("interrupted (cleaned up)", file=sys.stderr)
        raise SystemExit(130) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    if result["verification"]["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
