"""Active commit under a guest that keeps writing, and a QEMU that dies mid-job: the data survives both.

The tiny guest (TCG) writes 64 KiB patterns to /dev/vda in a loop and reports each one on its serial port
only after ``dd conv=fsync`` returned, so the last reported pattern of every slot must be on the disk.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from avirt import BlockJobStatus, DomainState, JobPhase
from avirt.connection import Connection
from avirt.errors import BlockJobError
from tests.guest import BASE_CMDLINE, GuestImages
from tests.images import GUEST_VIEW, backing_chain, make_chain, reads
from tests.waiting import wait_for_serial, wait_for_state
from tests.xmls import XMLFactory

pytestmark = [pytest.mark.anyio]

SLOTS = 16
WRITE = re.compile(r"avirt-wl: i=(\d+) slot=(\d+) pat=0x([0-9a-f]{2})")


def last_patterns(serial: Path) -> dict[int, int]:
    last: dict[int, int] = {}
    for _, slot, pat in WRITE.findall(serial.read_text()):
        last[int(slot)] = int(pat, 16)
    return last


def writes(serial: Path) -> int:
    return len(WRITE.findall(serial.read_text()))


@pytest.mark.guest
async def test_active_commit_with_a_writing_guest_keeps_every_write(
        conn: Connection, xml: XMLFactory, tmp_path: Path, guest_images: GuestImages) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xee 0 32M", base], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top], check=True)
    serial = tmp_path / "serial.log"
    dom = await conn.define_xml(xml(
        "writer", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
        initrd=str(guest_images.initrd), serial_file=str(serial), disks=[("vda", str(top), "qcow2")],
        cmdline=f"{BASE_CMDLINE} avirt.workload=write avirt.slots={SLOTS} avirt.count=0 avirt.sleep=0"))
    await dom.start()
    await wait_for_serial(serial, "avirt-wl: i=20 ")

    job = await dom.block_commit("vda")
    await job.wait_ready()
    before_pivot = writes(serial)
    await wait_for_serial(serial, f"avirt-wl: i={before_pivot + 10} ")  # mirrored writes while READY
    assert await job.pivot() == BlockJobStatus.COMPLETED
    at_pivot = writes(serial)
    await wait_for_serial(serial, f"avirt-wl: i={at_pivot + 20} ")  # writes after the pivot, into base
    await dom.shutdown(wait=60)
    assert await dom.state() == (DomainState.SHUTOFF, "shutdown")

    last = last_patterns(serial)
    assert len(last) == SLOTS
    expected = tuple((pat, slot, 1) for slot, pat in sorted(last.items()))
    # base alone, no backing file at all: it holds the last reported write of every slot...
    problems = []
    for pat, slot, _ in expected:
        result = subprocess.run(
            ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pat:#x} {slot}M 64k", base],
            capture_output=True, text=True)
        if result.returncode != 0 or "verification failed" in result.stdout:
            problems.append(f"slot {slot}: expected {pat:#x}")
    assert problems == []
    # ...and the untouched data of the old base beyond the slots.
    assert reads(base, ((0xee, 16, 16),), alone=True) == []
    assert backing_chain(base) == [str(base)]
    assert f"<source file=\"{base}\"/>" in await dom.xml(inactive=True)


async def test_qemu_killed_mid_commit_fails_the_job_and_keeps_a_chain_that_opens(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("killed", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    job = await dom.block_commit("vda", top="vda[1]", base="vda[3]", bandwidth=1)  # crawls: still running
    assert job.phase is JobPhase.RUNNING
    os.kill(int((state_dir / "run/killed/qemu.pid").read_text()), signal.SIGKILL)
    with pytest.raises(BlockJobError, match="QEMU exited"):
        await job
    assert job.status is BlockJobStatus.FAILED
    await wait_for_state(dom, DomainState.SHUTOFF)
    assert await dom.state() == (DomainState.SHUTOFF, "crashed")
    source = re.search(r'<source file="([^"]+)"', await dom.xml(inactive=True))
    assert source is not None and source.group(1) == str(chain.active)
    assert len(backing_chain(chain.active)) == 4
    assert reads(chain.active, GUEST_VIEW) == []
