"""The interface between the public objects and a hypervisor driver.

``Connection`` and ``Domain`` check arguments and then make exactly one call into a :class:`Driver`;
everything hypervisor-specific happens below this line. A driver names domains by their (unique) name.
Drivers: ``drivers/qemu/`` (real QEMU guests) and ``drivers/test/`` (in memory, ``test:///default``).
What every driver shares is here too: a domain's record (:class:`DomainRecord`: its definitions, state and
the table of which call each state allows) and two policies, :func:`assign_macs` and :func:`overlay_path`.
"""

from __future__ import annotations

import os
import secrets
import uuid as uuid_mod
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from avirt.config.model import DomainConfig
from avirt.errors import (
    DomainNotFoundError,
    InvalidArgumentError,
    OperationInvalidError,
    OperationTimeoutError,
    UnsupportedError,
)
from avirt.events.bus import EventBus
from avirt.hosts.forwarding import Forwarder
from avirt.jobs import BlockJob
from avirt.models import DomainInfo, DomainState, ImageInfo, InterfaceAddresses, MigrationProgress
from avirt.networks.model import DHCPLease


@dataclass(frozen=True)
class DomainRef:
    """What identifies a domain: its name and UUID."""

    name: str
    uuid: str


S = DomainState

#: Which states each lifecycle call accepts (anything else is an OperationInvalidError, at once).
ALLOWED: dict[str, frozenset[DomainState]] = {
    "start": frozenset({S.SHUTOFF}),
    "shutdown": frozenset({S.RUNNING, S.PAUSED}),
    "reboot": frozenset({S.RUNNING}),
    "reset": frozenset({S.RUNNING, S.PAUSED, S.CRASHED, S.PMSUSPENDED}),
    "suspend": frozenset({S.RUNNING, S.PAUSED}),
    "resume": frozenset({S.PAUSED}),
    "destroy": frozenset(set(S) - {S.SHUTOFF}),
}


@dataclass
class DomainRecord:
    """What a driver knows of one domain whatever runs it; each driver's record adds its own fields."""

    name: str
    uuid: str
    #: The persistent definition; None for a transient domain.
    definition: DomainConfig | None
    state: DomainState = S.SHUTOFF
    reason: str = "unknown"
    #: The definition the running domain was started with (its disks follow block jobs); None while off.
    live: DomainConfig | None = None

    @property
    def config(self) -> DomainConfig:
        cfg = self.live or self.definition
        assert cfg is not None, "a domain always has a live or a persistent definition"
        return cfg

    @property
    def persistent(self) -> bool:
        return self.definition is not None

    @property
    def active(self) -> bool:
        return self.state is not S.SHUTOFF

    def require(self, call: str) -> None:
        if self.state not in ALLOWED[call]:
            raise OperationInvalidError(
                f"cannot {call} domain '{self.name}': it is {self.state.value} ({self.reason})")

    def readable(self, *, inactive: bool) -> DomainConfig:
        """The definition a read with libvirt's flags reads: the persistent one with ``inactive``, else
        the live one while the domain runs (the persistent one while it is shut off)."""
        if not inactive:
            return self.config
        if self.definition is None:
            raise OperationInvalidError(
                f"domain '{self.name}' is transient: it has no persistent definition to read")
        return self.definition

    def affected(self, *, live: bool, config: bool) -> tuple[bool, bool]:
        """Which definitions a change with libvirt's ``live``/``config`` flags changes: (live, persistent).

        ``config`` on a transient domain is refused, and so is ``live`` alone on a shut-off domain; ``live``
        with ``config`` on a shut-off domain changes the persistent definition only (libvirt's "current").
        """
        if not live and not config:
            raise InvalidArgumentError("nothing to change: live and config are both False")
        if config and self.definition is None:
            raise OperationInvalidError(
                f"domain '{self.name}' is transient: it has no persistent definition to change "
                "(change the running domain only)")
        running = self.live is not None
        if live and not config and not running:
            raise OperationInvalidError(
                f"domain '{self.name}' is not running: it has no live definition to change "
                "(change the persistent definition only)")
        return live and running, config


