"""virtiofs: one ``virtiofsd`` per ``<filesystem><driver type='virtiofs'/>``, beside QEMU.

QEMU's vhost-user-fs device is only a transport; the file server is virtiofsd (QEMU 7.2's, at
``/usr/lib/qemu/virtiofsd`` on Debian, or the definition's ``<binary path=>``), a process of its own
that QEMU reaches over a unix socket in the run directory and that maps the guest's RAM (hence the
shared memory the definition must have, checked at define time).

The socket is bound and listening before virtiofsd starts, and handed to it as a descriptor
(``--fd=N``), exactly as the QMP socket is handed to QEMU: QEMU can connect the moment it starts, with
no wait for virtiofsd to come up and no polling. virtiofsd serves one connection and exits when it
closes, so a running guest's virtiofsd ends with its QEMU, however QEMU ends, and needs no supervisor.
Only a start that fails before QEMU connected leaves it waiting for its one client: :func:`stop`
connects and hangs up, which ends it the same way.

QEMU 7.2's virtiofsd sandboxes itself (mount, pid and network namespaces, or a chroot), which needs
root; and a descriptor can only be handed down on this machine. So virtiofs is refused, before anything
is spawned, for an unprivileged controller and on SSH hosts; 9p (``<driver type='path'>``) works there.
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import partial

import anyio

from avirt.config.devices import Filesystem
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline import fs_socket
from avirt.errors import DomainStartError, HostError
from avirt.hosts.base import Host
from avirt.hosts.local import LocalHost

__all__ = ["DEFAULT_VIRTIOFSD", "refusal", "start", "stop"]

DEFAULT_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
#: How long a virtiofsd that was never used may take to end once :func:`stop` hangs up on it.
HANGUP_TIMEOUT = 5.0


def _shares(cfg: DomainConfig) -> list[tuple[int, Filesystem]]:
    return [(i, fs) for i, fs in enumerate(cfg.filesystems) if fs.driver_type == "virtiofs"]


def _log(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"virtiofsd-fs{index}.log")


async def refusal(host: Host, cfg: DomainConfig) -> str | None:
    """Why this host cannot serve the definition's virtiofs shares (None: it can, or there are none)."""
    shares = _shares(cfg)
    if not shares:
        return None
    if not isinstance(host, LocalHost):
        return f"virtiofs runs on the local host only ({host.name}: use <driver type='path'>, 9p)"
    if os.geteuid() != 0:
        return ("virtiofs needs root: QEMU 7.2's virtiofsd sandboxes itself with namespaces "
                "(use <driver type='path'>, 9p)")
    for i, fs in shares:
        binary = fs.binary_path or DEFAULT_VIRTIOFSD
        if not await host.exists(binary):
            return (f"filesystem {i + 1}: no virtiofsd at {binary} "
                    "(Debian: apt-get install qemu-system-common)")
        if not await host.exists(fs.source_dir):
            return f"filesystem {i + 1}: the shared directory {fs.source_dir} does not exist"
    return None


def _argv(fs: Filesystem, socket_option: str) -> list[str]:
    # fuse's option parser splits on commas; a backslash keeps one in a path.
    source = fs.source_dir.replace("\\", "\\\\").replace(",", "\\,")
    options = [f"source={source}"]
    if fs.binary_cache is not None:
        options.append(f"cache={fs.binary_cache}")
    if fs.binary_xattr is not None:
        options.append("xattr" if fs.binary_xattr == "on" else "no_xattr")
    if fs.binary_sandbox is not None:
        options.append(f"sandbox={fs.binary_sandbox}")
    # socket_option is the listening socket as "fd=N" (see Host.start_detached).
    return [fs.binary_path or DEFAULT_VIRTIOFSD, f"--{socket_option}", "-o", ",".join(options)]


async def start(host: Host, cfg: DomainConfig, run_dir: str) -> None:
    """Start a virtiofsd for each virtiofs share, each already listening when this returns."""
    for i, fs in _shares(cfg):
        try:
            await host.start_detached(partial(_argv, fs), listen_path=fs_socket(run_dir, i),
                                      log_path=_log(run_dir, i))
        except HostError as e:  # the driver's clean-up calls stop(), which reads the logs
            raise DomainStartError(f"cannot start domain '{cfg.name}': virtiofsd for filesystem {i + 1} "
                                   f"did not start: {e}") from None


async def stop(host: Host, cfg: DomainConfig, run_dir: str) -> str:
    """End the virtiofsds of a start that failed; returns what they logged (why QEMU could not use them)."""
    logs = []
    for i, _fs in _shares(cfg):
        with contextlib.suppress(OSError), anyio.move_on_after(HANGUP_TIMEOUT):
            with await host.connect_unix(fs_socket(run_dir, i)) as sock:
                sock.shutdown(socket.SHUT_WR)
                # A vhost-user server never speaks first: end of file means virtiofsd has gone.
                await anyio.wait_readable(sock)
        text = (await host.read_text(_log(run_dir, i)) or "").strip()
        if text:
            logs.append(f"virtiofsd of filesystem {i + 1}:\n{text}")
    return "\n".join(logs)
