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
"""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import Process

from avirt.errors import AvirtError, ImageError, ImageLockedError
from avirt.events.model import BlockJobStatus
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
                  on_success: Callable[[], Awaitable[None]]) -> None:
        """Run ``steps`` for ``job`` (meant to be started as a task) and conclude the job."""
        total = sum(step.weight for step in steps) or 1.0
        done = 0.0
        self._progress[job.id] = (0, size)
        try:
            for step in steps:
                def report(percent: float, before: float = done, weight: float = step.weight) -> None:
                    self._progress[job.id] = (int((before + weight * percent / 100) / total * size), size)

                await self._run_step(job, step, report)
                done += step.weight
                if job.id in self._cancelled:
                    break
            if job.id in self._cancelled:
                job.conclude(BlockJobStatus.CANCELED)
                return
            await on_success()
            self._progress[job.id] = (size, size)
            job.conclude(BlockJobStatus.COMPLETED)
        except AvirtError as e:
            job.conclude(BlockJobStatus.CANCELED if job.id in self._cancelled else BlockJobStatus.FAILED,
                         None if job.id in self._cancelled else str(e))
        finally:
            if not job.ended:  # cancelled from outside (the connection closing) or a bug: never leave it open
                job.conclude(BlockJobStatus.FAILED, "the job was interrupted")
            self._processes.pop(job.id, None)
            self._cancelled.discard(job.id)

    async def _run_step(self, job: BlockJob, step: Step, report: Callable[[float], None]) -> None:
        process = await self.host.spawn(step.argv)
        self._processes[job.id] = process
        if job.id in self._cancelled:  # abort() came before the process existed
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
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE):
            await process.wait()
            return
        log.warning("%s: qemu-img ignored SIGTERM, killing it", job.id)
        process.kill()


async def _drain(process: Process, into: bytearray) -> None:
    assert process.stderr is not None
    async for chunk in process.stderr:
        into += chunk
