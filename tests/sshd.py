"""A real OpenSSH server on 127.0.0.1 for the SSH host tests, with keys and config of its own.

The remote host is this same machine, reached only through SSH: sshd runs with a generated host key, a
generated client key in its own authorized_keys, and a known_hosts file that trusts that host key. Nothing
of the machine's own SSH setup is read or changed.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncssh

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def missing_reason() -> str | None:
    """Why this machine cannot run the test sshd, or None if it can."""
    if not os.access(SSHD, os.X_OK):
        return "no OpenSSH server here (Debian package openssh-server)"
    if shutil.which("flock") is None or shutil.which("tail") is None:
        return "the SSH host needs flock and tail on the remote side"
    return None


@dataclass
class SSHServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    user: str
    keyfile: Path
    known_hosts: Path

    def uri(self, state_dir: Path | str, *, path: str = "session", keyfile: Path | None = None,
            known_hosts: Path | None = None, mode: str = "direct", avirt: str | None = None) -> str:
        """A URI to this server. ``mode`` is the URI's (direct unless told: the tests of the direct
        mode are the older ones); with ``serve`` or ``auto`` the remote avirt command is this checkout's
        (:func:`avirt_command`) unless ``avirt`` names another."""
        query = (f"keyfile={quote(str(keyfile or self.keyfile))}"
                 f"&known_hosts={quote(str(known_hosts or self.known_hosts))}"
                 f"&state_dir={quote(str(state_dir))}&mode={mode}")
        if mode != "direct" or avirt is not None:
            query += f"&avirt={quote(avirt if avirt is not None else avirt_command())}"
        return f"qemu+ssh://{self.user}@127.0.0.1:{self.port}/{path}?{query}"

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes (children of the listener)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def drop_connections(self) -> int:
        """Kill every connection's sshd: the clients see their connection break, as on a network loss."""
        pids = self.sessions()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def avirt_command() -> str:
    """The remote ``avirt`` for ``?avirt=``: this interpreter running the avirt under test (the checkout
    it was imported from, which may not be the installed one), whatever the login shell's PATH says."""
    import avirt

    root = Path(avirt.__file__).resolve().parent.parent
    return shlex.join(["env", f"PYTHONPATH={root}", sys.executable, "-m", "avirt"])


def start(root: Path) -> SSHServer:
    root.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(root / "host_ed25519"))
    os.chmod(root / "host_ed25519", 0o600)
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(root / "client_ed25519"))
    os.chmod(root / "client_ed25519", 0o600)
    (root / "authorized_keys").write_bytes(client_key.export_public_key())
    port = _free_port()
    (root / "known_hosts").write_bytes(
        f"[127.0.0.1]:{port} ".encode() + host_key.export_public_key())
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {root / 'host_ed25519'}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "AllowStreamLocalForwarding yes",
        "Subsystem sftp internal-sftp",
        "LogLevel INFO",
        "",
    ]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen = []
    for raw in process.stderr:  # sshd says when it listens: no polling of the port
        line = raw.decode(errors="replace").strip()
        seen.append(line)
        if "Server listening on" in line:
            break
    else:
        process.wait()
        raise RuntimeError("sshd did not start: " + " | ".join(seen))
    # The rest of its log goes nowhere: a full pipe would block sshd.
    _drain_in_background(process)
    return SSHServer(root, port, process, getpass.getuser(), root / "client_ed25519", root / "known_hosts")


def _drain_in_background(process: subprocess.Popen[bytes]) -> None:
    import threading

    def drain() -> None:
        assert process.stderr is not None
        for _ in process.stderr:
            pass

    threading.Thread(target=drain, daemon=True).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
