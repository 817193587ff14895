"""The test driver's guest agents: qemu-ga's answers made up from the simulation, per running domain.

A domain of ``test:///default`` has an agent exactly when a QEMU guest could: its definition has the
``org.qemu.guest_agent.0`` channel (the QEMU driver's rule, ``agent_channel``) and it runs. The agent
answers in qemu-ga's own JSON, so ``Domain.agent`` parses the same shapes from both drivers:

* ``guest-get-osinfo`` names a Linux guest; ``guest-get-host-name`` is the domain's name;
* ``guest-get-fsinfo``: ``/`` (ext4) on the first writable disk, as ``/dev/vda``;
* ``guest-network-get-interfaces``: ``lo`` and one ``ethN`` per NIC with its MAC;
* time is the host's plus an offset that ``guest-set-time`` moves;
* freeze and thaw keep a state, and while frozen everything but ping, status and thaw is refused with
  qemu-ga's words;
* ``guest-exec`` runs nothing: ``echo`` prints its arguments, ``cat`` its input, ``true`` and
  ``false`` exit 0 and 1, anything else exits 127 ("not found"); the process has ended by the first
  ``guest-exec-status``.

``guest-shutdown`` is the driver's: it powers the simulated guest off or reboots it.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from avirt.config.model import DomainConfig
from avirt.errors import AgentCommandError

__all__ = ["SimAgent"]

_WHILE_FROZEN = {"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited", "guest-fsfreeze-status",
                 "guest-fsfreeze-thaw"}


@dataclass
class SimAgent:
    """One running domain's made-up qemu-ga."""

    name: str
    config: DomainConfig
    frozen: bool = False
    offset_ns: int = 0
    processes: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_pid: int = 1000

    def execute(self, command: str, arguments: dict[str, Any] | None) -> Any:
        args = arguments or {}
        if self.frozen and command not in _WHILE_FROZEN:
            raise AgentCommandError(command, "GenericError", f"Command {command} has been disabled: the "
                                    "agent is in frozen state")
        handler = getattr(self, "_" + command.replace("-", "_"), None)
        if handler is None:
            raise AgentCommandError(command, "CommandNotFound", f"The command {command} has not been found")
        return handler(args)

    def _guest_ping(self, args: dict[str, Any]) -> Any:
        return {}

    def _guest_info(self, args: dict[str, Any]) -> Any:
        names = sorted(n[1:].replace("_", "-") for n in dir(self) if n.startswith("_guest_"))
        return {"version": "7.2.0", "supported_commands": [{"name": n, "enabled": True} for n in names]}

    def _guest_get_osinfo(self, args: dict[str, Any]) -> Any:
        return {"kernel-release": "6.1.0-test-amd64", "kernel-version": "#1 SMP avirt test driver",
                "machine": "x86_64", "id": "linux", "name": "Linux", "pretty-name": "Linux (test driver)",
                "version-id": "1"}

    def _guest_get_host_name(self, args: dict[str, Any]) -> Any:
        return {"host-name": self.name}

    def _root_disk(self) -> Any:
        return next((d for d in self.config.disks if d.device == "disk" and not d.readonly), None)

    def _guest_get_fsinfo(self, args: dict[str, Any]) -> Any:
        disk = self._root_disk()
        if disk is None:
            return []
        return [{"name": "vda", "mountpoint": "/", "type": "ext4", "used-bytes": 1 << 30,
                 "total-bytes": 8 << 30, "disk": [{"dev": "/dev/vda", "bus-type": "virtio", "bus": 0,
                                                   "target": 0, "unit": 0,
                                                   "pci-controller": {"domain": 0, "bus": 0, "slot": 4,
                                                                      "function": 0}}]}]

    def _guest_network_get_interfaces(self, args: dict[str, Any]) -> Any:
        loopback = [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]
        nics: list[dict[str, Any]] = [{"name": "lo", "hardware-address": "00:00:00:00:00:00",
                                       "ip-addresses": loopback}]
        for i, nic in enumerate(self.config.interfaces):
            nics.append({"name": f"eth{i}", "hardware-address": nic.mac,
                         "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": f"192.168.122.{10 + i}",
                                           "prefix": 24}]})
        return nics

    def _guest_get_time(self, args: dict[str, Any]) -> Any:
        return time.time_ns() + self.offset_ns

    def _guest_set_time(self, args: dict[str, Any]) -> Any:
        wanted = args.get("time")
        self.offset_ns = 0 if wanted is None else int(wanted) - time.time_ns()
        return {}

    def _guest_fsfreeze_status(self, args: dict[str, Any]) -> Any:
        return "frozen" if self.frozen else "thawed"

    def _guest_fsfreeze_freeze(self, args: dict[str, Any]) -> Any:
        self.frozen = True
        return 1 if self._root_disk() is not None else 0

    def _guest_fsfreeze_freeze_list(self, args: dict[str, Any]) -> Any:
        points = args.get("mountpoints") or []
        if any(p != "/" for p in points):
            raise AgentCommandError("guest-fsfreeze-freeze-list", "GenericError",
                                    f"no filesystem mounted at {next(p for p in points if p != '/')}")
        return self._guest_fsfreeze_freeze(args)

    def _guest_fsfreeze_thaw(self, args: dict[str, Any]) -> Any:
        was, self.frozen = self.frozen, False
        return 1 if was and self._root_disk() is not None else 0

    def _guest_exec(self, args: dict[str, Any]) -> Any:
        path = str(args.get("path", ""))
        argv = [str(a) for a in args.get("arg") or []]
        stdin = base64.b64decode(args.get("input-data") or "")
        program = path.rsplit("/", 1)[-1]
        out, err, code = b"", b"", 0
        if program == "echo":
            out = (" ".join(argv) + "\n").encode()
        elif program == "cat":
            out = stdin
        elif program in ("true", "false"):
            code = int(program == "false")
        else:
            err, code = f"{path}: not found\n".encode(), 127
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        status: dict[str, Any] = {"exited": True, "exitcode": code}
        if args.get("capture-output"):
            status |= {"out-data": base64.b64encode(out).decode(), "err-data": base64.b64encode(err).decode()}
        self.processes[pid] = status
        return {"pid": pid}

    def _guest_exec_status(self, args: dict[str, Any]) -> Any:
        status = self.processes.pop(int(args.get("pid", -1)), None)
        if status is None:
            raise AgentCommandError("guest-exec-status", "GenericError",
                                    f"Invalid parameter 'pid': no process {args.get('pid')}")
        return status
