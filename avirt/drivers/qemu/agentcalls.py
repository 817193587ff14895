"""The QEMU driver's guest agent calls (a mix-in): one agent session per running guest, and quiescing.

The controller that holds the state directory owns every guest's agent connection, as it owns the QMP
monitors: QEMU accepts one client on a channel's socket, so another program's call reaches the agent
through the served protocol and this driver. A session (``avirt/agent/client.py``) is made at the first
call to a running guest that has the ``org.qemu.guest_agent.0`` channel, and closed when that QEMU
ends. QMP tells the driver when the agent at the other end may have changed, and the session syncs
again before its next command:

* ``VSERPORT_CHANGE`` for the agent's port: qemu-ga opened or closed it (started, stopped, restarted);
* ``RESET`` and ``SHUTDOWN``: the guest reboots or goes down, and its agent with it.

The same events say whether qemu-ga has the port open at all (for a session made before any event, such
as after a new controller's re-attach, ``query-chardev``'s ``frontend-open`` says it once). A port that
is closed means no agent runs: the call fails at once with :class:`~avirt.errors.AgentUnavailableError`
instead of waiting for a sync that nobody will answer. An agent that has the port open but does not
answer (stopped, stuck, a frozen guest) is the sync's timeout, :class:`~avirt.errors.AgentTimeoutError`.

The port's changes are also the domain's ``AgentLifecycleEvent`` (libvirt's AGENT_LIFECYCLE): CONNECTED
or DISCONNECTED with reason CHANNEL, and, when a domain with the channel starts, DISCONNECTED with reason
DOMAIN_STARTED (a new QEMU has no agent on the port yet). RESET and SHUTDOWN give none of their own:
the guest's closing of the port, if QEMU sees one, is the event.

The same events end :meth:`AgentCalls.agent_shutdown`'s wait: guest-shutdown answers only failures, so
the call returns when QEMU reports the guest going down (or the agent closing its port), not after a
fixed delay.

Quiescing (``snapshot_disks(quiesce=True)``): :meth:`AgentCalls.freeze` and :meth:`AgentCalls.thaw`
are what driver.py runs around the snapshot, in libvirt's order: freeze first (so a guest without a
working agent is refused before any overlay is made), then the overlays and the transaction, then thaw,
also when a step failed or the call was cancelled.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from avirt.agent.client import AgentClient
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline import channel_path
from avirt.drivers.qemu.guest import Guest
from avirt.drivers.qemu.state import StateDir
from avirt.errors import AgentError, AgentUnavailableError, OperationInvalidError
from avirt.events.bus import EventBus
from avirt.events.model import AgentLifecycleEvent, AgentReason, AgentState
from avirt.events.translate import timestamp_of
from avirt.hosts.base import Host
from avirt.models import DomainState
from avirt.qmp.monitor import Monitor

__all__ = ["AGENT_CHANNEL", "AgentCalls", "agent_channel"]

log = logging.getLogger(__name__)

AGENT_CHANNEL = "org.qemu.guest_agent.0"
#: A thaw after a failed snapshot or freeze must not wait long: the caller is waiting for its error.
THAW_TIMEOUT = 10.0


def agent_channel(cfg: DomainConfig) -> tuple[int, str | None] | None:
    """The agent's channel in the definition: (its index among the channels, its socket path if the
    definition names one), or None without one."""
    channels = [c for c in cfg.chardevs if c.kind == "channel"]
    for index, char in enumerate(channels):
        if char.target_name == AGENT_CHANNEL and char.type == "unix":
            return index, char.path
    return None


class AgentCalls:
    host: Host
    bus: EventBus
    files: StateDir
    _agents: dict[str, AgentClient]
    _agent_down: dict[str, anyio.Event]
    _agent_open: dict[str, bool]

    def _find(self, name_or_uuid: str) -> Guest:
        raise NotImplementedError

    def monitor(self, guest: Guest) -> Monitor:
        raise NotImplementedError

    async def _agent(self, guest: Guest) -> AgentClient:
        if guest.state is not DomainState.RUNNING:
            raise OperationInvalidError(f"domain '{guest.name}' is {guest.state.value}: its guest agent "
                                        "answers only while it runs")
        found = agent_channel(guest.config)
        if found is None:
            raise AgentUnavailableError(f"domain '{guest.name}' has no guest agent channel (<channel "
                                        f"type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/>)")
        client = self._agents.get(guest.name)
        if client is None:
            index, path = found
            host = self.host

            async def connect() -> Any:
                where = path or channel_path(await self.files.socket_dir(guest.name), index)
                return await host.connect_unix(where)

            client = self._agents[guest.name] = AgentClient(guest.name, connect)
        if not await self._port_open(guest, found[0]):
            raise AgentUnavailableError(f"domain '{guest.name}': the guest agent is not connected (qemu-ga "
                                        "is not running in the guest, or has not started yet)")
        return client

    async def _port_open(self, guest: Guest, index: int) -> bool:
        """Whether the guest has the agent's port open (qemu-ga runs): known from VSERPORT_CHANGE, else
        asked of QEMU once (query-chardev's frontend-open, as after a new controller's re-attach)."""
        known = self._agent_open.get(guest.name)
        if known is not None:
            return known
        chardevs = await self.monitor(guest).execute("query-chardev")
        label = f"charchannel{index}"
        state = next((bool(c.get("frontend-open")) for c in chardevs if c.get("label") == label),
                     True)  # not listed: let the sync decide
        return self._agent_open.setdefault(guest.name, state)

    async def agent_command(self, name: str, command: str, arguments: dict[str, Any] | None,
                            timeout: float) -> Any:
        return await (await self._agent(self._find(name))).execute(command, arguments, timeout=timeout)

    async def agent_shutdown(self, name: str, mode: str, timeout: float) -> None:
        guest = self._find(name)
        client = await self._agent(guest)
        down = self._agent_down.setdefault(name, anyio.Event())
        try:
            await client.execute_no_reply("guest-shutdown", {"mode": mode}, timeout=timeout, done=down)
        finally:
            if self._agent_down.get(name) is down:
                del self._agent_down[name]

    async def freeze(self, guest: Guest, timeout: float) -> int:
        """Freeze the guest's filesystems; if that fails, thaw whatever the agent may have frozen."""
        agent = await self._agent(guest)  # no agent: nothing was sent, nothing to thaw
        try:
            return int(await agent.execute("guest-fsfreeze-freeze", None, timeout=timeout))
        except AgentError:
            await self.thaw(guest, quiet=True)
            raise

    async def thaw(self, guest: Guest, *, quiet: bool = False) -> None:
        """Thaw the guest's filesystems, even when the caller is being cancelled."""
        with anyio.CancelScope(shield=True):
            try:
                await (await self._agent(guest)).execute("guest-fsfreeze-thaw", None, timeout=THAW_TIMEOUT)
            except (AgentError, OperationInvalidError) as e:
                if not quiet:
                    raise
                log.warning("domain %s: thawing its filesystems failed: %s", guest.name, e)

    def agent_event(self, guest: Guest, msg: dict[str, Any]) -> None:
        """A QMP event that may mean a new agent at the other end of the channel (module docstring)."""
        event = msg.get("event")
        data = msg.get("data") or {}
        if event == "VSERPORT_CHANGE":
            found = agent_channel(guest.config)
            if found is None or data.get("id") != f"channel{found[0]}":
                return
            down = not data.get("open")
            self._agent_open[guest.name] = not down
            self.bus.emit(AgentLifecycleEvent, guest.name, guest.uuid, timestamp_of(msg),
                          state=AgentState.DISCONNECTED if down else AgentState.CONNECTED,
                          reason=AgentReason.CHANNEL)
        elif event in ("RESET", "SHUTDOWN"):
            down = True
            self._agent_open[guest.name] = False  # the guest's agent is gone; a new one opens the port
        else:
            return
        client = self._agents.get(guest.name)
        if client is not None:
            client.reset()
        waiter = self._agent_down.get(guest.name)
        if down and waiter is not None:
            waiter.set()

    def agent_started(self, guest: Guest) -> None:
        """A domain with the agent's channel started: no agent is on it yet (libvirt says so too)."""
        if agent_channel(guest.config) is not None:
            self.bus.emit(AgentLifecycleEvent, guest.name, guest.uuid, state=AgentState.DISCONNECTED,
                          reason=AgentReason.DOMAIN_STARTED)

    async def drop_agent(self, guest: Guest) -> None:
        """The guest's QEMU ended: close its agent session."""
        self._agent_open.pop(guest.name, None)
        client = self._agents.pop(guest.name, None)
        if client is not None:
            await client.aclose()
        waiter = self._agent_down.pop(guest.name, None)
        if waiter is not None:
            waiter.set()

