"""Bulk statistics of running QEMU guests: many guests at once, none allowed to hold up the others.

What each group costs one guest:

* ``state``: nothing (the driver knows it);
* ``cpu-total``: one read of ``/proc/<pid>/stat`` (the whole QEMU process: vCPUs, emulator, I/O threads);
  every guest's are read together, in one worker thread (a thread hop costs more than the read);
* ``balloon``: ``query-balloon`` once per QEMU, then what its BALLOON_CHANGE events say, as libvirt does
  (QEMU sends them at most once a second, so the figure may lag the guest by that); a guest without a
  balloon device reports its definition's memory;
* ``vcpu``: ``query-cpus-fast`` once per QEMU for the vCPU threads' ids (they stay while it runs), then
  one ``/proc/<tid>/stat`` each;
* ``interface``: nothing: one read of ``/proc/net/dev`` serves every guest's taps
  (``networks/nicinfo.py``; NICs of ``type='user'`` have no tap and are not counted; ``net.N.rx.*`` is
  what the guest received);
* ``block``: ``query-blockstats`` (the counters) and ``query-block`` (sizes, the write threshold).
  Not ``query-named-block-nodes``: QEMU 7.2 crashes on it beside a concluded stream job not yet
  dismissed (see ``blockjobs.py``), and ``query-block`` names the same top nodes.

The commands of one guest are sent together, without waiting for each other's answers (QMP answers by
id, so they are in flight at once on the one socket), and a guest gets ``timeout`` seconds in all. A
guest whose QEMU does not answer in time (stopped with SIGSTOP, stuck in a long operation) is reported
with its state and :data:`~avirt.drivers.stats.UNRESPONSIVE`; its late answers are dropped by the
monitor. Guests are asked concurrently, at most :data:`CONCURRENCY` at a time, so a fleet of thousands
opens no more than that many commands and files at once.

Disks are numbered in the order of the definition, as libvirt numbers them; a disk's counters are found
by its device id (QEMU's ``qdev``), which is the disk's target in avirt's command lines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anyio

from avirt.drivers.qemu.guest import Guest
from avirt.drivers.stats import UNRESPONSIVE, net_params, state_params
from avirt.errors import HostError, QMPError
from avirt.hosts.base import Host
from avirt.networks import nicinfo
from avirt.networks.nicinfo import guest_counters

log = logging.getLogger(__name__)

#: How many guests are asked at the same time.
CONCURRENCY = 64


async def gather(host: Host, guests: list[Guest], groups: list[str], timeout: float) -> list[dict[str, Any]]:
    """Each guest's parameters, in the order of ``guests``.

    First every guest's QMP answers (concurrently, a timeout each), then every CPU time in one read of
    the host (:meth:`Host.cpu_times_ns`: one worker thread locally, not one per file), each guest's vCPU
    threads before its process, so that a total is never below the sum of its threads.
    """
    asked: list[_Asked] = [_Asked() for _ in guests]
    limiter = anyio.CapacityLimiter(CONCURRENCY)
    taps: dict[str, list[int]] | None = None
    if "interface" in groups and any(g.active for g in guests):  # one read for every guest's taps
        with anyio.move_on_after(timeout):
            try:
                taps = await nicinfo.tap_counters(host)
            except HostError as e:
                log.debug("interface statistics unavailable: %s", e)

    async def one(i: int, guest: Guest) -> None:
        async with limiter:
            asked[i] = await _ask_qemu(guest, groups, timeout)

    async with anyio.create_task_group() as group:
        for i, guest in enumerate(guests):
            group.start_soon(one, i, guest)
    await _read_cpu_times(host, guests, asked, groups, timeout)
    return [_params(guest, groups, a, taps) for guest, a in zip(guests, asked, strict=True)]


@dataclass
class _Asked:
    """What one guest's statistics gathered: QMP answers by command, CPU times, whether any came late."""

    answers: dict[str, Any] = field(default_factory=dict)
    cpu: int | None = None
    vcpu_times: list[int] | None = None
    late: bool = False
    running: bool = False  # a QEMU was there to ask


