"""The state directory: everything the QEMU driver must remember lives in files, not in the controller.

Layout (see ``ARCHITECTURE.md``)::

    <state_dir>/
      lock                        held (flock) by the one controller that manages this directory
      domains/<name>/domain.xml   persistent definition; absent for a transient domain
      domains/<name>/chains.json  its disks' backing chains as the image index last read them
      run/<name>/                 exists exactly while QEMU may be running; mode 0700
        live.xml                  the definition the running QEMU was started with
        state.json                the state's reason and the pending intents (see below)
        qmp.sock                  the QMP monitor socket, mode 0600
        qemu.pid, qemu.log
        vcpu-left         there when this QEMU was asked to unplug a vCPU (TCG cannot take one back)
        jobs.json                 block jobs QEMU may be running, written before QEMU can finish them
        nics.json                 QEMU's ids of the NICs, once a NIC was plugged in or out (nichotplug.py)
        nodes.json                every format node avirt may have open in this QEMU -> its file

    /tmp/avirt-<uid>/<hash>       a short link to run/<name>/, only while its socket paths would be too long

Because a guest outlives the controller that started it, a new controller learns everything from here: the
names under ``run/`` are the guests that may still run, their ``live.xml`` says what they are. Every file
is written atomically (temp file, fsync, rename) through the host, so a crash never leaves half a file.

**state.json** keeps what QEMU cannot tell a new controller: ``query-status`` says "running" but not
whether the guest booted, was resumed or woke up, and nothing in QEMU remembers that a ``reboot()`` was
asked for. It is small JSON, ``{"state": "running", "reason": "booted", "reboot": false}``, rewritten
whenever one of them changes (atomically, not fsynced: like live.xml it describes a QEMU that a host
crash ends anyway).

**nodes.json** names the nodes avirt opened in this QEMU (``{"vda-3": "/images/vda-snap.qcow2"}``; each
format node has its protocol node ``<name>-file``). Node names are avirt's own, so a new controller reads
them here rather than asking QEMU: ``query-named-block-nodes`` crashes QEMU 7.2 (a NULL dereference) while
a concluded stream job waits to be dismissed, which is exactly when a killed controller leaves one. A name
is written before ``blockdev-add`` can open it and removed once ``blockdev-del`` closed it, so the file
holds every node QEMU may have (and maybe one it refused): new names are numbered past all of them, and
a new controller closes those no chain and no running job uses.

**Socket paths of any length.** A unix socket's address holds at most 107 bytes (``sun_path`` is 108
with its NUL), and QEMU, swtpm and sshd's socket forwarding all bind or connect by path. A state directory
deep in a CI workspace, plus a domain name of up to 64 characters, passes that easily. When a run
directory's socket paths would not fit, its sockets are bound and reached through a short symbolic link
to it instead, ``/tmp/avirt-<uid>/<hash>`` (the first 16 hex digits of the SHA-256 of the run directory's
absolute path): the kernel follows the link while it resolves the path, so the socket files still live in
the run directory. The link works the same for every binder (avirt's pre-bound monitor socket, QEMU's own
channel sockets, swtpm) and on every host (the remote one over SSH too), which binding through a directory
descriptor would not. It is made with the run directory, made again by a controller that finds it gone
(a /tmp cleaner), and removed with the run directory; its name is a pure function of the path, so a new
controller computes it again. The directory is in /tmp, not $TMPDIR (which may itself be long) nor
$XDG_RUNTIME_DIR (which systemd empties when the user's last session ends, while guests run on), and is
used only if it is the user's own, mode 0700: whoever could write there could point a link elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from avirt.errors import ConnectionLockedError, HostError
from avirt.hosts.base import Host

#: The longest address a unix socket can have, in bytes (``sun_path`` is 108 bytes with its NUL).
SOCKET_PATH_MAX = 107
#: Room kept after a run directory for a socket's own name (the longest, ``ch<N>.sock``, takes about 11).
SOCKET_NAME_ROOM = 16


def sockets_fit(directory: str) -> bool:
    """Whether every socket avirt puts in ``directory`` has a path the kernel accepts."""
    return len(os.fsencode(directory)) + 1 + SOCKET_NAME_ROOM <= SOCKET_PATH_MAX


def link_name(run_dir: str) -> str:
    """The short link's name for a run directory: stable, so that any controller computes it again."""
    return hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:16]


