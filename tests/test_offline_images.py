"""The images API (``avirt.offline``) on real qcow2 chains: every call, proven by the data it leaves.

The chain of tests/images.py (base 0x11 @ 0-2M, snap1 0x22 @ 1-3M, snap2 0x33 @ 2-4M, active 0x44 @ 3-5M,
16 MiB virtual) unless a test needs more data than that.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from avirt import BlockJobStatus, ImageInfo, offline
from avirt.connection import Connection
from avirt.errors import ImageError, ImageLockedError, InsufficientSpaceError, OperationInvalidError
from tests.images import GUEST_VIEW, MiB, backing_chain, check, make_chain, reads, write
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


# -- reading ------------------------------------------------------------------------------------------


async def test_info_lists_the_chain_top_first_with_each_layers_own_allocation(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    infos = await offline.info(str(chain.active))
    assert [i.path for i in infos] == [str(chain.path(n)) for n in ("active", "snap2", "snap1", "base")]
    assert {(i.format, i.virtual_size, i.allocated) for i in infos} == {("qcow2", 16 * MiB, 2 * MiB)}
    (alone,) = await offline.info(str(chain.snap1), chain=False)
    assert (alone.path, alone.allocated) == (str(chain.snap1), 2 * MiB)


async def test_allocation_counts_this_layer_alone(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    write(chain.active, 0x55, 8, 3)
    assert await offline.allocation(str(chain.active)) == (5 * MiB, 16 * MiB)
    assert await offline.allocation(str(chain.base)) == (2 * MiB, 16 * MiB)


async def test_reading_a_missing_image_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.qcow2"):
        await offline.info(str(tmp_path / "nope.qcow2"))


# -- creating -----------------------------------------------------------------------------------------


async def test_create_an_image_and_an_overlay(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    assert await offline.create(str(base), size=8 * MiB) == BlockJobStatus.COMPLETED
    write(base, 0x11, 0, 1)
    assert await offline.create(str(top), backing=str(base), backing_format="qcow2") == \
        BlockJobStatus.COMPLETED
    assert [(i.path, i.virtual_size) for i in await offline.info(str(top))] == [
        (str(top), 8 * MiB), (str(base), 8 * MiB)]
    assert reads(top, ((0x11, 0, 1),)) == []
    with pytest.raises(OperationInvalidError, match="already exists"):
        await offline.create(str(top), size=MiB)
    assert reads(top, ((0x11, 0, 1),)) == []  # not overwritten
    with pytest.raises(ValueError, match="backing_format"):
        offline.create(str(tmp_path / "x.qcow2"), backing=str(base))


# -- commit -------------------------------------------------------------------------------------------


async def test_commit_into_the_backing_file_empties_the_top(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    assert await offline.commit(str(chain.active)) == BlockJobStatus.COMPLETED
    assert await offline.allocation(str(chain.active)) == (0, 16 * MiB)
    assert reads(chain.snap2, ((0x33, 2, 1), (0x44, 3, 2)), alone=True) == []
    assert reads(chain.active, GUEST_VIEW) == []
    check(chain.snap2)


async def test_commit_keep_top_leaves_the_top_untouched(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    assert await offline.commit(str(chain.active), keep_top=True) == BlockJobStatus.COMPLETED
    assert reads(chain.active, ((0x44, 3, 2),), alone=True) == []
    assert reads(chain.snap2, ((0x33, 2, 1), (0x44, 3, 2)), alone=True) == []


async def test_commit_into_a_deeper_base_rebases_the_top_onto_it(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    job = offline.commit(str(chain.active), base=str(chain.base))
    assert await job == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    assert backing_chain(chain.active) == [str(chain.active), str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    # the layers in between are not changed: other images may still use them
    assert reads(chain.snap1, ((0x22, 1, 2),), alone=True) == []
    assert backing_chain(chain.snap2) == [str(chain.snap2), str(chain.snap1), str(chain.base)]


async def test_commit_refuses_a_base_outside_the_chain(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    with pytest.raises(OperationInvalidError, match="is not below"):
        await offline.commit(str(chain.snap1), base=str(chain.active))
    with pytest.raises(OperationInvalidError, match="no backing file"):
        await offline.commit(str(chain.base))


# -- rebase and convert -------------------------------------------------------------------------------


async def test_safe_rebase_pulls_the_data_it_skips(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    assert await offline.rebase(str(chain.active), str(chain.snap1)) == BlockJobStatus.COMPLETED
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert reads(chain.active, GUEST_VIEW) == []
    assert await offline.rebase(str(chain.active), None) == BlockJobStatus.COMPLETED
    assert backing_chain(chain.active) == [str(chain.active)]
    assert reads(chain.active, GUEST_VIEW) == []


async def test_unsafe_rebase_rewrites_the_header_only(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    flat = tmp_path / "snap2-flat.qcow2"
    assert await offline.convert(str(chain.snap2), str(flat), "qcow2") == BlockJobStatus.COMPLETED
    with pytest.raises(OperationInvalidError, match="give backing_format"):
        await offline.rebase(str(chain.active), str(flat), unsafe=True)
    job = offline.rebase(str(chain.active), str(flat), backing_format="qcow2", unsafe=True)
    assert await job == BlockJobStatus.COMPLETED
    assert backing_chain(chain.active) == [str(chain.active), str(flat)]
    assert await offline.allocation(str(chain.active)) == (2 * MiB, 16 * MiB)  # nothing copied
    assert reads(chain.active, GUEST_VIEW) == []


async def test_convert_flattens_the_chain_into_a_new_image(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dest = tmp_path / "flat.raw"
    assert await offline.convert(str(chain.active), str(dest), "raw") == BlockJobStatus.COMPLETED
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(chain.active),
                           str(dest)], capture_output=True).returncode == 0
    assert [(i.format, i.virtual_size) for i in await offline.info(str(dest), fmt="raw")] == [
        ("raw", 16 * MiB)]
    with pytest.raises(OperationInvalidError, match="already exists"):
        await offline.convert(str(chain.active), str(dest), "raw")


# -- the job handle -----------------------------------------------------------------------------------


def big_top(tmp_path: Path, data_mib: int = 64) -> tuple[Path, Path, tuple[tuple[int, int, int], ...]]:
    """A chain whose top holds ``data_mib`` MiB (0x44 @ 8M..), and everything the top shows."""
    chain = make_chain(tmp_path, size_mib=256)
    write(chain.active, 0x44, 8, data_mib)
    return chain.active, chain.base, (*GUEST_VIEW, (0x44, 8, data_mib))


async def test_progress_arrives_while_the_job_runs_and_only_grows(tmp_path: Path) -> None:
    top, _, _ = big_top(tmp_path, 32)
    job = offline.commit(str(top), bandwidth=8 * MiB)  # 1 MiB/s slices: about four seconds
    with pytest.raises(OperationInvalidError, match="has not started"):
        async for _ in job.progress():
            pass
    running: list[tuple[int, int]] = []
    samples: list[tuple[int, int]] = []
    async with job:
        async for sample in job.progress():
            samples.append(sample)
            if job.status is None and 0 < sample[0] < sample[1]:
                running.append(sample)
    assert job.status is BlockJobStatus.COMPLETED
    assert len(running) >= 2, samples
    assert [cur for cur, _ in samples] == sorted(cur for cur, _ in samples)
    assert {end for _, end in samples} == {256 * MiB}


@pytest.mark.parametrize("deep", [False, True], ids=["into-backing", "into-base"])
async def test_cancel_mid_commit_loses_nothing(tmp_path: Path, deep: bool) -> None:
    top, base, view = big_top(tmp_path)
    job = offline.commit(str(top), base=str(base) if deep else None, bandwidth=8 * MiB)  # ~8 s of work
    async with job:
        async for cur, end in job.progress():
            if 0 < cur < end:
                break
        assert await job.cancel() == BlockJobStatus.CANCELED
    assert subprocess.run(["pgrep", "-f", f"qemu-img commit.*{top}"]).returncode == 1
    assert backing_chain(top) == [str(top), *(str(tmp_path / f"{n}.qcow2") for n in ("snap2", "snap1",
                                                                                      "base"))]
    assert reads(top, view) == []
    assert reads(top, ((0x44, 8, 64),), alone=True) == []  # the top was not emptied
    check(top)


async def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    job = offline.commit(str(chain.active))
    assert await job.cancel() == BlockJobStatus.CANCELED
    assert await job == BlockJobStatus.CANCELED
    assert reads(chain.active, ((0x44, 3, 2),), alone=True) == []


async def test_an_error_in_the_with_block_cancels_the_job(tmp_path: Path) -> None:
    top, _, view = big_top(tmp_path)
    job = offline.commit(str(top), bandwidth=8 * MiB)
    with pytest.raises(RuntimeError, match="caller gave up"):
        async with job:
            async for cur, _ in job.progress():
                if cur:
                    raise RuntimeError("caller gave up")
    assert job.status is BlockJobStatus.CANCELED
    assert reads(top, view) == []


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A chain whose base another process (qemu-io, interactive) holds open for writing."""
    chain = make_chain(tmp_path)
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", str(chain.base)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        # qemu-io answers a command only once the image is open (and locked)
        holder.stdin.write(b"read 0 512\n")
        holder.stdin.flush()
        answer = holder.stdout.readline()
        assert b"read 512/512 bytes" in answer, answer
        yield chain.active
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


