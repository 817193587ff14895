"""A new controller re-attaching to a running guest reads its chains without harming QEMU, and closes the
nodes an earlier controller left open.

Both were found by tests/test_chaos.py; these make each situation on purpose:

* a block job that concluded and waits to be dismissed (what a controller killed at a job's end leaves):
  QEMU 7.2 dies (SIGSEGV) if asked ``query-named-block-nodes`` beside a concluded stream job, so a new
  controller must take the node names from the run directory, never from that query;
* nodes a job dropped, still open because the controller died before ``blockdev-del``: the next
  controller closes them, so their files are free and the next snapshot's node name is not refused.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest

import avirt
from avirt import Domain
from tests.images import GUEST_VIEW, backing_chain, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


async def _job_status(dom: Domain, job_id: str, wanted: str) -> None:
    """Until QEMU lists the job in status ``wanted`` (a raw QMP job: no avirt event to wait on)."""
    with anyio.fail_after(30):
        while not any(j["id"] == job_id and j["status"] == wanted  # noqa: ASYNC110
                      for j in await dom.qemu_monitor_command("query-jobs")):
            await anyio.sleep(0.01)


async def test_reattach_beside_a_concluded_stream_job(state_dir: Path, xml: XMLFactory,
                                                      tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.define_xml(xml("cs", disks=[("vda", str(chain.active), "qcow2")]))
        await dom.start()
        # Run outside avirt's job table, and left concluded: the state in which the query crashed QEMU.
        # Down to the base: a lower layer whose node name the new controller must find.
        await dom.qemu_monitor_command("block-stream", {"job-id": "raw", "device": "vda-4",
                                                        "base-node": "vda-1",
                                                        "backing-file": str(chain.base),
                                                        "auto-dismiss": False})
        await _job_status(dom, "raw", "concluded")
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("cs")
        assert (await dom.state())[0] is avirt.DomainState.RUNNING
        await dom.qemu_monitor_command("job-dismiss", {"id": "raw"})
        # The chains re-read with their node names: a commit of the next snapshot names its nodes right.
        overlays = await dom.snapshot_disks("after")
        job = await dom.block_commit("vda", pivot=True)
        assert await job == avirt.BlockJobStatus.COMPLETED
        assert backing_chain(chain.base) == [str(chain.base)]
        assert str(chain.base) in await dom.xml() and overlays["vda"] not in await dom.xml()
        assert reads(chain.base, GUEST_VIEW) == []
        await dom.destroy()


async def test_reattach_closes_nodes_a_dead_controller_left_open(state_dir: Path, xml: XMLFactory,
                                                                 tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.define_xml(xml("ln", disks=[("vda", str(chain.active), "qcow2")]))
        await dom.start()
        # An active commit completed and dismissed, its dropped nodes never closed: what a controller
        # killed between the job's end and _close_dropped_nodes leaves (vda-2..vda-4 stay open).
        await dom.qemu_monitor_command("block-commit", {"job-id": "raw", "device": "vda-4",
                                                        "base-node": "vda-1", "auto-dismiss": False})
        await _job_status(dom, "raw", "ready")
        await dom.qemu_monitor_command("job-complete", {"id": "raw"})
        await _job_status(dom, "raw", "concluded")
        await dom.qemu_monitor_command("job-dismiss", {"id": "raw"})
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("ln")
        graph = await dom.qemu_monitor_command("x-debug-query-block-graph")
        names = {n["name"] for n in graph["nodes"] if n["type"] == "block-driver"}
        assert names == {"vda-1", "vda-1-file"}, names  # the dropped layers are closed
        nodes = json.loads((state_dir / "run" / "ln" / "nodes.json").read_text())
        assert nodes == {"vda-1": str(chain.base)}
        # Their files are free again (no lock), and the next snapshot gets a name QEMU accepts.
        for layer in (chain.active, chain.snap2, chain.snap1):
            probe = subprocess.run(["qemu-img", "info", str(layer)], capture_output=True, text=True)
            assert probe.returncode == 0, probe.stderr  # without -U: fails while QEMU holds a lock
        overlays = await dom.snapshot_disks("next")
        assert json.loads((state_dir / "run" / "ln" / "nodes.json").read_text()) == {
            "vda-1": str(chain.base), "vda-2": overlays["vda"]}
        await dom.destroy()