async def _ask_qemu(guest: Guest, groups: list[str], timeout: float) -> _Asked:
    """The QMP commands one guest's groups need, all in flight at once, ``timeout`` seconds in all."""
    asked = _Asked()
    process = guest.process
    if not guest.active or process is None:
        return asked
    asked.running = True
    monitor = process.monitor
    cfg = guest.config
    commands = []
    if "balloon" in groups and cfg.memballoon is not None and cfg.memballoon.model != "none":
        if process.balloon_actual is None:
            commands.append("query-balloon")
        else:
            asked.answers["query-balloon"] = {"actual": process.balloon_actual}
    if "vcpu" in groups:
        if process.vcpu_threads is None:
            commands.append("query-cpus-fast")
        else:
            asked.answers["query-cpus-fast"] = [{"thread-id": tid} for tid in process.vcpu_threads]
    if "block" in groups:
        commands += ["query-blockstats", "query-block"]
    if not commands:
        return asked
    if not monitor.connected:
        asked.late = True
        return asked

    async def ask(command: str) -> None:
        try:
            asked.answers[command] = await monitor.execute(command, timeout=timeout)
        except QMPError as e:  # a missing device (no balloon) or a QEMU that went away: no answer
            asked.late = asked.late or e.error_class == "Timeout"
            log.debug("domain %s: %s for statistics failed: %s", guest.name, command, e)

    with anyio.move_on_after(timeout) as scope:
        async with anyio.create_task_group() as group:
            for command in commands:
                group.start_soon(ask, command)
    asked.late = asked.late or scope.cancelled_caught
    answers = asked.answers
    if "query-cpus-fast" in commands and "query-cpus-fast" in answers:
        process.vcpu_threads = [int(c.get("thread-id", 0)) for c in answers["query-cpus-fast"]]
    if "query-balloon" in commands and isinstance(answers.get("query-balloon", {}).get("actual"), int):
        process.balloon_actual = answers["query-balloon"]["actual"]
    return asked


async def _read_cpu_times(host: Host, guests: list[Guest], asked: list[_Asked], groups: list[str],
                          timeout: float) -> None:
    ids: list[int] = []
    spans: list[tuple[_Asked, int, int]] = []  # whose, where its threads start, how many
    for guest, a in zip(guests, asked, strict=True):
        if not a.running or guest.process is None:
            continue
        threads = ([c.get("thread-id", 0) for c in a.answers.get("query-cpus-fast", [])]
                   if "vcpu" in groups and "query-cpus-fast" in a.answers else [])
        if "query-cpus-fast" in a.answers:
            a.vcpu_times = []
        if "cpu-total" not in groups and not threads:
            continue
        spans.append((a, len(ids), len(threads)))
        ids += threads  # /proc/<tid> reads a thread as a process
        if "cpu-total" in groups:
            ids.append(guest.process.pid)
    if not ids:
        return
    try:
        with anyio.fail_after(timeout):
            times = await host.cpu_times_ns(ids)
    except (HostError, TimeoutError) as e:  # the host is unreachable: what was asked of it is missing
        log.debug("statistics: CPU times incomplete: %s", e)
        for a, _, _ in spans:
            a.late = True
        return
    for a, at, count in spans:
        if count:
            a.vcpu_times = times[at:at + count]
        if "cpu-total" in groups:
            a.cpu = times[at + count]


