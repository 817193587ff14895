"""Block copy on a running guest (full, shallow, reused target; pivot and abort), proven by data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from avirt import BlockJobStatus, JobKind
from avirt.connection import Connection
from avirt.errors import OperationInvalidError
from tests.images import GUEST_VIEW, backing_chain, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")


def unlocked(image: Path) -> bool:
    """Whether no process holds ``image`` open for writing (qemu-img info without -U must succeed)."""
    return subprocess.run(["qemu-img", "info", str(image)], capture_output=True).returncode == 0


async def test_full_copy_pivots_onto_a_standalone_image(conn: Connection, xml: XMLFactory, tmp_path: Path,
                                                        state_dir: Path) -> None:
    chain = make_chain(tmp_path)
    dest = tmp_path / "copy.qcow2"
    dom = await conn.define_xml(xml("cp1", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    job = await dom.block_copy("vda", str(dest))
    assert (job.kind, job.two_phase) == (JobKind.COPY, True)
    await job.wait_ready()
    assert await job.pivot() == BlockJobStatus.COMPLETED
    assert backing_chain(dest) == [str(dest)]
    assert f"<source file=\"{dest}\"/>" in (state_dir / "domains/cp1/domain.xml").read_text()
    assert unlocked(chain.active)  # the old chain was closed, not just left behind
    await dom.destroy()
    assert reads(dest, GUEST_VIEW, alone=True) == []


async def test_shallow_copy_keeps_the_backing_chain(conn: Connection, xml: XMLFactory,
                                                     tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dest = tmp_path / "top-copy.qcow2"
    dom = await conn.define_xml(xml("cp2", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    job = await dom.block_copy("vda", str(dest), shallow=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert backing_chain(dest) == [str(dest), str(chain.snap2), str(chain.snap1), str(chain.base)]
    await dom.destroy()
    assert reads(dest, GUEST_VIEW) == []
    assert reads(dest, ((0x44, 3, 2),), alone=True) == []  # only the active image's data was copied


async def test_abort_keeps_the_original_and_releases_the_target(conn: Connection, xml: XMLFactory,
                                                                tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dest = tmp_path / "abandoned.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", dest, "16M"], check=True)
    dom = await conn.define_xml(xml("cp3", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    with pytest.raises(OperationInvalidError, match="already exists"):
        await dom.block_copy("vda", str(dest))
    job = await dom.block_copy("vda", str(dest), reuse_external=True)
    await job.wait_ready()
    assert await job.abort() == BlockJobStatus.CANCELED
    assert f"<source file=\"{chain.active}\"/>" in await dom.xml()
    assert unlocked(dest)
    await dom.destroy()
    assert reads(chain.active, GUEST_VIEW) == []


async def test_active_commit_pivot_releases_the_images_it_dropped(conn: Connection, xml: XMLFactory,
                                                                  tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("cp4", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    assert not unlocked(chain.active)
    assert await (await dom.block_commit("vda", pivot=True)) == BlockJobStatus.COMPLETED
    assert all(unlocked(p) for p in (chain.active, chain.snap2, chain.snap1))
    assert not unlocked(chain.base)  # the new active image, in use
    await dom.destroy()
