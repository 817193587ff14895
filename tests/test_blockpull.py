"""Block pull on a running guest, proven by data."""

from __future__ import annotations

from pathlib import Path

import pytest

from avirt import BlockJobStatus, JobKind
from avirt.connection import Connection
from avirt.errors import OperationInvalidError
from tests.images import GUEST_VIEW, backing_chain, check, make_chain, reads
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")


async def test_pull_down_to_a_base(conn: Connection, xml: XMLFactory, tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("pull1", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    job = await dom.block_pull("vda", base=str(chain.snap1))
    assert job.kind is JobKind.PULL
    assert await job == BlockJobStatus.COMPLETED
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    await dom.destroy()  # QEMU writes back its cached qcow2 metadata as it quits
    assert reads(chain.active, GUEST_VIEW) == []
    assert reads(chain.active, ((0x33, 2, 1), (0x44, 3, 2)), alone=True) == []  # snap2's data moved up
    check(chain.active)


async def test_pull_everything_leaves_no_backing_file(conn: Connection, xml: XMLFactory,
                                                      tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    dom = await conn.define_xml(xml("pull2", disks=[("vda", str(chain.active), "qcow2")]))
    await dom.start()
    assert await (await dom.block_pull("vda")) == BlockJobStatus.COMPLETED
    assert backing_chain(chain.active) == [str(chain.active)]
    assert "backingStore index" not in await dom.xml()
    with pytest.raises(OperationInvalidError, match="nothing to pull"):
        await dom.block_pull("vda", base="vda[0]")
    await dom.destroy()
    assert reads(chain.active, GUEST_VIEW, alone=True) == []
