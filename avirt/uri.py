"""Connection URIs, libvirt style: which driver, on which host, with which options.

    qemu:///session            local QEMU, state under $XDG_STATE_HOME/avirt
    qemu:///system             local QEMU, state under /var/lib/avirt
    qemu+ssh://user@host[:port]/session?keyfile=...&known_hosts=...&state_dir=...&mode=...&avirt=...
                               a remote host over SSH (docs/remote-hosts.md)
    test:///default            the in-memory test driver (state_dir is ignored)
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from avirt.errors import AvirtError, UnsupportedError

#: Query options of qemu+ssh URIs.
SSH_OPTIONS = frozenset({"keyfile", "known_hosts", "state_dir", "mode", "avirt"})
#: How a qemu+ssh connection drives the host: through its avirt (serve), from here (direct), or the
#: first unless the host has no avirt (auto).
SSH_MODES = ("auto", "serve", "direct")


class InvalidURIError(AvirtError, ValueError):
    """The connection URI cannot be parsed."""


@dataclass(frozen=True)
class ConnectionURI:
    scheme: str  # "qemu", "test"
    transport: str | None  # None (local) or "ssh"
    user: str | None
    host: str | None
    port: int | None
    path: str  # "session", "system", "default"
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, uri: str) -> ConnectionURI:
        try:
            parts = urlsplit(uri)
        except ValueError as e:  # an unclosed IPv6 bracket: "qemu+ssh://[::1/session"
            raise InvalidURIError(f"not a connection URI: '{uri}' ({e})") from e
        scheme, _, transport = parts.scheme.partition("+")
        if not scheme or not parts.path:
            raise InvalidURIError(f"not a connection URI: '{uri}' (try qemu:///session)")
        try:
            port = parts.port
        except ValueError as e:
            raise InvalidURIError(f"bad port in '{uri}'") from e
        return cls(scheme=scheme, transport=transport or None, user=parts.username, host=parts.hostname,
                   port=port, path=parts.path.strip("/"), options=dict(parse_qsl(parts.query)))

    def default_state_dir(self) -> str:
        if self.path == "system":
            return "/var/lib/avirt"
        if self.transport == "ssh":
            return ".local/state/avirt"  # in the remote user's home
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        return os.path.join(base, "avirt")

    def check_supported(self) -> None:
        if self.scheme == "test" and self.transport is None and not self.host:
            if self.path != "default":
                raise UnsupportedError([f"test:///{self.path}"], "only test:///default is implemented")
            return
        if self.scheme == "qemu" and self.transport == "ssh":
            if not self.host:
                raise InvalidURIError("qemu+ssh URIs name a host: qemu+ssh://[user@]host[:port]/session")
            unknown = sorted(set(self.options) - SSH_OPTIONS)
            if unknown:
                raise InvalidURIError(f"unknown option(s) {', '.join(unknown)} in the URI "
                                      f"(known: {', '.join(sorted(SSH_OPTIONS))})")
            if self.options.get("mode", "auto") not in SSH_MODES:
                raise InvalidURIError(f"mode={self.options['mode']} in the URI: the modes are "
                                      f"{', '.join(SSH_MODES)}")
            try:
                shlex.split(self.options.get("avirt", ""))
            except ValueError as e:  # an unclosed quote
                raise InvalidURIError(f"avirt={self.options['avirt']} in the URI is not a command line: "
                                      f"{e}") from None
        elif self.scheme != "qemu" or self.transport is not None or self.host:
            raise UnsupportedError([f"{self.scheme}{'+' + self.transport if self.transport else ''}://"
                                    f"{self.host or ''}/"], "connection URI not supported yet")
        if self.path not in ("session", "system"):
            raise InvalidURIError(f"qemu URIs end in /session or /system, not '/{self.path}'")
