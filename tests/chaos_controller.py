"""A controller that tests/test_chaos.py kills: it connects to a state directory, starts every block job of
the plan it reads on stdin at once, and prints one line per event until it is killed by SIGKILL.

    python -m tests.chaos_controller STATE_DIR < plan.json

The plan is a list of ``{"domain", "disk", "op", "bandwidth", "dest"}``; ``op`` is one of ``commit``
(active commit, pivoted by avirt: ``pivot=True``), ``commit-manual`` (active commit pivoted here once
READY), ``commit-top`` (``vda[1]`` down into the bottom image), ``pull`` (everything into the active
image), ``copy`` (a full copy to ``dest``, ``pivot=True``), ``offline-commit`` and ``offline-pull`` (the
same on a shut-off domain: qemu-img). Lines, each flushed at once so that the test can kill the process
right after any of them::

    connected
    started <domain> <disk> <job id>          (or: refused <domain> <disk> <error>)
    progress <domain> <disk> <cur> <end>
    ready <domain> <disk>
    ended <domain> <disk> <status>
    done                                      (every job has ended; then it waits to be killed)
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

import avirt
from avirt.errors import AvirtError, BlockJobError


def say(*words: object) -> None:
    print(*words, flush=True)


async def run_job(conn: avirt.Connection, spec: dict[str, Any]) -> None:
    dom = await conn.lookup(spec["domain"])
    disk, op, bandwidth = spec["disk"], spec["op"], spec["bandwidth"] or None
    try:
        if op in ("commit", "commit-manual"):
            job = await dom.block_commit(disk, bandwidth=bandwidth, pivot=op == "commit")
        elif op == "commit-top":
            job = await dom.block_commit(disk, top=f"{disk}[1]", bandwidth=bandwidth)
        elif op == "pull":
            job = await dom.block_pull(disk, bandwidth=bandwidth)
        elif op == "copy":
            job = await dom.block_copy(disk, spec["dest"], bandwidth=bandwidth, pivot=True)
        elif op == "offline-commit":
            job = await dom.block_commit(disk)
        else:
            assert op == "offline-pull", op
            job = await dom.block_pull(disk)
    except AvirtError as e:
        say("refused", dom.name, disk, type(e).__name__)
        return
    say("started", dom.name, disk, job.id)

    async def report_progress() -> None:
        async for cur, end in job.progress():
            say("progress", dom.name, disk, cur, end)

    async with anyio.create_task_group() as group:
        group.start_soon(report_progress)
        try:
            if op == "commit-manual":
                await job.wait_ready()
                say("ready", dom.name, disk)
                await job.pivot()
            status = (await job).value
        except BlockJobError:
            status = "failed"
        group.cancel_scope.cancel()
    say("ended", dom.name, disk, status)


async def main() -> None:
    plan = json.load(sys.stdin)
    conn = await avirt.connect("qemu:///session", state_dir=sys.argv[1])
    say("connected")
    async with anyio.create_task_group() as group:
        for spec in plan:
            group.start_soon(run_job, conn, spec)
    say("done")
    await anyio.Event().wait()  # until the SIGKILL: never close the connection


if __name__ == "__main__":
    anyio.run(main)
