"""What the job modules ask of the driver they work for, as a protocol.

``blockjobs.py`` (online jobs) and ``offlinejobs.py`` (qemu-img jobs) are parts of the QEMU driver, but
they need only a few of its things: the host, the state directory, its task owner, its guests, a guest's
monitor, and two notifications back (a guest's chains changed; a job ended). Naming exactly those here
lets the job modules depend on this small interface instead of on ``driver.py``, which imports them:
the arrows point one way, and a reader of a job module sees all it may touch.
"""

from __future__ import annotations

from typing import Protocol

from avirt.drivers.base import Records
from avirt.drivers.qemu.guest import Guest
from avirt.drivers.qemu.state import StateDir
from avirt.hosts.base import Host
from avirt.jobs import BlockJob
from avirt.qmp import Monitor
from avirt.tasks import TaskOwner

__all__ = ["JobHost"]


class JobHost(Protocol):
    host: Host
    files: StateDir
    tasks: TaskOwner
    guests: Records[Guest]

    def monitor(self, guest: Guest) -> Monitor:
        """The guest's monitor (OperationInvalidError if it has none now)."""

    async def chains_changed(self, guest: Guest) -> None:
        """Re-read the guest's chains from QEMU and write them into its definitions."""

    def disk_images_changed(self, guest: Guest) -> None:
        """A job off line may have given a disk another image."""

    def announce_job(self, guest: Guest, job: BlockJob, timestamp: float | None = None) -> None:
        """Publish the job's end as a BlockJobEvent."""
