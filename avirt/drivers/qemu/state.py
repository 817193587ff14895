"""The state directory: everything the QEMU driver must remember lives in files, not in the controller.

Layout (see ``ARCHITECTURE.md``)::

    <state_dir>/
      lock                        held (flock) by the one controller that manages this directory
      domains/<name>/domain.xml   persistent definition; absent for a transient domain
      domains/<name>/chains.json  its disks' backing chains as the image index last read them
      run/<name>/                 exists exactly while QEMU may be running; mode 0700
        live.xml                  the definition the running QEMU was started with
        qmp.sock                  the QMP monitor socket, mode 0600
        qemu.pid, qemu.log

Because a guest outlives the controller that started it, a new controller learns everything from here: the
names under ``run/`` are the guests that may still run, their ``live.xml`` says what they are. Every file
is written atomically (temp file, fsync, rename) through the host, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import time

from avirt.errors import ConnectionLockedError
from avirt.hosts.base import Host


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

    def qmp_socket(self, name: str) -> str:
        return os.path.join(self._run, name, "qmp.sock")

    def pidfile(self, name: str) -> str:
        return os.path.join(self._run, name, "qemu.pid")

    def log_path(self, name: str) -> str:
        return os.path.join(self._run, name, "qemu.log")

    async def prepare_run(self, name: str, live_xml: str) -> None:
        """A fresh, private run directory holding the live definition."""
        await self.host.remove_tree(self.run_dir(name))
        await self.host.make_dirs(self.run_dir(name), mode=0o700)
        await self.write_live(name, live_xml)

    async def write_live(self, name: str, xml: str) -> None:
        # Not fsynced: run/ describes a running QEMU, which a host crash ends anyway (atomic is enough).
        await self.host.write_atomic(os.path.join(self._run, name, "live.xml"), xml, durable=False)

    async def read_live(self, name: str) -> str | None:
        return await self.host.read_text(os.path.join(self._run, name, "live.xml"))

    async def read_jobs(self, name: str) -> str | None:
        return await self.host.read_text(os.path.join(self._run, name, "jobs.json"))

    async def write_jobs(self, name: str, text: str) -> None:
        await self.host.write_atomic(os.path.join(self._run, name, "jobs.json"), text, durable=False)

    async def clear_run(self, name: str) -> None:
        await self.host.remove_tree(self.run_dir(name))
