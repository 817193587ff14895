"""One domain's runtime state: its definitions, its QEMU, and the state machine that QEMU's events drive.

A :class:`Guest` holds what the driver knows of one domain. Its ``state``/``reason`` pair changes in two
ways only: the driver's lifecycle calls (start, suspend, destroy...) and QMP events, which
:meth:`Guest.on_qmp_event` turns into transitions. Follow-up actions that an event calls for (quit QEMU
after the guest powered off, reset it for a reboot) are returned as :class:`Reaction` values for the
driver to carry out, so this module never talks to QEMU itself.

The transitions, in one place::

    SHUTOFF --start--> RUNNING(booted) | PAUSED(user)          (spawn, then cont unless paused)
    RUNNING --STOP--> PAUSED(user | ioerror | watchdog)  or  CRASHED(internal-error)
    PAUSED  --RESUME--> RUNNING(unpaused)
    RUNNING --SHUTDOWN--> SHUTDOWN(guest | user) --quit, QEMU exits--> SHUTOFF(shutdown)
            (a reboot pending, or on_poweroff/on_reboot=restart: reset + cont -> RUNNING(booted);
             on_poweroff/on_reboot=preserve: QEMU stays, SHUTDOWN, until destroy())
    any     --GUEST_PANICKED--> CRASHED(panicked)
    any     --process exit--> SHUTOFF(shutdown | destroyed | crashed)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from avirt.config.model import DomainConfig
from avirt.drivers.base import DomainRecord
from avirt.drivers.qemu.cmdline import Layer
from avirt.drivers.qemu.process import QemuProcess
from avirt.drivers.qemu.state import SavedState
from avirt.events.model import JobKind, LifecycleType
from avirt.events.translate import Names, lifecycle_for
from avirt.models import DomainState

S = DomainState

#: QEMU's runstate (``query-status``) as a domain state and reason.
STATUS_TO_STATE: dict[str, tuple[DomainState, str]] = {
    "running": (S.RUNNING, "unknown"),
    "prelaunch": (S.PAUSED, "user"),
    "paused": (S.PAUSED, "user"),
    "io-error": (S.PAUSED, "ioerror"),
    "watchdog": (S.PAUSED, "watchdog"),
    "internal-error": (S.CRASHED, "internal-error"),
    "guest-panicked": (S.CRASHED, "panicked"),
    "shutdown": (S.SHUTDOWN, "user"),
    "suspended": (S.PMSUSPENDED, "unknown"),
    # Migration: the destination waits in inmigrate, the source ends in postmigrate (libvirt's
    # VIR_DOMAIN_PAUSED_MIGRATION either way).
    "inmigrate": (S.PAUSED, "migration"),
    "finish-migrate": (S.PAUSED, "migration"),
    "postmigrate": (S.PAUSED, "migration"),
}


class Reaction(enum.Enum):
    """What the driver must do after an event."""

    NONE = "none"
    QUIT = "quit"  # the guest is done (powered off, or on_poweroff/on_crash say destroy)
    RESTART = "restart"  # system_reset then cont: a reboot
    REFINE = "refine"  # ask query-status why the guest stopped
    DUMP_QUIT = "dump-quit"  # on_crash coredump-destroy: write the guest's memory to a file, then quit
    DUMP_RESTART = "dump-restart"  # on_crash coredump-restart: the dump, then a reboot


@dataclass
class Guest(DomainRecord):
    #: Each disk's chain in the running QEMU (bottom first).
    chains: dict[str, list[Layer]] = field(default_factory=dict)
    #: Every format node avirt may have open in this QEMU -> its file: the chains' nodes, and those a job
    #: dropped or a failed call left until they are closed (mirrored in the run directory's nodes.json).
    nodes: dict[str, str] = field(default_factory=dict)
    #: One writer of nodes.json at a time, each writing the newest ``nodes``.
    nodes_lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    #: One writer of jobs.json at a time, each writing the newest job table.
    jobs_lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    process: QemuProcess | None = None
    #: QEMU's id of each NIC of the live definition, in its order: ``net<i>`` from the start, the ids
    #: of NICs plugged in later after them (mirrored in nics.json once it differs; see nichotplug.py).
    nic_ids: list[str] = field(default_factory=list)
    #: Disks (and NICs, by id) whose detach waits for the guest: set when QEMU says DEVICE_DELETED.
    detaching: dict[str, anyio.Event] = field(default_factory=dict)
    #: Serialises state-changing calls; queries never take it.
    lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    #: Set once the current QEMU is gone and the state is SHUTOFF.
    stopped: anyio.Event = field(default_factory=anyio.Event)
    #: How the current QEMU's end is to be reported, set when the cause is known before the exit.
    exit_reason: str | None = None
    expect_stop: bool = False
    reboot_pending: bool = False
    #: What the next RESUME means, while avirt's own cont is in flight: "booted" after a start (or a
    #: reset for a reboot), "migrated" when an incoming migration ends; None: "unpaused".
    resume_reason: str | None = None
    #: Why the next STOP happens, when QEMU said so first (BLOCK_IO_ERROR or WATCHDOG with a pause action).
    pause_cause: str | None = None
    #: A query-status is in flight after an unexplained STOP; another STOP meanwhile asks for one more.
    refining: bool = False
    refine_again: bool = False
    #: Receives each lifecycle event this guest's state changes stand for.
    on_lifecycle: Callable[[LifecycleType, str], None] | None = None
    #: Called after every change of the state or its reason (the driver persists them in state.json).
    on_change: Callable[[], None] | None = None
    #: What the run directory's state.json holds now (None: nothing written yet).
    saved: SavedState | None = None
    #: A write of state.json is queued (QemuDriver._save_soon), and the one writer at a time.
    saving: bool = False
    save_lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    #: How QEMU's node names and job ids map to this guest's disks (for the event translation).
    names: Names = field(init=False)

    def __post_init__(self) -> None:
        self.names = Names(disk_of_node=self._disk_of_node, job=_job_of_id, path_of_node=self._path_of_node)

    def _disk_of_node(self, node: str) -> str:
        """``vda-3`` (or ``vda-3-file``) -> ``vda`` when that node is the top, else ``vda[k]`` k layers down
        (a node's number says when it was opened, not where it sits: jobs drop layers, hotplug numbers
        past names used before)."""
        format_node = node.removesuffix("-file")
        target = format_node.rpartition("-")[0]
        chain = self.chains.get(target, [])
        for depth, layer in enumerate(reversed(chain)):
            if layer.node == format_node:
                return target if depth == 0 else f"{target}[{depth}]"
        if chain and format_node in self.nodes:
            # A node of the disk's outside its chain that is written to: a running copy's destination
            # (what jobs leave behind is not written), named one past the deepest layer, as the live
            # XML's <mirror index> and set_block_threshold name it.
            return f"{target}[{len(chain)}]"
        return node

    def _path_of_node(self, node: str) -> str:
        return self.nodes.get(node.removesuffix("-file"), "")


    def set_state(self, state: DomainState, reason: str, *, detail: str | None = None,
                  announce: bool = True) -> None:
        """Move to ``(state, reason)`` and, if that is news, announce it as a lifecycle event.

        ``detail`` overrides the event's detail where the state alone does not say it (a QEMU that died
        on its own and one that a guest panic ended are both SHUTOFF/crashed, but FAILED vs CRASHED).
        """
        changed = (state, reason) != (self.state, self.reason)
        self.state, self.reason = state, reason
        if changed and self.on_change is not None:
            self.on_change()
        if announce and changed and self.on_lifecycle is not None:
            event = lifecycle_for(state, reason)
            if event is not None:
                self.on_lifecycle(event[0], detail or event[1])

    def began(self, process: QemuProcess, live: DomainConfig, chains: dict[str, list[Layer]]) -> None:
        """A QEMU for this guest now exists (spawned or re-attached)."""
        self.process, self.live, self.chains = process, live, chains
        self.nic_ids = [f"net{i}" for i in range(len(live.interfaces))]
        self.detaching = {}
        self.nodes = {layer.node: layer.path for layers in chains.values() for layer in layers}
        self.stopped = anyio.Event()
        self.exit_reason = None
        self.expect_stop = self.reboot_pending = False
        self.pause_cause = None
        self.saved = None

    def to_save(self) -> SavedState:
        """What state.json must hold now: the state, its reason, and the intents QEMU does not keep."""
        return SavedState(self.state.value, self.reason, self.reboot_pending)

    def restore(self, saved: SavedState | None, status: str) -> None:
        """After a re-attach: the state from QEMU's runstate ``status``, with the reason (and the pending
        reboot) a controller saved, as long as the state is still the one it saved."""
        state, reason = STATUS_TO_STATE.get(status, (S.PAUSED, "unknown"))
        if saved is not None:
            self.reboot_pending = saved.reboot
            if saved.state == state.value:
                reason = saved.reason
        self.saved = saved
        self.set_state(state, reason, announce=False)

    def missed_shutdown(self) -> Reaction:
        """QEMU waits in runstate shutdown and no controller saw it get there: what the one that watched
        would have done then. A pending reboot is carried out; otherwise the guest is done (a guest that
        on_poweroff='preserve' kept there was saved as SHUTDOWN, which ``restore`` keeps)."""
        if self.reboot_pending:
            self.reboot_pending = False
            return Reaction.RESTART
        self.exit_reason = "shutdown"
        return Reaction.QUIT

    def ended(self) -> None:
        """The QEMU is gone: SHUTOFF with the reason its end was given; nobody gave one -> it failed."""
        cause = self.exit_reason or "failed"
        reason = "crashed" if cause == "failed" else cause
        self.set_state(S.SHUTOFF, reason, detail=cause)
        self.process, self.live, self.chains, self.nodes = None, None, {}, {}
        self.stopped.set()

    def on_qmp_event(self, msg: dict[str, Any]) -> Reaction:
        name = msg.get("event")
        data = msg.get("data") or {}
        if name == "STOP":
            if self.expect_stop:
                self.expect_stop = False
                self.set_state(S.PAUSED, "user")
                return Reaction.NONE
            if self.state in (S.SHUTDOWN, S.CRASHED):
                return Reaction.NONE  # the stop is part of a shutdown or panic already reported
            if self.pause_cause:  # QEMU said why just before: an I/O error or a watchdog
                self.set_state(S.PAUSED, self.pause_cause)
                self.pause_cause = None
                return Reaction.NONE
            self.set_state(S.PAUSED, "unknown")  # no event yet: query-status will tell why
            return Reaction.REFINE
        if name == "RESUME":
            self.set_state(S.RUNNING, self.resume_reason or "unpaused")
        elif name == "BLOCK_IO_ERROR" and data.get("action") == "stop":
            self.pause_cause = "ioerror"
        elif name == "WATCHDOG" and data.get("action") == "pause":
            self.pause_cause = "watchdog"
        elif name == "SHUTDOWN":
            return self._on_shutdown(str(data.get("reason", "")), bool(data.get("guest")))
        elif name == "GUEST_PANICKED":
            self.set_state(S.CRASHED, "panicked")
            action = self.config.on_crash
            if action in ("destroy", "coredump-destroy"):
                self.exit_reason = "crashed"
                return Reaction.QUIT if action == "destroy" else Reaction.DUMP_QUIT
            return {"restart": Reaction.RESTART, "coredump-restart": Reaction.DUMP_RESTART}.get(
                action, Reaction.NONE)
        elif name == "SUSPEND":
            self.set_state(S.PMSUSPENDED, "unknown")
        elif name == "WAKEUP" and self.state is S.PMSUSPENDED:
            self.set_state(S.RUNNING, "wakeup")
        return Reaction.NONE

    def _on_shutdown(self, reason: str, by_guest: bool) -> Reaction:
        if reason in ("host-qmp-quit", "host-signal"):
            # QEMU is exiting by itself; only how to report it remains. A destroy() announces only its end.
            if self.exit_reason is None:  # someone else told QEMU to go
                self.exit_reason = "shutdown"
                self.set_state(S.SHUTDOWN, "host")
            # else avirt itself is ending it (destroy, or after a power-off or a panic): only the end is news
            return Reaction.NONE
        self.set_state(S.SHUTDOWN, "guest" if by_guest else "user")
        if self.reboot_pending:
            self.reboot_pending = False
            return Reaction.RESTART
        # QEMU names why the guest went down; the domain's on_* settings say what follows.
        action = self.config.on_reboot if reason == "guest-reset" else self.config.on_poweroff
        if action == "restart":
            return Reaction.RESTART
        if action == "preserve":
            return Reaction.NONE  # QEMU stays, in runstate shutdown, until destroy()
        self.exit_reason = "shutdown"
        return Reaction.QUIT


_JOB_KINDS = {kind.value: kind for kind in JobKind}


def _job_of_id(job_id: str) -> tuple[str, JobKind] | None:
    """avirt names its jobs ``<kind>-<disk>-<n>`` (``active-commit-vda-2``); others are not ours."""
    head, _, _number = job_id.rpartition("-")
    kind, _, disk = head.rpartition("-")
    return (disk, _JOB_KINDS[kind]) if kind in _JOB_KINDS and disk else None
