"""The translation tables against QMP events recorded from a real QEMU 7.2 (tests/data/qmp-events.jsonl).

The recording came from the real-QEMU event tests (``AVIRT_RECORD_QMP=path pytest tests/test_events.py
tests/test_guest_events.py``); each line is an event exactly as QEMU sent it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from avirt.drivers.qemu.cmdline import Layer
from avirt.drivers.qemu.guest import Guest, Reaction
from avirt.events.model import (
    BalloonChangeEvent,
    BlockJobEvent,
    BlockJobStatus,
    BlockThresholdEvent,
    DeviceRemovedEvent,
    IOErrorEvent,
    JobKind,
    LifecycleType,
    PMEvent,
    PMWakeupEvent,
    RebootEvent,
    RTCChangeEvent,
    TrayChangeEvent,
)
from avirt.events.translate import Names, timestamp_of, translate
from avirt.models import DomainState

RECORDED = [json.loads(line) for line in
            (Path(__file__).parent / "data" / "qmp-events.jsonl").read_text().splitlines()]


def recorded(name: str, **match: Any) -> dict[str, Any]:
    return next(m for m in RECORDED if m["event"] == name
                and all(m["data"].get(k) == v for k, v in match.items()))


NAMES = Names(disk_of_node=lambda node: {"vda-1": "vda", "vda-2": "vda[1]"}.get(node, node),
              job=lambda job_id: {"commit-vda-1": ("vda", JobKind.COMMIT),
                                  "active-commit-vda-1": ("vda", JobKind.ACTIVE_COMMIT)}.get(job_id),
              path_of_node=lambda node: {"vda-1": "/images/vda.qcow2"}.get(node, ""))

EXPECTED: list[tuple[dict[str, Any], list[tuple[type, dict[str, Any]]]]] = [
    (recorded("RESET"), [(RebootEvent, {})]),
    (recorded("RTC_CHANGE"), [(RTCChangeEvent, {"offset": recorded("RTC_CHANGE")["data"]["offset"]})]),
    (recorded("BLOCK_IO_ERROR"), [(IOErrorEvent, {"disk": "vda", "action": "stop",
                                                  "reason": "No space left on device"})]),
    (recorded("BLOCK_WRITE_THRESHOLD"), [(BlockThresholdEvent, {"disk": "vda", "threshold": 1 << 20,
                                                                "excess": 1114112,
                                                                "path": "/images/vda.qcow2"})]),
    (recorded("DEVICE_TRAY_MOVED", **{"tray-open": True}),
     [(TrayChangeEvent, {"device": "cd0", "open": True})]),
    (recorded("DEVICE_TRAY_MOVED", **{"tray-open": False}),
     [(TrayChangeEvent, {"device": "cd0", "open": False})]),
    (recorded("DEVICE_DELETED"), [(DeviceRemovedEvent, {"alias": "tablet0"})]),
    (recorded("BALLOON_CHANGE"), [(BalloonChangeEvent,
                                   {"actual_kib": recorded("BALLOON_CHANGE")["data"]["actual"] // 1024})]),
    (recorded("SUSPEND"), [(PMEvent, {"suspended": True})]),
    (recorded("WAKEUP"), [(PMWakeupEvent, {"suspended": False})]),
    (recorded("BLOCK_JOB_COMPLETED"), [(BlockJobEvent, {"disk": "vda", "job_kind": JobKind.COMMIT,
                                                        "status": BlockJobStatus.COMPLETED, "error": None})]),
    (recorded("BLOCK_JOB_READY"), [(BlockJobEvent, {"disk": "vda", "job_kind": JobKind.ACTIVE_COMMIT,
                                                    "status": BlockJobStatus.READY, "error": None})]),
    (recorded("BLOCK_JOB_CANCELLED"), [(BlockJobEvent, {"disk": "vda", "job_kind": JobKind.ACTIVE_COMMIT,
                                                        "status": BlockJobStatus.CANCELED, "error": None})]),
    # Lifecycle-only or internal events translate to nothing here (the state machine speaks for them).
    (recorded("STOP"), []),
    (recorded("RESUME"), []),
    (recorded("SHUTDOWN"), []),
    (recorded("POWERDOWN"), []),
    (recorded("JOB_STATUS_CHANGE"), []),
    (recorded("GUEST_PANICKED"), []),
]


@pytest.mark.parametrize(("msg", "expected"), EXPECTED, ids=[m["event"] for m, _ in EXPECTED])
def test_recorded_event_translates(msg: dict[str, Any], expected: list[tuple[type, dict[str, Any]]]) -> None:
    assert translate(msg, NAMES) == expected


def test_every_recorded_event_is_covered() -> None:
    assert {m["event"] for m in RECORDED} == {m["event"] for m, _ in EXPECTED}


def test_failed_job_and_unknown_job() -> None:
    failed = {**recorded("BLOCK_JOB_COMPLETED"), "data": {**recorded("BLOCK_JOB_COMPLETED")["data"],
                                                          "error": "Input/output error"}}
    [(_, fields)] = translate(failed, NAMES)
    assert (fields["status"], fields["error"]) == (BlockJobStatus.FAILED, "Input/output error")
    foreign = {**recorded("BLOCK_JOB_READY"), "data": {**recorded("BLOCK_JOB_READY")["data"],
                                                       "device": "someone-elses", "type": "mirror"}}
    [(_, fields)] = translate(foreign, NAMES)
    assert (fields["disk"], fields["job_kind"]) == ("someone-elses", JobKind.COPY)


def test_timestamps() -> None:
    stop = recorded("STOP")
    assert timestamp_of(stop) == stop["timestamp"]["seconds"] + stop["timestamp"]["microseconds"] / 1e6
    assert timestamp_of({"event": "X"}) is None


def _guest() -> tuple[Guest, list[tuple[LifecycleType, str]]]:
    from avirt.config import parse_domain_xml

    cfg = parse_domain_xml("<domain type='qemu'><name>g</name><memory>65536</memory>"
                           "<os><type>hvm</type></os></domain>")
    guest = Guest("g", cfg.uuid, cfg)
    announced: list[tuple[LifecycleType, str]] = []
    guest.on_lifecycle = lambda type, detail: announced.append((type, detail))
    guest.state, guest.reason, guest.chains = DomainState.RUNNING, "booted", {"vda": [Layer("/b", "qcow2")]}
    return guest, announced


def test_stop_after_an_io_error_is_suspended_ioerror() -> None:
    guest, announced = _guest()
    assert guest.on_qmp_event(recorded("BLOCK_IO_ERROR")) is Reaction.NONE
    assert guest.on_qmp_event(recorded("STOP")) is Reaction.NONE
    assert announced == [(LifecycleType.SUSPENDED, "ioerror")]
    assert (guest.state, guest.reason) == (DomainState.PAUSED, "ioerror")


def test_unexplained_stop_is_refined_before_it_is_announced() -> None:
    guest, announced = _guest()
    assert guest.on_qmp_event(recorded("STOP")) is Reaction.REFINE
    assert announced == []


def test_guest_shutdown_then_quit_is_announced_once() -> None:
    guest, announced = _guest()
    guest_off = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}
    assert guest.on_qmp_event(guest_off) is Reaction.QUIT
    assert guest.on_qmp_event(recorded("SHUTDOWN", reason="host-qmp-quit")) is Reaction.NONE
    assert announced == [(LifecycleType.SHUTDOWN, "guest")]


def test_node_names_map_to_disks_and_layers() -> None:
    guest, _ = _guest()
    guest.chains = {"vda": [Layer("/base", "qcow2", "vda-1"), Layer("/mid", "qcow2", "vda-2"),
                            Layer("/top", "qcow2", "vda-3")]}
    assert guest.names.disk_of_node("vda-3") == "vda"
    assert guest.names.disk_of_node("vda-3-file") == "vda"
    assert guest.names.disk_of_node("vda-1") == "vda[2]"
    # after a commit dropped the middle and a snapshot added vda-4: names are found, not computed
    guest.chains = {"vda": [Layer("/base", "qcow2", "vda-1"), Layer("/snap", "qcow2", "vda-4")]}
    assert guest.names.disk_of_node("vda-4") == "vda"
    assert guest.names.disk_of_node("vda-1") == "vda[1]"
    assert guest.names.disk_of_node("vda-2") == "vda-2"
    assert guest.names.disk_of_node("#block123") == "#block123"
    assert guest.names.job("active-commit-vda-7") == ("vda", JobKind.ACTIVE_COMMIT)
    assert guest.names.job("backup0") is None
