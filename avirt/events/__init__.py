"""Domain events: every QMP event and every process exit, typed, for any number of subscribers.

    async with conn.events(kinds={EventKind.LIFECYCLE}, domain=dom) as stream:
        async for ev in stream:                    # LifecycleEvent(domain='web1', type=STARTED, ...)
            print(ev.seq, ev.domain, ev)

    sub = conn.subscribe(print, kinds={EventKind.BLOCK_JOB})     # or an async def
    ...
    sub.cancel()

``model`` holds the event classes, ``translate`` turns QMP events and state changes into them (pure
tables), and ``bus`` delivers them: one bounded queue per subscriber, losses counted and reported
(``EventsLostError``), never silent.
"""

from avirt.events.bus import EventStream, Subscription
from avirt.events.model import (
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
    TrayChangeEvent,
    WatchdogEvent,
)

__all__ = [
    "AgentLifecycleEvent",
    "AgentReason",
    "AgentState",
    "BalloonChangeEvent",
    "BlockJobEvent",
    "BlockJobStatus",
    "BlockThresholdEvent",
    "ControlErrorEvent",
    "DeviceRemovedEvent",
    "Event",
    "EventKind",
    "EventStream",
    "IOErrorEvent",
    "JobKind",
    "LifecycleEvent",
    "LifecycleType",
    "MetadataChangeEvent",
    "NetworkLifecycleEvent",
    "PMEvent",
    "PMWakeupEvent",
    "QMPEvent",
    "RTCChangeEvent",
    "RebootEvent",
    "Subscription",
    "TrayChangeEvent",
    "WatchdogEvent",
]
