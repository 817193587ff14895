"""``Domain.agent``: the QEMU guest agent of one domain, as typed calls.

libvirt reaches into a guest through qemu-ga (virDomainQemuAgentCommand, virDomainFSFreeze,
virDomainGetGuestInfo, virDomainShutdownFlags with the agent mode...). :class:`GuestAgent` gives the same
reach: every method is one agent command (``exec`` is two: guest-exec, then guest-exec-status until the
process ends) sent through the connection's driver, with the answer made into the types of
:mod:`avirt.agent.results`. The driver decides how the command travels: the QEMU driver's own session
with the agent (``avirt/agent/client.py``), the holder's over the served protocol, or the test driver's
made-up agent.

Every call has a ``timeout`` (seconds). An agent that does not answer in time raises
:class:`~avirt.errors.AgentTimeoutError` (also an ``OperationTimeoutError``). No agent at all (qemu-ga not
installed, not started yet, stopped: the guest has not opened its end of the channel) and a domain
without the ``org.qemu.guest_agent.0`` channel raise :class:`~avirt.errors.AgentUnavailableError` at
once, a shut-off one :class:`~avirt.errors.OperationInvalidError`, and an error the agent answers
:class:`~avirt.errors.AgentCommandError` with the agent's class and description.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from avirt.agent import results
from avirt.agent.results import ExecResult, Filesystem, NetworkInterface, OSInfo
from avirt.errors import AgentTimeoutError, InvalidArgumentError

if TYPE_CHECKING:
    from avirt.drivers.base import Driver

__all__ = ["DEFAULT_TIMEOUT", "SHUTDOWN_MODES", "GuestAgent"]

#: Seconds a call waits for the agent unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: ``shutdown(mode=...)`` -> guest-shutdown's mode.
SHUTDOWN_MODES = {"powerdown": "powerdown", "reboot": "reboot", "halt": "halt"}

#: How often ``exec`` asks whether the process ended: from the first value, doubling to the second.
_EXEC_POLL = (0.01, 0.25)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise InvalidArgumentError("timeout must be > 0 seconds")


def parse_command(command: str | dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """A raw agent command (JSON text or its dict: ``{"execute": ..., "arguments": {...}}``) -> its
    name and arguments; InvalidArgumentError for anything else."""
    if isinstance(command, str):
        try:
            command = json.loads(command)
        except ValueError as e:
            raise InvalidArgumentError(f"the agent command is not JSON: {e}") from None
    if not isinstance(command, dict) or not isinstance(command.get("execute"), str):
        raise InvalidArgumentError('an agent command is an object {"execute": NAME, "arguments": {...}}')
    arguments = command.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise InvalidArgumentError("the agent command's arguments must be an object")
    extra = set(command) - {"execute", "arguments"}
    if extra:
        raise InvalidArgumentError(f"unknown members in the agent command: {', '.join(sorted(extra))}")
    return command["execute"], arguments


class GuestAgent:
    """The guest agent of one domain (``dom.agent``). See the module docstring."""

    def __init__(self, driver: Driver, name: str) -> None:
        self._driver = driver
        self.name = name

    def __repr__(self) -> str:
        return f"<GuestAgent of {self.name}>"

    async def _call(self, command: str, arguments: dict[str, Any] | None, timeout: float) -> Any:
        _check_timeout(timeout)
        return await self._driver.agent_command(self.name, command, arguments, timeout)

    async def command(self, command: str | dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Send one raw agent command (virsh qemu-agent-command) and return its ``return`` value.

        ``command`` is JSON text or its dict, e.g. ``'{"execute": "guest-get-time"}'``. Like
        ``qemu_monitor_command``, an escape hatch: avirt does not know what it changes in the guest.
        """
        execute, arguments = parse_command(command)
        return await self._call(execute, arguments, timeout)

    async def ping(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once the agent answers (guest-ping)."""
        await self._call("guest-ping", None, timeout)

    async def os_info(self, *, timeout: float = DEFAULT_TIMEOUT) -> OSInfo:
        """The guest's kernel and distribution (guest-get-osinfo)."""
        return results.os_info(await self._call("guest-get-osinfo", None, timeout))

    async def host_name(self, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The guest's host name (guest-get-host-name)."""
        answer = await self._call("guest-get-host-name", None, timeout)
        return str((answer or {}).get("host-name", ""))

    async def fs_info(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[Filesystem]:
        """The guest's mounted filesystems on disks, with the disks under each (guest-get-fsinfo)."""
        return results.filesystems(await self._call("guest-get-fsinfo", None, timeout))

    async def network_interfaces(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[NetworkInterface]:
        """The guest's network interfaces and their addresses (guest-network-get-interfaces)."""
        return results.interfaces(await self._call("guest-network-get-interfaces", None, timeout))

    async def time(self, *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The guest's clock, in nanoseconds since the epoch (guest-get-time)."""
        return int(await self._call("guest-get-time", None, timeout))

    async def set_time(self, ns: int | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Set the guest's clock to ``ns`` nanoseconds since the epoch, or with None to its own hardware
        clock's time (after a resume from a long pause; guest-set-time)."""
        if ns is not None and ns < 0:
            raise InvalidArgumentError("the time must be >= 0 ns since the epoch")
        await self._call("guest-set-time", None if ns is None else {"time": ns}, timeout)

    async def fsfreeze(self, mountpoints: Sequence[str] | None = None, *,
                       timeout: float = 60.0) -> int:
        """Flush and freeze the guest's filesystems (all, or those mounted at ``mountpoints``) and return
        how many were frozen (virDomainFSFreeze). Writes in the guest wait until :meth:`fsthaw`; while
        frozen, the agent refuses every command but ping, status and thaw."""
        if mountpoints is not None:
            if not mountpoints:
                raise InvalidArgumentError("mountpoints: give at least one, or None for all")
            return int(await self._call("guest-fsfreeze-freeze-list",
                                        {"mountpoints": list(mountpoints)}, timeout))
        return int(await self._call("guest-fsfreeze-freeze", None, timeout))

    async def fsthaw(self, *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Thaw the frozen filesystems; returns how many were thawed (virDomainFSThaw)."""
        return int(await self._call("guest-fsfreeze-thaw", None, timeout))

    async def fsfreeze_status(self, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """``"thawed"`` or ``"frozen"`` (guest-fsfreeze-status)."""
        return str(await self._call("guest-fsfreeze-status", None, timeout))

    async def shutdown(self, mode: str = "powerdown", *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Ask the agent to power the guest off (``powerdown``), ``reboot`` or ``halt`` it
        (virDomainShutdownFlags/virDomainReboot with the agent mode). The agent answers only a failure;
        this returns once the guest starts going down, or after ``timeout`` without an error."""
        if mode not in SHUTDOWN_MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(SHUTDOWN_MODES)}, not {mode!r}")
        _check_timeout(timeout)
        await self._driver.agent_shutdown(self.name, SHUTDOWN_MODES[mode], timeout)

    async def exec(self, argv: Sequence[str], *, input: bytes | None = None, env: Sequence[str] | None = None,
                   timeout: float = 60.0) -> ExecResult:
        """Run ``argv`` in the guest and wait for it to end (guest-exec, then guest-exec-status until it
        exited); ``input`` is its standard input, ``env`` ``NAME=value`` strings. Its output comes back
        whole (decoded from the agent's base64). A process still running after ``timeout`` seconds
        raises :class:`~avirt.errors.AgentTimeoutError` and is left running (its pid is in the message)."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidArgumentError("argv must be a non-empty list of strings")
        _check_timeout(timeout)
        arguments: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if input is not None:
            arguments["input-data"] = base64.b64encode(input).decode()
        if env is not None:
            arguments["env"] = list(env)
        pid: int | None = None
        with anyio.move_on_after(timeout) as scope:
            started = await self._call("guest-exec", arguments, timeout)
            pid = int(started["pid"])
            pause = _EXEC_POLL[0]
            while True:
                status = await self._call("guest-exec-status", {"pid": pid}, timeout)
                if status.get("exited"):
                    return results.exec_result(status)
                await anyio.sleep(pause)  # the protocol has no notification: polling is the way
                pause = min(pause * 2, _EXEC_POLL[1])
        assert scope.cancelled_caught
        which = "not started" if pid is None else f"pid {pid} in the guest"
        raise AgentTimeoutError(f"domain '{self.name}': {argv[0]} ({which}) did not end within "
                                f"{timeout:g} s; it is left running")
