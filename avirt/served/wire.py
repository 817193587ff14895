"""The public API's values as plain data, and back: what the served protocol carries.

Each value the :class:`~avirt.drivers.base.Driver` interface passes has one pair of functions here, so
the server and the client driver agree by construction. Enums travel as their values, dataclasses as
maps of their fields; an event names its class, which is looked up among :mod:`avirt.events.model`'s
event classes only (never anything else from the wire).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from avirt.drivers.base import DomainRef
from avirt.errors import AvirtError
from avirt.events import model as events
from avirt.events.model import AgentReason, AgentState, BlockJobStatus, Event, JobKind, LifecycleType
from avirt.jobs import BlockJob, JobPhase
from avirt.models import (
    DomainInfo,
    DomainState,
    ImageInfo,
    InterfaceAddress,
    InterfaceAddresses,
    MigrationProgress,
)
from avirt.networks.model import DHCPLease

__all__ = ["addresses_from", "addresses_to", "event_from", "event_to", "info_from", "info_to", "job_from",
           "job_to", "lease_from", "lease_to", "ref_from", "ref_to"]

#: Event classes by name: the only classes an event from the wire can become.
_EVENTS: dict[str, type[Event]] = {
    name: cls for name, cls in vars(events).items()
    if isinstance(cls, type) and issubclass(cls, Event) and cls is not Event
}
#: The enums event fields hold, by the name their annotations give them.
_ENUMS: dict[str, type[enum.Enum]] = {cls.__name__: cls for cls in (LifecycleType, JobKind, BlockJobStatus,
                                                                    AgentState, AgentReason)}


class WireError(AvirtError):
    """A value from the controller did not have the expected shape."""


def ref_to(ref: DomainRef) -> list[str]:
    return [ref.name, ref.uuid]


def ref_from(data: Any) -> DomainRef:
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(v, str) for v in data)):
        raise WireError(f"not a domain reference: {str(data)[:80]}")
    return DomainRef(data[0], data[1])


def info_to(info: DomainInfo | ImageInfo | MigrationProgress) -> dict[str, Any]:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in dataclasses.asdict(info).items()}


def info_from(cls: type[DomainInfo] | type[ImageInfo] | type[MigrationProgress], data: Any) -> Any:
    try:
        values = dict(data)
        if cls is DomainInfo:
            values["state"] = DomainState(values["state"])
        return cls(**values)
    except (TypeError, ValueError, KeyError) as e:
        raise WireError(f"not a {cls.__name__}: {e}") from None


def lease_to(lease: DHCPLease) -> dict[str, Any]:
    return dataclasses.asdict(lease)


def lease_from(data: Any) -> DHCPLease:
    try:
        return DHCPLease(**dict(data))
    except (TypeError, ValueError) as e:
        raise WireError(f"not a DHCP lease: {e}") from None


def addresses_to(found: InterfaceAddresses) -> dict[str, Any]:
    return dataclasses.asdict(found)


def addresses_from(data: Any) -> InterfaceAddresses:
    try:
        values = dict(data)
        addrs = tuple(InterfaceAddress(**dict(a)) for a in values.pop("addrs"))
        return InterfaceAddresses(addrs=addrs, **values)
    except (TypeError, ValueError, KeyError) as e:
        raise WireError(f"not a NIC's addresses: {e}") from None


def event_to(event: Event) -> dict[str, Any]:
    data = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return {"event": type(event).__name__,
            **{k: v.value if isinstance(v, enum.Enum) else v for k, v in data.items()}}


def event_from(data: Any) -> Event:
    try:
        values = dict(data)
        cls = _EVENTS[values.pop("event")]
        for field in dataclasses.fields(cls):
            kind = _ENUMS.get(str(field.type))
            if kind is not None and field.name in values:
                values[field.name] = kind(values[field.name])
        return cls(**values)
    except (TypeError, ValueError, KeyError) as e:
        raise WireError(f"not an event: {e}") from None


def job_to(job: BlockJob) -> dict[str, Any]:
    """What a client needs to make its copy of a job: identity, kind, and where it stands."""
    return {"id": job.id, "disk": job.disk, "kind": job.kind.value, "offline": job.offline,
            "two_phase": job.two_phase, "bandwidth": job.bandwidth, **phase_to(job)}


def phase_to(job: BlockJob) -> dict[str, Any]:
    final = job.final_progress
    return {"phase": job.phase.value, "status": job.status.value if job.status else None, "error": job.error,
            "progress": list(final) if final is not None else None}


def job_from(backend: Any, data: Any) -> BlockJob:
    try:
        job = BlockJob(backend, id=str(data["id"]), disk=str(data["disk"]), kind=JobKind(data["kind"]),
                       offline=bool(data["offline"]), bandwidth=int(data["bandwidth"]),
                       two_phase=bool(data["two_phase"]))
    except (TypeError, ValueError, KeyError) as e:
        raise WireError(f"not a block job: {e}") from None
    apply_phase(job, data)
    return job


def apply_phase(job: BlockJob, data: Any) -> None:
    """Move a client's copy of a job to the phase its controller reported."""
    try:
        phase = JobPhase(data["phase"])
        if phase is JobPhase.CONCLUDED:
            # The figures it ended at: a client that asks for progress() only after a fast job ended
            # still gets them, as on the controller.
            final = data.get("progress")
            progress = (int(final[0]), int(final[1])) if isinstance(final, list) and len(final) == 2 else None
            job.conclude(BlockJobStatus(data["status"]), data.get("error"), progress=progress)
        elif phase is JobPhase.STANDBY:
            job.unready()
        else:
            job.set_phase(phase)
    except (TypeError, ValueError, KeyError) as e:
        raise WireError(f"not a job phase: {e}") from None