@dataclass(frozen=True)
class SavedState:
    """What ``state.json`` holds: the state and its reason as the controller last knew them, and whether a
    reboot it asked for is still to be carried out."""

    state: str
    reason: str
    reboot: bool = False

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str | None) -> SavedState | None:
        """None for a missing or unreadable file (an older controller's run directory): QEMU's word then."""
        try:
            data = json.loads(text or "")
            return cls(str(data["state"]), str(data["reason"]), bool(data.get("reboot", False)))
        except (ValueError, TypeError, KeyError):
            return None


async def reachable(host: Host, directory: str) -> str:
    """Where sockets in ``directory`` are bound and reached: the directory itself when their paths fit,
    else a short link to it (made here, or made again if it went missing)."""
    if sockets_fit(directory):
        return directory
    try:
        link = os.path.join(await host.short_dir(), link_name(directory))
        await host.symlink(directory, link)
    except (HostError, OSError) as e:
        raise HostError(f"the socket paths under {directory} ({len(os.fsencode(directory))} bytes) pass the "
                        f"kernel's limit of {SOCKET_PATH_MAX} bytes, and no short link to it can be made: "
                        f"{getattr(e, 'strerror', None) or e}") from None
    return link


async def served_socket(host: Host, state_dir: str) -> str:
    """Where the holder of ``state_dir`` serves it to other programs (``avirt.served``). A link to a state
    directory is never removed: it names a directory that outlives every controller."""
    return os.path.join(await reachable(host, state_dir), "avirt.sock")


