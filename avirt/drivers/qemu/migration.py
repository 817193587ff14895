"""Live migration, QEMU's side: what one controller asks of one QEMU, source or destination.

A migration moves a running guest's devices and memory from one QEMU (the source) into a second QEMU
started for it (the destination), which then runs in its place. The order of the steps is
:mod:`avirt.migration`'s (libvirt's phases: begin, prepare, perform, finish, confirm); this module is the
QMP each step sends and how its outcome is known:

* **Destination**: QEMU is spawned from the source's live definition (the same machine, down to PCI
  addresses: the stable guest ABI makes the two command lines agree) with ``-incoming defer``, which
  leaves it waiting in runstate ``inmigrate``; :func:`listen` turns on migration events and has it listen
  on a unix socket in its run directory (``migrate-incoming``). Disk images are opened inactive until the
  migration completes, so the destination can open the very files the source still writes (shared
  storage on one host).
* **Source**: :func:`send` sets the bandwidth and the downtime limit, then ``migrate`` to that socket.
  QEMU works in the background; each change of its status comes as a ``MIGRATION`` event, which the
  driver hands to the guest's :class:`Watch`. At the end the source pauses (runstate ``postmigrate``)
  and lets go of its images; the destination, once its own status is ``completed``, owns them.

Nothing here polls: :meth:`Watch.wait_done` waits for the event. Only :func:`progress` asks
``query-migrate``, when someone reads progress.
"""

from __future__ import annotations

from typing import Any

import anyio

from avirt.errors import MigrationError, QMPError
from avirt.models import MigrationProgress
from avirt.qmp.monitor import Monitor

#: QEMU's final statuses of a migration (``MigrationStatus`` in its QAPI schema).
DONE = frozenset({"completed", "failed", "cancelled"})
#: max-bandwidth when the caller sets none: as good as unlimited (QEMU's own default is 128 MiB/s, which
#: would make even a local migration of a large guest take seconds per GiB for no reason).
UNLIMITED = 1 << 53
#: How long the destination may take to load the last of the state once the source says completed.
FINISH_TIMEOUT = 60.0


class Watch:
    """One QEMU's migration status, as its MIGRATION events tell it."""

    def __init__(self) -> None:
        self.status = "none"
        self._changed = anyio.Event()
        #: Destination: set once the migration's finish phase has begun (the orphan watcher stands down).
        self.finished: anyio.Event | None = None

    def update(self, data: dict[str, Any]) -> None:
        self.status = str(data.get("status", self.status))
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def done(self) -> bool:
        return self.status in DONE

    async def wait_done(self) -> str:
        while not self.done:
            await self._changed.wait()
        return self.status


async def _enable_events(monitor: Monitor, *extra: str) -> None:
    capabilities = [{"capability": name, "state": True} for name in ("events", *extra)]
    await monitor.execute("migrate-set-capabilities", {"capabilities": capabilities})


async def listen(monitor: Monitor, socket_path: str) -> str:
    """Destination: listen for the migration stream; the URI the source sends it to. The images stay
    inactive (not locked) until the guest runs here (late-block-activate), so that a source whose
    migration is undone, even after the last byte, can take them back."""
    await _enable_events(monitor, "late-block-activate")
    uri = f"unix:{socket_path}"
    await monitor.execute("migrate-incoming", {"uri": uri})
    return uri


async def send(monitor: Monitor, watch: Watch, uri: str, *, bandwidth: int | None,
               max_downtime: int | None) -> MigrationProgress:
    """Source: migrate to ``uri`` and return QEMU's final figures once it is done; MigrationError if it
    failed or was cancelled (the source then runs on as before: QEMU resumes it by itself)."""
    await _enable_events(monitor)
    parameters: dict[str, Any] = {"max-bandwidth": bandwidth or UNLIMITED}
    if max_downtime is not None:
        parameters["downtime-limit"] = max_downtime
    await monitor.execute("migrate-set-parameters", parameters)
    await monitor.execute("migrate", {"uri": uri})
    status = await watch.wait_done()
    if status != "completed":
        reason = await _error_of(monitor)
        raise MigrationError(f"the migration {status}" + (f": {reason}" if reason else ""))
    return await progress(monitor)


async def received(monitor: Monitor, watch: Watch) -> None:
    """Destination: return once the whole state is loaded; MigrationError otherwise."""
    try:
        with anyio.fail_after(FINISH_TIMEOUT):
            status = await watch.wait_done()
    except TimeoutError:
        raise MigrationError(f"the destination did not finish loading the guest in {FINISH_TIMEOUT:.0f} s "
                             f"(its status: {watch.status})") from None
    if status != "completed":
        raise MigrationError(f"the destination's migration {status}: {await _error_of(monitor)}")


async def progress(monitor: Monitor) -> MigrationProgress:
    info = await monitor.execute("query-migrate")
    ram = info.get("ram") or {}
    return MigrationProgress(
        status=str(info.get("status", "none")),
        ram_total=int(ram.get("total", 0)),
        ram_transferred=int(ram.get("transferred", 0)),
        ram_remaining=int(ram.get("remaining", 0)),
        dirty_rate=int(ram.get("dirty-pages-rate", 0)) * int(ram.get("page-size", 4096) or 4096),
        passes=int(ram.get("dirty-sync-count", 0)),
        expected_downtime_ms=int(info.get("expected-downtime", 0) or 0),
        total_ms=int(info.get("total-time", 0) or 0),
        downtime_ms=int(info.get("downtime", 0) or 0),
    )


async def cancel(monitor: Monitor) -> None:
    await monitor.execute("migrate_cancel")


async def _error_of(monitor: Monitor) -> str:
    try:
        info = await monitor.execute("query-migrate")
    except QMPError:  # the QEMU may be gone: the status already said what matters
        return ""
    return str(info.get("error-desc", ""))
