"""External disk snapshots, online and offline, proven by data; and the chain as block_chain() reports it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from avirt import BlockJobStatus, DomainState
from avirt.connection import Connection
from avirt.errors import OperationInvalidError
from tests.images import GUEST_VIEW, MiB, backing_chain, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")


def _raw_disk(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"], check=True)
    return path


async def test_online_snapshot_of_two_disks_then_commit_back(conn: Connection, xml: XMLFactory,
                                                             tmp_path: Path, state_dir: Path) -> None:
    chain = make_chain(tmp_path)
    data = _raw_disk(tmp_path / "data.qcow2")
    dom = await conn.define_xml(xml("snap", disks=[("vda", str(chain.active), "qcow2"),
                                                   ("vdb", str(data), "qcow2")]))
    await dom.start()
    overlays = await dom.snapshot_disks("before-upgrade")
    assert overlays == {"vda": str(tmp_path / "active.before-upgrade.qcow2"),
                        "vdb": str(tmp_path / "data.before-upgrade.qcow2")}
    assert backing_chain(Path(overlays["vda"]))[:2] == [overlays["vda"], str(chain.active)]
    assert f"<source file=\"{overlays['vda']}\"/>" in await dom.xml()
    assert f"<source file=\"{overlays['vdb']}\"/>" in (state_dir / "domains/snap/domain.xml").read_text()

    # The guest's next writes land in the new overlay, not in the image below it.
    for command in ("write -P 0x55 4M 1M", "flush"):  # flush: QEMU caches qcow2 metadata until then
        await dom.qemu_monitor_command("human-monitor-command", {
            "command-line": f'qemu-io -d /machine/peripheral/vda/virtio-backend "{command}"'})
    assert reads(Path(overlays["vda"]), ((0x55, 4, 1),), alone=True) == []
    assert reads(chain.active, ((0x44, 4, 1),)) == []
    assert reads(Path(overlays["vda"]), (*GUEST_VIEW[:3], (0x44, 3, 1), (0x55, 4, 1))) == []

    chain_info = await dom.block_chain("vda")
    assert [i.path for i in chain_info] == [overlays["vda"], str(chain.active), str(chain.snap2),
                                            str(chain.snap1), str(chain.base)]
    assert chain_info[0].allocated == MiB and chain_info[1].allocated == 2 * MiB
    assert all(i.virtual_size == 16 * MiB and i.format == "qcow2" for i in chain_info)

    # A second snapshot then commits back: node names never clash, the chain comes back.
    await dom.snapshot_disks("second", disks=["vda"])
    job = await dom.block_commit("vda", base=overlays["vda"], pivot=True)
    assert await job == BlockJobStatus.COMPLETED
    assert f"<source file=\"{overlays['vda']}\"/>" in await dom.xml()
    await dom.destroy()


async def test_refused_snapshot_switches_nothing(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    a = _raw_disk(tmp_path / "a.qcow2")
    b = _raw_disk(tmp_path / "b.qcow2")
    (tmp_path / "b.s1.qcow2").write_text("in the way")
    dom = await conn.define_xml(xml("refuse", disks=[("vda", str(a), "qcow2"), ("vdb", str(b), "qcow2")]))
    await dom.start()
    with pytest.raises(OperationInvalidError, match="already exists"):
        await dom.snapshot_disks("s1")
    assert not (tmp_path / "a.s1.qcow2").exists()
    assert f"<source file=\"{a}\"/>" in await dom.xml()
    with pytest.raises(OperationInvalidError, match="no disk vdz"):
        await dom.snapshot_disks("s2", disks=["vdz"])
    await dom.destroy()


async def test_offline_snapshot_updates_the_definition(conn: Connection, xml: XMLFactory,
                                                       tmp_path: Path, state_dir: Path) -> None:
    disk = _raw_disk(tmp_path / "disk.qcow2")
    dom = await conn.define_xml(xml("off", disks=[("vda", str(disk), "qcow2")]))
    overlays = await dom.snapshot_disks("s1")
    assert backing_chain(Path(overlays["vda"])) == [overlays["vda"], str(disk)]
    assert f"<source file=\"{overlays['vda']}\"/>" in await dom.xml(inactive=True)
    assert f"<source file=\"{overlays['vda']}\"/>" in (state_dir / "domains/off/domain.xml").read_text()
    await dom.start()
    assert await dom.state() == (DomainState.RUNNING, "booted")
    assert str(disk) in await dom.xml()  # the live chain shows the old image below the overlay
    await dom.destroy()
