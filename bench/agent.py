"""Guest agent benchmark: what a call to qemu-ga costs through avirt, on the tiny test guest under TCG.

One guest (tests/guest/, with qemu-ga on the ``org.qemu.guest_agent.0`` channel and a 32 MiB ext2 data
disk it formats itself) is booted, then measured:

(a) **first call**: the first ``ping()`` of a new controller's session: connect to the channel's socket,
    guest-sync-delimited, guest-ping;
(b) **calls on a synced session**, ``--runs`` times each (default 50): ``ping()``, ``os_info()``,
    ``fs_info()``, and ``exec(["/bin/true"])`` (guest-exec plus guest-exec-status polls);
(c) **through another program**: ``ping()`` from a client connection of the same state directory (the
    served protocol to the holder, then the agent);
(d) **quiesced snapshots**: ``snapshot_disks(quiesce=True)`` against a plain ``snapshot_disks``, alternated,
    ``--snapshots`` times each (default 5): the difference is the freeze, the flush and the thaw;
(e) **an absent agent**: qemu-ga is killed in the guest, and ``ping(timeout=1)`` is timed until its
    error: :class:`~avirt.errors.AgentUnavailableError` at once, since QEMU said the port closed (an
    agent that holds the port open but does not answer would be the timeout's
    :class:`~avirt.errors.AgentTimeoutError`).

Figures are medians with p10/p90 in ms. Under TCG the guest's side dominates; the numbers say what a
caller waits, not what avirt adds alone.

::

    .venv/bin/python bench/agent.py            # table
    .venv/bin/python bench/agent.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from lifecycle import summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import avirt
from avirt.errors import AgentUnavailableError
from tests.guest import BASE_CMDLINE, build_guest
from tests.waiting import wait_for_serial

CHANNEL = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


def guest_xml(kernel: Path, initrd: Path, serial: Path, disk: Path) -> str:
    return f"""<domain type='qemu'><name>agentbench</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>{BASE_CMDLINE}</cmdline></os><features><acpi/></features>
  <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/>
    <target dev='vda' bus='virtio'/></disk>{CHANNEL}<serial type='file'><source path='{serial}'/></serial>
  </devices></domain>"""


async def timed(func: Callable[[], Awaitable[Any]], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await func()
        times.append(time.perf_counter() - t0)
    return summary(times)


async def run(runs: int, snapshots: int) -> dict[str, Any]:
    images = build_guest()
    with tempfile.TemporaryDirectory(prefix="avirt-agent-bench-") as tmp:
        work = Path(tmp)
        serial, disk, state = work / "serial.log", work / "data.raw", work / "state"
        await anyio.run_process(["qemu-img", "create", "-q", "-f", "raw", str(disk), "32M"])
        report: dict[str, Any] = {"runs": runs, "snapshots": snapshots}
        async with avirt.connect("qemu:///session", state_dir=state) as conn:
            dom = await conn.define_xml(guest_xml(images.kernel, images.initrd, serial, disk))
            await dom.start()
            try:
                await wait_for_serial(serial, "avirt-guest: ready")
                with anyio.fail_after(60):
                    while True:  # qemu-ga opens its port a moment after the marker
                        t0 = time.perf_counter()
                        try:
                            await dom.agent.ping(timeout=5)
                            break
                        except AgentUnavailableError:  # not connected yet, or no answer yet
                            await anyio.sleep(0.05)
                report["first_call_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                await dom.agent.exec(["/bin/sh", "-c", "mke2fs -q /dev/vda && mkdir -p /mnt/data && "
                                      "mount -t ext2 /dev/vda /mnt/data"])
                report["ping"] = await timed(dom.agent.ping, runs)
                report["os_info"] = await timed(dom.agent.os_info, runs)
                report["fs_info"] = await timed(dom.agent.fs_info, runs)
                report["exec_true"] = await timed(lambda: dom.agent.exec(["/bin/true"]), runs)
                async with avirt.connect("qemu:///session", state_dir=state) as client:
                    other = await client.lookup("agentbench")
                    report["ping_via_client"] = await timed(other.agent.ping, runs)
                plain, quiesced = [], []
                for i in range(snapshots):
                    await dom.agent.exec(["/bin/sh", "-c", f"head -c 1048576 /dev/urandom >/mnt/data/f{i}"])
                    t0 = time.perf_counter()
                    await dom.snapshot_disks(f"p{i}")
                    plain.append(time.perf_counter() - t0)
                    await dom.agent.exec(["/bin/sh", "-c", f"head -c 1048576 /dev/urandom >/mnt/data/g{i}"])
                    t0 = time.perf_counter()
                    await dom.snapshot_disks(f"q{i}", quiesce=True)
                    quiesced.append(time.perf_counter() - t0)
                report["snapshot_plain"] = summary(plain)
                report["snapshot_quiesced"] = summary(quiesced)
                stopped = (await anyio.Path(serial).read_text()).count("avirt-guest: qga stopped")
                await dom.agent.exec(["/bin/sh", "-c", "echo 60 >/run/qga-pause && (sleep 0.2; "
                                      "kill $(pidof qemu-ga)) </dev/null >/dev/null 2>&1 &"])
                await wait_for_serial(serial, "avirt-guest: qga stopped", count=stopped + 1)
                t0 = time.perf_counter()
                try:
                    await dom.agent.ping(timeout=1)
                    report["absent_agent"] = None
                except AgentUnavailableError as e:
                    report["absent_agent"] = {"error": type(e).__name__,
                                              "ms": round((time.perf_counter() - t0) * 1000, 2)}
            finally:
                await dom.destroy()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--snapshots", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = anyio.run(run, args.runs, args.snapshots)
    if args.json:
        print(json.dumps(report))
        return
    print(f"first call (connect, sync, ping): {report['first_call_ms']} ms")
    print(f"{'call':<22}{'median':>10}{'p10':>10}{'p90':>10}   (ms)")
    for key in ("ping", "os_info", "fs_info", "exec_true", "ping_via_client", "snapshot_plain",
                "snapshot_quiesced"):
        s = report[key]
        print(f"{key:<22}{s['median']:>10}{s['p10']:>10}{s['p90']:>10}")
    absent = report["absent_agent"]
    print(f"absent agent, ping(timeout=1) -> {absent['error']} after {absent['ms']} ms")


if __name__ == "__main__":
    main()
