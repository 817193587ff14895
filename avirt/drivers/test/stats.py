"""Bulk statistics of the test driver: the QEMU driver's fields, filled from what the simulation knows.

A simulated guest does no work of its own, so its numbers are made up, but consistently: it has used one
vCPU's worth of CPU time since it started (split evenly between its vCPUs), its balloon holds the definition's
current memory, each NIC (named by its ``<target dev>``, else ``vnetN`` as QEMU's taps are) has received 2
KiB/s and sent 1 KiB/s in 512-byte packets since the guest started, and each disk has read and written
nothing, holds what its top image stores in the image store, and has the write threshold
``set_block_threshold`` gave it (a threshold is never crossed here, since nothing writes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from avirt.config.devices import Interface
from avirt.drivers.stats import net_params, state_params
from avirt.errors import ImageError
from avirt.models import InterfaceStats

if TYPE_CHECKING:
    from avirt.drivers.test.driver import SimDomain
    from avirt.drivers.test.images import ImageStore


def domain_stats(dom: SimDomain, groups: list[str], images: ImageStore) -> dict[str, Any]:
    params: dict[str, Any] = state_params(dom.state, dom.reason) if "state" in groups else {}
    if not dom.active:
        return params
    cfg = dom.config
    cpu = int((anyio.current_time() - dom.started_at) * 1e9)
    if "cpu-total" in groups:
        params["cpu.time"] = cpu
    if "balloon" in groups:
        params["balloon.current"] = cfg.current_memory_kib or cfg.memory_kib
        params["balloon.maximum"] = cfg.memory_kib
    if "vcpu" in groups:
        online = cfg.vcpus_current or cfg.vcpus
        params["vcpu.current"] = online
        params["vcpu.maximum"] = cfg.vcpus
        for n in range(online):
            params[f"vcpu.{n}.state"] = 1
            params[f"vcpu.{n}.time"] = cpu // online
    if "interface" in groups:
        nics = cfg.interfaces
        params["net.count"] = len(nics)
        for n, nic in enumerate(nics):
            params.update(net_params(n, nic_name(nic, n), nic_counters(dom, n)))
    if "block" in groups:
        params["block.count"] = len(cfg.disks)
        for n, disk in enumerate(cfg.disks):
            prefix = f"block.{n}."
            params[prefix + "name"] = disk.target
            for counter in ("rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times",
                            "fl.reqs", "fl.times"):
                params[prefix + counter] = 0
            if disk.source is None:
                continue
            params[prefix + "path"] = disk.source
            try:
                info = images.chain(disk.source)[0].info()
            except ImageError:
                continue
            params[prefix + "allocation"] = info.allocated
            params[prefix + "capacity"] = info.virtual_size
            params[prefix + "physical"] = info.actual_size
            params[prefix + "threshold"] = dom.thresholds.get(disk.target, 0)
    return params


#: What a simulated NIC receives and sends per second of the guest's run, in bytes.
RX_RATE, TX_RATE, PACKET = 2048, 1024, 512


def nic_name(nic: Interface, n: int) -> str:
    return nic.target_dev or f"vnet{n}"


def nic_counters(dom: SimDomain, n: int) -> InterfaceStats:
    """NIC ``n``'s counters: steady traffic since the start, no errors and no drops."""
    seconds = max(0.0, anyio.current_time() - dom.started_at)
    rx, tx = int(seconds * RX_RATE), int(seconds * TX_RATE)
    return InterfaceStats(rx, rx // PACKET, 0, 0, tx, tx // PACKET, 0, 0)
