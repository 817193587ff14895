"""A planned sequence of ``qemu-img`` runs as one awaitable :class:`~avirt.jobs.BlockJob`.

Shut-off domains have no QEMU to run a block job, so avirt runs ``qemu-img`` instead and presents it
through the same job handle as an online job: ``await job``, ``progress()``, ``abort()``.

* **Progress**: ``qemu-img -p`` prints ``    (NN.NN/100%)`` records separated by ``\\r`` on its standard
  output even when that is a pipe; each record updates the job's ``(cur, end)``, in bytes of the image's
  virtual size (qemu-img reports percent only).
* **Cancel**: ``abort()`` sends SIGTERM, then SIGKILL after :data:`KILL_GRACE` seconds; the child never
  outlives the job.
* **Failure**: a non-zero exit becomes :class:`~avirt.errors.ImageError` (``returncode``, ``stderr``),
  :class:`~avirt.errors.ImageLockedError` when another process holds an image; the job ends FAILED.

The steps run in order; the job completes only when every step did, and only then does the caller's
``on_success`` run (the persistent XML is rewritten there).

:class:`ImageJob` is the public face of the same machinery for images that no domain owns
(``avirt.offline.commit`` and friends): a thin handle over one such job that plans its steps only when it
starts, runs in the task that awaits it (or in the task group of ``async with job:``), and raises the
typed :class:`~avirt.errors.ImageError` of the step that failed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup

from avirt.errors import AvirtError, BlockJobError, ImageError, ImageLockedError, OperationInvalidError
from avirt.events.model import BlockJobStatus, JobKind
from avirt.hosts.base import Host
from avirt.jobs import BlockJob

log = logging.getLogger(__name__)

KILL_GRACE = 3.0
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


@dataclass(frozen=True)
class Step:
    """One qemu-img run; ``weight`` is its share of the job's progress."""

    argv: tuple[str, ...]
    weight: float = 1.0


