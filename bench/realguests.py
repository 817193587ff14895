"""Real guests benchmark: the cost of a full virt-install definition, beside the same QEMU run bare.

The lifecycle benchmark's guest is a diskless q35 with nothing but firmware; real guests carry two
dozen devices (root ports, USB, SPICE, channels, sound, RNG, several disks). This measures what that
costs avirt, in two parts.

(a) **Per definition, over the corpus.** For every definition of ``tests/data/corpus`` that avirt
    accepts: parse + stable-ABI fill-in + serialise + QEMU command line, ``--reps`` times each (default
    20), in rounds over the corpus. Reported: the median and the slowest definition's median, in ms
    (target: under 2 ms each), and the share of the corpus accepted.

(b) **One full guest's cycle.** ``define_xml`` + ``start()`` + ``destroy()`` + ``undefine()`` of one
    corpus definition (``--guest``, default a Fedora 37 q35 install with SPICE, cdrom, channels, USB
    redirection, sound and 14 root ports), made runnable here as the corpus test makes it
    (``tests/corpus/localise.py``: fresh images, user-mode NIC, TCG). The raw baseline runs **the very
    same QEMU argv** (``build_argv`` on the definition avirt stored, with the same image chains and a
    SPICE port picked the same way), spawned as avirt spawns QEMU (``rawqemu.py``), ``cont``, then
    ``quit``. avirt and raw alternate, ``--runs`` times each (default 20) after one warm-up each.
    Reported: medians, p10, p90 and the ratio avirt / raw (target <= 1.2x).

::

    .venv/bin/python bench/realguests.py            # table
    .venv/bin/python bench/realguests.py --json     # one JSON object: corpus, cycle, targets
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import rawqemu
from lifecycle import shielded, summary
from rawqemu import kill_leftovers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import avirt
from avirt.config import domain_to_xml, parse_domain_xml
from avirt.drivers.qemu.abi import MACHINE_ALIASES, stabilise
from avirt.drivers.qemu.cmdline import Layer, build_argv
from avirt.errors import AvirtError
from tests.corpus.localise import localise

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "corpus"
TARGETS = {"per_definition_ms": 2.0, "ratio": 1.2}


def per_definition(reps: int) -> dict[str, Any]:
    """Part (a): parse + ABI + serialise + argv, per accepted corpus definition.

    The repetitions go round the corpus (each round takes every definition once), so that a slow spell
    of the machine, which can outlast all the repetitions of one definition, spreads over every
    definition instead of making whichever ran then look like the slowest."""
    files = sorted(CORPUS.glob("*.xml"))
    texts: dict[str, bytes] = {}
    for path in files:
        text = path.read_bytes()
        try:
            parse_domain_xml(text)
        except AvirtError:
            continue
        texts[path.name] = text
    times: dict[str, list[float]] = {name: [] for name in texts}
    for _ in range(reps):
        for name, text in texts.items():
            t0 = time.perf_counter()
            cfg = stabilise(parse_domain_xml(text), MACHINE_ALIASES)
            domain_to_xml(cfg)
            chains = {d.target: [Layer(d.source, d.format)] for d in cfg.disks if d.source}
            taps = {i: 10 + i for i, nic in enumerate(cfg.interfaces) if nic.type != "user"}
            build_argv(cfg, chains=chains, accel="tcg", monitor="fd=3", pidfile="/run/x.pid",
                       run_dir="/run/x", spice_port=5900, tap_fds=taps)
            times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(found) * 1000 for name, found in times.items()}
    slowest = max(medians, key=lambda k: medians[k])
    return {"definitions": len(files), "accepted": len(medians),
            "accepted_share": round(len(medians) / len(files), 3),
            "median_ms": round(statistics.median(medians.values()), 3),
            "mean_ms": round(statistics.fmean(medians.values()), 3),
            "slowest": {"name": slowest, "median_ms": round(medians[slowest], 3)}}


async def cycle(guest: str, runs: int) -> dict[str, Any]:
    """Part (b): one full definition, avirt beside the same argv run bare."""
    tmp = Path(tempfile.mkdtemp(prefix="avirt-bench-"))
    xml = localise((CORPUS / guest).read_bytes(), tmp)
    avirt_s: list[float] = []
    raw_s: list[float] = []
    try:
        async with avirt.connect("qemu:///session", state_dir=tmp / "state") as conn:
            probe = await conn.define_xml(xml)  # the stored definition gives the raw side its argv
            cfg = parse_domain_xml(await probe.xml(inactive=True))
            await probe.undefine()
            chains = {d.target: [Layer(d.source, d.format)] for d in cfg.disks if d.source}
            (tmp / "raw").mkdir()

            async def avirt_cycle(record: bool) -> None:
                t0 = time.perf_counter()
                dom = await conn.define_xml(xml)
                await shielded(dom.start)
                await dom.destroy()
                await dom.undefine()
                if record:
                    avirt_s.append(time.perf_counter() - t0)

            async def raw_cycle(i: int, record: bool) -> None:
                t0 = time.perf_counter()
                port = await _free_port()
                run_dir = tmp / "raw" / f"r{i}"
                guest_ = await shielded(rawqemu.spawn, f"r{i}", run_dir, lambda fd, pidfile: build_argv(
                    cfg, chains=chains, accel="tcg", monitor=f"fd={fd}", pidfile=pidfile,
                    run_dir=str(run_dir), spice_port=port), cont=True)
                await rawqemu.stop(guest_)
                if record:
                    raw_s.append(time.perf_counter() - t0)

            await avirt_cycle(False)
            await raw_cycle(-1, False)
            for i in range(runs):
                pair = [avirt_cycle(True), raw_cycle(i, True)]
                for coro in pair if i % 2 == 0 else reversed(pair):
                    await coro
    finally:
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    a, r = summary(avirt_s), summary(raw_s)
    return {"guest": guest, "runs": runs, "devices": _count_devices(xml), "avirt_ms": a, "raw_ms": r,
            "ratio": round(a["median"] / r["median"], 3)}


async def _free_port() -> int:
    from avirt.hosts.local import LocalHost

    return await LocalHost().free_port("127.0.0.1")


def _count_devices(xml: str) -> int:
    from lxml import etree

    return len(etree.fromstring(xml.encode()).find("devices")) - 1  # less <emulator>


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--runs", type=int, default=20, help="full-guest cycles per side (default 20)")
    parser.add_argument("--reps", type=int, default=20,
                        help="repetitions per corpus definition (default 20)")
    parser.add_argument("--guest", default="fedora37-q35-cdrom-spice.xml",
                        help="the corpus file of part (b)")
    args = parser.parse_args(argv)
    corpus = per_definition(args.reps)
    full = anyio.run(cycle, args.guest, args.runs)
    targets = [
        {"name": "parse+ABI+serialise+argv per definition, slowest median",
         "value": corpus["slowest"]["median_ms"],
         "limit": TARGETS["per_definition_ms"], "unit": "ms",
         "ok": corpus["slowest"]["median_ms"] <= TARGETS["per_definition_ms"]},
        {"name": "full guest define+start+destroy+undefine, avirt/raw", "value": full["ratio"],
         "limit": TARGETS["ratio"], "unit": "x", "ok": full["ratio"] <= TARGETS["ratio"]},
    ]
    report = {"corpus": corpus, "cycle": full, "targets": targets}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"corpus: {corpus['accepted']} of {corpus['definitions']} definitions accepted "
          f"({corpus['accepted_share']:.0%})")
    print(f"  parse + ABI + serialise + argv: median {corpus['median_ms']:.3f} ms per definition, slowest "
          f"{corpus['slowest']['median_ms']:.3f} ms ({corpus['slowest']['name']})")
    print(f"full guest {full['guest']} ({full['devices']} devices), {full['runs']} runs each, TCG:")
    for side in ("avirt", "raw"):
        s = full[f"{side}_ms"]
        print(f"  {side:5}  median {s['median']:8.1f} ms   p10 {s['p10']:8.1f}   p90 {s['p90']:8.1f}")
    print(f"  ratio avirt/raw {full['ratio']:.3f}")
    for t in targets:
        verdict = "PASS" if t["ok"] else "MISS"
        print(f"target {t['name']}: {t['value']} {t['unit']} (limit {t['limit']}) {verdict}")


if __name__ == "__main__":
    main()
