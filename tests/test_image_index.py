"""The image index: a base another domain reads is found under any name, and the index follows jobs,
undefines and changes made behind avirt's back. Real qemu-img, real QEMU; data read back per layer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import avirt
from avirt import BlockJobStatus
from avirt.connection import Connection
from avirt.errors import SharedImageError
from tests.images import GUEST_VIEW, Chain, make_chain, reads, write
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine (inotify says what changed) and on a host reached over SSH (stamps
#: compared in one remote stat run).
HOSTS = ("local", "ssh")

#: The reader's own data, above whatever it reads below.
READER_DATA = ((0x55, 5, 1),)
#: What the reader sees when its overlay sits on base: base's 0x11 @ 0-2, its own 0x55.
READER_ON_BASE = ((0x11, 0, 2), *READER_DATA)


def overlay(path: Path, backing: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(path)],
                   check=True)
    write(path, 0x55, 5, 1)
    return path


def base_by(kind: str, chain: Chain, tmp_path: Path) -> str:
    """Another name for chain.base: a symbolic link, a hard link, or a path through '..'."""
    if kind == "symlink":
        (tmp_path / "links").mkdir()
        os.symlink(chain.base, tmp_path / "links" / "golden.qcow2")
        return str(tmp_path / "links" / "golden.qcow2")
    if kind == "hardlink":
        os.link(chain.base, tmp_path / "golden.qcow2")
        return str(tmp_path / "golden.qcow2")
    (tmp_path / "sub").mkdir()
    return f"{tmp_path}/sub/../{chain.base.name}"


@pytest.mark.parametrize("running", [False, True], ids=["offline", "online"])
@pytest.mark.parametrize("kind", ["symlink", "hardlink", "dotdot"])
async def test_a_base_read_under_another_name_is_refused(
        conn: Connection, xml: XMLFactory, tmp_path: Path, kind: str, running: bool) -> None:
    chain = make_chain(tmp_path)
    reader_top = overlay(tmp_path / "reader.qcow2", base_by(kind, chain, tmp_path))
    await conn.define_xml(xml("reader", disks=[("vda", str(reader_top), "qcow2")]))
    dom = await conn.define_xml(xml("owner", disks=[("vda", str(chain.active), "qcow2")]))
    if running:
        await dom.start()
    with pytest.raises(SharedImageError) as caught:
        await dom.block_commit("vda", pivot=True)
    assert (caught.value.path, caught.value.domains) == (str(chain.base), ["reader"])
    with pytest.raises(SharedImageError):  # snap1 is above base: only ours, but base is still shared
        await dom.block_commit("vda", top="vda[2]", base="vda[3]")
    assert reads(reader_top, READER_ON_BASE) == []  # nothing was written
    job = await dom.block_commit("vda", allow_shared_base=True, pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    if running:
        await dom.destroy()


async def test_the_commit_is_allowed_once_the_reader_is_undefined(
        conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    reader_top = overlay(tmp_path / "reader.qcow2", base_by("symlink", chain, tmp_path))
    reader = await conn.define_xml(xml("reader", disks=[("vda", str(reader_top), "qcow2")]))
    dom = await conn.define_xml(xml("owner", disks=[("vda", str(chain.active), "qcow2")]))
    with pytest.raises(SharedImageError):
        await dom.block_commit("vda")
    await reader.undefine()
    assert await (await dom.block_commit("vda")) == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []


@pytest.mark.parametrize("running", [False, True], ids=["reader-offline", "reader-online"])
async def test_the_index_follows_a_job_that_takes_the_base_out_of_the_readers_chain(
        conn: Connection, xml: XMLFactory, tmp_path: Path, running: bool) -> None:
    chain = make_chain(tmp_path)
    reader_top = overlay(tmp_path / "reader.qcow2", base_by("hardlink", chain, tmp_path))
    reader = await conn.define_xml(xml("reader", disks=[("vda", str(reader_top), "qcow2")]))
    dom = await conn.define_xml(xml("owner", disks=[("vda", str(chain.active), "qcow2")]))
    if running:
        await reader.start()
    with pytest.raises(SharedImageError):
        await dom.block_commit("vda")
    assert await (await reader.block_pull("vda")) == BlockJobStatus.COMPLETED  # reader stands alone
    assert await (await dom.block_commit("vda")) == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []
    if running:
        await reader.destroy()  # QEMU writes its qcow2 metadata back when it closes the image
    assert reads(reader_top, READER_ON_BASE, alone=True) == []  # the pull copied base's data up first


async def test_a_chain_changed_by_hand_is_noticed(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    private = tmp_path / "private.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(private), "16M"], check=True)
    reader_top = overlay(tmp_path / "reader.qcow2", str(private))
    await conn.define_xml(xml("reader", disks=[("vda", str(reader_top), "qcow2")]))
    dom = await conn.define_xml(xml("owner", disks=[("vda", str(chain.active), "qcow2")]))
    # snap2 into snap1: the reader reads neither (and the index has now read every chain)
    assert await (await dom.block_commit("vda", top="vda[1]", shallow=True)) == BlockJobStatus.COMPLETED
    # behind avirt's back: the reader now reads snap1, through a symbolic link
    os.symlink(chain.snap1, tmp_path / "snap-link.qcow2")
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(tmp_path / "snap-link.qcow2"),
                    str(reader_top)], check=True)
    with pytest.raises(SharedImageError) as caught:
        await dom.block_commit("vda", shallow=True)  # active into snap1
    assert caught.value.domains == ["reader"]
    # and back, by hand again: snap1 is ours alone
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(private), str(reader_top)],
                   check=True)
    assert await (await dom.block_commit("vda", shallow=True)) == BlockJobStatus.COMPLETED
    assert reads(chain.snap1, ((0x22, 1, 1), (0x33, 2, 1), (0x44, 3, 2)), alone=True) == []
    assert reads(chain.active, GUEST_VIEW) == []  # still there, through its (now stale) chain


async def test_a_new_controller_notices_what_changed_while_nobody_watched(
        xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    chain = make_chain(tmp_path)
    private = tmp_path / "private.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(private), "16M"], check=True)
    reader_top = overlay(tmp_path / "reader.qcow2", str(private))
    async with avirt.connect("qemu:///session", state_dir=str(state_dir)) as conn:
        await conn.define_xml(xml("reader", disks=[("vda", str(reader_top), "qcow2")]))
        dom = await conn.define_xml(xml("owner", disks=[("vda", str(chain.active), "qcow2")]))
        assert await (await dom.block_commit("vda", top="vda[1]", shallow=True)) == BlockJobStatus.COMPLETED
    saved = json.loads((state_dir / "domains/reader/chains.json").read_text())
    assert [layer[0] for layer in saved["vda"]["layers"]] == [str(reader_top), str(private)]
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(chain.snap1), str(reader_top)],
                   check=True)
    async with avirt.connect("qemu:///session", state_dir=str(state_dir)) as conn:
        dom = await conn.lookup("owner")
        with pytest.raises(SharedImageError):
            await dom.block_commit("vda", shallow=True)
