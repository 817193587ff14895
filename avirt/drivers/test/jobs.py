"""Simulated block jobs: the same :class:`~avirt.jobs.BlockJob` handles, driven by timers instead of QEMU.

Each job runs as one task owned by the connection. It advances its progress in :data:`STEPS` equal
steps; without a bandwidth limit a step takes :data:`STEP_SECONDS` (a whole job a few tens of
milliseconds, so callers wait on the job or on its events, never on the clock); with one, a step takes as
long as that many bytes need at that speed, so ``bandwidth=1`` keeps a job running until ``set_speed(0)``
or ``abort()``. Then, as QEMU does:

* a single-phase job (intermediate commit, pull, every offline job) applies its change and completes;
* a two-phase job (active commit, copy) becomes READY and waits: ``pivot()`` applies the change and
  completes it (``pivot=True`` at the start does so by itself), ``abort()`` cancels it and changes nothing.

What a job changes is the driver's business: it passes ``apply`` (called once, only on success) and
``on_ready``/``on_end`` (to publish events and drop the job from its table). The handle concludes last,
so whoever awaits a job sees the new chain and finds no job on the disk any more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from avirt.errors import ImageError
from avirt.events.model import BlockJobStatus
from avirt.jobs import BlockJob, JobPhase
from avirt.tasks import TaskOwner

#: Progress steps per job.
STEPS = 8
#: How long one step takes when the job has no bandwidth limit.
STEP_SECONDS = 0.005

OnEnd = Callable[[BlockJob, BlockJobStatus, "str | None"], None]


@dataclass
class _Run:
    end: int
    speed: int  # bytes/s, 0 = unlimited
    cur: int = 0
    complete: bool = False
    cancel: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)

    def poke(self) -> None:
        self.wake.set()


class SimulatedJobs:
    """Runs the test driver's block jobs and is their JobBackend."""

    def __init__(self, tasks: TaskOwner) -> None:
        self._tasks = tasks
        self._runs: dict[str, _Run] = {}

    def start(self, job: BlockJob, end: int, *, apply: Callable[[], None],
              on_ready: Callable[[BlockJob], None], on_end: OnEnd, auto_pivot: bool = False) -> None:
        """Run ``job`` in the background; ``end`` is what its progress counts up to (bytes)."""
        run = self._runs[job.id] = _Run(end, job.bandwidth)
        self._tasks.start_soon(self._run, job, run, apply, on_ready, on_end, auto_pivot, name=job.id)

    def cancel(self, job: BlockJob) -> None:
        """End the job CANCELED as soon as its task runs; nothing is applied."""
        run = self._runs.get(job.id)
        if run is not None:
            run.cancel = True
            run.poke()

    async def _run(self, job: BlockJob, run: _Run, apply: Callable[[], None],
                   on_ready: Callable[[BlockJob], None], on_end: OnEnd, auto_pivot: bool) -> None:
        status = BlockJobStatus.FAILED
        error: str | None = "the connection closed while the job ran"
        try:
            await self._advance(run)
            if job.two_phase and not run.cancel:
                job.set_phase(JobPhase.READY)
                on_ready(job)
                run.complete = run.complete or auto_pivot
                while not (run.complete or run.cancel):
                    await _sleep(run, math.inf)
            if run.cancel:
                status, error = BlockJobStatus.CANCELED, None
            else:
                apply()
                status, error = BlockJobStatus.COMPLETED, None
        finally:
            del self._runs[job.id]
            on_end(job, status, error)
            job.conclude(status, error, progress=(run.cur, run.end))

    async def _advance(self, run: _Run) -> None:
        chunk = max(1, math.ceil(run.end / STEPS))
        while run.cur < run.end and not run.cancel:
            step = min(chunk, run.end - run.cur)
            speed = run.speed
            delay = max(STEP_SECONDS, step / speed) if speed else STEP_SECONDS
            began = anyio.current_time()
            if await _sleep(run, delay):  # woken early: a new speed, or the job is to stop
                if speed:
                    run.cur += min(step, int((anyio.current_time() - began) * speed))
                continue
            run.cur += step

    # -- JobBackend --------------------------------------------------------------------------------------

    async def job_progress(self, job: BlockJob) -> tuple[int, int]:
        run = self._runs.get(job.id)
        return (run.cur, run.end) if run is not None else (0, 0)

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None:
        if job.offline and bandwidth:
            raise ImageError("an offline job runs at full speed: it has no bandwidth limit")
        run = self._runs.get(job.id)
        if run is not None:
            run.speed = bandwidth
            run.poke()

    async def job_complete(self, job: BlockJob) -> None:
        if job.offline:
            raise ImageError("an offline job ends by itself: there is nothing to pivot")
        await job.wait_ready()  # as with QEMU, a pivot asked for early happens once the job is ready
        run = self._runs.get(job.id)
        if run is not None:
            run.complete = True
            run.poke()

    async def job_cancel(self, job: BlockJob) -> None:
        self.cancel(job)


async def _sleep(run: _Run, delay: float) -> bool:
    """Wait ``delay`` seconds or until the run is poked; True if poked."""
    poked = False
    with anyio.move_on_after(delay):
        await run.wake.wait()
        poked = True
    if poked:
        run.wake = anyio.Event()
    return poked
