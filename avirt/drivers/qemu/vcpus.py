"""vCPUs plugged into and out of a running QEMU (libvirt's virDomainSetVcpusFlags).

A definition's ``<vcpu current='N'>M</vcpu>`` starts QEMU with ``-smp N,maxcpus=M``: M slots, N of them
filled. ``query-hotpluggable-cpus`` lists the slots, each with the properties that place a CPU in it
(socket, core, thread) and, when filled, the CPU's QOM path. Adding vCPUs fills the lowest empty slots
with ``device_add`` (the CPU type QEMU names for the slot, with those properties, and an id ``vcpuK``,
K the slot's rank), which the guest sees at once as present CPUs it may bring online. Removing them
empties the highest filled slots with ``device_del`` (by id, or by QOM path for a CPU of the command
line); like a PCI disk, a vCPU leaves only when the guest's OS agrees (ACPI eject), so the call waits for
its ``DEVICE_DELETED``, for at most its timeout, and says
:class:`~avirt.errors.DeviceDetachTimeoutError` when the guest does not answer. QEMU itself refuses to
ask before the guest's OS has taken over ACPI CPU hotplug (on q35 the guest switches it from the legacy
interface when it boots), which is an :class:`~avirt.errors.OperationInvalidError`. The first slot's
CPU, the boot CPU, never leaves.

QEMU 7.2 under TCG (``<domain type='qemu'>``) crashes ("double free or corruption") when a vCPU is
plugged in after one was unplugged, into any slot. So once a TCG guest's QEMU has been asked to let a
vCPU go (``run/<name>/vcpu-left`` says so, for the next controller too), adding vCPUs is refused until
the domain restarts. Only TCG guests are held to this: the fault is in TCG's vCPU teardown, and this
project's machines cannot boot KVM guests to show whether KVM shares it.

The live definition's ``current`` follows what QEMU has; a controller that starts on a guest asks QEMU
how many vCPUs it has, so a change that the last controller did not live to record is not lost.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from avirt.config import domain_to_xml
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.guest import Guest
from avirt.drivers.qemu.hotplug import DeviceHost, ask_to_remove
from avirt.errors import DeviceDetachTimeoutError, InvalidArgumentError, OperationInvalidError, QMPError

__all__ = ["reconcile", "set_vcpus", "with_vcpus"]


def with_vcpus(cfg: DomainConfig, count: int) -> DomainConfig:
    """``cfg`` with ``count`` vCPUs online at start (libvirt writes ``current`` only below the maximum)."""
    if not 1 <= count <= cfg.vcpus:
        raise InvalidArgumentError(f"domain '{cfg.name}' has room for 1 to {cfg.vcpus} vCPUs "
                                   f"(<vcpu> in its definition), not {count}")
    return replace(cfg, vcpus_current=None if count == cfg.vcpus else count)


async def set_vcpus(driver: DeviceHost, guest: Guest, count: int, timeout: float) -> None:
    """Fill or empty the running guest's vCPU slots until ``count`` are filled (under the guest's lock)."""
    assert guest.live is not None and guest.process is not None
    new_live = with_vcpus(guest.live, count)
    monitor = driver.monitor(guest)
    slots = _ordered(await monitor.execute("query-hotpluggable-cpus"))
    filled = [slot for slot in slots if slot.get("qom-path")]
    try:
        if count > len(filled):
            if guest.live.hypervisor == "qemu" and await driver.files.vcpu_left(guest.name):
                raise OperationInvalidError(
                    f"domain '{guest.name}' has let a vCPU go since it started, and QEMU 7.2 under TCG "
                    "crashes when another vCPU is then plugged in: restart the domain to have more")
            for rank, slot in enumerate(slots):
                if len(filled) >= count:
                    break
                if not slot.get("qom-path"):
                    await monitor.execute("device_add", {"driver": slot["type"], "id": f"vcpu{rank}",
                                                         **slot.get("props", {})})
                    filled.append(slot)
        else:
            for slot in reversed(filled[new_live.vcpus_current or new_live.vcpus:]):  # never the first
                await _unplug(driver, guest, slot, timeout)
    finally:
        # Whatever came of it, the live definition says what QEMU has now.
        guest.process.vcpu_threads = None  # statistics ask for the threads again
        await reconcile(driver, guest)


async def _unplug(driver: DeviceHost, guest: Guest, slot: dict[str, Any], timeout: float) -> None:
    path = str(slot["qom-path"])
    # A CPU of the command line has no id: QEMU takes its QOM path, and names it so in DEVICE_DELETED.
    device = path.removeprefix("/machine/peripheral/") if path.startswith("/machine/peripheral/") else path
    # QEMU 7.2 reports a vCPU's removal as the DEVICE_DELETED of its local APIC (path <cpu>/lapic); the
    # CPU's own comes late or not at all.
    await driver.files.mark_vcpu_left(guest.name)  # before it may have happened
    try:
        released = await ask_to_remove(driver.monitor(guest), guest, device, timeout, also=(f"{path}/lapic",))
    except QMPError as e:
        # QEMU refuses while the guest's OS has not taken over ACPI CPU hotplug (a guest still in its
        # firmware, or without ACPI): nothing was asked of the guest.
        raise OperationInvalidError(
            f"domain '{guest.name}': QEMU refused to unplug vCPU {device} ({e.desc}); a guest whose OS "
            "has not booted cannot let one go") from None
    if not released:
        raise DeviceDetachTimeoutError(guest.name, device, timeout)


async def reconcile(driver: DeviceHost, guest: Guest) -> None:
    """The live definition's vCPU count made QEMU's (after a change, or when a controller re-attaches)."""
    if guest.live is None or guest.live.vcpus == 1:
        return  # one slot, always filled: nothing to ask
    online = len(await driver.monitor(guest).execute("query-cpus-fast"))
    live = with_vcpus(guest.live, min(max(online, 1), guest.live.vcpus))
    if live.vcpus_current != guest.live.vcpus_current:
        guest.live = live
        await driver.files.write_live(guest.name, domain_to_xml(live))


def _ordered(slots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slots in the order the guest numbers its CPUs: by socket, die, core, thread."""
    def key(slot: dict[str, Any]) -> tuple[int, ...]:
        props = slot.get("props", {})
        return tuple(int(props.get(name, 0)) for name in ("node-id", "socket-id", "die-id", "core-id",
                                                            "thread-id"))
    return sorted(slots, key=key)