async def test_a_locked_image_is_refused(held: Path) -> None:
    with pytest.raises(ImageLockedError, match="in use by another process"):
        await offline.commit(str(held), base=str(held.with_name("base.qcow2")))
    with pytest.raises(ImageLockedError):
        await offline.rebase(str(held), None)
    assert reads(held, GUEST_VIEW) == []
    assert len(await offline.info(str(held))) == 4  # reading is not refused


# -- free space ---------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs of 8 MiB, mounted for the test (needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def chain_over_small_base(tmp_path: Path, small: Path, top_mib: int) -> tuple[Path, Path]:
    base, top = small / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    write(base, 0x11, 0, 1)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
                   check=True)
    write(top, 0x44, 1, top_mib)
    return base, top


async def test_a_commit_that_cannot_fit_is_refused_before_writing(tmp_path: Path, small_fs: Path) -> None:
    base, top = chain_over_small_base(tmp_path, small_fs, 16)
    before = base.read_bytes()
    with pytest.raises(InsufficientSpaceError) as caught:
        await offline.commit(str(top))
    assert caught.value.path == str(base)
    assert caught.value.needed > 16 * MiB > caught.value.available
    assert base.read_bytes() == before
    assert reads(top, ((0x11, 0, 1), (0x44, 1, 16))) == []


