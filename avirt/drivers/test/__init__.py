"""The ``test:///default`` driver: the whole public API in memory, for testing code that uses avirt.

    async with avirt.connect("test:///default") as conn:
        dom = await conn.lookup("test")               # one domain, already running, as in libvirt
        await dom.suspend()                           # the same state rules, errors and events as QEMU
        job = await dom.block_commit("vda", pivot=True)
        await job                                     # simulated: progress, READY, pivot, in milliseconds
        print([i.path for i in await dom.block_chain("vda")])

No process is started and no file is read or written: domains, their states, disk images and backing
chains live in the connection (:mod:`.images`), block jobs advance on timers of a few milliseconds
(:mod:`.jobs`). Everything that decides *what* happens is shared with the QEMU driver (its state table,
its lifecycle event table, its chain-index resolution, the XML parser and serializer), and a conformance
suite (``tests/conformance/``) runs the same tests against both drivers.

Each ``connect()`` starts a fresh world. (libvirt's test driver shares one world among the connections
of a process that are open at the same time; avirt's connections never share state, as two controllers
never manage one QEMU state directory.)
"""

from avirt.drivers.test.driver import TestDriver

__all__ = ["TestDriver"]
