"""Block jobs outlive the controller: a new controller picks up the job, or its result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import avirt
from avirt import BlockJobStatus, JobPhase
from tests.images import GUEST_VIEW, backing_chain, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

# Starts a domain and a block commit, prints the job id, then dies by SIGKILL: no clean-up of any kind.
CONTROLLER = """
import anyio, avirt, os, signal, sys
async def main():
    conn = await avirt.connect("qemu:///session", state_dir=sys.argv[1])
    dom = await conn.define_xml(sys.stdin.read())
    await dom.start()
    kwargs = dict(top="vda[1]", base="vda[3]") if sys.argv[2] == "intermediate" else {}
    job = await dom.block_commit("vda", bandwidth=int(sys.argv[3]) or None, **kwargs)
    if sys.argv[2] == "active":
        await job.wait_ready()
    print(job.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
anyio.run(main)
"""


def _killed_controller(state_dir: Path, xml_text: str, kind: str, bandwidth: int) -> str:
    result = subprocess.run([sys.executable, "-c", CONTROLLER, str(state_dir), kind, str(bandwidth)],
                            input=xml_text, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result.stdout.strip()


async def test_running_job_is_picked_up_and_finished(state_dir: Path, xml: XMLFactory,
                                                     tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    job_id = _killed_controller(state_dir, xml("rj", disks=[("vda", str(chain.active), "qcow2")]),
                                "intermediate", 1)  # 1 byte/s: still running when the controller dies
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("rj")
        job = await dom.block_job("vda")
        assert job is not None and job.id == job_id and job.phase is JobPhase.RUNNING
        await job.set_speed(0)
        assert await job == BlockJobStatus.COMPLETED
        assert backing_chain(chain.active) == [str(chain.active), str(chain.base)]
        assert reads(chain.active, GUEST_VIEW) == []
        await dom.destroy()


async def test_job_that_ended_unwatched_reports_its_real_result(state_dir: Path, xml: XMLFactory,
                                                                tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    _killed_controller(state_dir, xml("ej", disks=[("vda", str(chain.active), "qcow2")]), "intermediate", 0)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("ej")
        job = await dom.block_job("vda")
        assert job is not None  # concluded in QEMU, kept (auto-dismiss off) until this controller read it
        assert await job == BlockJobStatus.COMPLETED
        assert await dom.block_job("vda") is None
        assert str(chain.snap1) not in await dom.xml()
        assert reads(chain.active, GUEST_VIEW) == []
        await dom.destroy()


async def test_ready_active_commit_is_picked_up_and_pivoted(state_dir: Path, xml: XMLFactory,
                                                            tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    _killed_controller(state_dir, xml("aj", disks=[("vda", str(chain.active), "qcow2")]), "active", 0)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.lookup("aj")
        job = await dom.block_job("vda")
        assert job is not None and job.phase is JobPhase.READY
        assert await job.pivot() == BlockJobStatus.COMPLETED
        assert reads(chain.base, GUEST_VIEW, alone=True) == []
        assert f"<source file=\"{chain.base}\"/>" in await dom.xml(inactive=True)
        await dom.destroy()
    assert not any(os.scandir(state_dir / "run"))
