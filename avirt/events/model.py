"""Typed domain events: what a subscriber receives.

Every event is a frozen dataclass with the fields of :class:`Event` (kind, domain, uuid, timestamp, seq)
plus those of its kind. ``kind`` is fixed per class; the numbering of :class:`EventKind` is libvirt's
(virDomainEventID), so code ported from libvirt-python can keep its tables. ``timestamp`` is QEMU's own
when QEMU sent the event, else the controller's clock when it noticed; ``seq`` increases by one per event
within a connection, so a gap tells a subscriber that it filtered something out, never that it lost it
(losses are reported with :class:`~avirt.errors.EventsLostError`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class EventKind(enum.IntEnum):
    LIFECYCLE = 0
    REBOOT = 1
    RTC_CHANGE = 2
    WATCHDOG = 3
    IO_ERROR = 6  # libvirt's IO_ERROR_REASON, the one that carries the reason
    CONTROL_ERROR = 7
    TRAY_CHANGE = 10
    PMWAKEUP = 11
    PMSUSPEND = 12
    BALLOON_CHANGE = 13
    DEVICE_REMOVED = 15
    BLOCK_JOB = 16  # libvirt's BLOCK_JOB_2, which names disks by target ("vda")
    AGENT_LIFECYCLE = 18
    METADATA_CHANGE = 23
    BLOCK_THRESHOLD = 24
    #: A virtual network was defined, started, stopped or undefined (libvirt numbers network events
    #: apart, virNetworkEventID; avirt keeps one bus, so they get a number past virDomainEventID's).
    NETWORK_LIFECYCLE = 100
    #: Every QMP event, raw (avirt's own: libvirt has it only in libvirt-qemu).
    QMP = 1000


class LifecycleType(enum.Enum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"
    PMSUSPENDED = "pmsuspended"
    CRASHED = "crashed"


class AgentState(enum.Enum):
    """Whether the guest agent has its end of the channel open (libvirt's
    virConnectDomainEventAgentLifecycleState)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class AgentReason(enum.Enum):
    """Why an :class:`AgentLifecycleEvent` came (virConnectDomainEventAgentLifecycleReason)."""

    UNKNOWN = "unknown"
    DOMAIN_STARTED = "domain-started"  # a new QEMU: no agent yet
    CHANNEL = "channel"  # the agent opened or closed its port (started, stopped, the guest rebooted)


class BlockJobStatus(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    READY = "ready"


class JobKind(enum.Enum):
    PULL = "pull"
    COPY = "copy"
    COMMIT = "commit"
    ACTIVE_COMMIT = "active-commit"


@dataclass(frozen=True, slots=True)
class Event:
    kind: ClassVar[EventKind]
    domain: str
    uuid: str
    timestamp: float
    seq: int


@dataclass(frozen=True, slots=True)
class LifecycleEvent(Event):
    """``detail`` is libvirt's detail name in lower case: ``booted``, ``paused``, ``ioerror``..."""

    kind: ClassVar[EventKind] = EventKind.LIFECYCLE
    type: LifecycleType
    detail: str


@dataclass(frozen=True, slots=True)
class RebootEvent(Event):
    kind: ClassVar[EventKind] = EventKind.REBOOT


@dataclass(frozen=True, slots=True)
class RTCChangeEvent(Event):
    kind: ClassVar[EventKind] = EventKind.RTC_CHANGE
    offset: int  # seconds the guest's RTC is now ahead of the host's UTC


@dataclass(frozen=True, slots=True)
class WatchdogEvent(Event):
    kind: ClassVar[EventKind] = EventKind.WATCHDOG
    action: str  # QEMU's: reset, shutdown, poweroff, pause, debug, none, inject-nmi


@dataclass(frozen=True, slots=True)
class IOErrorEvent(Event):
    kind: ClassVar[EventKind] = EventKind.IO_ERROR
    disk: str  # the disk's target ("vda"), or QEMU's device or node name when no disk matches
    action: str  # report, ignore, stop
    reason: str  # QEMU's error text, e.g. "No space left on device"


@dataclass(frozen=True, slots=True)
class ControlErrorEvent(Event):
    kind: ClassVar[EventKind] = EventKind.CONTROL_ERROR
    reason: str


@dataclass(frozen=True, slots=True)
class BlockJobEvent(Event):
    kind: ClassVar[EventKind] = EventKind.BLOCK_JOB
    disk: str
    job_kind: JobKind
    status: BlockJobStatus
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TrayChangeEvent(Event):
    kind: ClassVar[EventKind] = EventKind.TRAY_CHANGE
    device: str
    open: bool


@dataclass(frozen=True, slots=True)
class PMEvent(Event):
    """Guest power management: ``kind`` is PMSUSPEND or PMWAKEUP (one class for both, as in the API)."""

    kind: ClassVar[EventKind] = EventKind.PMSUSPEND
    suspended: bool


@dataclass(frozen=True, slots=True)
class PMWakeupEvent(PMEvent):
    kind: ClassVar[EventKind] = EventKind.PMWAKEUP


@dataclass(frozen=True, slots=True)
class BalloonChangeEvent(Event):
    kind: ClassVar[EventKind] = EventKind.BALLOON_CHANGE
    actual_kib: int


@dataclass(frozen=True, slots=True)
class DeviceRemovedEvent(Event):
    kind: ClassVar[EventKind] = EventKind.DEVICE_REMOVED
    alias: str


@dataclass(frozen=True, slots=True)
class MetadataChangeEvent(Event):
    """A ``set_metadata()`` call changed the domain's metadata (live, persistent or both)."""

    kind: ClassVar[EventKind] = EventKind.METADATA_CHANGE
    type: str  # libvirt's virDomainMetadataType in lower case: "element" (avirt changes nothing else)
    uri: str | None  # the element's namespace; None for a title or description


@dataclass(frozen=True, slots=True)
class BlockThresholdEvent(Event):
    """A write crossed the threshold ``Domain.set_block_threshold`` set (libvirt's BLOCK_THRESHOLD: its
    ``dev`` is ``disk`` here). One-shot: the threshold is gone once this fires; set it again for more."""

    kind: ClassVar[EventKind] = EventKind.BLOCK_THRESHOLD
    disk: str  # target, or "vda[N]" for a backing layer, or QEMU's node name
    threshold: int
    excess: int  # bytes written past the threshold by the write that crossed it
    path: str = ""  # the image of that layer ("" when avirt does not know the node)


@dataclass(frozen=True, slots=True)
class AgentLifecycleEvent(Event):
    """The guest agent connected or disconnected (libvirt's AGENT_LIFECYCLE): QEMU's VSERPORT_CHANGE for
    the ``org.qemu.guest_agent.0`` port (reason CHANNEL), or a domain started with that channel and no
    agent on it yet (DISCONNECTED, reason DOMAIN_STARTED)."""

    kind: ClassVar[EventKind] = EventKind.AGENT_LIFECYCLE
    state: AgentState
    reason: AgentReason


@dataclass(frozen=True, slots=True)
class NetworkLifecycleEvent(Event):
    """A network's lifecycle (libvirt's virConnectNetworkEventLifecycleCallback): ``domain`` holds the
    network's name and ``uuid`` its UUID; ``type`` is DEFINED, UNDEFINED, STARTED or STOPPED."""

    kind: ClassVar[EventKind] = EventKind.NETWORK_LIFECYCLE
    type: LifecycleType
    detail: str = ""


@dataclass(frozen=True, slots=True)
class QMPEvent(Event):
    kind: ClassVar[EventKind] = EventKind.QMP
    name: str
    data: dict[str, Any]
