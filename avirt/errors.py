"""The one exception family of avirt.

Every error a caller can see derives from :class:`AvirtError`, so ``except AvirtError`` catches all of
them; each subclass names one kind of failure a caller may want to handle on its own. Errors that wrap a
lower-level failure keep it as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence


class AvirtError(Exception):
    """Base class of every avirt error."""


class InvalidXMLError(AvirtError):
    """The domain XML is malformed or violates the domain schema (``line`` is 1-based, when known)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class UnsupportedError(AvirtError):
    """The configuration uses what avirt does not implement; ``items`` names each one (XPaths for XML)."""

    def __init__(self, items: Sequence[str], message: str = "unsupported") -> None:
        self.items = list(items)
        super().__init__(f"{message}: " + ", ".join(self.items))


class InvalidArgumentError(AvirtError, ValueError):
    """An argument's value is outside what the call accepts (a negative wait or bandwidth, a bad snapshot
    name or metadata namespace). Also a ``ValueError``, as Python's own argument errors are."""


class DomainNotFoundError(AvirtError):
    """No domain has that name or UUID."""


class DomainExistsError(AvirtError):
    """A domain with that name or UUID already exists and the call may not replace it."""


class OperationInvalidError(AvirtError):
    """The domain's current state forbids the call (start a running domain, suspend a shut-off one...)."""


class OperationTimeoutError(AvirtError, TimeoutError):
    """A call that waits (``shutdown(wait=...)``, a monitor command) did not finish in time."""


class ConnectionLockedError(AvirtError):
    """Another controller already manages this state directory."""


class DomainStartError(AvirtError):
    """QEMU could not be started or exited during start-up; ``log`` holds the tail of its output."""

    def __init__(self, message: str, log: str = "") -> None:
        self.log = log
        super().__init__(f"{message}\n{log}".rstrip() if log else message)


class BlockJobError(AvirtError):
    """A block job failed (or could not be started)."""


class MigrationError(AvirtError):
    """A migration failed or was cancelled; the guest runs on at the source as before (when it could not,
    the message says where it is)."""


class QMPError(AvirtError):
    """QEMU answered a monitor command with an error, or the monitor connection failed."""

    def __init__(self, error_class: str, desc: str) -> None:
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"{error_class}: {desc}")


