"""Block jobs on a running (paused) domain, on both drivers: the same chains after the same calls.

Every test starts from the four-layer chain ``active -> snap2 -> snap1 -> base`` (``vda[0]`` to
``vda[3]``) and checks the chain ``block_chain()`` reports afterwards, the live and persistent XML, the
job handle, and the BLOCK_JOB events. (That QEMU moved the right bytes is proven with data in
``tests/test_blockcommit.py`` and friends; here it is about both drivers saying the same thing.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from avirt import BlockJobEvent, BlockJobStatus, Domain, EventKind, JobKind, JobPhase
from avirt.errors import OperationInvalidError
from tests.conformance.conftest import World
from tests.events_help import read_until
from tests.images import Chain

pytestmark = pytest.mark.anyio


async def _paths(dom: Domain, disk: str = "vda") -> list[str]:
    return [image.path for image in await dom.block_chain(disk)]


def _statuses(events: list[object]) -> list[tuple[JobKind, BlockJobStatus]]:
    return [(e.job_kind, e.status) for e in events if isinstance(e, BlockJobEvent) and e.disk == "vda"]


def _all(chain: Chain) -> list[str]:
    return [str(chain.active), str(chain.snap2), str(chain.snap1), str(chain.base)]


async def test_block_chain_reports_every_layer_top_first(world: World) -> None:
    dom, chain = await world.chain_domain("bc0")
    images = await dom.block_chain("vda")
    assert [i.path for i in images] == _all(chain)
    assert all(i.format == "qcow2" and i.virtual_size == images[0].virtual_size for i in images)
    assert all(i.actual_size >= i.allocated for i in images)
    with pytest.raises(OperationInvalidError, match="no disk vdb"):
        await dom.block_chain("vdb")
    await dom.destroy()
    assert await _paths(dom) == _all(chain)  # shut off: the same chain, read from the images


async def test_intermediate_commit_ends_by_itself(world: World) -> None:
    dom, chain = await world.chain_domain("bc1")
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda", top=str(chain.snap2), shallow=True)
        assert (job.kind, job.offline, job.two_phase, job.disk) == (JobKind.COMMIT, False, False, "vda")
        assert await job == BlockJobStatus.COMPLETED
        events = await read_until(stream, lambda e: True)
    assert _statuses(events) == [(JobKind.COMMIT, BlockJobStatus.COMPLETED)]
    assert await _paths(dom) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert str(chain.snap2) not in await dom.xml()
    assert f'<source file="{chain.active}"/>' in await dom.xml(inactive=True)  # the top did not change
    assert await dom.block_job("vda") is None
    await dom.destroy()


@pytest.mark.parametrize(("base", "top"),
                         [(None, None), (None, "vda[0]"), ("vda[3]", None), ("base", "active")])
async def test_every_form_of_full_active_commit_pivots_onto_base(
        world: World, base: str | None, top: str | None) -> None:
    dom, chain = await world.chain_domain("bc2")
    paths = {"base": str(chain.base), "active": str(chain.active)}
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda", base=paths.get(base or "", base), top=paths.get(top or "", top))
        assert (job.kind, job.two_phase) == (JobKind.ACTIVE_COMMIT, True)
        assert await dom.block_job("vda") is job
        await job.wait_ready()
        assert job.phase is JobPhase.READY and (await job.info()).ready
        assert await job.pivot() == BlockJobStatus.COMPLETED
        events = await read_until(stream, lambda e: getattr(e, "status", None) is BlockJobStatus.COMPLETED)
    assert _statuses(events) == [(JobKind.ACTIVE_COMMIT, BlockJobStatus.READY),
                                 (JobKind.ACTIVE_COMMIT, BlockJobStatus.COMPLETED)]
    assert await _paths(dom) == [str(chain.base)]
    assert f'<source file="{chain.base}"/>' in await dom.xml()
    assert f'<source file="{chain.base}"/>' in await dom.xml(inactive=True)
    await dom.destroy()
    await dom.start(paused=True)  # the next start uses the new chain
    assert await _paths(dom) == [str(chain.base)]
    await dom.destroy()


async def test_shallow_active_commit_with_automatic_pivot(world: World) -> None:
    dom, chain = await world.chain_domain("bc3")
    job = await dom.block_commit("vda", shallow=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert await _paths(dom) == [str(chain.snap2), str(chain.snap1), str(chain.base)]
    assert f'<source file="{chain.snap2}"/>' in await dom.xml(inactive=True)
    await dom.destroy()


async def test_commit_into_an_intermediate_base(world: World) -> None:
    dom, chain = await world.chain_domain("bc4")
    assert await (await dom.block_commit("vda", top="vda[1]", base="vda[3]")) == BlockJobStatus.COMPLETED
    assert await _paths(dom) == [str(chain.active), str(chain.base)]
    job = await dom.block_commit("vda", base=str(chain.base), pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert await _paths(dom) == [str(chain.base)]
    await dom.destroy()


async def test_abort_at_ready_leaves_the_chain_as_it_was(world: World) -> None:
    dom, chain = await world.chain_domain("bc5")
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda")
        await job.wait_ready()
        live = await dom.xml()
        assert '<mirror type="file" job="active-commit" ready="yes" index="3">' in live
        assert f'<source file="{chain.base}"/>' in live.split("<mirror")[1]
        await world.conn.define_xml(live)  # the output-only <mirror> is accepted back
        assert await job.abort() == BlockJobStatus.CANCELED
        events = await read_until(stream, lambda e: getattr(e, "status", None) is BlockJobStatus.CANCELED)
    assert _statuses(events) == [(JobKind.ACTIVE_COMMIT, BlockJobStatus.READY),
                                 (JobKind.ACTIVE_COMMIT, BlockJobStatus.CANCELED)]
    assert await _paths(dom) == _all(chain)
    assert "<mirror" not in await dom.xml()
    with pytest.raises(OperationInvalidError, match="has ended"):
        await job.pivot()
    await dom.destroy()


async def test_pivot_asked_for_early_happens_once_ready(world: World) -> None:
    dom, chain = await world.chain_domain("bc6")
    job = await dom.block_commit("vda", bandwidth=1)
    assert (await job.info()).bandwidth == 1
    with pytest.raises(OperationInvalidError, match="already has a block job"):
        await dom.block_commit("vda", top="vda[1]", shallow=True)
    with pytest.raises(OperationInvalidError, match="has a block job running"):
        await dom.snapshot_disks("during")
    await job.set_speed(0)
    assert (await job.info()).bandwidth == 0
    assert await job.pivot() == BlockJobStatus.COMPLETED
    assert await _paths(dom) == [str(chain.base)]
    await dom.destroy()


async def test_commit_refusals(world: World, tmp_path: Path) -> None:
    dom, _ = await world.chain_domain("bc7")
    with pytest.raises(OperationInvalidError, match="not below top"):
        await dom.block_commit("vda", top="vda[2]", base="vda[1]")
    with pytest.raises(OperationInvalidError, match="not in the backing chain"):
        await dom.block_commit("vda", base=str(tmp_path / "elsewhere.qcow2"))
    with pytest.raises(OperationInvalidError, match="no backing file"):
        await dom.block_commit("vda", top="vda[3]")
    with pytest.raises(OperationInvalidError, match="has only 4 layers"):
        await dom.block_commit("vda", base="vda[4]")
    with pytest.raises(OperationInvalidError, match="names disk vdb"):
        await dom.block_commit("vda", base="vdb[1]")
    with pytest.raises(OperationInvalidError, match="exclude each other"):
        await dom.block_commit("vda", base="vda[3]", shallow=True)
    with pytest.raises(OperationInvalidError, match="no disk vdb"):
        await dom.block_commit("vdb")
    with pytest.raises(OperationInvalidError, match="no disk vdb"):
        await dom.block_job("vdb")
    job = await dom.block_commit("vda", top="vda[1]", shallow=True)
    with pytest.raises(OperationInvalidError, match="not a two-phase job"):
        await job.pivot()
    assert await job == BlockJobStatus.COMPLETED
    await dom.destroy()


@pytest.mark.parametrize("base", ["vda[2]", None])
async def test_pull(world: World, base: str | None) -> None:
    dom, chain = await world.chain_domain("pl1")
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_pull("vda", base=base)
        assert (job.kind, job.offline, job.two_phase) == (JobKind.PULL, False, False)
        assert await job == BlockJobStatus.COMPLETED
        events = await read_until(stream, lambda e: True)
    assert _statuses(events) == [(JobKind.PULL, BlockJobStatus.COMPLETED)]
    expected = [str(chain.active), str(chain.snap1), str(chain.base)] if base else [str(chain.active)]
    assert await _paths(dom) == expected
    with pytest.raises(OperationInvalidError, match="nothing to pull"):
        await dom.block_pull("vda", base="vda[0]")
    await dom.destroy()


@pytest.mark.parametrize("shallow", [False, True])
async def test_copy_and_pivot(world: World, shallow: bool) -> None:
    dom, chain = await world.chain_domain("cp1")
    dest = str(world.tmp_path / "copy.qcow2")
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_copy("vda", dest, shallow=shallow)
        assert (job.kind, job.two_phase) == (JobKind.COPY, True)
        await job.wait_ready()
        assert '<mirror type="file" job="copy" ready="yes" index="4">' in await dom.xml()
        await dom.set_block_threshold("vda[4]", 1 << 20)  # the destination: past the chain's 4 layers
        with pytest.raises(OperationInvalidError, match="only 5 layers"):
            await dom.set_block_threshold("vda[5]", 1 << 20)
        assert await job.pivot() == BlockJobStatus.COMPLETED
        events = await read_until(stream, lambda e: getattr(e, "status", None) is BlockJobStatus.COMPLETED)
    assert _statuses(events) == [(JobKind.COPY, BlockJobStatus.READY),
                                 (JobKind.COPY, BlockJobStatus.COMPLETED)]
    below = [str(chain.snap2), str(chain.snap1), str(chain.base)] if shallow else []
    assert await _paths(dom) == [dest, *below]
    assert f'<source file="{dest}"/>' in await dom.xml(inactive=True)
    with pytest.raises(OperationInvalidError, match="already exists"):
        await dom.block_copy("vda", dest)
    await dom.destroy()


async def test_copy_abort_keeps_the_original(world: World) -> None:
    dom, chain = await world.chain_domain("cp2")
    dest = str(world.tmp_path / "copy.qcow2")
    with pytest.raises(OperationInvalidError, match="does not exist"):
        await dom.block_copy("vda", dest, reuse_external=True)
    job = await dom.block_copy("vda", dest, format="raw")
    await job.wait_ready()
    assert await job.abort() == BlockJobStatus.CANCELED
    assert await _paths(dom) == _all(chain)
    job = await dom.block_copy("vda", dest, format="raw", reuse_external=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert [(i.path, i.format) for i in await dom.block_chain("vda")] == [(dest, "raw")]
    await dom.destroy()


async def test_online_snapshot_then_commit_it_back(world: World) -> None:
    dom, chain = await world.chain_domain("sn1")
    overlays = await dom.snapshot_disks("before-upgrade")
    overlay = str(chain.active.parent / "active.before-upgrade.qcow2")
    assert overlays == {"vda": overlay}
    assert await _paths(dom) == [overlay, *_all(chain)]
    assert f'<source file="{overlay}"/>' in await dom.xml()
    assert f'<source file="{overlay}"/>' in await dom.xml(inactive=True)
    with pytest.raises(OperationInvalidError, match="no disk vdz"):
        await dom.snapshot_disks("s2", disks=["vdz"])
    second = await dom.snapshot_disks("second", disks=["vda"])
    assert await _paths(dom) == [second["vda"], overlay, *_all(chain)]
    job = await dom.block_commit("vda", base=overlay, pivot=True)  # back to the first overlay
    assert await job == BlockJobStatus.COMPLETED
    assert await _paths(dom) == [overlay, *_all(chain)]
    await dom.destroy()



@pytest.mark.parametrize("ready", [True, False])
async def test_a_domain_destroyed_under_a_job_cancels_it(world: World, ready: bool) -> None:
    """destroy() quits QEMU, which cancels its jobs on the way out: CANCELED, the chain as it was."""
    dom, chain = await world.chain_domain("gone1")
    async with world.conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda", bandwidth=None if ready else 1)
        if ready:
            await job.wait_ready()
        await dom.destroy()
        assert await job == BlockJobStatus.CANCELED
        events = await read_until(stream, lambda e: getattr(e, "status", None) is BlockJobStatus.CANCELED)
    assert _statuses(events) == [(JobKind.ACTIVE_COMMIT, s) for s in
                                 ([BlockJobStatus.READY] if ready else []) + [BlockJobStatus.CANCELED]]
    assert await _paths(dom) == _all(chain)
    assert f'<source file="{chain.active}"/>' in await dom.xml(inactive=True)
    assert await dom.block_job("vda") is None


async def test_active_commit_into_a_raw_base(world: World) -> None:
    base, top = world.tmp_path / "base.raw", world.tmp_path / "top.qcow2"
    if world.qemu:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", base, "16M"], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, top], check=True)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{top}'/>"
            f"<backingStore type='file' index='1'><format type='raw'/><source file='{base}'/><backingStore/>"
            "</backingStore><target dev='vda' bus='virtio'/></disk>")
    dom = await world.conn.define_xml(world.xml("raw1", extra_devices=disk))
    await dom.start(paused=True)
    job = await dom.block_commit("vda")
    await job.wait_ready()
    mirror = (await dom.xml()).split("<mirror")[1].split("</mirror>")[0]
    assert '<format type="raw"/>' in mirror and f'<source file="{base}"/>' in mirror
    assert await job.pivot() == BlockJobStatus.COMPLETED
    assert [(i.path, i.format) for i in await dom.block_chain("vda")] == [(str(base), "raw")]
    assert '<driver name="qemu" type="raw"/>' in await dom.xml(inactive=True)
    await dom.destroy()
