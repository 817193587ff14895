"""avirt: an asyncio-native virtualization controller.

One event loop drives many QEMU guests over their QMP monitors, with libvirt's domain XML and vocabulary::

    import avirt

    async with avirt.connect("qemu:///session") as conn:
        dom = await conn.define_xml(xml)
        await dom.start()
        print(await dom.state())        # (DomainState.RUNNING, 'booted')
        await dom.shutdown(wait=30)

Guests outlive the controller: a later ``connect()`` to the same state directory finds them running.

Importing ``avirt`` is cheap: each public name is imported on first use (the ``avirt`` command's
``--help`` must not pay for lxml, asyncio and both drivers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avirt import errors, fleet, offline
    from avirt.agent.results import ExecResult, Filesystem, FSDisk, IPAddress, NetworkInterface, OSInfo
    from avirt.connection import Connection, connect
    from avirt.domain import Domain
    from avirt.events import (
        AgentLifecycleEvent,
        AgentReason,
        AgentState,
        BalloonChangeEvent,
        BlockJobEvent,
        BlockJobStatus,
        BlockThresholdEvent,
        ControlErrorEvent,
        DeviceRemovedEvent,
        Event,
        EventKind,
        EventStream,
        IOErrorEvent,
        JobKind,
        LifecycleEvent,
        LifecycleType,
        MetadataChangeEvent,
        NetworkLifecycleEvent,
        PMEvent,
        PMWakeupEvent,
        QMPEvent,
        RebootEvent,
        RTCChangeEvent,
        Subscription,
        TrayChangeEvent,
        WatchdogEvent,
    )
    from avirt.guest_agent import GuestAgent
    from avirt.jobs import BlockJob, BlockJobInfo, JobPhase
    from avirt.migration import MigrationJob
    from avirt.models import (
        DomainInfo,
        DomainState,
        DomainStats,
        ImageInfo,
        InterfaceAddress,
        InterfaceAddresses,
        InterfaceStats,
        MigrationProgress,
    )
    from avirt.network import DHCPLease, Network

__version__ = "0.1.0"

#: Where each public name lives.
_NAMES = {
    "Connection": "avirt.connection",
    "connect": "avirt.connection",
    "Domain": "avirt.domain",
    "GuestAgent": "avirt.guest_agent",
    "ExecResult": "avirt.agent.results",
    "Filesystem": "avirt.agent.results",
    "FSDisk": "avirt.agent.results",
    "IPAddress": "avirt.agent.results",
    "NetworkInterface": "avirt.agent.results",
    "OSInfo": "avirt.agent.results",
    "Network": "avirt.network",
    "DHCPLease": "avirt.network",
    "NetworkLifecycleEvent": "avirt.events",
    "AgentLifecycleEvent": "avirt.events",
    "AgentReason": "avirt.events",
    "AgentState": "avirt.events",
    "BalloonChangeEvent": "avirt.events",
    "BlockJobEvent": "avirt.events",
    "BlockJobStatus": "avirt.events",
    "BlockThresholdEvent": "avirt.events",
    "ControlErrorEvent": "avirt.events",
    "DeviceRemovedEvent": "avirt.events",
    "Event": "avirt.events",
    "EventKind": "avirt.events",
    "EventStream": "avirt.events",
    "IOErrorEvent": "avirt.events",
    "JobKind": "avirt.events",
    "LifecycleEvent": "avirt.events",
    "LifecycleType": "avirt.events",
    "MetadataChangeEvent": "avirt.events",
    "PMEvent": "avirt.events",
    "PMWakeupEvent": "avirt.events",
    "QMPEvent": "avirt.events",
    "RebootEvent": "avirt.events",
    "RTCChangeEvent": "avirt.events",
    "Subscription": "avirt.events",
    "TrayChangeEvent": "avirt.events",
    "WatchdogEvent": "avirt.events",
    "BlockJob": "avirt.jobs",
    "BlockJobInfo": "avirt.jobs",
    "JobPhase": "avirt.jobs",
    "MigrationJob": "avirt.migration",
    "DomainInfo": "avirt.models",
    "MigrationProgress": "avirt.models",
    "DomainState": "avirt.models",
    "DomainStats": "avirt.models",
    "ImageInfo": "avirt.models",
    "InterfaceAddress": "avirt.models",
    "InterfaceAddresses": "avirt.models",
    "InterfaceStats": "avirt.models",
}
_MODULES = ("errors", "fleet", "offline")


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value: Any = importlib.import_module(f"avirt.{name}")
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'avirt' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES, *_MODULES])


__all__ = [
    "AgentLifecycleEvent",
    "AgentReason",
    "AgentState",
    "BalloonChangeEvent",
    "BlockJob",
    "BlockJobEvent",
    "BlockJobInfo",
    "BlockJobStatus",
    "BlockThresholdEvent",
    "Connection",
    "ControlErrorEvent",
    "DHCPLease",
    "DeviceRemovedEvent",
    "Domain",
    "DomainInfo",
    "DomainState",
    "DomainStats",
    "Event",
    "EventKind",
    "EventStream",
    "ExecResult",
    "FSDisk",
    "Filesystem",
    "GuestAgent",
    "IOErrorEvent",
    "IPAddress",
    "ImageInfo",
    "InterfaceAddress",
    "InterfaceAddresses",
    "InterfaceStats",
    "JobKind",
    "JobPhase",
    "LifecycleEvent",
    "LifecycleType",
    "MetadataChangeEvent",
    "MigrationJob",
    "MigrationProgress",
    "Network",
    "NetworkInterface",
    "NetworkLifecycleEvent",
    "OSInfo",
    "PMEvent",
    "PMWakeupEvent",
    "QMPEvent",
    "RTCChangeEvent",
    "RebootEvent",
    "Subscription",
    "TrayChangeEvent",
    "WatchdogEvent",
    "connect",
    "errors",
    "fleet",
    "offline",
]