class ImageJobRunner:
    """Runs the steps of offline jobs and is their JobBackend."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._progress: dict[str, tuple[int, int]] = {}
        self._processes: dict[str, Process] = {}
        self._cancelled: set[str] = set()

    def expect(self, job: BlockJob, size: int) -> None:
        """Announce a job before its task starts, so that its progress reads (0, size) at once."""
        self._progress[job.id] = (0, size)

    async def run(self, job: BlockJob, steps: Sequence[Step], size: int,
                  on_success: Callable[[], Awaitable[None]], *,
                  on_spawn: Callable[[int, int], Awaitable[None]] | None = None) -> AvirtError | None:
        """Run ``steps`` for ``job`` (meant to be started as a task) and conclude the job; returns the
        error that made it fail, if one did. ``on_spawn(index, pid)`` hears of each step's process as
        soon as it exists (a caller that records its jobs notes the pid)."""
        total = sum(step.weight for step in steps) or 1.0
        done = 0.0
        self._progress[job.id] = (0, size)
        try:
            for number, step in enumerate(steps, 1):
                def report(percent: float, before: float = done, weight: float = step.weight) -> None:
                    self._progress[job.id] = (int((before + weight * percent / 100) / total * size), size)

                finished = await self._run_step(job, step, report, number - 1, on_spawn)
                done += step.weight
                if job.id in self._cancelled and not (finished and number == len(steps)):
                    # A cancel that came after the last step had finished is too late: the work is done,
                    # and the job completes (and says so) like any other.
                    job.conclude(BlockJobStatus.CANCELED)
                    return None
            await on_success()
            self._progress[job.id] = (size, size)
            job.conclude(BlockJobStatus.COMPLETED, progress=(size, size))
            return None
        except AvirtError as e:
            if job.id in self._cancelled:
                job.conclude(BlockJobStatus.CANCELED)
                return None
            job.conclude(BlockJobStatus.FAILED, str(e))
            return e
        finally:
            if not job.ended:  # cancelled from outside (the connection closing) or a bug: never leave it open
                job.conclude(BlockJobStatus.FAILED, "the job was interrupted")
            self._processes.pop(job.id, None)
            self._progress.pop(job.id, None)
            self._cancelled.discard(job.id)

    async def _run_step(self, job: BlockJob, step: Step, report: Callable[[float], None], index: int,
                        on_spawn: Callable[[int, int], Awaitable[None]] | None) -> bool:
        """Run one step; True if it ran to its end (status 0), False if a cancel stopped it."""
        process = await self.host.spawn(step.argv)
        self._processes[job.id] = process
        if on_spawn is not None:
            try:
                await on_spawn(index, process.pid)
            except BaseException:
                process.kill()  # a step nobody may know of must not run on
                with anyio.CancelScope(shield=True):
                    await process.aclose()
                raise
        if job.id in self._cancelled:  # abort() came while the step was being recorded
            with contextlib.suppress(ProcessLookupError):  # abort() may have stopped it already
                process.send_signal(signal.SIGTERM)
        stderr = bytearray()
        async with process:
            async with anyio.create_task_group() as group:
                group.start_soon(_drain, process, stderr)
                assert process.stdout is not None
                async for chunk in process.stdout:
                    for match in _PERCENT.finditer(chunk):
                        report(float(match.group(1)))
            returncode = await process.wait()
        if returncode != 0 and job.id not in self._cancelled:
            text = stderr.decode(errors="replace").strip()
            error = ImageLockedError if "lock" in text else ImageError
            raise error(f"{step.argv[0]} {step.argv[1]} failed: {text or f'status {returncode}'}",
                        returncode, text)
        return returncode == 0

    # -- JobBackend --------------------------------------------------------------------------------------

    async def job_progress(self, job: BlockJob) -> tuple[int, int]:
        return self._progress.get(job.id, (0, 0))

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None:
        if bandwidth:
            raise ImageError("qemu-img runs at full speed: an offline job has no bandwidth limit")

    async def job_complete(self, job: BlockJob) -> None:
        raise ImageError("an offline job ends by itself: there is nothing to pivot")

    async def job_cancel(self, job: BlockJob) -> None:
        self._cancelled.add(job.id)
        process = self._processes.get(job.id)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # it has just ended by itself
            process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE):
            await process.wait()
            return
        log.warning("%s: qemu-img ignored SIGTERM, killing it", job.id)
        process.kill()


#: What an ImageJob runs, planned when it starts: its steps and the size its progress is counted in.
Planner = Callable[[], Awaitable[tuple[Sequence[Step], int]]]


class ImageJob:
    """One ``qemu-img`` job on images outside any domain, as returned by ``avirt.offline``'s functions.

    Nothing runs until the job is started, which happens in one of two ways::

        status = await job                     # runs it in this task; BlockJobStatus.COMPLETED

        async with job:                        # runs it in a task of its own while the block runs
            async for cur, end in job.progress():
                print(f"{cur / end:.0%}")
        # leaving the block waits for the end (an exception in the block cancels the job)

    The job first checks what it must (free space, locks) and plans its ``qemu-img`` steps; a refusal
    or a failed step raises the typed error (:class:`~avirt.errors.ImageError`,
    :class:`~avirt.errors.ImageLockedError`, :class:`~avirt.errors.InsufficientSpaceError`) from
    ``await job`` / ``wait()``. ``cancel()`` stops ``qemu-img`` (SIGTERM, then SIGKILL) and returns
    ``BlockJobStatus.CANCELED`` once it has ended.
    """

    def __init__(self, runner: ImageJobRunner, operation: str, image: str, kind: JobKind,
                 planner: Planner) -> None:
        self.operation = operation
        #: The image the job works on (the top of a commit, the image of a rebase, the target of a convert).
        self.image = image
        self._runner = runner
        self._planner = planner
        self._job = BlockJob(runner, id=f"{operation}-{secrets.token_hex(3)}", disk=image, kind=kind,
                             offline=True)
        self._started = False
        self._running = False  # qemu-img steps have begun
        self._cancel_requested = False
        self._failure: AvirtError | None = None
        self._group: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<ImageJob {self.id} {self.operation} {self.image!r}: {self.status or 'not ended'}>"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def status(self) -> BlockJobStatus | None:
        """The final status, or None while the job has not ended."""
        return self._job.status

    @property
    def error(self) -> str | None:
        return self._job.error

    async def info(self) -> tuple[int, int]:
        """``(cur, end)`` now, in bytes of the image's virtual size."""
        info = await self._job.info()
        return info.cur, info.end

    async def progress(self) -> AsyncIterator[tuple[int, int]]:
        """``(cur, end)`` as the job advances (sampled while iterating); ends when the job ends."""
        if not self._started:
            raise OperationInvalidError(f"{self.id} has not started: await it, or iterate inside "
                                        "'async with job:'")
        async for sample in self._job.progress():
            if sample[1]:  # (0, 0) while the job is still planning: no size to count in yet
                yield sample

    async def cancel(self) -> BlockJobStatus:
        """Stop the job; returns its final status (CANCELED, or how it ended if it already had)."""
        self._cancel_requested = True
        if not self._started:
            self._started = True
            self._job.conclude(BlockJobStatus.CANCELED)
        elif self._running and not self._job.ended:
            await self._runner.job_cancel(self._job)
        return await self._ended()

    async def wait(self) -> BlockJobStatus:
        """Run the job if nobody started it, and return its final status; raise its error if it failed."""
        if not self._started:
            await self._run()
        return await self._ended()

    def __await__(self) -> Generator[Any, None, BlockJobStatus]:
        return self.wait().__await__()

    async def __aenter__(self) -> ImageJob:
        if self._started:
            raise OperationInvalidError(f"{self.id} has already started")
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._started = True
        self._group.start_soon(self._run, name=self.id)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._group is not None
        group, self._group = self._group, None
        if exc is None:
            await group.__aexit__(None, None, None)
            await self._ended()  # the job's own error, if it failed
            return None
        if not self._job.ended:
            with anyio.CancelScope(shield=True):
                await self.cancel()
        # The job has ended: the caller's error goes on unwrapped (a cancellation the group must see).
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return await group.__aexit__(exc_type, exc, tb)
        await group.__aexit__(None, None, None)
        return None

    async def _run(self) -> None:
        self._started = True
        try:
            steps, size = await self._planner()
        except AvirtError as e:  # refused before touching a byte
            self._failure = e
            self._job.conclude(BlockJobStatus.FAILED, str(e))
            return
        if self._cancel_requested:  # cancelled while it was being planned: nothing ran
            self._job.conclude(BlockJobStatus.CANCELED)
            return
        self._running = True
        self._failure = await self._runner.run(self._job, steps, size, _nothing)

    async def _ended(self) -> BlockJobStatus:
        try:
            return await self._job.wait()
        except BlockJobError as e:
            raise (self._failure or ImageError(str(e))) from None


async def _nothing() -> None:
    pass


async def _drain(process: Process, into: bytearray) -> None:
    assert process.stderr is not None
    async for chunk in process.stderr:
        into += chunk