async def test_a_domains_offline_commit_that_cannot_fit_is_refused(
        conn: Connection, xml: XMLFactory, tmp_path: Path, small_fs: Path, state_dir: Path) -> None:
    base, top = chain_over_small_base(tmp_path, small_fs, 16)
    before = base.read_bytes()
    dom = await conn.define_xml(xml("tight", disks=[("vda", str(top), "qcow2")]))
    with pytest.raises(InsufficientSpaceError, match="not enough space to commit into"):
        await dom.block_commit("vda")
    assert base.read_bytes() == before
    assert await dom.block_job("vda") is None
    assert f"<source file=\"{top}\"/>" in (state_dir / "domains/tight/domain.xml").read_text()
    assert reads(top, ((0x11, 0, 1), (0x44, 1, 16))) == []


async def test_a_commit_that_fits_on_a_small_filesystem_runs(tmp_path: Path, small_fs: Path) -> None:
    base, top = chain_over_small_base(tmp_path, small_fs, 2)
    assert await offline.commit(str(top)) == BlockJobStatus.COMPLETED
    assert reads(base, ((0x11, 0, 1), (0x44, 1, 2)), alone=True) == []


# -- hostile file names -------------------------------------------------------------------------------

HOSTILE = ("-dash start.qcow2", "sp ace 'single' \"double\".qcow2", "$(touch PWNED) `touch PWNED`.qcow2",
           "semi;colon:and,comma.qcow2")


async def test_hostile_file_names_pass_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative names, as a user types them
    base, mid, top = HOSTILE[0], HOSTILE[1], HOSTILE[2]
    assert await offline.create(base, size=16 * MiB) == BlockJobStatus.COMPLETED
    write(tmp_path / base, 0x11, 0, 2)
    assert await offline.create(mid, backing=base, backing_format="qcow2") == BlockJobStatus.COMPLETED
    write(tmp_path / mid, 0x22, 1, 2)
    assert await offline.create(top, backing=mid, backing_format="qcow2") == BlockJobStatus.COMPLETED
    write(tmp_path / top, 0x44, 3, 2)
    view = ((0x11, 0, 1), (0x22, 1, 2), (0x44, 3, 2))
    assert [i.path for i in await offline.info(top)] == [str(tmp_path / n) for n in (top, mid, base)]
    assert await offline.allocation(top) == (2 * MiB, 16 * MiB)
    assert await offline.convert(top, HOSTILE[3], "qcow2") == BlockJobStatus.COMPLETED
    assert reads(tmp_path / HOSTILE[3], view, alone=True) == []
    assert await offline.rebase(top, base) == BlockJobStatus.COMPLETED
    assert await offline.commit(top, base=base) == BlockJobStatus.COMPLETED
    assert reads(tmp_path / base, view, alone=True) == []
    assert reads(tmp_path / top, view) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(HOSTILE)  # and no PWNED anywhere


# -- the advisor --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("percent", "direction"), [(10, "commit"), (50, "commit"), (90, "pull")])
async def test_advice_on_overlays_of_10_50_90_percent(tmp_path: Path, percent: int, direction: str) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "100M"], check=True)
    write(base, 0x11, 0, 100)  # a fully allocated base, as an installed system's image is
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
                   check=True)
    write(top, 0x44, 0, percent)
    advice = offline.advise_reduce(await offline.info(str(top)))
    assert advice.direction == direction
    assert advice.figures["commit_bytes"] == percent * MiB
    assert advice.figures["pull_bytes"] == (100 - percent) * MiB
    assert advice.figures["overlay"] == str(top) and advice.figures["backing"] == str(base)
    assert f"{percent}% allocated" in advice.reason


def test_advice_needs_a_layer_with_a_backing_file() -> None:
    image = ImageInfo("/vm/base.qcow2", "qcow2", MiB, MiB, MiB)
    with pytest.raises(ValueError, match="no backing file"):
        offline.advise_reduce([image])
    overlay = ImageInfo("/vm/top.qcow2", "qcow2", 100, 1, 30)
    sparse = ImageInfo("/vm/base.qcow2", "qcow2", 100, 1, 20)
    advice = offline.advise_reduce([overlay, sparse])  # a sparse base: at most 20 can move up
    assert (advice.direction, advice.figures["pull_bytes"]) == ("pull", 20)
