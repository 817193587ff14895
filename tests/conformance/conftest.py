"""One world per driver: every conformance test runs on real QEMU (on this machine; on a host reached over
SSH, tests/sshd.py, both driven directly from here, the "ssh" world, and through the avirt on that host,
``avirt serve --stdio`` in one SSH channel, the "ssh-serve" world; and through a second program's
connection to a state directory another one holds: the "client" world, served by avirt/served/) and on
``test:///default``.

A test receives a :class:`World`: a connection and the few things that must differ between the drivers,
kept here so that the tests themselves are the same code for both:

* disks with a backing chain: on QEMU real qcow2 files (``tests/images.py``'s four layers), on the test
  driver nothing but the domain XML, whose ``<backingStore>`` chain the test driver takes as the images'
  chain (QEMU ignores it and reads the files, which say the same);
* a guest OS that answers the power button: on QEMU the tiny Linux test guest, booted under TCG, which
  must be up before it can answer; on the test driver any domain with ``<acpi/>``.

The test driver's own ``test`` domain is destroyed and undefined first, so both worlds start empty.
QEMU guests that need no OS run only their firmware; block-job tests start them paused (jobs run all
the same, and no CPU is spent on a guest nobody looks at).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

import avirt
from avirt import Domain
from avirt.connection import Connection
from tests.guest import BASE_CMDLINE, GuestImages
from tests.images import Chain, make_chain
from tests.sshd import SSHServer
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

DRIVERS = ("qemu", "ssh", "ssh-serve", "client", "test")


@dataclass
class World:
    driver: str
    conn: Connection
    xml: XMLFactory
    tmp_path: Path
    #: The test guest's kernel and initrd (QEMU only; see the ``guest_world`` fixture).
    guest_images: GuestImages | None = None

    @property
    def qemu(self) -> bool:
        """Real QEMU (local or over SSH)."""
        return self.driver != "test"

    def chain(self, directory: str = "chain") -> Chain:
        """The four-layer chain (base <- snap1 <- snap2 <- active): files on QEMU, names elsewhere."""
        where = self.tmp_path / directory
        where.mkdir(exist_ok=True)
        if self.qemu:
            return make_chain(where)
        return Chain(*(where / f"{name}.qcow2" for name in ("base", "snap1", "snap2", "active")))

    def chain_xml(self, name: str, chain: Chain, **options: object) -> str:
        """A firmware-only domain whose disk vda is ``chain``, with the chain spelled out in the XML."""
        return self.xml(name, extra_devices=chain_disk("vda", chain), **options)  # type: ignore[arg-type]

    async def chain_domain(self, name: str, *, start: bool = True) -> tuple[Domain, Chain]:
        chain = self.chain(name)
        dom = await self.conn.define_xml(self.chain_xml(name, chain))
        if start:
            await dom.start(paused=True)
        return dom, chain

    def guest_xml(self, name: str, **options: object) -> str:
        """A domain whose guest OS answers the ACPI power button."""
        if not self.qemu:
            return self.xml(name, **options)  # type: ignore[arg-type]
        images = self.guest_images
        assert images is not None, "use the guest_world fixture"
        return self.xml(name, type="qemu", memory_mib=256, kernel=str(images.kernel),
                        initrd=str(images.initrd), cmdline=BASE_CMDLINE,
                        serial_file=str(self.tmp_path / f"{name}.serial"), **options)  # type: ignore[arg-type]

    async def booted(self, name: str, *, times: int = 1) -> None:
        """Until the guest OS is up (for the ``times``-th time): only then does it hear the power button."""
        if self.qemu:
            await wait_for_serial(self.tmp_path / f"{name}.serial", "avirt-guest: ready", count=times)


def chain_disk(target: str, chain: Chain) -> str:
    """``<disk>`` XML on ``chain.active`` with libvirt's ``<backingStore>`` chain below it."""
    nested = "<backingStore/>"
    for index, path in reversed(list(enumerate((chain.snap2, chain.snap1, chain.base), start=1))):
        nested = (f"<backingStore type='file' index='{index}'><format type='qcow2'/>"
                  f"<source file={quoteattr(str(path))}/>{nested}</backingStore>")
    return (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file={quoteattr(str(chain.active))}/>{nested}"
            f"<target dev='{target}' bus='virtio'/></disk>")


@pytest.fixture(params=DRIVERS)
async def world(request: pytest.FixtureRequest, state_dir: Path, xml: XMLFactory,
                tmp_path: Path) -> AsyncIterator[World]:
    if request.param in ("ssh", "ssh-serve"):
        server: SSHServer = request.getfixturevalue("sshd")
        mode = "serve" if request.param == "ssh-serve" else "direct"
        uri, local_state = server.uri(state_dir, mode=mode), None
    else:
        uri = "test:///default" if request.param == "test" else "qemu:///session"
        local_state = state_dir
    if request.param == "client":
        # The holder serves; the world's connection is a second one to the same state directory.
        async with avirt.connect(uri, state_dir=local_state) as holder, \
                avirt.connect(uri, state_dir=local_state) as conn:
            assert holder.serving and not conn.serving
            yield World(request.param, conn, xml, tmp_path)
        return
    async with avirt.connect(uri, state_dir=local_state) as conn:
        if request.param == "test":
            builtin = await conn.lookup("test")
            await builtin.destroy()
            await builtin.undefine()
        yield World(request.param, conn, xml, tmp_path)


@pytest.fixture
def guest_world(world: World, request: pytest.FixtureRequest) -> World:
    """A world whose domains can boot a guest OS (the test guest is built, or found in its cache)."""
    if world.qemu:
        world.guest_images = request.getfixturevalue("guest_images")
    return world