class ImageError(AvirtError):
    """A ``qemu-img`` run failed; carries its return code and standard error."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)


class ImageLockedError(ImageError):
    """An image is in use by another process (QEMU holds its lock)."""


class InsufficientSpaceError(ImageError):
    """A commit (or a migration's storage copy) could write more than the free space of the filesystem
    that holds its base (its new image), so it was refused before any byte was written. ``path`` is
    that image, ``needed`` and ``available`` are bytes (``needed`` is an upper bound of what can be
    written, metadata included)."""

    def __init__(self, path: str, needed: int, available: int, *, doing: str = "commit into") -> None:
        self.path = path
        self.needed = needed
        self.available = available
        super().__init__(f"not enough space to {doing} {path}: that can write {needed} bytes, "
                         f"its filesystem has {available} free")


class SharedImageError(OperationInvalidError):
    """A block commit would write into a base image that other domains' disks also read (their
    backing chains include it): their guests would see changed data. ``domains`` names them; pass
    ``allow_shared_base=True`` to commit anyway."""

    def __init__(self, path: str, domains: Sequence[str]) -> None:
        self.path = path
        self.domains = list(domains)
        super().__init__(f"{path} is also in the backing chain of {', '.join(self.domains)}: committing "
                         "into it would change their disks (allow_shared_base=True to do it anyway)")


class HostError(AvirtError):
    """The host could not be reached, authenticated, or used."""


class EventsLostError(AvirtError):
    """An event subscriber fell behind and ``count`` events were dropped for it; ``count`` is None when
    the number is unknown (events emitted while a client's controller was changing)."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        #: Which connection lost them, when the stream merges several (``avirt.fleet.merge``).
        self.connection: object | None = None
        if count is None:
            super().__init__("events may have been lost while the controller changed; re-read state")
        else:
            super().__init__(f"{count} events lost: the subscriber did not keep up; re-read state")


class ControllerGoneError(AvirtError):
    """The controller serving this connection went away during the call (the program holding the state
    directory ended). The call may or may not have taken effect: re-read state, then retry; the
    connection finds the next controller by itself."""


class ProtocolVersionError(AvirtError):
    """The two ends of a served connection speak different versions of the protocol (docs/protocol.md):
    ``server`` and ``client`` are the two version numbers. Install the same avirt on both sides."""

    def __init__(self, message: str, server: int | None = None, client: int | None = None) -> None:
        self.server = server
        self.client = client
        super().__init__(message)


class CommandNotFoundError(HostError):
    """A remote host has no such command (its shell exited with status 127): ``command`` names it."""

    def __init__(self, message: str, command: str = "") -> None:
        self.command = command
        super().__init__(message)


class InvalidNetworkXMLError(InvalidXMLError):
    """The network XML is malformed or violates libvirt's network schema or rules (a bridge name over 15
    bytes, a DHCP range outside its subnet...); ``line`` is 1-based, when known."""


class NetworkNotFoundError(AvirtError):
    """No network has that name or UUID."""


class NetworkExistsError(AvirtError):
    """A network with that name or UUID already exists and the call may not replace it."""


class NetworkConflictError(AvirtError):
    """A network definition clashes with another defined network (overlapping subnets, the same bridge)
    or with the host (a bridge name some other interface has). Refused before anything is created."""


class NetworkError(AvirtError):
    """Building or tearing down a network's host side failed (``ip``, ``nft``, ``dnsmasq``, a tap);
    ``stderr`` holds what the failing command said."""

    def __init__(self, message: str, stderr: str = "") -> None:
        self.stderr = stderr
        super().__init__(f"{message}: {stderr.strip()}" if stderr.strip() else message)


class NetworkPermissionError(NetworkError):
    """Host networking (bridges, taps, firewall rules) needs root or CAP_NET_ADMIN, which this controller
    lacks. ``<interface type='user'>`` needs neither; qemu-bridge-helper is the setuid alternative."""


class DeviceDetachTimeoutError(OperationTimeoutError):
    """The guest did not release a device within the detach's timeout (a PCI device waits for the
    guest's OS to agree, and a guest without one, or paused, never does). The device is still attached
    and in the live definition; the request stands, so if the guest releases it later the detach
    completes by itself (a ``DeviceRemovedEvent`` says so). ``device`` is the disk's target."""

    def __init__(self, domain: str, device: str, timeout: float) -> None:
        self.domain = domain
        self.device = device
        self.timeout = timeout
        super().__init__(f"domain '{domain}': the guest did not release device {device} within "
                         f"{timeout:g} s; it stays attached until the guest does (the request stands)")


class AgentError(AvirtError):
    """A call to the QEMU guest agent (qemu-ga, in the guest, over the ``org.qemu.guest_agent.0``
    channel) failed. Subclasses say how."""


class AgentUnavailableError(AgentError):
    """The guest agent cannot be reached: the domain has no ``org.qemu.guest_agent.0`` channel, no agent
    has the guest's end of it open (qemu-ga not installed, not started yet, stopped, the guest
    rebooting), or its socket cannot be connected (QEMU is going away)."""


class AgentTimeoutError(AgentUnavailableError, OperationTimeoutError):
    """The guest agent did not answer in time: it has the channel open but does not answer (stopped,
    stuck, the guest too busy), or the command takes longer than the timeout. The connection is
    re-synchronised before the next call, so a late answer is never taken for another's."""


class AgentCommandError(AgentError):
    """The guest agent answered with an error: ``error_class`` (e.g. ``GenericError``,
    ``CommandNotFound``) and ``desc`` are the agent's own."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"{command}: {error_class}: {desc}")
