"""Where a QMP event becomes a domain event: pure functions and tables, no I/O, no state of their own.

Two sources feed the domain events:

* **QMP events that describe a device or the guest** (RESET, RTC_CHANGE, BLOCK_IO_ERROR, BLOCK_JOB_*...):
  :func:`translate` maps each to zero or more ``(EventClass, fields)`` pairs through :data:`TABLE`. Disks are
  named by target (``vda``): the caller passes a :class:`Names` that knows the guest's node names and jobs.
* **Lifecycle**: a lifecycle event is what a change of the domain's *state* looks like from outside. The
  guest's state machine (``drivers/qemu/guest.py``) decides states from QMP events and API calls, and
  :func:`lifecycle_for` gives the libvirt type and detail of each new ``(state, reason)``. A STOP, for
  instance, becomes SUSPENDED/IOERROR when a BLOCK_IO_ERROR with action ``stop`` came just before it, and
  SUSPENDED/PAUSED when it was the API's own ``suspend()``.

Every QMP event is also offered raw as :class:`~avirt.events.model.QMPEvent` by the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avirt.events.model import (
    BalloonChangeEvent,
    BlockJobEvent,
    BlockJobStatus,
    BlockThresholdEvent,
    DeviceRemovedEvent,
    Event,
    IOErrorEvent,
    JobKind,
    LifecycleType,
    PMEvent,
    PMWakeupEvent,
    RebootEvent,
    RTCChangeEvent,
    TrayChangeEvent,
    WatchdogEvent,
)
from avirt.models import DomainState

Fields = dict[str, Any]
Translation = list[tuple[type[Event], Fields]]

S = DomainState
L = LifecycleType


@dataclass(frozen=True)
class Names:
    """How the driver names things QEMU reports by its own names."""

    #: QEMU node name or device -> disk target ("vda") or a backing layer ("vda[2]").
    disk_of_node: Callable[[str], str]
    #: QMP job id -> (disk, kind), None for a job avirt did not start.
    job: Callable[[str], tuple[str, JobKind] | None]
    #: QEMU node name -> the image file of that layer ("" when unknown).
    path_of_node: Callable[[str], str] = lambda node: ""


def timestamp_of(msg: dict[str, Any]) -> float | None:
    stamp = msg.get("timestamp")
    if not stamp or stamp.get("seconds", -1) < 0:
        return None
    return float(stamp["seconds"]) + float(stamp.get("microseconds", 0)) / 1e6


def translate(msg: dict[str, Any], names: Names) -> Translation:
    """The typed events one QMP event stands for (lifecycle aside, see the module docstring)."""
    handler = TABLE.get(msg.get("event", ""))
    return handler(msg.get("data") or {}, names) if handler else []


def _io_error(data: Fields, names: Names) -> Translation:
    node = data.get("node-name") or data.get("device") or ""
    return [(IOErrorEvent, {"disk": names.disk_of_node(node), "action": data.get("action", ""),
                            "reason": data.get("reason", "")})]


def _threshold(data: Fields, names: Names) -> Translation:
    node = data.get("node-name", "")
    return [(BlockThresholdEvent, {"disk": names.disk_of_node(node), "path": names.path_of_node(node),
                                   "threshold": int(data.get("write-threshold", 0)),
                                   "excess": int(data.get("amount-exceeded", 0))})]


def _tray(data: Fields, names: Names) -> Translation:
    return [(TrayChangeEvent, {"device": data.get("id") or data.get("device", ""),
                               "open": bool(data.get("tray-open"))})]


def _device_deleted(data: Fields, names: Names) -> Translation:
    # QEMU also reports the parts of a device that have no id of their own (a virtio disk's backend,
    # "/machine/peripheral/vda/virtio-backend"): the device itself follows with its id. libvirt skips
    # those too.
    device = data.get("device")
    return [(DeviceRemovedEvent, {"alias": device})] if device else []


_JOB_TYPES = {"commit": JobKind.COMMIT, "stream": JobKind.PULL, "mirror": JobKind.COPY}


def _block_job(status: BlockJobStatus) -> Callable[[Fields, Names], Translation]:
    def handler(data: Fields, names: Names) -> Translation:
        job_id = data.get("device", "")
        known = names.job(job_id)
        disk, kind = known if known else (job_id, _JOB_TYPES.get(data.get("type", ""), JobKind.COMMIT))
        error = data.get("error")
        final = BlockJobStatus.FAILED if status is BlockJobStatus.COMPLETED and error else status
        return [(BlockJobEvent, {"disk": disk, "job_kind": kind, "status": final, "error": error})]

    return handler


TABLE: dict[str, Callable[[Fields, Names], Translation]] = {
    "RESET": lambda data, names: [(RebootEvent, {})],
    "RTC_CHANGE": lambda data, names: [(RTCChangeEvent, {"offset": int(data.get("offset", 0))})],
    "WATCHDOG": lambda data, names: [(WatchdogEvent, {"action": data.get("action", "")})],
    "BLOCK_IO_ERROR": _io_error,
    "BLOCK_WRITE_THRESHOLD": _threshold,
    "DEVICE_TRAY_MOVED": _tray,
    "DEVICE_DELETED": _device_deleted,
    "BALLOON_CHANGE": lambda data, names: [(BalloonChangeEvent,
                                            {"actual_kib": int(data.get("actual", 0)) // 1024})],
    "SUSPEND": lambda data, names: [(PMEvent, {"suspended": True})],
    "SUSPEND_DISK": lambda data, names: [(PMEvent, {"suspended": True})],
    "WAKEUP": lambda data, names: [(PMWakeupEvent, {"suspended": False})],
    "BLOCK_JOB_COMPLETED": _block_job(BlockJobStatus.COMPLETED),
    "BLOCK_JOB_CANCELLED": _block_job(BlockJobStatus.CANCELED),
    "BLOCK_JOB_READY": _block_job(BlockJobStatus.READY),
}


#: A new (state, reason) of a domain -> the lifecycle event that announces it. Absent: no event (the state
#: is not news, e.g. a guest found running by a new controller, or is still being found out).
LIFECYCLE: dict[tuple[DomainState, str], tuple[LifecycleType, str]] = {
    (S.RUNNING, "booted"): (L.STARTED, "booted"),
    (S.RUNNING, "unpaused"): (L.RESUMED, "unpaused"),
    (S.RUNNING, "wakeup"): (L.STARTED, "wakeup"),
    (S.RUNNING, "migrated"): (L.RESUMED, "migrated"),
    (S.PAUSED, "migration"): (L.SUSPENDED, "migrated"),
    (S.PAUSED, "postcopy"): (L.SUSPENDED, "postcopy"),
    (S.RUNNING, "postcopy"): (L.RESUMED, "postcopy"),
    (S.PAUSED, "user"): (L.SUSPENDED, "paused"),
    (S.PAUSED, "ioerror"): (L.SUSPENDED, "ioerror"),
    (S.PAUSED, "watchdog"): (L.SUSPENDED, "watchdog"),
    (S.PAUSED, "paused"): (L.SUSPENDED, "paused"),
    (S.SHUTDOWN, "guest"): (L.SHUTDOWN, "guest"),
    (S.SHUTDOWN, "host"): (L.SHUTDOWN, "host"),
    (S.SHUTDOWN, "user"): (L.SHUTDOWN, "finished"),
    (S.SHUTOFF, "shutdown"): (L.STOPPED, "shutdown"),
    (S.SHUTOFF, "destroyed"): (L.STOPPED, "destroyed"),
    (S.SHUTOFF, "crashed"): (L.STOPPED, "failed"),
    (S.SHUTOFF, "failed"): (L.STOPPED, "failed"),
    (S.SHUTOFF, "migrated"): (L.STOPPED, "migrated"),
    (S.CRASHED, "panicked"): (L.CRASHED, "panicked"),
    (S.CRASHED, "internal-error"): (L.CRASHED, "internal-error"),
    (S.PMSUSPENDED, "unknown"): (L.PMSUSPENDED, "memory"),
}


def lifecycle_for(state: DomainState, reason: str) -> tuple[LifecycleType, str] | None:
    return LIFECYCLE.get((state, reason))
