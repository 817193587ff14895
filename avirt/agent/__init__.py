"""BYTES TO THE GUEST AGENT: qemu-ga's JSON protocol over the ``org.qemu.guest_agent.0`` channel.

``client.py`` is the session with one guest's agent (sync, one command at a time, timeouts, typed
errors); ``results.py`` turns its answers into small typed values. The QEMU driver owns one client per
running guest; the public face is :class:`avirt.guest_agent.GuestAgent` (``Domain.agent``).
"""

from avirt.agent.results import ExecResult, Filesystem, FSDisk, IPAddress, NetworkInterface, OSInfo

__all__ = ["ExecResult", "FSDisk", "Filesystem", "IPAddress", "NetworkInterface", "OSInfo"]
