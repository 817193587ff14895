"""Disks plugged into and out of a running QEMU, and media changed in its drives.

**Attach** is what a start does for one disk, later: the image's chain is read as at start (from the
qcow2 headers), each layer gets a node name past every name avirt may have open for that target
(``nodes.json`` is written first, so a controller that dies halfway leaves its successor the names),
each layer is opened with ``blockdev-add`` (the same arguments as the command line's ``-blockdev``), and
``device_add`` puts the device on its bus with the address the definition gave it (``drivers/devices.py``
fills the ABI in as define does). If ``device_add`` fails, the nodes opened for it are closed again.

**Detach** is a request to the guest: ``device_del`` makes QEMU ask the guest's OS to let a PCI device
go (the attention button of a PCIe root port, ACPI on the pc machine), and only when the guest agrees
does QEMU remove it and say ``DEVICE_DELETED``; USB and SCSI devices go at once. The call waits for that
event, for at most its timeout. Then the nodes under the device are closed (``blockdev-del``, top down)
and the disk leaves the live definition. A guest that does not answer in time (paused, no OS, an OS
without hotplug support) gets :class:`~avirt.errors.DeviceDetachTimeoutError`; the request stands in
QEMU, and when its ``DEVICE_DELETED`` comes later (or after someone's own QMP ``device_del``) the
detach is finished then; a new controller drops from the live definition the disks that left while
none watched.

**Media** of cdroms and floppies are changed in four steps, not with ``blockdev-change-medium``, so that
the new medium's nodes have avirt's names (block jobs and events name them): the new image is opened
first (a bad path leaves the old medium in place), the tray opened (``force`` overrides a guest's lock),
the old medium removed and its nodes closed, the new one inserted and the tray closed. QEMU reports
each tray movement (``DEVICE_TRAY_MOVED``, a :class:`~avirt.events.TrayChangeEvent`).

Every call here runs under the guest's lock, taken by the driver.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any, Protocol

import anyio

from avirt.config import domain_to_xml
from avirt.config.devices import Controller, Disk
from avirt.config.model import DomainConfig
from avirt.drivers.devices import describe, find_disk, judge_attach, with_disk, without_disk
from avirt.drivers.qemu.blockjobs import OnlineJobs, next_node
from avirt.drivers.qemu.cmdline.disks import Layer, disk_device, layer_nodes
from avirt.drivers.qemu.guest import Guest
from avirt.drivers.qemu.state import StateDir
from avirt.errors import DeviceDetachTimeoutError, HostError, OperationInvalidError, QMPError
from avirt.qmp import Monitor
from avirt.tasks import TaskOwner

__all__ = ["DeviceHost", "Devices", "ask_to_remove", "check_pluggable", "check_unpluggable"]

log = logging.getLogger(__name__)

#: The buses QEMU can plug a disk into while the guest runs (SATA and IDE ports are fixed at start).
HOTPLUG_BUSES = ("virtio", "scsi", "usb")


class DeviceHost(Protocol):
    files: StateDir
    tasks: TaskOwner
    jobs: OnlineJobs

    def monitor(self, guest: Guest) -> Monitor:
        """The guest's monitor (OperationInvalidError if it has none now)."""

    async def capabilities(self) -> dict[str, Any]:
        """QEMU's capabilities: ``machine_aliases`` for the ABI of a new device."""

    async def disk_layers(self, name: str, disk: Disk) -> list[Layer]:
        """The disk's image chain, bottom first, without node names (read as at start)."""

    def disk_images_changed(self, guest: Guest) -> None:
        """The persistent definition's disks changed: the image index reads them again."""


