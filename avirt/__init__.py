"""avirt: an asyncio-native virtualization controller.

One event loop drives many QEMU guests over their QMP monitors, with libvirt's domain XML and vocabulary::

    import avirt

    async with avirt.connect("qemu:///session") as conn:
        dom = await conn.define_xml(xml)
        await dom.start()
        print(await dom.state())        # (DomainState.RUNNING, 'booted')
        await dom.shutdown(wait=30)

Guests outlive the controller: a later ``connect()`` to the same state directory finds them running.
"""

from avirt import errors, fleet, offline
from avirt.connection import Connection, connect
from avirt.domain import Domain
from avirt.events import (
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
    PMEvent,
    PMWakeupEvent,
    QMPEvent,
    RebootEvent,
    RTCChangeEvent,
    Subscription,
    TrayChangeEvent,
    WatchdogEvent,
)
from avirt.jobs import BlockJob, BlockJobInfo, JobPhase
from avirt.models import DomainInfo, DomainState, ImageInfo

__version__ = "0.1.0"

__all__ = [
    "BalloonChangeEvent",
    "BlockJob",
    "BlockJobEvent",
    "BlockJobInfo",
    "BlockJobStatus",
    "BlockThresholdEvent",
    "Connection",
    "ControlErrorEvent",
    "DeviceRemovedEvent",
    "Domain",
    "DomainInfo",
    "DomainState",
    "Event",
    "EventKind",
    "EventStream",
    "IOErrorEvent",
    "ImageInfo",
    "JobKind",
    "JobPhase",
    "LifecycleEvent",
    "LifecycleType",
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
