"""The TPM emulator beside QEMU: one ``swtpm`` per guest with a ``<tpm><backend type='emulator'>``.

QEMU does not emulate a TPM itself; it talks to swtpm (Debian's ``swtpm`` and ``swtpm-tools``) over a
unix socket in the run directory, as libvirt arranges it. The TPM's state (its keys, its NVRAM) is the
guest's and outlives every run: ``<state_dir>/tpm/<uuid>/``, made once by ``swtpm_setup`` (which also
creates the endorsement key Windows 11 looks for).

swtpm runs with ``--terminate``: it ends by itself when QEMU closes the connection, however QEMU ends,
so it needs no supervisor of its own. Only a start that fails before QEMU connected leaves it waiting;
:func:`stop` ends it then.
"""

from __future__ import annotations

import os

from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline import tpm_socket
from avirt.errors import DomainStartError
from avirt.hosts.base import Host

__all__ = ["start", "stop"]


def _pidfile(run_dir: str) -> str:
    return os.path.join(run_dir, "swtpm.pid")


async def start(host: Host, cfg: DomainConfig, *, state_dir: str, run_dir: str, sockets: str) -> None:
    """Make the TPM's state if it has none, then start swtpm listening on the run directory's socket
    (reached through ``sockets``, the run directory or its short link: see ``state.py``)."""
    tpm = cfg.tpms[0]
    version = ["--tpm2"] if (tpm.backend_version or "2.0") == "2.0" else []
    if not await host.exists(state_dir):
        await host.make_dirs(state_dir)
        setup = await host.run(["swtpm_setup", *version, "--tpmstate", state_dir, "--createek",
                                "--not-overwrite"])
        if setup.returncode != 0:
            await host.remove_tree(state_dir)
            raise DomainStartError(f"cannot start domain '{cfg.name}': swtpm_setup failed "
                                   f"(Debian: apt-get install swtpm-tools): {setup.stderr.strip()[-500:]}")
    result = await host.run([
        "swtpm", "socket", *version, "--daemon", "--terminate",
        "--ctrl", f"type=unixio,path={tpm_socket(sockets)},mode=0600",
        "--tpmstate", f"dir={state_dir},mode=0600",
        "--pid", f"file={_pidfile(run_dir)}",
        "--log", f"file={os.path.join(run_dir, 'swtpm.log')}",
    ])
    if result.returncode != 0:
        log = await host.read_text(os.path.join(run_dir, "swtpm.log")) or ""
        raise DomainStartError(f"cannot start domain '{cfg.name}': the TPM emulator did not start "
                               f"(Debian: apt-get install swtpm): {(result.stderr + log).strip()[-500:]}")


async def stop(host: Host, run_dir: str) -> None:
    """End a swtpm that QEMU never connected to (a failed start)."""
    text = await host.read_text(_pidfile(run_dir))
    if text is not None and text.strip().isdigit():
        await host.kill(int(text.strip()), 15)
