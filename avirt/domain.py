"""The :class:`Domain` handle: argument checks, then one call into the driver.

A ``Domain`` is a name and a UUID bound to a connection; it holds no state of its own, so two handles for
the same domain always agree, and a handle stays valid across start and stop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avirt import migration
from avirt.errors import InvalidArgumentError, OperationInvalidError, OperationTimeoutError
from avirt.jobs import BlockJob
from avirt.migration import MigrationJob
from avirt.models import DomainInfo, DomainState, ImageInfo, InterfaceAddresses, InterfaceStats

if TYPE_CHECKING:
    from avirt.connection import Connection
    from avirt.drivers.base import Driver
    from avirt.guest_agent import GuestAgent


class Domain:
    def __init__(self, driver: Driver, name: str, uuid: str) -> None:
        self._driver = driver
        self.name = name
        self.uuid = uuid

    def __repr__(self) -> str:
        return f"<Domain {self.name} {self.uuid}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and other._driver is self._driver and other.uuid == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    async def start(self, *, paused: bool = False) -> None:
        """Start the (persistent, shut-off) domain; with ``paused`` its CPUs wait for :meth:`resume`."""
        await self._driver.start(self.name, paused=paused)

    async def shutdown(self, *, wait: float | None = None) -> None:
        """Press the ACPI power button. With ``wait``, return once the domain is shut off, or raise
        :class:`~avirt.errors.OperationTimeoutError` after that many seconds (the guest keeps running)."""
        if wait is not None and wait < 0:
            raise InvalidArgumentError("wait must be >= 0 seconds")
        await self._driver.shutdown(self.name, wait=wait)

    async def destroy(self) -> None:
        """Stop the domain now (QMP ``quit``, then SIGTERM, then SIGKILL); returns once QEMU is gone."""
        await self._driver.destroy(self.name)

    async def reboot(self) -> None:
        """Ask the guest to reboot (ACPI power button, then a reset once it has shut down)."""
        await self._driver.reboot(self.name)

    async def reset(self) -> None:
        """Reset the virtual machine at once, like its reset button."""
        await self._driver.reset(self.name)

    async def set_link(self, interface: str, up: bool) -> None:
        """Set a NIC's link up or down while the guest runs (QMP ``set_link``), as a cable plugged in or
        pulled; ``interface`` is its MAC address or its tap's name (``vnet0``)."""
        await self._driver.set_link(self.name, interface, up)

    async def set_memory(self, kib: int, *, live: bool = True, config: bool = False) -> None:
        """Set the domain's current memory, in KiB (virDomainSetMemoryFlags, virsh setmem). ``live``: the
        running guest, through its balloon device (QMP ``balloon``; the guest's balloon driver gives the
        memory back in its own time: watch ``balloon.current`` or ``BalloonChangeEvent``); ``config``:
        the persistent definition's ``<currentMemory>``, flags as for :meth:`attach_device`. More than
        the maximum (``<memory>``) is an :class:`~avirt.errors.InvalidArgumentError`; a live change
        without ``<memballoon model='virtio'/>`` an :class:`~avirt.errors.OperationInvalidError`."""
        if isinstance(kib, bool) or not isinstance(kib, int) or kib <= 0:
            raise InvalidArgumentError(f"memory must be a positive number of KiB, not {kib!r}")
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        await self._driver.set_memory(self.name, kib, live=live, config=config)

    async def interface_addresses(self, source: str = "lease") -> list[InterfaceAddresses]:
        """The addresses of the running guest's NICs (virDomainInterfaceAddresses).

        ``source='lease'``: the leases the network's dnsmasq gave each NIC's MAC (NICs of
        ``type='network'``); ``'arp'``: the host's neighbour table on each NIC's bridge (any address the
        guest has used recently, IPv4 and IPv6, with prefix 0 since the table does not know it). NICs the
        host's source knows no address of are left out, as libvirt leaves them out. ``'agent'``: the
        guest's own word, through its agent (``guest-network-get-interfaces``): every interface of the
        guest (``lo`` too, any without an address too) under the guest's name for it, with prefixes; the
        agent's errors (:class:`~avirt.errors.AgentUnavailableError`,
        :class:`~avirt.errors.AgentTimeoutError`) as for :attr:`agent`'s calls."""
        from avirt.networks.nicinfo import SOURCES  # lazily: the networks package is not needed before

        if source == "agent":
            from avirt.agent.results import interface_addresses

            return interface_addresses(await self.agent.network_interfaces())
        if source not in SOURCES:
            raise InvalidArgumentError(f"the address source is one of {', '.join((*SOURCES, 'agent'))}, "
                                       f"not {source!r}")
        return await self._driver.interface_addresses(self.name, source)

    async def interface_stats(self, interface: str, *, timeout: float = 5.0) -> InterfaceStats:
        """The traffic counters of one NIC of the running guest (virDomainInterfaceStats, virsh
        domifstat), named by its tap's name (``vnet0``) or its MAC. The counters are the tap's, seen from
        the guest: the host side of a tap receives what the guest sends, so the directions are swapped (as
        libvirt swaps them): ``rx_bytes`` is what the guest received."""
        from avirt.drivers.stats import STATE_NUMBERS, UNRESPONSIVE, interface_stats

        [(_, params)] = await self._driver.all_domain_stats(["state", "interface"], [self.name], timeout)
        if params.get("state.state") == STATE_NUMBERS[DomainState.SHUTOFF]:
            raise OperationInvalidError(f"domain '{self.name}' is not running")
        if params.get(UNRESPONSIVE):
            raise OperationTimeoutError(f"domain '{self.name}': no answer within {timeout:g} s")
        name = interface
        if ":" in interface:  # a MAC: its tap's name is in the live definition
            name = _tap_of(await self.xml(), interface) or interface
        counters = interface_stats(params, name)
        if counters is None:
            raise InvalidArgumentError(f"domain '{self.name}' has no interface with MAC or device "
                                       f"'{interface}'")
        return counters

    async def suspend(self) -> None:
        """Pause the guest's CPUs (no-op if already paused)."""
        await self._driver.suspend(self.name)

    async def resume(self) -> None:
        """Let a paused guest run again."""
        await self._driver.resume(self.name)

    async def undefine(self) -> None:
        """Remove the persistent definition; a running domain goes on as a transient one."""
        await self._driver.undefine(self.name)

    async def qemu_monitor_command(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one QMP command to the domain's QEMU and return its answer (virDomainQemuMonitorCommand).

        An escape hatch for what the API does not cover yet. avirt does not know what the command changes:
        a command that changes devices, block nodes or the run state can leave avirt's view of the domain
        out of date.
        """
        return await self._driver.qemu_monitor_command(self.name, command, arguments)

    async def block_commit(self, disk: str, *, base: str | None = None, top: str | None = None,
                           shallow: bool = False, delete: bool = False, relative: bool = False,
                           bandwidth: int | None = None, pivot: bool = False,
                           allow_shared_base: bool = False) -> BlockJob:
        """Commit the layers from ``top`` down into ``base`` (virDomainBlockCommit).

        ``top=None`` is the active image; ``base=None`` the bottom of the chain; ``shallow`` makes base
        top's own backing file. Either may be a path or ``"vda[N]"`` (``vda[0]`` is the active image,
        ``vda[N]`` the N-th backing file). Committing the active image is two-phase: the job becomes
        ready, then ``pivot()`` makes base the active image (``pivot=True`` does it by itself) or
        ``abort()`` leaves the chain as it was. ``delete`` removes the committed images once the job has
        completed; ``relative`` keeps a relative backing name; ``bandwidth`` is in bytes per second.

        A base that another defined domain's disk also reads through its backing chain is refused with
        :class:`~avirt.errors.SharedImageError` (the other guests would see changed data), unless
        ``allow_shared_base=True``. On a shut-off domain, a commit whose data may not fit in the free
        space of the base's filesystem is refused with :class:`~avirt.errors.InsufficientSpaceError`.
        """
        if bandwidth is not None and bandwidth < 0:
            raise InvalidArgumentError("bandwidth must be >= 0 bytes/s")
        return await self._driver.block_commit(self.name, disk, base=base, top=top, shallow=shallow,
                                               delete=delete, relative=relative, bandwidth=bandwidth,
                                               pivot=pivot, allow_shared_base=allow_shared_base)

    async def block_pull(self, disk: str, *, base: str | None = None,
                         bandwidth: int | None = None) -> BlockJob:
        """Copy into the active image the data of every layer above ``base`` (all layers if None), which
        then becomes its backing file (none if None) (virDomainBlockRebase / virsh blockpull)."""
        if bandwidth is not None and bandwidth < 0:
            raise InvalidArgumentError("bandwidth must be >= 0 bytes/s")
        return await self._driver.block_pull(self.name, disk, base=base, bandwidth=bandwidth)

    async def block_copy(self, disk: str, dest: str, *, format: str = "qcow2", shallow: bool = False,
                         reuse_external: bool = False, bandwidth: int | None = None,
                         pivot: bool = False) -> BlockJob:
        """Copy the disk into ``dest`` while the guest runs (virDomainBlockCopy): the whole chain, or with
        ``shallow`` only the active image (``dest`` then backs onto the same backing file). Two-phase:
        ``pivot()`` switches the disk to the copy, ``abort()`` keeps the original. ``reuse_external``
        uses an existing ``dest`` instead of creating it."""
        if format not in ("qcow2", "raw"):
            raise InvalidArgumentError(f"format must be qcow2 or raw, not {format!r}")
        if shallow and format != "qcow2":
            raise InvalidArgumentError("a shallow copy needs a qcow2 destination (it has a backing file)")
        if bandwidth is not None and bandwidth < 0:
            raise InvalidArgumentError("bandwidth must be >= 0 bytes/s")
        return await self._driver.block_copy(self.name, disk, dest, format=format, shallow=shallow,
                                             reuse_external=reuse_external, bandwidth=bandwidth,
                                             pivot=pivot)

    async def block_chain(self, disk: str) -> list[ImageInfo]:
        """The disk's images, top first, with their sizes and what each stores itself."""
        return await self._driver.block_chain(self.name, disk)

    async def snapshot_disks(self, name: str, *, disks: list[str] | None = None,
                             quiesce: bool = False) -> dict[str, str]:
        """External disk-only snapshot: a new qcow2 overlay on each disk (every writable disk if None).

        Running, the overlays are switched in one transaction: all disks or none. Returns disk -> new
        overlay path (beside the image it covers, named ``<image>.<name>.qcow2``).

        ``quiesce=True`` (running domains): the guest agent freezes the guest's filesystems first (their
        data flushed, writes held), so the images below the overlays hold consistent filesystems, and
        thaws them after, also when the snapshot fails. A domain without the agent's channel raises
        :class:`~avirt.errors.AgentUnavailableError`, an agent that does not answer
        :class:`~avirt.errors.AgentTimeoutError`, before anything is created. A shut-off domain has no
        running filesystem to quiesce: ``quiesce`` is refused there (``OperationInvalidError``).
        """
        if not name or "/" in name or name.startswith("."):
            raise InvalidArgumentError(f"bad snapshot name {name!r}")
        if quiesce:
            return await self._driver.snapshot_disks(self.name, name, disks, quiesce=True)
        return await self._driver.snapshot_disks(self.name, name, disks)

    @property
    def agent(self) -> GuestAgent:
        """The domain's QEMU guest agent (qemu-ga in the guest, over the ``org.qemu.guest_agent.0``
        channel): ``await dom.agent.ping()``. See :mod:`avirt.guest_agent`."""
        from avirt.guest_agent import GuestAgent

        return GuestAgent(self._driver, self.name)

    async def block_job(self, disk: str) -> BlockJob | None:
        """The block job running on ``disk``, or None.

        After a controller restart this is also how to learn the result of a job that ended while no
        controller watched: it is returned once, already concluded (``await job`` gives its status).
        """
        return await self._driver.block_job(self.name, disk)

    async def state(self) -> tuple[DomainState, str]:
        """The domain's state and the reason for it, e.g. ``(DomainState.RUNNING, 'booted')``."""
        return await self._driver.state(self.name)

    async def info(self) -> DomainInfo:
        return await self._driver.info(self.name)

    async def attach_device(self, xml: str, *, live: bool = True, config: bool = False) -> None:
        """Attach a ``<disk>`` or an ``<interface>`` (virDomainAttachDeviceFlags): ``live`` plugs it into the
        running domain, ``config`` adds it to the persistent definition (a shut-off domain: the definition
        only, when both are given). Its address is filled in as at define time: a virtio disk takes a free PCI
        slot (on q35 a free ``pcie-root-port``: a running guest cannot be given a new one, so keep spares in
        the definition), a SCSI disk a unit of an existing virtio-scsi controller, a USB disk a port. Only
        virtio, SCSI and USB disks can be plugged into a running domain. A NIC (type ``network``, ``bridge``,
        ``ethernet`` or ``user``) gets a PCI slot the same way and, on a host network, a tap avirt opens and
        hands to QEMU over its monitor; a NIC without a ``<mac>`` gets one."""
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        await self._driver.attach_device(self.name, xml, live=live, config=config)

    async def detach_device(self, xml: str, *, live: bool = True, config: bool = False,
                            timeout: float = 10.0) -> None:
        """Detach the disk that ``xml`` names by its target (or its source), or the ``<interface>`` it names
        by its MAC (or its tap's ``<target dev>``) (virDomainDetachDeviceFlags). A NIC's tap is deleted
        once the guest has let the NIC go.

        Live, this asks the guest to let the device go and waits for it up to ``timeout`` seconds: a PCI
        device needs the guest OS's consent (USB and SCSI devices go at once). A guest that does not
        release it in time raises :class:`~avirt.errors.DeviceDetachTimeoutError`; the request stands,
        and the detach completes by itself (with a ``DeviceRemovedEvent``) if the guest agrees later."""
        if timeout < 0:
            raise InvalidArgumentError("timeout must be >= 0 seconds")
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        await self._driver.detach_device(self.name, xml, live=live, config=config, timeout=timeout)

    async def change_media(self, disk: str, source: str | None, *, format: str = "raw", force: bool = False,
                           live: bool = True, config: bool = False) -> None:
        """Insert image ``source`` into cdrom or floppy drive ``disk``, replacing its medium, or eject it
        (``source=None``) (virDomainUpdateDeviceFlags on a ``<disk device='cdrom'>``). ``force`` opens a
        tray the guest has locked. Each tray movement is a :class:`~avirt.events.TrayChangeEvent`."""
        if format not in ("raw", "qcow2"):
            raise InvalidArgumentError(f"format must be raw or qcow2, not {format!r}")
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        await self._driver.change_media(self.name, disk, source, format=format, force=force, live=live,
                                        config=config)

    async def set_vcpus(self, count: int, *, live: bool = True, config: bool = False,
                        timeout: float = 10.0) -> None:
        """Make ``count`` vCPUs online, up to the definition's ``<vcpu>`` (virDomainSetVcpusFlags): ``live``
        plugs vCPUs into the running guest (the guest's OS then brings them online) or asks it to let the
        last ones go, waiting up to ``timeout`` seconds for each (a guest that does not release one raises
        :class:`~avirt.errors.DeviceDetachTimeoutError`; the request stands); ``config`` sets how many are
        online at the next start (``<vcpu current=...>``). The first vCPU never leaves."""
        if timeout < 0:
            raise InvalidArgumentError("timeout must be >= 0 seconds")
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        await self._driver.set_vcpus(self.name, count, live=live, config=config, timeout=timeout)

    async def set_block_threshold(self, dev: str, threshold: int) -> None:
        """Be told once when the guest writes past ``threshold`` bytes of a disk layer
        (virDomainSetBlockThreshold): ``dev`` is ``vda`` for the disk's top layer or ``vda[N]`` for the
        N-th layer below it; while a block copy runs on the disk, ``vda[N]`` with N the chain's length
        (the live XML's ``<mirror index>``) is the copy's destination. The first write that ends past
        the threshold emits one :class:`~avirt.events.BlockThresholdEvent`, and the threshold is then
        gone (QEMU disarms it), as libvirt documents; 0 disarms it now. Statistics show it as
        ``block.N.threshold`` (top layers). The domain must be running (or paused)."""
        if threshold < 0:
            raise InvalidArgumentError("threshold must be >= 0 bytes")
        await self._driver.set_block_threshold(self.name, dev, threshold)

    async def block_stats(self, disk: str, *, timeout: float = 5.0) -> dict[str, int]:
        """The I/O counters of one disk of the running domain (virDomainBlockStatsFlags, virsh domblkstat):
        ``rd_operations``, ``rd_bytes``, ``rd_total_times`` (ns), ``wr_*`` and ``flush_*`` likewise."""
        from avirt.drivers.stats import STATE_NUMBERS, UNRESPONSIVE, block_stats

        [(_, params)] = await self._driver.all_domain_stats(["state", "block"], [self.name], timeout)
        if params.get("state.state") == STATE_NUMBERS[DomainState.SHUTOFF]:
            raise OperationInvalidError(f"domain '{self.name}' is not running")
        if params.get(UNRESPONSIVE):
            raise OperationTimeoutError(f"domain '{self.name}': QEMU did not answer within {timeout:g} s")
        counters = block_stats(params, disk)
        if counters is None:
            raise InvalidArgumentError(f"domain '{self.name}' has no disk {disk}")
        return counters
    async def migrate(self, dest: Connection, *, live: bool = True, copy_storage: str | None = None,
                      storage_paths: dict[str, str] | None = None, bandwidth: int | None = None,
                      max_downtime: int | None = None, persist: bool = True,
                      undefine_source: bool = True, auto_converge: bool = False, compressed: bool = False,
                      parallel: int | None = None, postcopy: bool = False, tls: bool = False) -> MigrationJob:
        """Move the running guest to the connection ``dest`` (virDomainMigrate); ``await`` the job for the
        guest's Domain there. ``copy_storage``: None (both sides see the same images), "all" (each
        writable disk copied whole into a new image at the destination) or "inc" (only its top layer,
        onto the same backing chain); ``storage_paths``: disk target -> the destination's image.
        ``bandwidth`` in bytes/s (default: unlimited), ``max_downtime`` in ms; ``persist`` defines it at
        the destination, ``undefine_source`` removes the source's definition. ``auto_converge`` throttles
        a guest that dirties memory faster than it is sent, ``compressed`` sends changed pages as XBZRLE
        deltas, ``parallel`` sends memory over that many connections (multifd); ``postcopy`` lets
        :meth:`MigrationJob.postcopy` switch to postcopy; ``tls`` encrypts the streams with each side's
        certificates (``<state_dir>/tls/``). Refusals (not running, a
        block job, a name taken at the destination...) raise here; a failure later raises from the job,
        with the guest running on at the source. See :mod:`avirt.migration`."""
        return await migration.start(self, self._driver, dest, live=live, copy_storage=copy_storage,
                                     storage_paths=storage_paths, bandwidth=bandwidth,
                                     max_downtime=max_downtime, persist=persist,
                                     undefine_source=undefine_source, auto_converge=auto_converge,
                                     compressed=compressed, parallel=parallel, postcopy=postcopy,
                                     tls=tls)

    async def xml(self, *, inactive: bool = False) -> str:
        """The domain XML: live (with ``<backingStore>`` chains) while it runs, else the definition."""
        return await self._driver.xml(self.name, inactive=inactive)

    async def metadata(self, uri: str, *, inactive: bool = False) -> str | None:
        """The domain's metadata element in namespace ``uri``, or None (virDomainGetMetadata, ELEMENT).

        The element comes back as XML text with that namespace taken off, as libvirt gives it: what
        :meth:`set_metadata` was given (``<app><owner>ops</owner></app>``). While the domain runs this is
        its live metadata; ``inactive=True`` reads the persistent definition instead
        (:class:`~avirt.errors.OperationInvalidError` for a transient domain, which has none).
        """
        from avirt.config.metadata import check_uri  # lxml: loaded by the first call that needs it

        check_uri(uri)
        return await self._driver.metadata(self.name, uri, inactive=inactive)

    async def set_metadata(self, uri: str, xml: str | None, *, prefix: str | None = None,
                           live: bool = True, config: bool = True) -> None:
        """Replace the domain's metadata element in namespace ``uri`` with ``xml``, or remove it with None
        (virDomainSetMetadata, ELEMENT).

        ``xml`` is one element. As in libvirt, it is stored in namespace ``uri`` under ``prefix`` (required
        with ``xml``, libvirt's key) whatever namespace it was written in; elements it puts in a third
        namespace keep theirs. So ::

            await dom.set_metadata("http://app/1", "<app><owner>ops</owner></app>", prefix="app")

        stores ``<app:app xmlns:app="http://app/1"><app:owner>ops</app:owner></app:app>`` in ``<metadata>``.

        ``live`` changes the running domain (its live XML), ``config`` the persistent definition (written
        atomically to the state directory). On a shut-off domain ``live`` is ignored when ``config`` is
        also given (libvirt's "current"), so the default changes a persistent domain whether it runs or
        not; ``live`` alone on a shut-off domain is an :class:`~avirt.errors.OperationInvalidError`, as is
        ``config`` on a transient domain. Each call that succeeds emits one
        :class:`~avirt.events.MetadataChangeEvent`.

        Bad ``xml`` (malformed, empty, more than one element) raises
        :class:`~avirt.errors.InvalidXMLError`; a bad ``uri`` or ``prefix``, or neither ``live`` nor
        ``config``, raises ``InvalidArgumentError``.
        """
        from avirt.config.metadata import check_uri, element

        check_uri(uri)
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        stored = None
        if xml is not None:
            if prefix is None:
                raise InvalidArgumentError(
                    "a namespace prefix is needed to store a metadata element (prefix=...)")
            stored = element(uri, xml, prefix)
        await self._driver.set_metadata(self.name, uri, stored, live=live, config=config)


def _tap_of(xml: str, mac: str) -> str | None:
    """The tap's name (``<target dev>``) of the NIC with MAC ``mac`` in a live domain XML."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    for nic in root.iterfind("devices/interface"):
        address = nic.find("mac")
        target = nic.find("target")
        if address is not None and target is not None and address.get("address", "").lower() == mac.lower():
            return target.get("dev")
    return None
