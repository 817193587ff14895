"""The wire to QEMU: one :class:`Monitor` per guest on ``qemu.qmp``.

This package moves bytes and maps failures to :mod:`avirt.errors`; it never decides what an event means
(that is ``events/`` and the driver's job)::

    monitor = Monitor("web1", on_event=handle)        # handle(msg: dict) gets every QMP event
    await monitor.connect(socket_path)
    await monitor.execute("cont")
    await monitor.closed()                             # returns when QEMU hangs up
"""

from avirt.qmp.monitor import Monitor, MonitorClosedError

__all__ = ["Monitor", "MonitorClosedError"]
