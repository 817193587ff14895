"""Block commit on a running guest, proven by data: patterns per layer, read back after every job."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from avirt import BlockJobStatus, Domain, DomainState, EventKind, JobKind, JobPhase
from avirt.connection import Connection
from avirt.errors import OperationInvalidError
from tests.events_help import read_until
from tests.images import GUEST_VIEW, Chain, backing_chain, check, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")


async def _running(conn: Connection, xml: XMLFactory, tmp_path: Path,
                   name: str = "bc") -> tuple[Domain, Chain]:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml(name, disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    return dom, chain


async def test_intermediate_commit_ends_by_itself_and_keeps_every_byte(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    async with conn.events(kinds={EventKind.BLOCK_JOB}) as stream:
        job = await dom.block_commit("vda", top=str(chain.snap2), shallow=True)
        assert (job.kind, job.offline, job.two_phase) == (JobKind.COMMIT, False, False)
        assert await job == BlockJobStatus.COMPLETED
        (event,) = await read_until(stream, lambda e: True)
    assert (event.status, event.disk) == (BlockJobStatus.COMPLETED, "vda")  # type: ignore[attr-defined]
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    assert reads(chain.snap1, ((0x22, 1, 1), (0x33, 2, 2)), alone=True) == []
    check(chain.active)
    live = await dom.xml()
    assert str(chain.snap2) not in live and str(chain.snap1) in live
    assert await dom.block_job("vda") is None
    await dom.destroy()


@pytest.mark.parametrize(("base", "top"),
                         [(None, None), (None, "vda[0]"), ("vda[3]", None), ("base", "active")])
async def test_every_form_of_full_active_commit_pivots_onto_base(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path,
        base: str | None, top: str | None) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    paths = {"base": str(chain.base), "active": str(chain.active)}
    job = await dom.block_commit("vda", base=paths.get(base or "", base), top=paths.get(top or "", top))
    assert (job.kind, job.two_phase) == (JobKind.ACTIVE_COMMIT, True)
    assert await dom.block_job("vda") is job
    await job.wait_ready()
    assert (await job.info()).ready
    assert await job.pivot() == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []  # base alone now holds everything
    assert backing_chain(chain.base) == [str(chain.base)]
    assert f"<source file=\"{chain.base}\"/>" in await dom.xml()
    assert f"<source file=\"{chain.base}\"/>" in (state_dir / "domains/bc/domain.xml").read_text()
    await dom.destroy()
    await dom.start()  # the next start uses the new chain
    assert "backingStore index" not in await dom.xml()
    await dom.destroy()


async def test_shallow_active_commit_makes_the_layer_below_active(conn: Connection, xml: XMLFactory,
                                                                  tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda", shallow=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert backing_chain(chain.snap2) == [str(chain.snap2), str(chain.snap1), str(chain.base)]
    assert reads(chain.snap2, GUEST_VIEW) == []
    assert f"<source file=\"{chain.snap2}\"/>" in await dom.xml(inactive=True)
    await dom.destroy()


async def test_abort_at_ready_leaves_the_chain_as_it_was(conn: Connection, xml: XMLFactory,
                                                         tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda")
    await job.wait_ready()
    assert await job.abort() == BlockJobStatus.CANCELED
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap2), str(chain.snap1),
                                           str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    assert f"<source file=\"{chain.active}\"/>" in await dom.xml()
    await dom.destroy()


async def test_delete_removes_committed_images_only_after_success(conn: Connection, xml: XMLFactory,
                                                                  tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda", top="vda[1]", base="vda[3]", delete=True)
    assert await job == BlockJobStatus.COMPLETED
    assert not chain.snap2.exists() and not chain.snap1.exists()
    assert backing_chain(chain.active) == [str(chain.active), str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    await dom.destroy()


async def test_relative_keeps_a_relative_backing_name(conn: Connection, xml: XMLFactory,
                                                      tmp_path: Path) -> None:
    import json
    import subprocess

    dom, chain = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda", top="vda[1]", shallow=True, relative=True)
    assert await job == BlockJobStatus.COMPLETED
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", chain.active],
                                     capture_output=True, check=True, text=True).stdout)
    assert info["backing-filename"] == "snap1.qcow2"
    await dom.destroy()


async def test_bandwidth_and_set_speed(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    dom, _ = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda", top="vda[1]", shallow=True, bandwidth=64 * 1024)
    assert (await job.info()).bandwidth == 64 * 1024
    await job.set_speed(0)
    assert await job == BlockJobStatus.COMPLETED
    await dom.destroy()


async def test_refusals(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    dom, _ = await _running(conn, xml, tmp_path)
    with pytest.raises(OperationInvalidError, match="not below top"):
        await dom.block_commit("vda", top="vda[2]", base="vda[1]")
    with pytest.raises(OperationInvalidError, match="not in the backing chain"):
        await dom.block_commit("vda", base=str(tmp_path / "elsewhere.qcow2"))
    with pytest.raises(OperationInvalidError, match="no backing file"):
        await dom.block_commit("vda", top="vda[3]")
    with pytest.raises(OperationInvalidError, match="no disk vdb"):
        await dom.block_commit("vdb")
    job = await dom.block_commit("vda", bandwidth=1)
    with pytest.raises(OperationInvalidError, match="already has a block job"):
        await dom.block_commit("vda", top="vda[1]", shallow=True)
    assert await job.abort() == BlockJobStatus.CANCELED
    await dom.destroy()
    assert await dom.state() == (DomainState.SHUTOFF, "destroyed")
    with pytest.raises(OperationInvalidError, match="no bandwidth offline"):
        await dom.block_commit("vda", bandwidth=1)  # shut off now: qemu-img has no speed limit


async def test_live_xml_shows_the_mirror_and_define_accepts_it_back(conn: Connection, xml: XMLFactory,
                                                                    tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda")
    await job.wait_ready()
    live = await dom.xml()
    assert '<mirror type="file" job="active-commit" ready="yes" index="3">' in live
    assert f'<source file="{chain.base}"/>' in live.split("<mirror")[1]
    await conn.define_xml(live)  # output-only elements are accepted back
    assert await job.abort() == BlockJobStatus.CANCELED
    assert "<mirror" not in await dom.xml()
    await dom.destroy()


async def test_job_cancelled_by_someone_else_ends_canceled(conn: Connection, xml: XMLFactory,
                                                           tmp_path: Path) -> None:
    dom, _ = await _running(conn, xml, tmp_path)
    job = await dom.block_commit("vda")
    await job.wait_ready()
    await dom.qemu_monitor_command("block-job-cancel", {"device": job.id, "force": True})
    assert await job == BlockJobStatus.CANCELED
    with pytest.raises(OperationInvalidError, match="has ended"):
        await job.pivot()
    await dom.destroy()


async def test_relative_commit_leaves_plain_paths_in_the_xml_and_a_startable_domain(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path)
    assert await (await dom.block_commit("vda", top="vda[1]", shallow=True, relative=True)) \
        == BlockJobStatus.COMPLETED
    for text in (await dom.xml(), await dom.xml(inactive=True)):
        assert "json:" not in text
    assert f'<source file="{chain.active}"/>' in await dom.xml(inactive=True)
    await dom.destroy()
    await dom.start()
    assert f'<source file="{chain.snap1}"/>' in await dom.xml()
    await dom.destroy()


async def test_pivot_waits_through_a_ready_job_that_fell_back_to_standby(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path, "flap")
    job = await dom.block_commit("vda")
    await job.wait_ready()
    async with conn.events(domain=dom, kinds={EventKind.QMP}) as stream:
        # Someone else pauses the job: QEMU takes it from ready back to standby.
        await dom.qemu_monitor_command("job-pause", {"id": job.id})
        await read_until(stream, lambda ev: getattr(ev, "data", {}).get("status") == "standby")
    assert job.phase is JobPhase.STANDBY
    async with anyio.create_task_group() as group:
        results: list[BlockJobStatus] = []

        async def do_pivot() -> None:
            results.append(await job.pivot())

        group.start_soon(do_pivot)
        await dom.qemu_monitor_command("query-jobs")  # a round trip: the pivot task is waiting by now
        assert not job.ended and job.phase is JobPhase.STANDBY
        await dom.qemu_monitor_command("job-resume", {"id": job.id})  # ready again: the pivot goes on
    assert results == [BlockJobStatus.COMPLETED]
    assert backing_chain(chain.base) == [str(chain.base)]
    await dom.destroy()
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    check(chain.base)


async def test_the_completed_event_comes_once_the_chain_and_xml_say_so(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    dom, chain = await _running(conn, xml, tmp_path, "settled")
    async with conn.events(domain=dom, kinds={EventKind.BLOCK_JOB}) as stream:
        started = time.time()
        job = await dom.block_commit("vda", top="vda[1]", base="vda[2]")
        events = await read_until(stream, lambda ev: ev.status is BlockJobStatus.COMPLETED)
        # No await between the event and these checks: the event itself says the job is settled.
        assert job.ended and job.status is BlockJobStatus.COMPLETED
        live = await dom.xml()
        persistent = await dom.xml(inactive=True)
    assert str(chain.snap2) not in live and str(chain.snap1) in live
    assert str(chain.active) in persistent
    assert started <= events[-1].timestamp <= time.time()  # QEMU's time of the end, not the settling's
    await dom.destroy()