class StateDir:
    def __init__(self, host: Host, root: str) -> None:
        self.host = host
        self.root = root
        self._domains = os.path.join(root, "domains")
        self._run = os.path.join(root, "run")

    async def open(self) -> None:
        """Create the directory tree and take the controller lock."""
        for path in (self.root, self._domains, self._run):
            await self.host.make_dirs(path, mode=0o700)
        if not await self.host.lock(os.path.join(self.root, "lock")):
            raise ConnectionLockedError(
                f"another avirt controller is using the state directory {self.root}; "
                "close it first (one controller per state directory)"
            )

    # -- persistent definitions --------------------------------------------------------------------------

    async def persistent_names(self) -> list[str]:
        return [n for n in await self.host.list_dir(self._domains) if not n.startswith(".")]

    async def read_definition(self, name: str) -> str | None:
        return await self.host.read_text(self._definition_path(name))

    async def write_definition(self, name: str, xml: str) -> None:
        await self.host.make_dirs(os.path.join(self._domains, name))
        await self.host.write_atomic(self._definition_path(name), xml)

    async def remove_definition(self, name: str) -> None:
        await self.host.remove_tree(os.path.join(self._domains, name))

    def chains_path(self, name: str) -> str:
        """The image index's record of the domain's chains (``offline/index.py``); goes with undefine."""
        return os.path.join(self._domains, name, "chains.json")

    def _definition_path(self, name: str) -> str:
        return os.path.join(self._domains, name, "domain.xml")

    # -- run directories ---------------------------------------------------------------------------------

    async def run_names(self) -> list[str]:
        return [n for n in await self.host.list_dir(self._run) if not n.startswith(".")]

    def nvram_path(self, name: str) -> str:
        """A UEFI domain's own variables; kept apart from the definition, which undefine removes."""
        return os.path.join(self.root, "nvram", f"{name}_VARS.fd")

    def dump_path(self, name: str) -> str:
        """Where on_crash='coredump-*' writes a crashed guest's memory (one file per crash)."""
        return os.path.join(self.root, "dump", f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.core")

    def tpm_dir(self, uuid: str) -> str:
        """A guest's TPM state (swtpm's), by UUID as libvirt keeps it: it outlives every run."""
        return os.path.join(self.root, "tpm", uuid)

    def run_dir(self, name: str) -> str:
        return os.path.join(self._run, name)

    async def socket_dir(self, name: str) -> str:
        """Where the sockets of ``name``'s run directory are bound and reached (see :func:`reachable`)."""
        return await reachable(self.host, self.run_dir(name))

    async def qmp_socket(self, name: str) -> str:
        return os.path.join(await self.socket_dir(name), "qmp.sock")

    def pidfile(self, name: str) -> str:
        return os.path.join(self._run, name, "qemu.pid")

    def log_path(self, name: str) -> str:
        return os.path.join(self._run, name, "qemu.log")

    async def prepare_run(self, name: str, live_xml: str, nodes: dict[str, str] | None = None) -> None:
        """A fresh, private run directory holding the live definition and, if given, the node names
        (:meth:`write_nodes`), made in one trip where the host can."""
        files = {"live.xml": live_xml}
        if nodes is not None:
            files["nodes.json"] = json.dumps(nodes, indent=2)
        await self.host.fresh_dir(self.run_dir(name), files)

    async def write_live(self, name: str, xml: str) -> None:
        # Not fsynced: run/ describes a running QEMU, which a host crash ends anyway (atomic is enough).
        await self.host.write_atomic(os.path.join(self._run, name, "live.xml"), xml, durable=False)

    async def read_live(self, name: str) -> str | None:
        return await self.host.read_text(os.path.join(self._run, name, "live.xml"))

    async def mark_vcpu_left(self, name: str) -> None:
        """Remember, for as long as this QEMU runs, that it was asked to let a vCPU go (see vcpus.py)."""
        await self.host.write_atomic(os.path.join(self._run, name, "vcpu-left"), "", durable=False)

    async def vcpu_left(self, name: str) -> bool:
        return await self.host.exists(os.path.join(self._run, name, "vcpu-left"))

    async def read_jobs(self, name: str) -> str | None:
        return await self.host.read_text(os.path.join(self._run, name, "jobs.json"))

    async def write_jobs(self, name: str, text: str) -> None:
        await self.host.write_atomic(os.path.join(self._run, name, "jobs.json"), text, durable=False)

    async def read_nodes(self, name: str) -> dict[str, str]:
        text = await self.host.read_text(os.path.join(self._run, name, "nodes.json"))
        return dict(json.loads(text)) if text else {}

    async def write_nodes(self, name: str, nodes: dict[str, str]) -> None:
        await self.host.write_atomic(os.path.join(self._run, name, "nodes.json"), json.dumps(nodes, indent=2),
                                     durable=False)

    async def read_nics(self, name: str) -> list[str] | None:
        """QEMU's ids of the running guest's NICs, in the live definition's order (None: never changed
        since the start, so ``net0``, ``net1``...; see ``nichotplug.py``)."""
        text = await self.host.read_text(os.path.join(self._run, name, "nics.json"))
        return [str(v) for v in json.loads(text)] if text else None

    async def write_nics(self, name: str, ids: list[str]) -> None:
        await self.host.write_atomic(os.path.join(self._run, name, "nics.json"), json.dumps(ids),
                                     durable=False)

    async def read_state(self, name: str) -> SavedState | None:
        return SavedState.loads(await self.host.read_text(os.path.join(self._run, name, "state.json")))

    async def write_state(self, name: str, saved: SavedState) -> None:
        await self.host.write_atomic(os.path.join(self._run, name, "state.json"), saved.dumps(),
                                     durable=False)

    async def read_migration(self, name: str) -> dict[str, Any] | None:
        """The record of a migration this run takes part in (see drivers/qemu/migratecalls.py)."""
        text = await self.host.read_text(os.path.join(self._run, name, "migration.json"))
        try:
            record = json.loads(text) if text else None
        except json.JSONDecodeError:
            return None  # written atomically: a torn record cannot be; an edited one is not ours
        return record if isinstance(record, dict) else None

    async def write_migration(self, name: str, record: dict[str, Any] | None) -> None:
        # Not fsynced, as the rest of run/: a host crash ends this side's QEMU, which the record is about
        # (a destination elsewhere then cannot learn of a commit: it waits, paused, as when it cannot
        # read the record at all).
        path = os.path.join(self._run, name, "migration.json")
        if record is None:
            await self.host.remove_tree(path)
        else:
            await self.host.write_atomic(path, json.dumps(record), durable=False)

    async def clear_run(self, name: str) -> None:
        run = self.run_dir(name)
        await self.host.remove_tree(run)
        if not sockets_fit(run):
            try:
                short = await self.host.short_dir()
            except HostError:
                return  # a short directory that cannot be used holds no link of ours
            await self.host.remove_tree(os.path.join(short, link_name(run)))
