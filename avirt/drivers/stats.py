"""Bulk statistics: the field names and numbers every driver reports with.

``Connection.all_domain_stats()`` is libvirt's virConnectGetAllDomainStats: one flat map of typed parameters
per domain, grouped by a prefix (``state.``, ``cpu.``, ``balloon.``, ``vcpu.``, ``net.``, ``block.``) with
libvirt's own names, so code and dashboards written for ``virsh domstats`` read avirt's unchanged. This module
holds what the drivers share: which groups exist, libvirt's numbers for states and reasons (``state.state``
and ``state.reason`` are numbers in libvirt, not names), and the one marker avirt adds, :data:`UNRESPONSIVE`.
How a driver measures is its own business (``drivers/qemu/stats.py`` for QEMU).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from avirt.errors import InvalidArgumentError
from avirt.models import DomainState, InterfaceStats

#: The groups a caller may ask for, by libvirt's names (virsh domstats --state --cpu-total ...).
GROUPS: tuple[str, ...] = ("state", "cpu-total", "balloon", "vcpu", "interface", "block")

#: Set (to True) when a running domain's QEMU did not answer within the timeout: the groups it could not
#: give are missing, ``state.*`` is still there. avirt's own field; libvirt has none.
UNRESPONSIVE = "stats.unresponsive"

#: How long one domain may take to answer, by default, before it is reported as unresponsive.
DEFAULT_TIMEOUT = 5.0

S = DomainState

#: virDomainState.
STATE_NUMBERS: dict[DomainState, int] = {
    S.RUNNING: 1, S.PAUSED: 3, S.SHUTDOWN: 4, S.SHUTOFF: 5, S.CRASHED: 6, S.PMSUSPENDED: 7,
}

#: virDomainRunningReason, virDomainPausedReason, ...: each state numbers its reasons itself.
REASON_NUMBERS: dict[DomainState, dict[str, int]] = {
    S.RUNNING: {"unknown": 0, "booted": 1, "migrated": 2, "restored": 3, "from-snapshot": 4,
                "unpaused": 5, "wakeup": 8, "crashed": 9, "postcopy": 10},
    S.PAUSED: {"unknown": 0, "user": 1, "migration": 2, "save": 3, "dump": 4, "ioerror": 5,
               "watchdog": 6, "from-snapshot": 7, "shutting-down": 8, "snapshot": 9, "api-error": 10,
               "starting-up": 11, "postcopy": 12, "paused": 1},
    S.SHUTDOWN: {"unknown": 0, "user": 1, "guest": 1, "host": 1},
    S.SHUTOFF: {"unknown": 0, "shutdown": 1, "destroyed": 2, "crashed": 3, "migrated": 4, "saved": 5,
                "failed": 6, "from-snapshot": 7, "daemon": 8},
    S.CRASHED: {"unknown": 0, "panicked": 1, "internal-error": 0},
    S.PMSUSPENDED: {"unknown": 0},
}

#: virDomainBlockStatsFlags' names -> the ``block.N.`` field each is read from.
BLOCK_STATS: dict[str, str] = {
    "rd_operations": "rd.reqs", "rd_bytes": "rd.bytes", "rd_total_times": "rd.times",
    "wr_operations": "wr.reqs", "wr_bytes": "wr.bytes", "wr_total_times": "wr.times",
    "flush_operations": "fl.reqs", "flush_total_times": "fl.times",
}


#: virDomainInterfaceStats' names (InterfaceStats' fields) -> the ``net.N.`` field each is read from.
NET_STATS: dict[str, str] = {
    "rx_bytes": "rx.bytes", "rx_packets": "rx.pkts", "rx_errs": "rx.errs", "rx_drop": "rx.drop",
    "tx_bytes": "tx.bytes", "tx_packets": "tx.pkts", "tx_errs": "tx.errs", "tx_drop": "tx.drop",
}


def net_params(n: int, name: str, counters: InterfaceStats) -> dict[str, Any]:
    """The ``net.N.*`` fields of one NIC (group ``interface``)."""
    prefix = f"net.{n}."
    return {prefix + "name": name,
            **{prefix + field: getattr(counters, attr) for attr, field in NET_STATS.items()}}


def interface_stats(params: dict[str, Any], name: str) -> InterfaceStats | None:
    """One NIC's counters out of a domain's ``net.*`` parameters; None when no ``net.N.name`` is ``name``."""
    for i in range(int(params.get("net.count", 0))):
        if params.get(f"net.{i}.name") == name:
            return InterfaceStats(**{attr: int(params.get(f"net.{i}.{field}", 0))
                                     for attr, field in NET_STATS.items()})
    return None


def check_groups(groups: Iterable[str] | None) -> list[str]:
    """The groups to gather, in :data:`GROUPS` order (None: all of them); an unknown one is refused."""
    if groups is None:
        return list(GROUPS)
    wanted = set(groups)
    unknown = sorted(wanted - set(GROUPS))
    if unknown:
        raise InvalidArgumentError(f"unknown statistics group {', '.join(unknown)} "
                                   f"(known: {', '.join(GROUPS)})")
    return [g for g in GROUPS if g in wanted]


def state_params(state: DomainState, reason: str) -> dict[str, Any]:
    return {"state.state": STATE_NUMBERS[state], "state.reason": REASON_NUMBERS[state].get(reason, 0)}


def block_stats(params: dict[str, Any], disk: str) -> dict[str, int] | None:
    """One disk's counters (virDomainBlockStats' names) out of a domain's ``block.*`` parameters; None when
    no ``block.N.name`` is ``disk``."""
    for i in range(int(params.get("block.count", 0))):
        if params.get(f"block.{i}.name") == disk:
            return {name: int(params.get(f"block.{i}.{field}", 0)) for name, field in BLOCK_STATS.items()}
    return None