def _params(guest: Guest, groups: list[str], asked: _Asked,
            taps: dict[str, list[int]] | None) -> dict[str, Any]:
    """One guest's parameters from what was gathered; a shut-off guest has only its state. ``taps``: the
    host's interface counters (``nicinfo.tap_counters``), read once for all guests; None: not available."""
    params: dict[str, Any] = state_params(guest.state, guest.reason) if "state" in groups else {}
    if not asked.running:
        return params
    if asked.late:
        params[UNRESPONSIVE] = True
    cfg = guest.config
    answers = asked.answers
    if asked.cpu is not None:
        params["cpu.time"] = asked.cpu
    if "balloon" in groups:
        actual = answers.get("query-balloon", {}).get("actual")
        params["balloon.current"] = (actual // 1024 if actual is not None
                                     else cfg.current_memory_kib or cfg.memory_kib)
        params["balloon.maximum"] = cfg.memory_kib
    if asked.vcpu_times is not None:
        times = asked.vcpu_times
        params["vcpu.current"] = len(times)
        params["vcpu.maximum"] = cfg.vcpus
        for n, ns in enumerate(times):
            params[f"vcpu.{n}.state"] = 1  # VIR_VCPU_RUNNING: a thread QEMU lists is a vCPU online
            params[f"vcpu.{n}.time"] = ns
    if "interface" in groups and taps is not None:
        names = [nic.target_dev for nic in cfg.interfaces if nic.type != "user" and nic.target_dev]
        params["net.count"] = len(names)
        for n, tap in enumerate(names):
            params.update(net_params(n, tap, guest_counters(taps.get(tap) or [0] * 16)))
    if "interface" in groups and taps is not None:
        names = [nic.target_dev for nic in cfg.interfaces if nic.type != "user" and nic.target_dev]
        params["net.count"] = len(names)
        for n, tap in enumerate(names):
            params.update(net_params(n, tap, guest_counters(taps.get(tap) or [0] * 16)))
    if "query-blockstats" in answers and "query-block" in answers:
        params.update(_block_params(guest, answers["query-blockstats"], answers["query-block"]))
    return params


def _qdev_id(qdev: str) -> str:
    """``/machine/peripheral/vda/virtio-backend`` (virtio) or ``sdb`` (scsi, ide) -> the device id."""
    return qdev.removeprefix("/machine/peripheral/").split("/")[0]


def _block_params(guest: Guest, blockstats: list[dict[str, Any]],
                  blocks: list[dict[str, Any]]) -> dict[str, Any]:
    counters = {_qdev_id(entry.get("qdev", "")): entry.get("stats", {}) for entry in blockstats}
    inserted = {_qdev_id(entry.get("qdev", "")): entry.get("inserted") or {} for entry in blocks}
    params: dict[str, Any] = {}
    disks = guest.config.disks
    params["block.count"] = len(disks)
    for n, disk in enumerate(disks):
        prefix = f"block.{n}."
        params[prefix + "name"] = disk.target
        layers = guest.chains.get(disk.target)
        path = layers[-1].path if layers else disk.source
        if path:
            params[prefix + "path"] = path
        stats = counters.get(disk.target, {})
        params.update({
            prefix + "rd.reqs": stats.get("rd_operations", 0),
            prefix + "rd.bytes": stats.get("rd_bytes", 0),
            prefix + "rd.times": stats.get("rd_total_time_ns", 0),
            prefix + "wr.reqs": stats.get("wr_operations", 0),
            prefix + "wr.bytes": stats.get("wr_bytes", 0),
            prefix + "wr.times": stats.get("wr_total_time_ns", 0),
            prefix + "fl.reqs": stats.get("flush_operations", 0),
            prefix + "fl.times": stats.get("flush_total_time_ns", 0),
        })
        medium = inserted.get(disk.target, {})
        image = medium.get("image") or {}
        if medium:
            # libvirt's allocation of a running disk: the highest offset the guest has written
            params[prefix + "allocation"] = stats.get("wr_highest_offset", 0)
            params[prefix + "capacity"] = image.get("virtual-size", 0)
            params[prefix + "physical"] = image.get("actual-size", 0)
            params[prefix + "threshold"] = medium.get("write_threshold", 0)
    return params
