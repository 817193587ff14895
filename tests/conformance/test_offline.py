"""Block jobs and snapshots on a shut-off domain, on both drivers: the same calls, the same chains."""

from __future__ import annotations

import pytest

from avirt import BlockJobEvent, BlockJobStatus, Domain, EventKind, JobKind
from avirt.errors import ImageLockedError, OperationInvalidError, SharedImageError
from tests.conformance.conftest import World
from tests.events_help import read_until

pytestmark = pytest.mark.anyio


async def _paths(dom: Domain) -> list[str]:
    return [image.path for image in await dom.block_chain("vda")]


async def test_intermediate_commit_offline(world: World) -> None:
    dom, chain = await world.chain_domain("off1", start=False)
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda", top="vda[1]", shallow=True, relative=True)
        assert (job.offline, job.kind, job.two_phase) == (True, JobKind.COMMIT, False)
        assert await dom.block_job("vda") is job
        assert await job == BlockJobStatus.COMPLETED
        (event,) = await read_until(stream, lambda e: True)
    assert isinstance(event, BlockJobEvent)
    assert (event.disk, event.job_kind, event.status) == ("vda", JobKind.COMMIT, BlockJobStatus.COMPLETED)
    assert await _paths(dom) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert f'<source file="{chain.active}"/>' in await dom.xml(inactive=True)
    assert await dom.block_job("vda") is None


async def test_full_commit_offline_completes_by_itself_onto_base(world: World) -> None:
    dom, chain = await world.chain_domain("off2", start=False)
    size = (await dom.block_chain("vda"))[0].virtual_size
    job = await dom.block_commit("vda", delete=True)
    assert (job.kind, job.two_phase, job.offline) == (JobKind.ACTIVE_COMMIT, False, True)
    progress = [sample async for sample in job.progress()]
    assert await job == BlockJobStatus.COMPLETED
    assert progress and all(end == size for _, end in progress)
    assert f'<source file="{chain.base}"/>' in await dom.xml(inactive=True)
    assert await _paths(dom) == [str(chain.base)]
    await dom.start(paused=True)  # and the domain starts on it
    assert await _paths(dom) == [str(chain.base)]
    await dom.destroy()


async def test_progress_asked_only_after_the_end_still_reports_where_the_job_ended(world: World) -> None:
    # Through a served connection the job is a copy of the controller's: its final figures travel too.
    dom, _ = await world.chain_domain("off5", start=False)
    size = (await dom.block_chain("vda"))[0].virtual_size
    job = await dom.block_commit("vda", delete=True)
    assert await job == BlockJobStatus.COMPLETED
    assert [sample async for sample in job.progress()] == [(size, size)]


async def test_shallow_commit_offline(world: World) -> None:
    dom, chain = await world.chain_domain("off3", start=False)
    assert await (await dom.block_commit("vda", shallow=True)) == BlockJobStatus.COMPLETED
    assert f'<source file="{chain.snap2}"/>' in await dom.xml()
    assert await _paths(dom) == [str(chain.snap2), str(chain.snap1), str(chain.base)]


@pytest.mark.parametrize("base", ["vda[2]", None])
async def test_pull_offline(world: World, base: str | None) -> None:
    dom, chain = await world.chain_domain("off4", start=False)
    job = await dom.block_pull("vda", base=base)
    assert (job.offline, job.kind) == (True, JobKind.PULL)
    assert await job == BlockJobStatus.COMPLETED
    expected = [str(chain.active), str(chain.snap1), str(chain.base)] if base else [str(chain.active)]
    assert await _paths(dom) == expected


async def test_offline_refusals(world: World) -> None:
    dom, chain = await world.chain_domain("off5", start=False)
    with pytest.raises(OperationInvalidError, match="no bandwidth offline"):
        await dom.block_commit("vda", bandwidth=1)
    with pytest.raises(OperationInvalidError, match="no bandwidth offline"):
        await dom.block_pull("vda", bandwidth=1)
    with pytest.raises(OperationInvalidError, match="offline block copy is not implemented"):
        await dom.block_copy("vda", str(world.tmp_path / "copy.qcow2"))
    with pytest.raises(OperationInvalidError, match="not below top"):
        await dom.block_commit("vda", top="vda[2]", base="vda[1]")
    with pytest.raises(OperationInvalidError, match="nothing to pull"):
        await dom.block_pull("vda", base=str(chain.active))
    with pytest.raises(OperationInvalidError, match="no disk vdb"):
        await dom.block_commit("vdb")
    job = await dom.block_commit("vda")
    with pytest.raises(OperationInvalidError, match="offline block job runs on vda"):
        await dom.start()
    with pytest.raises(OperationInvalidError, match="has a block job running"):
        await dom.snapshot_disks("during")  # the job rewrites the definition when it ends
    with pytest.raises(OperationInvalidError, match="already has a block job"):
        await dom.block_commit("vda")
    with pytest.raises(OperationInvalidError, match="not a two-phase job"):
        await job.pivot()
    assert await job == BlockJobStatus.COMPLETED
    await dom.start(paused=True)
    await dom.destroy()


async def test_image_held_by_a_running_domain_is_refused(world: World) -> None:
    chain = world.chain("shared")
    running = await world.conn.define_xml(world.chain_xml("holder", chain))
    await running.start(paused=True)
    other = await world.conn.define_xml(world.chain_xml("other", chain))
    with pytest.raises(ImageLockedError, match="in use by another process"):
        await other.block_commit("vda")
    await running.destroy()
    with pytest.raises(SharedImageError):  # holder still reads snap1 through the shared chain
        await other.block_commit("vda", top="vda[1]", shallow=True)
    job = await other.block_commit("vda", top="vda[1]", shallow=True, allow_shared_base=True)
    assert await job == BlockJobStatus.COMPLETED


async def test_offline_snapshot_updates_the_definition(world: World) -> None:
    dom, chain = await world.chain_domain("off6", start=False)
    overlays = await dom.snapshot_disks("s1")
    overlay = str(chain.active.parent / "active.s1.qcow2")
    assert overlays == {"vda": overlay}
    assert f'<source file="{overlay}"/>' in await dom.xml(inactive=True)
    assert await _paths(dom) == [overlay, str(chain.active), str(chain.snap2), str(chain.snap1),
                                 str(chain.base)]
    await dom.start(paused=True)
    assert (await dom.block_chain("vda"))[0].path == overlay
    await dom.destroy()
    job = await dom.block_commit("vda", top=overlay, base="vda[1]")  # the overlay back into active
    assert await job == BlockJobStatus.COMPLETED
    assert f'<source file="{chain.active}"/>' in await dom.xml(inactive=True)


@pytest.mark.parametrize("start", [False, True], ids=["shut-off", "running"])
async def test_a_base_another_domain_reads_needs_allow_shared_base(world: World, start: bool) -> None:
    dom, chain = await world.chain_domain("owner", start=start)
    await world.conn.define_xml(world.xml("reader", disks=[("vda", str(chain.snap1), "qcow2")]))
    with pytest.raises(SharedImageError) as caught:
        await dom.block_commit("vda", pivot=True)  # into base, which reader reads below snap1
    assert (caught.value.path, caught.value.domains) == (str(chain.base), ["reader"])
    assert await dom.block_job("vda") is None
    assert await (await dom.block_commit("vda", shallow=True, pivot=True)) == BlockJobStatus.COMPLETED
    job = await dom.block_commit("vda", allow_shared_base=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert await _paths(dom) == [str(chain.base)]
    if start:
        await dom.destroy()
