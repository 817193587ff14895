"""Block jobs as awaitable objects, online (QMP) or offline (qemu-img): one type for both.

A :class:`BlockJob` is a handle on one job on one disk. Its phase follows QEMU's job states, in one place::

    RUNNING --(two-phase jobs)--> READY <--> STANDBY (READY can flap back while writes catch up)
    RUNNING | READY --> CONCLUDED with a final BlockJobStatus: COMPLETED, FAILED or CANCELED

The driver that runs the job (its *backend*) moves the phase from QEMU's events; the handle offers what a
caller does with a job::

    job = await dom.block_commit("vda")          # active commit: two-phase
    async for cur, end in job.progress(): ...    # sampled only while someone iterates
    await job.wait_ready()
    await job.pivot()                            # returns once the job has ended
    status = await job                           # BlockJobStatus.COMPLETED, or raises BlockJobError
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from avirt.errors import BlockJobError, InvalidArgumentError, OperationInvalidError
from avirt.events.model import BlockJobStatus, JobKind

#: How often progress() samples a running job (it is the only thing avirt polls, and only on demand).
PROGRESS_INTERVAL = 0.2


class JobPhase(enum.Enum):
    RUNNING = "running"
    READY = "ready"
    STANDBY = "standby"
    CONCLUDED = "concluded"


@dataclass(frozen=True)
class BlockJobInfo:
    """virDomainGetBlockJobInfo: bytes done of bytes to do, bandwidth in bytes/s (0 = unlimited)."""

    kind: JobKind
    cur: int
    end: int
    bandwidth: int
    ready: bool
    status: BlockJobStatus | None


class JobBackend(Protocol):
    """What a job handle asks of the driver that runs it."""

    async def job_progress(self, job: BlockJob) -> tuple[int, int]: ...

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None: ...

    async def job_complete(self, job: BlockJob) -> None: ...

    async def job_cancel(self, job: BlockJob) -> None: ...


class BlockJob:
    def __init__(self, backend: JobBackend, *, id: str, disk: str, kind: JobKind, offline: bool,
                 bandwidth: int = 0, two_phase: bool = False) -> None:
        self._backend = backend
        self.id = id
        self.disk = disk
        self.kind = kind
        self.offline = offline
        self.two_phase = two_phase
        self.bandwidth = bandwidth
        self.phase = JobPhase.RUNNING
        self.status: BlockJobStatus | None = None
        self.error: str | None = None
        #: Extra data the backend keeps with the job (node names, files to delete...).
        self.plan: dict[str, Any] = {}
        self._ready = anyio.Event()
        self._ended = anyio.Event()
        self._final: tuple[int, int] | None = None
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return f"<BlockJob {self.id} {self.kind.value} on {self.disk}: {self.status or self.phase.value}>"

    # -- the backend drives these ------------------------------------------------------------------------

    def set_phase(self, phase: JobPhase) -> None:
        if self.phase is JobPhase.CONCLUDED:
            return
        self.phase = phase
        if phase is JobPhase.READY:
            self._ready.set()
        self._announce()

    def unready(self) -> None:
        """READY flapped back (QEMU refused to complete): wait_ready() waits again."""
        if self.phase is not JobPhase.CONCLUDED:
            self.phase = JobPhase.STANDBY
            self._ready = anyio.Event()
            self._announce()

    def conclude(self, status: BlockJobStatus, error: str | None = None, *,
                 progress: tuple[int, int] | None = None) -> None:
        """The job is over; ``progress`` is its last ``(cur, end)``, which progress() reports last."""
        if self.phase is JobPhase.CONCLUDED:
            return
        self.phase, self.status, self.error = JobPhase.CONCLUDED, status, error
        self._final = progress
        self._ready.set()  # wake wait_ready() callers: it is over
        self._ended.set()
        self._announce()

    def _announce(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- what callers do -----------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.phase is JobPhase.CONCLUDED

    @property
    def final_progress(self) -> tuple[int, int] | None:
        """The ``(cur, end)`` the job ended at, when known (what progress() reports last)."""
        return self._final

    async def info(self) -> BlockJobInfo:
        cur, end = (0, 0) if self.ended else await self._backend.job_progress(self)
        return BlockJobInfo(self.kind, cur, end, self.bandwidth, self.phase is JobPhase.READY, self.status)

    async def set_speed(self, bytes_per_second: int) -> None:
        if bytes_per_second < 0:
            raise InvalidArgumentError("bandwidth must be >= 0 bytes/s (0 = unlimited)")
        self._require_running("set the speed of")
        await self._backend.job_set_speed(self, bytes_per_second)
        self.bandwidth = bytes_per_second

    async def wait_ready(self) -> None:
        """Return once a two-phase job is ready to pivot; raise BlockJobError if it ended instead."""
        if not self.two_phase:
            raise OperationInvalidError(f"{self.id} is not a two-phase job: it ends by itself")
        await self._ready.wait()
        if self.ended:
            self._raise_if_failed()
            raise BlockJobError(f"{self.id} ended ({self.status.value if self.status else '?'}) "
                                "before it became ready")

    async def pivot(self) -> BlockJobStatus:
        """Switch the disk to the job's target (two-phase jobs, once ready); returns once the job ended."""
        if not self.two_phase:
            raise OperationInvalidError(f"{self.id} is not a two-phase job: there is nothing to pivot to")
        self._require_running("pivot")
        await self._backend.job_complete(self)
        return await self.wait()

    async def abort(self) -> BlockJobStatus:
        """Stop the job and leave the disk as it was; returns once the job has ended."""
        self._require_running("abort")
        await self._backend.job_cancel(self)
        return await self.wait()

    async def wait(self) -> BlockJobStatus:
        """The final status once the job has ended; raises BlockJobError if it failed."""
        await self._ended.wait()
        self._raise_if_failed()
        assert self.status is not None
        return self.status

    def __await__(self) -> Generator[Any, None, BlockJobStatus]:
        return self.wait().__await__()

    async def progress(self) -> AsyncIterator[tuple[int, int]]:
        """``(cur, end)`` as the job advances, sampled while iterating; ends when the job ends, with the
        figures it ended at (``cur == end`` for a completed job), however fast it was."""
        last: tuple[int, int] | None = None
        while not self.ended:
            sample = await self._backend.job_progress(self)
            if sample != last:
                last = sample
                yield sample
            with anyio.move_on_after(PROGRESS_INTERVAL):
                await self._ended.wait()
        if self._final is not None and self._final != last:
            yield self._final

    async def phases(self) -> AsyncIterator[JobPhase]:
        """The phase now and after each change, until the job has concluded (what a served client's copy
        of the job follows)."""
        while True:
            changed = self._changed
            yield self.phase
            if self.ended:
                return
            await changed.wait()

    def _require_running(self, what: str) -> None:
        if self.ended:
            raise OperationInvalidError(f"cannot {what} {self.id}: it has ended ({self.status})")

    def _raise_if_failed(self) -> None:
        if self.status is BlockJobStatus.FAILED:
            raise BlockJobError(f"{self.id} failed: {self.error or 'unknown error'}")
