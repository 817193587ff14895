"""Block jobs work the same whatever bus a disk sits on: node names follow the disk, never the bus."""

from __future__ import annotations

from pathlib import Path

import pytest

from avirt import BlockJobStatus
from avirt.connection import Connection
from tests.images import GUEST_VIEW, backing_chain, check, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("target", "bus", "controller"), [
    ("sda", "sata", ""),
    ("sdb", "scsi", "<controller type='scsi' model='virtio-scsi'/>"),
    ("sdc", "usb", "<controller type='usb' model='qemu-xhci'/>"),
])
async def test_active_commit_and_pull_on_every_bus_keep_every_byte(
        conn: Connection, xml: XMLFactory, tmp_path: Path, target: str, bus: str, controller: str) -> None:
    chain = make_chain(tmp_path)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{chain.active}'/><target dev='{target}' bus='{bus}'/></disk>")
    dom = await conn.define_xml(xml("buses", extra_devices=controller + disk))
    await dom.start()
    blocks = await dom.qemu_monitor_command("query-block")
    # QEMU names a virtio disk's backend by its path, an IDE or SCSI disk by its id alone
    assert {b.get("qdev", "").removeprefix("/machine/peripheral/").split("/")[0] for b in blocks} == {target}

    pull = await dom.block_pull(target, base=str(chain.snap1))
    assert await pull == BlockJobStatus.COMPLETED
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    commit = await dom.block_commit(target, pivot=True)
    assert await commit == BlockJobStatus.COMPLETED
    assert reads(chain.base, GUEST_VIEW, alone=True) == []  # the base alone now holds every byte
    assert f'<target dev="{target}" bus="{bus}"/>' in await dom.xml()
    await dom.destroy()
    check(chain.base)
