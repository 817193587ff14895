"""Plain data types of the public API: what calls return, as enums and frozen dataclasses."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avirt.domain import Domain


class DomainState(enum.Enum):
    """A domain's state, as libvirt's virDomainState names it. ``state()`` pairs it with a reason string."""

    #: QEMU runs and the guest's CPUs run.
    RUNNING = "running"
    #: QEMU runs, the guest's CPUs are stopped (by the API, an I/O error, a watchdog...).
    PAUSED = "paused"
    #: The guest is shutting down: QEMU has seen the guest (or the host) ask for power off.
    SHUTDOWN = "shutdown"
    #: No QEMU process.
    SHUTOFF = "shutoff"
    #: QEMU runs but the guest is dead (a guest panic, or QEMU's runstate ``internal-error``).
    CRASHED = "crashed"
    #: The guest suspended itself to RAM (ACPI S3).
    PMSUSPENDED = "pmsuspended"


@dataclass(frozen=True)
class ImageInfo:
    """One image of a disk's backing chain: sizes in bytes; ``allocated`` is guest data stored in this
    image alone (not in its backing files)."""

    path: str
    format: str
    virtual_size: int
    actual_size: int
    allocated: int


@dataclass(frozen=True)
class DomainInfo:
    """virDomainGetInfo: memory in KiB, CPU time used by the QEMU process in nanoseconds."""

    state: DomainState
    max_memory_kib: int
    memory_kib: int
    vcpus: int
    cpu_time_ns: int


@dataclass(frozen=True)
class DomainStats:
    """One domain's record of ``Connection.all_domain_stats()`` (virDomainStatsRecord): libvirt's typed
    parameters as a flat map, e.g. ``{"state.state": 1, "cpu.time": 123456789, "block.0.wr.bytes": 4096}``.
    A running domain whose QEMU did not answer in time has ``"stats.unresponsive": True`` and only the
    fields it could be given without QEMU."""

    domain: Domain
    params: dict[str, Any]

    @property
    def unresponsive(self) -> bool:
        return bool(self.params.get("stats.unresponsive"))


@dataclass(frozen=True)
class MigrationProgress:
    """A migration's progress, as QEMU's query-migrate reports it: bytes of guest memory, the rate at
    which the guest dirties memory (bytes/s), the passes over memory so far, and the downtime QEMU
    expects for the last pass (ms); once completed, QEMU's measure of the whole migration and of the time
    the guest was paused (ms). ``status``: QEMU's (setup, active, device, completed, failed...)."""

    status: str
    ram_total: int
    ram_transferred: int
    ram_remaining: int
    dirty_rate: int
    passes: int
    expected_downtime_ms: int
    total_ms: int = 0
    downtime_ms: int = 0


@dataclass(frozen=True)
class InterfaceAddress:
    """One address of a guest's NIC (virDomainIPAddress): ``type`` is ``ipv4`` or ``ipv6``; ``prefix`` the
    subnet's length where the source knows it (a DHCP lease), 0 where it does not (the neighbour table)."""

    type: str
    addr: str
    prefix: int


@dataclass(frozen=True)
class InterfaceAddresses:
    """One NIC of ``Domain.interface_addresses()`` (virDomainInterface): its tap's name on the host, the
    guest's MAC, and the addresses the source knows for that MAC."""

    name: str
    hwaddr: str
    addrs: tuple[InterfaceAddress, ...]


@dataclass(frozen=True)
class InterfaceStats:
    """A NIC's traffic counters as the guest sees them (virDomainInterfaceStats): ``rx`` is what the guest
    received, ``tx`` what it sent."""

    rx_bytes: int
    rx_packets: int
    rx_errs: int
    rx_drop: int
    tx_bytes: int
    tx_packets: int
    tx_errs: int
    tx_drop: int