async def wait_shut_off(name: str, stopped: anyio.Event, wait: float) -> None:
    """After the power button: until the domain's run ends (``stopped``), for at most ``wait`` seconds."""
    try:
        with anyio.fail_after(wait):
            await stopped.wait()
    except TimeoutError:
        raise OperationTimeoutError(
            f"domain '{name}' did not shut off within {wait:g} s of the power button; "
            "it is still running (destroying it stops it now)") from None


R = TypeVar("R", bound=DomainRecord)


class Records(dict[str, R]):
    """A driver's domains by name, with an index by UUID beside it.

    A fleet's state directory holds thousands of domains, and every define asks whether its UUID is
    taken: the index keeps that question (and a lookup by UUID) from walking them all. A record's UUID
    never changes, so entering and removing records is all the index has to follow.
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_uuid: dict[str, R] = {}

    def __setitem__(self, name: str, record: R) -> None:
        old = self.get(name)
        if old is not None:
            self._by_uuid.pop(old.uuid, None)
        super().__setitem__(name, record)
        self._by_uuid[record.uuid] = record

    def __delitem__(self, name: str) -> None:
        self._by_uuid.pop(self[name].uuid, None)
        super().__delitem__(name)

    def pop(self, name: str, default: Any = None) -> Any:
        if name not in self:
            return default
        record = self[name]
        del self[name]
        return record

    def by_uuid(self, uuid: str) -> R | None:
        """The record with this UUID (in its canonical spelling), if any."""
        return self._by_uuid.get(uuid)


def find_record(records: Records[R], name_or_uuid: str) -> R:
    """A domain by name, or by UUID in any spelling; DomainNotFoundError otherwise."""
    record = records.get(name_or_uuid)
    if record is None:
        try:
            record = records.by_uuid(str(uuid_mod.UUID(name_or_uuid)))
        except ValueError:
            pass
    if record is None:
        raise DomainNotFoundError(f"no domain with name or uuid '{name_or_uuid}'")
    return record


class Driver(ABC):
    uri: str
    #: Where the driver publishes domain events; Connection.subscribe/events read from it.
    bus: EventBus
    #: How this driver opens another connection's driver by URI, for as long as the context lasts (set
    #: by avirt.connection before open). A migration's recovery uses it to tell a destination on another
    #: machine what only the source's record knows; None: it cannot.
    peers: Callable[[str], AbstractAsyncContextManager[Driver]] | None = None

    @abstractmethod
    async def open(self) -> None:
        """Attach to the hypervisor (and to guests that are already running)."""

    @abstractmethod
    async def close(self) -> None:
        """Detach; running guests keep running."""

    @abstractmethod
    async def capabilities(self) -> dict[str, Any]: ...

    # -- domains ---------------------------------------------------------------------------------------

    @abstractmethod
    async def define_xml(self, xml: str) -> DomainRef: ...

    @abstractmethod
    async def create_xml(self, xml: str, *, paused: bool) -> DomainRef: ...

    @abstractmethod
    async def lookup(self, name_or_uuid: str) -> DomainRef: ...

    @abstractmethod
    async def list_domains(self) -> list[DomainRef]: ...

    @abstractmethod
    async def undefine(self, name: str) -> None: ...

    # -- lifecycle -------------------------------------------------------------------------------------

    @abstractmethod
    async def start(self, name: str, *, paused: bool) -> None: ...

    @abstractmethod
    async def shutdown(self, name: str, *, wait: float | None) -> None: ...

    @abstractmethod
    async def destroy(self, name: str) -> None: ...

    @abstractmethod
    async def reboot(self, name: str) -> None: ...

    @abstractmethod
    async def reset(self, name: str) -> None: ...

    @abstractmethod
    async def suspend(self, name: str) -> None: ...

    @abstractmethod
    async def resume(self, name: str) -> None: ...

    @abstractmethod
    async def qemu_monitor_command(self, name: str, command: str,
                                   arguments: dict[str, Any] | None) -> Any: ...

    # -- block jobs -------------------------------------------------------------------------------------

    @abstractmethod
    async def block_commit(self, name: str, disk: str, *, base: str | None, top: str | None,
                           shallow: bool, delete: bool, relative: bool, bandwidth: int | None,
                           pivot: bool, allow_shared_base: bool = False) -> BlockJob: ...

    @abstractmethod
    async def block_pull(self, name: str, disk: str, *, base: str | None,
                         bandwidth: int | None) -> BlockJob: ...

    @abstractmethod
    async def block_copy(self, name: str, disk: str, dest: str, *, format: str, shallow: bool,
                         reuse_external: bool, bandwidth: int | None, pivot: bool) -> BlockJob: ...

    @abstractmethod
    async def block_job(self, name: str, disk: str) -> BlockJob | None: ...

    @abstractmethod
    async def block_chain(self, name: str, disk: str) -> list[ImageInfo]: ...

    @abstractmethod
    async def snapshot_disks(self, name: str, snapshot: str, disks: list[str] | None,
                             quiesce: bool = False) -> dict[str, str]:
        """A disk-only snapshot; with ``quiesce`` the running guest's filesystems are frozen through its
        agent around it (and thawed whatever happens), refused before anything changes without one."""

    # -- devices ---------------------------------------------------------------------------------------

    @abstractmethod
    async def attach_device(self, name: str, xml: str, *, live: bool, config: bool) -> None:
        """Add the ``<disk>`` of ``xml`` to the definitions :meth:`DomainRecord.affected` names (plugged
        into the running QEMU for the live one)."""

    @abstractmethod
    async def detach_device(self, name: str, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        """Remove the disk ``xml`` names; live, wait up to ``timeout`` seconds for the guest to release it
        (:class:`~avirt.errors.DeviceDetachTimeoutError` after that)."""

    @abstractmethod
    async def change_media(self, name: str, disk: str, source: str | None, *, format: str, force: bool,
                           live: bool, config: bool) -> None:
        """Put image ``source`` (None: nothing) in cdrom or floppy drive ``disk``."""

    @abstractmethod
    async def set_vcpus(self, name: str, count: int, *, live: bool, config: bool, timeout: float) -> None:
        """Make ``count`` vCPUs online (live: plugged in or out of the running guest, waiting up to
        ``timeout`` seconds for it to release each one removed; config: at the next start)."""

    @abstractmethod
    async def set_block_threshold(self, name: str, dev: str, threshold: int) -> None:
        """Arm a one-shot write threshold of ``threshold`` bytes (0: disarm) on disk layer ``dev`` of the
        running domain: ``vda`` is the disk's top layer, ``vda[N]`` the N-th below it."""

    async def set_memory(self, name: str, kib: int, *, live: bool, config: bool) -> None:
        """Set the domain's current memory to ``kib`` KiB in the definitions :meth:`DomainRecord.affected`
        names (the running guest through its balloon)."""
        raise UnsupportedError(["set_memory"], f"{self.uri} cannot change a domain's memory")

    # -- queries ---------------------------------------------------------------------------------------

    @abstractmethod
    async def state(self, name: str) -> tuple[DomainState, str]: ...

    @abstractmethod
    async def info(self, name: str) -> DomainInfo: ...

    @abstractmethod
    async def xml(self, name: str, *, inactive: bool) -> str: ...

    @abstractmethod
    async def all_domain_stats(self, groups: list[str], names: list[str] | None,
                               timeout: float) -> list[tuple[DomainRef, dict[str, Any]]]:
        """Each domain's statistics (``drivers/stats.py``'s fields) in the ``groups`` given, for the domains
        ``names`` (every domain if None, by name), each given at most ``timeout`` seconds."""

    # -- metadata --------------------------------------------------------------------------------------

    @abstractmethod
    async def metadata(self, name: str, uri: str, *, inactive: bool) -> str | None:
        """The metadata element in namespace ``uri`` (``config.metadata.find``'s form), or None."""

    @abstractmethod
    async def set_metadata(self, name: str, uri: str, element: str | None, *, live: bool,
                           config: bool) -> None:
        """Put ``element`` (``config.metadata.element``'s result; None removes) in place of the domain's
        element in namespace ``uri``, in the definitions :meth:`DomainRecord.affected` names, and announce
        a :class:`~avirt.events.model.MetadataChangeEvent`."""


    # -- the guest agent (qemu-ga over the org.qemu.guest_agent.0 channel; see avirt/guest_agent.py) --------

    async def agent_command(self, name: str, command: str, arguments: dict[str, Any] | None,
                            timeout: float) -> Any:
        """Run one guest agent command in the running domain and return its ``return`` value
        (:class:`~avirt.errors.AgentError` and its subclasses for the agent's failures)."""
        raise UnsupportedError(["agent_command"], f"{self.uri} has no guest agents")

    async def agent_shutdown(self, name: str, mode: str, timeout: float) -> None:
        """guest-shutdown with ``mode`` (powerdown, reboot, halt): it answers only a failure, so this
        returns once the guest goes down, or after ``timeout`` with no error answer."""
        raise UnsupportedError(["agent_shutdown"], f"{self.uri} has no guest agents")

    # -- migration: the phases avirt/migration.py runs in order; a driver without them refuses at once --

    def start_task(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``func()`` in the background, owned by this driver (cancelled when it closes)."""
        raise OperationInvalidError(f"{type(self).__name__} runs no background work")

    async def migrate_begin(self, name: str, *, disks: bool = True, tls: bool = False,
                            ) -> tuple[str, str | None, bool, list[dict[str, Any]]]:
        """Source: (live XML, persistent XML or None, whether the CPUs run, the disks a copy moves; with
        ``disks`` False, as for shared storage, none are looked for and the list is empty). ``tls``:
        refuse unless this side has its TLS client files."""
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    def location(self) -> str:
        """Where this side's state lives, as the other side of a migration reads its record there."""
        raise OperationInvalidError(f"{type(self).__name__} takes no part in migrations")

    def forwarder(self) -> Forwarder:
        """The machine this side's QEMUs run on, and how a stream reaches its unix sockets from here."""
        raise OperationInvalidError(f"{type(self).__name__} takes no part in migrations")

    async def migrate_prepare(self, xml: str, *, source: str, resume: bool, persistent_xml: str | None,
                              copies: list[dict[str, Any]] | None = None,
                              tuning: dict[str, Any] | None = None) -> tuple[str, str | None]:
        """Destination: a QEMU waiting for the guest; the URI the source sends it to, and the NBD socket
        of the storage ``copies``' new images (None without). ``tuning``: QEMU's migration capabilities
        and parameters both sides need (:func:`avirt.migration.tuning`)."""
        raise OperationInvalidError("migration into this connection is not supported")

    async def migrate_ready(self, name: str, *, dest: str, bandwidth: int | None, max_downtime: int | None,
                            mirrors: bool = False, tuning: dict[str, Any] | None = None) -> None:
        """Source, while the destination prepares: its record written (``dest``: where the destination's
        state is), its QEMU set to send (``mirrors``: storage mirrors run first); nothing sent yet."""
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    async def migrate_perform(self, name: str, uri: str, *, nbd: str | None = None,
                              copies: dict[str, str] | None = None) -> str:
        """Source, made ready: send the guest to ``uri`` (storage ``copies`` first, into ``nbd``),
        commit, and return QEMU's status then (its figures: :meth:`migrate_progress`)."""
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    async def migrate_postcopy(self, name: str) -> None:
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    async def migrate_progress(self, name: str) -> MigrationProgress:
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    async def migrate_cancel(self, name: str) -> None:
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    async def migrate_finish(self, name: str, *, ok: bool, resume: bool, persistent_xml: str | None) -> None:
        raise OperationInvalidError("migration into this connection is not supported")

    async def migrate_confirm(self, name: str, *, ok: bool, undefine: bool, resume: bool) -> None:
        raise OperationInvalidError(f"domain '{name}': migration is not supported by this connection")

    # -- interfaces and networks: a driver without host networks refuses them (UnsupportedError) ----------

    async def set_link(self, name: str, interface: str, up: bool) -> None:
        """Set the link of the domain's NIC ``interface`` (its MAC or its tap's name) up or down."""
        raise self._no_networks("set_link")

    async def interface_addresses(self, name: str, source: str) -> list[InterfaceAddresses]:
        """The addresses of the running domain's NICs that ``source`` (``lease`` or ``arp``) knows."""
        raise self._no_networks("interface_addresses")

    async def define_network(self, xml: str) -> DomainRef:
        raise self._no_networks("define_network_xml")

    async def lookup_network(self, name_or_uuid: str) -> DomainRef:
        raise self._no_networks("lookup_network")

    async def list_networks(self) -> list[DomainRef]:
        raise self._no_networks("list_networks")

    async def network_start(self, name: str) -> None:
        raise self._no_networks("start")

    async def network_destroy(self, name: str) -> None:
        raise self._no_networks("destroy")

    async def network_undefine(self, name: str) -> None:
        raise self._no_networks("undefine")

    async def network_xml(self, name: str, *, inactive: bool) -> str:
        raise self._no_networks("xml")

    async def network_info(self, name: str) -> dict[str, Any]:
        """``{"active": bool, "autostart": bool, "bridge": str | None}``."""
        raise self._no_networks("info")

    async def network_set_autostart(self, name: str, autostart: bool) -> None:
        raise self._no_networks("set_autostart")

    async def network_dhcp_leases(self, name: str) -> list[DHCPLease]:
        raise self._no_networks("dhcp_leases")

    def _no_networks(self, call: str) -> UnsupportedError:
        return UnsupportedError([call], f"{self.uri} has no host networks")


def check_memory(record: DomainRecord, kib: int, *, live: bool, config: bool) -> tuple[bool, bool]:
    """The rules of a memory change, for every driver: which definitions change (as
    :meth:`DomainRecord.affected`), ``kib`` within each one's maximum, and a balloon in the live one."""
    to_live, to_config = record.affected(live=live, config=config)
    for cfg in (record.live if to_live else None, record.definition if to_config else None):
        if cfg is not None and kib > cfg.memory_kib:
            raise InvalidArgumentError(f"domain '{record.name}': {kib} KiB is more than its maximum memory "
                                       f"({cfg.memory_kib} KiB)")
    if to_live:
        assert record.live is not None
        balloon = record.live.memballoon
        if balloon is None or balloon.model == "none":
            raise OperationInvalidError(f"domain '{record.name}' has no balloon device to change its memory "
                                        "while it runs (<memballoon model='virtio'/>)")
    return to_live, to_config


def assign_macs(cfg: DomainConfig) -> DomainConfig:
    """Give every NIC without a MAC one, once, at definition time: the guest's NIC must not change
    across restarts (QEMU's 52:54:00 prefix, as libvirt does)."""
    for nic in cfg.interfaces:
        if nic.mac is None:
            nic.mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    return cfg


def overlay_path(top: str, snapshot: str) -> str:
    """libvirt's naming: the new overlay sits beside the image it covers, named after the snapshot."""
    stem, _ = os.path.splitext(top)
    return f"{stem}.{snapshot}.qcow2"
