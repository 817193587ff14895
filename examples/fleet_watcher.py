"""Follow a whole fleet of guests with ONE event stream: a line per state change, and a running tally.

    python examples/fleet_watcher.py --state-dir /tmp/avirt
    python examples/fleet_watcher.py --state-dir /tmp/avirt --seconds 600
    python examples/fleet_watcher.py -c qemu:///session -c 'qemu+ssh://admin@kvm-17/session' -c ...

Output::

    web1   running
    web2   running
    web3   shutoff
    == 2 running, 1 shutoff
    12:00:03 web3: shutoff -> running (booted)     [3 running]
    12:00:09 web2: running -> paused (ioerror)     [2 running, 1 paused]
    12:00:14 web1: running -> shutoff (failed)     [1 paused, 1 running, 1 shutoff]

This is the *stream* style of avirt's events API::

    async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        async for event in stream:          # LifecycleEvent(domain='web2', type=SUSPENDED, detail='ioerror')
            ...

Four ideas worth taking away:

1. One stream serves the whole fleet. Every event names its ``domain``, so a single subscription with no
   ``domain=`` filter follows a hundred guests as cheaply as one: no task, no queue, no poll per guest.
   Events of one domain arrive in the order QEMU sent them.

2. Subscribe first, then read the current states. The other way round, a change that happens between
   the read and the subscription would be lost; this way it arrives as an event, at worst repeating what
   the snapshot already shows (such non-changes are skipped below).

3. A lifecycle event says which state the domain is in now: :data:`STATE_AFTER` below is that table.
   ``detail`` says why, in libvirt's words: ``stopped (failed)`` is a QEMU that ended on its own (killed,
   crashed), ``stopped (shutdown)`` a guest that powered off, ``suspended (ioerror)`` a disk error.

4. A reader that falls behind loses the oldest events, and is told so: the next read raises
   ``EventsLostError(count)``. The right answer is the one this program gives: re-read every state, then
   carry on with the stream.

5. Many hosts are one stream too: ``avirt.fleet.merge(*connections)`` yields ``(connection, event)``
   pairs from every connection (give ``-c`` several times; domains are then shown as ``host/name``).

As with every avirt program, this one is the controller of its state directory while it runs, unless
another program already is: then it is that program's client. Either way, other ``avirt`` commands and
``avirt.connect()`` calls on the same directory go through the controller, so what they do shows here
too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import anyio

import avirt
from avirt import DomainState, EventKind, LifecycleEvent, LifecycleType
from avirt.errors import EventsLostError

DEFAULT_URI = os.environ.get("AVIRT_DEFAULT_URI", "qemu:///session")

#: The state a domain is in after each lifecycle event. DEFINED and UNDEFINED are handled on their own:
#: they change the definition, not the state.
STATE_AFTER = {
    LifecycleType.STARTED: DomainState.RUNNING,
    LifecycleType.RESUMED: DomainState.RUNNING,
    LifecycleType.SUSPENDED: DomainState.PAUSED,
    LifecycleType.SHUTDOWN: DomainState.SHUTDOWN,
    LifecycleType.STOPPED: DomainState.SHUTOFF,
    LifecycleType.CRASHED: DomainState.CRASHED,
    LifecycleType.PMSUSPENDED: DomainState.PMSUSPENDED,
}


class Fleet:
    """The last known state of every domain, updated from lifecycle events."""

    def __init__(self, connections: list[avirt.Connection]) -> None:
        self.connections = connections
        self.states: dict[str, DomainState] = {}

    def key(self, conn: avirt.Connection, domain: str) -> str:
        """A domain's name, after its host's when the fleet spans several."""
        if len(self.connections) == 1:
            return domain
        host = urlsplit(conn.uri).netloc or "localhost"
        return f"{host}/{domain}"

    async def reread(self) -> None:
        self.states = {self.key(conn, dom.name): (await dom.state())[0]
                       for conn in self.connections for dom in await conn.list_domains()}

    def apply(self, name: str, event: LifecycleEvent) -> tuple[str, str] | None:
        """Update from one event; returns (before, after) labels for a change, None for no change."""
        before = self.states.get(name)
        if event.type is LifecycleType.UNDEFINED:
            if before is DomainState.SHUTOFF:  # a running domain lives on, as a transient one
                del self.states[name]
                return before.value, "(undefined)"
            return None
        after = DomainState.SHUTOFF if event.type is LifecycleType.DEFINED else STATE_AFTER[event.type]
        if event.type is LifecycleType.DEFINED and before is not None:
            return None  # a redefinition: same domain, same state
        if after is before:
            return None
        self.states[name] = after
        return (before.value if before else "(new)"), after.value

    def tally(self) -> str:
        counts = Counter(state.value for state in self.states.values())
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no domains"

    def table(self) -> str:
        width = max((len(name) for name in self.states), default=0)
        return "".join(f"{name:<{width}}   {state.value}\n" for name, state in sorted(self.states.items()))


async def watch(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(
            avirt.connect(uri, state_dir=args.state_dir if uri.startswith("qemu:///") else None))
            for uri in args.uris or [DEFAULT_URI]]
        fleet = Fleet(connections)
        stream = await stack.enter_async_context(
            avirt.fleet.merge(*connections, kinds={EventKind.LIFECYCLE}))
        await fleet.reread()  # after subscribing: see idea 2
        print(fleet.table() + f"== {fleet.tally()}", flush=True)
        print(f"watching {len(fleet.states)} domains; Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            with anyio.move_on_after(args.seconds):
                while True:
                    try:
                        conn, event = await anext(stream)
                    except EventsLostError as e:
                        await fleet.reread()
                        print(f"-- {e.count} events lost; states re-read  [{fleet.tally()}]", flush=True)
                        continue
                    except StopAsyncIteration:
                        break
                    assert isinstance(event, LifecycleEvent)
                    name = fleet.key(conn, event.domain)
                    change = fleet.apply(name, event)
                    if change is not None:
                        when = time.strftime("%H:%M:%S", time.localtime(event.timestamp))
                        line = f"{when} {name}: {change[0]} -> {change[1]} ({event.detail})"
                        print(f"{line:<48} [{fleet.tally()}]", flush=True)
        finally:
            print(f"== {fleet.tally()}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--connect", dest="uris", action="append", metavar="URI",
                        help="connection URI, once per host to watch (default: $AVIRT_DEFAULT_URI, "
                             "else qemu:///session)")
    parser.add_argument("--state-dir", default=os.environ.get("AVIRT_STATE_DIR"),
                        help="state directory of qemu:/// URIs (default: $AVIRT_STATE_DIR, else the URI's)")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    try:
        anyio.run(watch, arguments)
    except KeyboardInterrupt:
        pass  # Ctrl-C: asyncio cancelled watch(), which printed the tally and closed the connection
    except avirt.errors.AvirtError as e:
        sys.exit(f"error: {e}")
