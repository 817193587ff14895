"""NICs plugged into and out of a running QEMU.

**Attach** does for one ``<interface>`` what a start does for each: avirt opens the tap and puts it on
its bridge (``networks/taps.py``), then hands QEMU the open descriptor. At start the descriptor is
inherited by the new process; a running QEMU gets it over its monitor socket instead, as SCM_RIGHTS
ancillary data named with ``getfd`` (:meth:`~avirt.qmp.Monitor.send_fd`). ``netdev_add`` takes the
descriptor by that name, and ``device_add`` puts the NIC on the free PCI slot the definition gave it
(``drivers/devices.py`` fills the address in as define does: on q35 a free ``pcie-root-port``, since a
running guest cannot be given a new one). The controller then closes its copy: as at start, the tap
lives exactly as long as QEMU holds it. A failure after the tap was opened closes it again (the kernel
deletes it), and a netdev that was added is deleted.

**Detach** is a request to the guest, as for disks (``hotplug.py``): ``device_del``, then the wait for
``DEVICE_DELETED``; only then ``netdev_del``, which closes QEMU's descriptor, and the kernel deletes the
tap. A guest that does not let go in time gets :class:`~avirt.errors.DeviceDetachTimeoutError`; the
request stands and a later ``DEVICE_DELETED`` finishes the detach.

**Gone while nobody watched.** A guest may let go of a NIC while no controller runs (the one that asked
died first, or someone's own ``device_del``): the event is lost with the monitor connection that would
have carried it. A new controller therefore asks QEMU which devices it still has (``qom-list`` of
``/machine/peripheral``, where every device with an id lives) and finishes the detach of each NIC
missing there as the event would have: ``netdev_del`` closes QEMU's descriptor, so the tap goes too,
and the NIC leaves the live definition (:meth:`Nics.forget_unplugged`).

**Ids.** QEMU names a start's NICs ``net0``, ``net1``... by their place in the definition, and
``set_link`` finds them so. Once NICs come and go the places shift but QEMU's ids do not, so the guest
keeps its NICs' ids in the live definition's order (``Guest.nic_ids``) and, from the first change on,
writes them to the run directory (``nics.json``), where a new controller reads them back.

Every call here runs under the guest's lock, taken by the driver.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from avirt.config import domain_to_xml
from avirt.config.devices import Controller, Interface
from avirt.config.model import DomainConfig
from avirt.drivers.devices import (
    describe,
    find_interface,
    judge_attach,
    with_interface,
    with_mac,
    without_interface,
)
from avirt.drivers.qemu.cmdline.devices import nic_device
from avirt.drivers.qemu.guest import Guest
from avirt.drivers.qemu.hotplug import ask_to_remove
from avirt.errors import (
    AvirtError,
    DeviceDetachTimeoutError,
    HostError,
    OperationInvalidError,
    QMPError,
    UnsupportedError,
)
from avirt.networks import taps
from avirt.networks.manager import require_admin

if TYPE_CHECKING:
    from avirt.drivers.qemu.driver import QemuDriver

__all__ = ["Nics", "check_nic_pluggable"]

log = logging.getLogger(__name__)

#: The NIC types a running guest can be given (a macvtap, type='direct', is not supported at all yet).
PLUGGABLE = ("network", "bridge", "ethernet", "user")


class Nics:
    def __init__(self, driver: QemuDriver) -> None:
        self._driver = driver
        #: (domain, NIC id) of the detach calls waiting for their DEVICE_DELETED now.
        self._waiting: set[tuple[str, str]] = set()

    # -- attach ----------------------------------------------------------------------------------------

    async def attach(self, guest: Guest, xml: str, *, live: bool, config: bool) -> None:
        machines = (await self._driver.capabilities())["machine_aliases"]
        new_live, new_definition, _ = judge_attach(guest, with_mac(xml), machines, live=live, config=config,
                                                   add=with_interface, check=check_nic_pluggable)
        if new_live is not None:
            await self._plug(guest, new_live)
        if new_definition is not None:
            await self._driver.files.write_definition(guest.name, domain_to_xml(new_definition))
            guest.definition = new_definition

    async def _plug(self, guest: Guest, cfg: DomainConfig) -> None:
        nic = cfg.interfaces[-1]
        ident = _free_id(guest)
        opened: list[taps.Tap] = []
        if nic.type != "user":
            networks = self._driver.networks
            if networks is None:
                raise OperationInvalidError(f"domain '{guest.name}': host networks work on the local host "
                                            f"only, not {self._driver.host.name}")
            require_admin(f"domain '{guest.name}': interface type '{nic.type}'")
            opened = await taps.open_taps(self._driver.host, [nic], networks.port)
        try:
            monitor = self._driver.monitor(guest)
            netdev: dict[str, object] = {"type": "user", "id": ident}
            if opened:
                await monitor.send_fd(opened[0].fd, ident)
                netdev = {"type": "tap", "id": ident, "fd": ident}
            try:
                await monitor.execute("netdev_add", netdev)
            except QMPError:
                if opened:
                    with contextlib.suppress(QMPError):
                        await monitor.execute("closefd", {"fdname": ident})
                raise
            try:
                await monitor.execute("device_add", nic_device(cfg, nic, ident))
                if nic.link_state == "down":
                    await monitor.execute("set_link", {"name": ident, "up": False})
            except QMPError as e:
                with contextlib.suppress(QMPError):
                    await monitor.execute("netdev_del", {"id": ident})
                raise QMPError(e.error_class, f"cannot attach the interface {nic.mac}: {e.desc}") from e
        finally:
            names = [tap.name for tap in opened]
            taps.close_taps(opened)  # QEMU holds its own copy now (or none, and the tap is gone)
        if names:
            nic.target_dev = names[0]
        guest.live = cfg
        guest.nic_ids = [*guest.nic_ids, ident]
        await self._write(guest)

    # -- detach ----------------------------------------------------------------------------------------

    async def detach(self, guest: Guest, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        to_live, to_config = guest.affected(live=live, config=config)
        ident = None
        if to_live:
            assert guest.live is not None
            ident = guest.nic_ids[find_interface(guest.live, xml)]
            if ident in guest.detaching:
                raise OperationInvalidError(f"a detach of interface {ident} of '{guest.name}' is already "
                                            "waiting for the guest")
        new_definition = None
        if to_config:
            assert guest.definition is not None
            index = find_interface(guest.definition, xml)
            new_definition = without_interface(guest.definition, index)
        try:
            if ident is not None:
                await self._unplug(guest, ident, timeout)
        finally:  # a timeout leaves the live request standing; the definition changes all the same
            if new_definition is not None:
                await self._driver.files.write_definition(guest.name, domain_to_xml(new_definition))
                guest.definition = new_definition

    async def _unplug(self, guest: Guest, ident: str, timeout: float) -> None:
        self._waiting.add((guest.name, ident))
        try:
            released = await ask_to_remove(self._driver.monitor(guest), guest, ident, timeout)
        finally:
            self._waiting.discard((guest.name, ident))
        if not released:
            raise DeviceDetachTimeoutError(guest.name, ident, timeout)
        await self._unplugged(guest, ident)

    def device_deleted(self, guest: Guest, device: str) -> bool:
        """QEMU's DEVICE_DELETED, if ``device`` is one of the guest's NICs (True): a detach waiting for it
        goes on; otherwise (its wait timed out, or someone's own ``device_del``) it is finished here."""
        if device not in guest.nic_ids:
            return False
        released = guest.detaching.pop(device, None)
        if released is not None:
            released.set()
        if (guest.name, device) not in self._waiting:
            self._driver.tasks.start_soon(self._finish, guest, device, guest.process,
                                          name=f"detach-{guest.name}-{device}")
        return True

    async def _finish(self, guest: Guest, ident: str, process: object) -> None:
        try:
            async with guest.lock:
                if guest.process is process and ident in guest.nic_ids:
                    await self._unplugged(guest, ident)
        except (AvirtError, OSError) as e:
            log.warning("domain %s: finishing the detach of %s failed: %s", guest.name, ident, e)

    async def forget_unplugged(self, guest: Guest) -> None:
        """After a re-attach: the NICs whose device QEMU no longer has are detached now (their netdevs
        deleted, their taps with them), so that the live definition and QEMU agree again."""
        if not guest.nic_ids:
            return
        children = await self._driver.monitor(guest).execute("qom-list", {"path": "/machine/peripheral"})
        present = {child["name"] for child in children}
        gone = [ident for ident in guest.nic_ids if ident not in present]
        if gone:
            log.info("domain %s: NIC %s left while no controller watched", guest.name, ", ".join(gone))
        for ident in gone:
            await self._unplugged(guest, ident)

    async def _unplugged(self, guest: Guest, ident: str) -> None:
        """The device is gone from QEMU: its netdev goes (QEMU closes the tap, the kernel deletes it), and
        the NIC leaves the live definition."""
        try:
            await self._driver.monitor(guest).execute("netdev_del", {"id": ident})
        except (QMPError, HostError) as e:
            log.warning("domain %s: netdev_del %s failed: %s", guest.name, ident, e)
        if guest.live is not None and ident in guest.nic_ids:
            index = guest.nic_ids.index(ident)
            guest.live = without_interface(guest.live, index)
            guest.nic_ids = [i for i in guest.nic_ids if i != ident]
            await self._write(guest)

    async def _write(self, guest: Guest) -> None:
        """live.xml and nics.json after a change (the ids first: a successor must not misname a NIC)."""
        assert guest.live is not None
        await self._driver.files.write_nics(guest.name, guest.nic_ids)
        await self._driver.files.write_live(guest.name, domain_to_xml(guest.live))


def check_nic_pluggable(name: str, nic: Interface, needed: list[Controller]) -> None:
    """Whether the NIC can join ``name`` while it runs; ``needed``: the controllers it would need added."""
    if nic.type not in PLUGGABLE:
        raise UnsupportedError([f"/interface[@type='{nic.type}']"],
                               "avirt cannot plug in a NIC of this type:")
    if needed:
        raise OperationInvalidError(
            f"the interface needs {', '.join(describe(c) for c in needed)}, which a running domain cannot "
            f"be given; add it to the definition (config=True) and restart '{name}', or keep a spare one "
            "in the definition for hotplug")


def _free_id(guest: Guest) -> str:
    """``net<N>`` with N past every id the guest's NICs have or a pending detach still holds."""
    taken = {*guest.nic_ids, *guest.detaching}
    n = len(guest.nic_ids)
    while f"net{n}" in taken:
        n += 1
    return f"net{n}"
