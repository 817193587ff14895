"""Block jobs on a shut-off domain: the same API runs qemu-img, and the data proves it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from avirt import BlockJobStatus, EventKind, JobKind
from avirt.connection import Connection
from avirt.errors import ImageLockedError, OperationInvalidError, SharedImageError
from tests.events_help import read_until
from tests.images import GUEST_VIEW, backing_chain, check, make_chain, reads, write
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")


async def test_intermediate_commit_offline(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("off1", disks=[("vda", str(chain.active), "qcow2")]))
    async with conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda", top="vda[1]", shallow=True, relative=True)
        assert (job.offline, job.kind) == (True, JobKind.COMMIT)
        assert await dom.block_job("vda") is job
        assert await job == BlockJobStatus.COMPLETED
        (event,) = await read_until(stream, lambda e: True)
    assert event.status is BlockJobStatus.COMPLETED  # type: ignore[attr-defined]
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    check(chain.active)
    assert await dom.block_job("vda") is None


async def test_full_commit_offline_makes_base_the_image_and_deletes_the_rest(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("off2", disks=[("vda", str(chain.active), "qcow2")]))
    job = await dom.block_commit("vda", delete=True)
    assert job.kind is JobKind.ACTIVE_COMMIT and not job.two_phase
    progress = [sample async for sample in job.progress()]
    assert await job == BlockJobStatus.COMPLETED
    assert all(end == 16 << 20 for _, end in progress)
    assert f"<source file=\"{chain.base}\"/>" in (state_dir / "domains/off2/domain.xml").read_text()
    assert not chain.active.exists() and not chain.snap2.exists() and not chain.snap1.exists()
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    await dom.start()  # and the guest starts on it
    await dom.destroy()


async def test_shallow_commit_offline(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("off3", disks=[("vda", str(chain.active), "qcow2")]))
    assert await (await dom.block_commit("vda", shallow=True)) == BlockJobStatus.COMPLETED
    assert f"<source file=\"{chain.snap2}\"/>" in await dom.xml()
    assert reads(chain.snap2, GUEST_VIEW) == []


@pytest.mark.parametrize("base", ["vda[2]", None])
async def test_pull_offline(conn: Connection, xml: XMLFactory, tmp_path: Path, base: str | None) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("pull", disks=[("vda", str(chain.active), "qcow2")]))
    job = await dom.block_pull("vda", base=base)
    assert (job.offline, job.kind) == (True, JobKind.PULL)
    assert await job == BlockJobStatus.COMPLETED
    expected = [str(chain.active), str(chain.snap1), str(chain.base)] if base else [str(chain.active)]
    assert backing_chain(chain.active) == expected
    assert reads(chain.active, GUEST_VIEW) == []


async def test_start_is_refused_while_an_offline_job_runs(conn: Connection, xml: XMLFactory,
                                                          tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("busy", disks=[("vda", str(chain.active), "qcow2")]))
    job = await dom.block_commit("vda")
    with pytest.raises(OperationInvalidError, match="offline block job runs on vda"):
        await dom.start()
    with pytest.raises(OperationInvalidError, match="already has a block job"):
        await dom.block_commit("vda")
    assert await job == BlockJobStatus.COMPLETED
    await dom.start()
    await dom.destroy()


async def test_image_held_by_a_running_guest_is_refused(conn: Connection, xml: XMLFactory,
                                                        tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    running = await conn.define_xml(xml("holder", disks=[("vda", str(chain.active), "qcow2")]))
    await running.start()
    other = await conn.define_xml(xml("other", disks=[("vda", str(chain.active), "qcow2")]))
    with pytest.raises(ImageLockedError, match="in use by another process"):
        await other.block_commit("vda")
    await running.destroy()


async def test_abort_kills_qemu_img_and_changes_nothing(conn: Connection, xml: XMLFactory,
                                                        tmp_path: Path, state_dir: Path) -> None:
    chain = make_chain(tmp_path, size_mib=2048)
    write(chain.active, 0x44, 8, 1500)  # enough data that the commit is still running when aborted
    dom = await conn.define_xml(xml("abort", disks=[("vda", str(chain.active), "qcow2")]))
    job = await dom.block_commit("vda")
    assert await job.abort() == BlockJobStatus.CANCELED
    assert subprocess.run(["pgrep", "-f", f"qemu-img commit.*{chain.active}"]).returncode == 1
    assert f"<source file=\"{chain.active}\"/>" in (state_dir / "domains/abort/domain.xml").read_text()
    assert reads(chain.active, GUEST_VIEW) == []


@pytest.mark.parametrize("running", [False, True], ids=["offline", "online"])
async def test_a_base_another_domain_reads_is_refused_unless_allowed(
        conn: Connection, xml: XMLFactory, tmp_path: Path, running: bool) -> None:
    chain = make_chain(tmp_path)
    other_top = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(chain.snap1),
                    str(other_top)], check=True)
    await conn.define_xml(xml("reader", disks=[("vda", str(other_top), "qcow2")]))
    dom = await conn.define_xml(xml("owner", disks=[("vda", str(chain.active), "qcow2")]))
    if running:
        await dom.start()
    with pytest.raises(SharedImageError, match="reader") as caught:
        await dom.block_commit("vda", pivot=True)  # into base, which reader reads through snap1
    assert (caught.value.path, caught.value.domains) == (str(chain.base), ["reader"])
    assert reads(other_top, ((0x11, 0, 1), (0x22, 1, 2))) == []
    # snap2 into snap1 would change what reader sees too; snap2 alone is only ours
    with pytest.raises(SharedImageError):
        await dom.block_commit("vda", top="vda[1]", shallow=True)
    job = await dom.block_commit("vda", shallow=True, pivot=True)  # active into snap2: not shared
    assert await job == BlockJobStatus.COMPLETED
    job = await dom.block_commit("vda", allow_shared_base=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    if running:
        await dom.destroy()