class Devices:
    def __init__(self, driver: DeviceHost) -> None:
        self._driver = driver
        #: (domain, target) of the detach calls waiting for their DEVICE_DELETED now.
        self._waiting: set[tuple[str, str]] = set()

    # -- attach ----------------------------------------------------------------------------------------

    async def attach(self, guest: Guest, xml: str, *, live: bool, config: bool) -> None:
        machines = (await self._driver.capabilities())["machine_aliases"]
        new_live, new_definition, disk = judge_attach(guest, xml, machines, live=live, config=config,
                                                      add=with_disk, check=check_pluggable)
        if new_live is not None:
            layers = await self._plug(guest, new_live, disk)
            guest.chains = {**guest.chains, disk.target: layers}
            guest.live = new_live
            await self._driver.files.write_live(guest.name, domain_to_xml(new_live))
        if new_definition is not None:
            await self._set_definition(guest, new_definition)

    async def _plug(self, guest: Guest, cfg: DomainConfig, disk: Disk) -> list[Layer]:
        layers = await self._open_layers(guest, disk)
        monitor = self._driver.monitor(guest)
        try:
            await monitor.execute("device_add", disk_device(cfg, disk, layers[-1].node if layers else None))
        except QMPError as e:
            await self._close(guest, layers, f"attach {disk.target}")
            raise QMPError(e.error_class, f"cannot attach disk {disk.target}: {e.desc}") from e
        return layers

    async def _open_layers(self, guest: Guest, disk: Disk) -> list[Layer]:
        """``blockdev-add`` of each layer of the disk's image, under fresh names; closed again on failure."""
        if disk.source is None:
            return []
        found = await self._driver.disk_layers(guest.name, disk)
        first = int(next_node(disk.target, guest.nodes).rpartition("-")[2])
        layers = [replace(layer, node=f"{disk.target}-{first + i}") for i, layer in enumerate(found)]
        await self._driver.jobs.note_nodes(guest, add={layer.node: layer.path for layer in layers})
        monitor = self._driver.monitor(guest)
        try:
            for node in layer_nodes(disk, layers):
                await monitor.execute("blockdev-add", node)
        except QMPError as e:
            await self._close(guest, layers, f"open {disk.source}")
            raise QMPError(e.error_class, f"cannot open {disk.source} for {disk.target}: {e.desc}") from e
        return layers

    async def _close(self, guest: Guest, layers: list[Layer], why: str) -> None:
        nodes = [layer.node for layer in reversed(layers) if layer.node]  # top down: each backs the one above
        if nodes:
            await self._driver.jobs.close_nodes(guest, self._driver.monitor(guest), nodes, why)

    # -- detach ----------------------------------------------------------------------------------------

    async def detach(self, guest: Guest, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        to_live, to_config = guest.affected(live=live, config=config)
        target = None
        if to_live:
            assert guest.live is not None
            disk = find_disk(guest.live, xml)
            target = disk.target
            check_unpluggable(guest.name, disk)
            if target in guest.detaching:
                raise OperationInvalidError(f"a detach of disk {target} of '{guest.name}' is already "
                                            "waiting for the guest")
            if self._driver.jobs.job_on(guest, target) is not None:
                raise OperationInvalidError(f"disk {target} of '{guest.name}' has a block job running")
        new_definition = None
        if to_config:
            assert guest.definition is not None
            new_definition = without_disk(guest.definition, find_disk(guest.definition, xml).target)
        try:
            if target is not None:
                await self._unplug(guest, target, timeout)
        finally:  # a timeout leaves the live request standing; the definition changes all the same
            if new_definition is not None:
                await self._set_definition(guest, new_definition)

    async def _unplug(self, guest: Guest, target: str, timeout: float) -> None:
        self._waiting.add((guest.name, target))
        try:
            released = await ask_to_remove(self._driver.monitor(guest), guest, target, timeout)
        finally:
            self._waiting.discard((guest.name, target))
        if not released:  # the request stands: device_deleted() finishes it if the guest agrees
            raise DeviceDetachTimeoutError(guest.name, target, timeout)
        await self._unplugged(guest, target)

    def device_deleted(self, guest: Guest, device: str) -> None:
        """QEMU's DEVICE_DELETED: a detach waiting for it goes on; otherwise (its wait timed out, another
        controller asked, or someone's own QMP ``device_del``) the disk leaves the live definition here."""
        released = guest.detaching.pop(device, None)
        if released is not None:
            released.set()
        if (guest.name, device) in self._waiting or guest.live is None or guest.live.disk(device) is None:
            return
        self._driver.tasks.start_soon(self._finish, guest, device, guest.process,
                                      name=f"detach-{guest.name}-{device}")

    async def _finish(self, guest: Guest, target: str, process: object) -> None:
        try:
            async with guest.lock:
                if guest.process is process and guest.live is not None and guest.live.disk(target):
                    await self._unplugged(guest, target)
        except (QMPError, HostError, OSError) as e:
            log.warning("domain %s: finishing the detach of %s failed: %s", guest.name, target, e)

    async def forget_unplugged(self, guest: Guest, blocks: list[dict[str, Any]]) -> None:
        """After a re-attach, with QEMU's ``query-block`` answer: disks the guest let go while no controller
        watched leave the live definition (their nodes are closed as leftovers by the job module's
        re-attach)."""
        pluggable = [d.target for d in (guest.live.disks if guest.live else []) if d.bus in HOTPLUG_BUSES]
        if not pluggable:
            return
        present = {_device_id(b.get("qdev", "")) for b in blocks}
        gone = [target for target in pluggable if target not in present]
        if not gone:
            return
        assert guest.live is not None
        log.info("domain %s: %s left while no controller watched", guest.name, ", ".join(gone))
        live = guest.live
        for target in gone:
            live = without_disk(live, target)
        guest.live = live
        guest.chains = {t: layers for t, layers in guest.chains.items() if t not in gone}
        await self._driver.files.write_live(guest.name, domain_to_xml(live))

    async def _unplugged(self, guest: Guest, target: str) -> None:
        """The device is gone from QEMU: close its nodes, and the disk leaves the live definition."""
        await self._close(guest, guest.chains.get(target, []), f"detach {target}")
        guest.chains = {t: layers for t, layers in guest.chains.items() if t != target}
        if guest.live is not None and guest.live.disk(target) is not None:
            guest.live = without_disk(guest.live, target)
            await self._driver.files.write_live(guest.name, domain_to_xml(guest.live))

    # -- media -----------------------------------------------------------------------------------------

    async def change_media(self, guest: Guest, target: str, source: str | None, *, format: str,
                           force: bool, live: bool, config: bool) -> None:
        to_live, to_config = guest.affected(live=live, config=config)
        for cfg in (guest.live if to_live else None, guest.definition if to_config else None):
            disk = None if cfg is None else cfg.disk(target)
            if cfg is not None and disk is None:
                raise OperationInvalidError(f"domain '{guest.name}' has no disk {target}")
            if disk is not None and disk.device not in ("cdrom", "floppy"):
                raise OperationInvalidError(f"disk {target} of '{guest.name}' is a {disk.device}, not a "
                                            "cdrom or floppy: its medium cannot change (detach it instead)")
        if to_live:
            assert guest.live is not None
            current = guest.live.disk(target)
            assert current is not None
            await self._swap_medium(guest, replace(current, source=source, format=format),  # type: ignore[arg-type]
                                    force)
            guest.live = _with_medium(guest.live, target, source, format)
            await self._driver.files.write_live(guest.name, domain_to_xml(guest.live))
        if to_config:
            assert guest.definition is not None
            await self._set_definition(guest, _with_medium(guest.definition, target, source, format))

    async def _swap_medium(self, guest: Guest, disk: Disk, force: bool) -> None:
        target = disk.target
        old = guest.chains.get(target, [])
        layers = await self._open_layers(guest, disk)  # first: a bad image leaves the old medium in
        monitor = self._driver.monitor(guest)
        try:
            await monitor.execute("blockdev-open-tray", {"id": target, "force": force})
            if old:
                await monitor.execute("blockdev-remove-medium", {"id": target})
        except QMPError as e:
            await self._close(guest, layers, f"change media of {target}")
            raise QMPError(e.error_class, f"cannot eject the medium of {target}: {e.desc}") from e
        guest.chains = {t: chain for t, chain in guest.chains.items() if t != target}
        await self._close(guest, old, f"eject {target}")
        if layers:
            await monitor.execute("blockdev-insert-medium", {"id": target, "node-name": layers[-1].node})
            guest.chains = {**guest.chains, target: layers}
            await monitor.execute("blockdev-close-tray", {"id": target})

    # -- definitions -----------------------------------------------------------------------------------

    async def _set_definition(self, guest: Guest, cfg: DomainConfig) -> None:
        await self._driver.files.write_definition(guest.name, domain_to_xml(cfg))
        guest.definition = cfg
        self._driver.disk_images_changed(guest)


async def ask_to_remove(monitor: Monitor, guest: Guest, device: str, timeout: float,
                        also: tuple[str, ...] = ()) -> bool:
    """``device_del`` of ``device``, then up to ``timeout`` seconds for its DEVICE_DELETED (named
    ``device`` or any of ``also``): whether it came. When it did not, the request stands in QEMU, and the
    event, if it comes later, finds ``guest.detaching`` still naming it."""
    released = anyio.Event()
    keys = (device, *also)
    for key in keys:  # before device_del: its DEVICE_DELETED may come at once
        guest.detaching[key] = released
    try:
        await monitor.execute("device_del", {"id": device})
    except QMPError:
        for key in keys:
            guest.detaching.pop(key, None)
        raise
    with anyio.move_on_after(timeout):
        await released.wait()
    return released.is_set()


def check_unpluggable(name: str, disk: Disk) -> None:
    if disk.bus not in HOTPLUG_BUSES:
        raise OperationInvalidError(f"disk {disk.target} of '{name}' is on bus {disk.bus}, whose devices "
                                    "cannot be unplugged while the domain runs")


def check_pluggable(name: str, disk: Disk, needed: list[Controller]) -> None:
    """Whether the disk can join ``name`` while it runs; ``needed``: the controllers it would need added."""
    if disk.bus not in HOTPLUG_BUSES:
        raise OperationInvalidError(f"a disk on bus {disk.bus} cannot be attached while '{name}' runs "
                                    f"(QEMU plugs disks into {', '.join(HOTPLUG_BUSES)} buses only)")
    if disk.device == "lun":
        raise OperationInvalidError("a device='lun' disk cannot be attached while the domain runs")
    if needed:
        raise OperationInvalidError(
            f"disk {disk.target} needs {', '.join(describe(c) for c in needed)}, which a running domain "
            f"cannot be given; add it to the definition (config=True) and restart '{name}', or keep a "
            "spare one in the definition for hotplug")


def _device_id(qdev: str) -> str:
    """``/machine/peripheral/vda/virtio-backend`` (virtio) or ``sdb`` (scsi, usb) -> the device id."""
    return qdev.removeprefix("/machine/peripheral/").split("/")[0]


def _with_medium(cfg: DomainConfig, target: str, source: str | None, format: str) -> DomainConfig:
    changed = copy.deepcopy(cfg)
    disk = changed.disk(target)
    assert disk is not None
    disk.source = source
    if source is not None:
        disk.format = format  # type: ignore[assignment]
    return changed
