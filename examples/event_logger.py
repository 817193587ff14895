"""Log every domain event of one state directory, one line each (or JSON lines), until Ctrl-C or --seconds.

    python examples/event_logger.py --state-dir /tmp/avirt
    python examples/event_logger.py --state-dir /tmp/avirt --json --seconds 60
    AVIRT_DEFAULT_URI=qemu:///session AVIRT_STATE_DIR=/tmp/avirt python examples/event_logger.py --qmp

Output (text)::

    2025-06-01T12:00:03.120 web1 lifecycle: stopped (failed)
    2025-06-01T12:00:07.004 web2 io-error: disk=vda action=stop reason='No space left on device'

This is the *callback* style of avirt's events API, the one libvirt-python users know from
``virConnectDomainEventRegisterAny``::

    sub = conn.subscribe(print_event, kinds=kinds)     # a function or an async def; one Event each
    ...
    sub.cancel()

What to know, in the order you will need it:

* Every event is a frozen dataclass: ``kind`` (an ``EventKind``, libvirt's numbering), ``domain`` (a
  name), ``uuid``, ``timestamp`` (QEMU's own clock when QEMU sent it) and ``seq``, then the fields of its
  kind: a ``LifecycleEvent`` has ``type`` and ``detail``, an ``IOErrorEvent`` ``disk``, ``action`` and
  ``reason``... ``dataclasses.asdict(event)`` is all it takes to serialise one (see :func:`as_json`).
* ``EventKind.QMP`` delivers every raw QMP event as well. It is left out here unless ``--qmp`` is
  given, because it repeats what the typed events already say (a ``STOP`` beside each ``suspended``).
* The callback runs in a task of its own. A callback that cannot keep up loses the *oldest* waiting
  events, never silently: they are counted in ``Subscription.lost`` (printed at the end here).
* avirt has no daemon. While this program runs, *it* is the controller of the state directory (it
  holds the directory's lock) and serves it: any other ``avirt.connect()`` or ``avirt`` command on the
  same directory goes through it, so the events you see include what those commands do (``avirt start
  web1`` in another terminal shows here), besides what guests and QEMU cause by themselves.
* Ending it is always safe: Ctrl-C closes the connection and exits 0, and even a SIGKILL loses
  nothing, because guests run on without a controller and the lock dies with the process.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from datetime import datetime
from typing import Any

import anyio

import avirt
from avirt import Event, EventKind, LifecycleEvent


def as_json(event: Event) -> str:
    """One JSON object: the kind's name, then every field of the dataclass (enums by value)."""
    def plain(value: Any) -> Any:
        return value.value if isinstance(value, enum.Enum) else str(value)

    return json.dumps({"kind": event.kind.name.lower(), **dataclasses.asdict(event)}, default=plain)


def as_text(event: Event) -> str:
    """``TIME DOMAIN KIND: field=value ...``; lifecycle events read ``stopped (failed)``."""
    when = datetime.fromtimestamp(event.timestamp).isoformat(timespec="milliseconds")
    kind = event.kind.name.lower().replace("_", "-")
    if isinstance(event, LifecycleEvent):
        what = f"{event.type.value} ({event.detail})"
    else:
        common = {f.name for f in dataclasses.fields(Event)}
        what = " ".join(f"{f.name}={getattr(event, f.name)!r}" for f in dataclasses.fields(event)
                        if f.name not in common)
    head = f"{when} {event.domain} {kind}"
    return f"{head}: {what}" if what else head


async def main(args: argparse.Namespace) -> None:
    kinds = None if args.qmp else set(EventKind) - {EventKind.QMP}
    fmt = as_json if args.json else as_text

    def print_event(event: Event) -> None:
        print(fmt(event), flush=True)  # flush: whoever reads the pipe sees each event at once

    async with avirt.connect(args.uri, state_dir=args.state_dir) as conn:
        sub = conn.subscribe(print_event, kinds=kinds)
        print(f"logging events of {conn.uri}; Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            if args.seconds is None:
                await anyio.sleep_forever()
            else:
                await anyio.sleep(args.seconds)
        finally:
            sub.cancel()
            if sub.lost:
                print(f"{sub.lost} events were lost (the callback did not keep up)", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--connect", dest="uri",
                        default=os.environ.get("AVIRT_DEFAULT_URI", "qemu:///session"),
                        help="connection URI (default: $AVIRT_DEFAULT_URI, else qemu:///session)")
    parser.add_argument("--state-dir", default=os.environ.get("AVIRT_STATE_DIR"),
                        help="state directory (default: $AVIRT_STATE_DIR, else the URI's)")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--qmp", action="store_true", help="also log every raw QMP event")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    try:
        anyio.run(main, arguments)
    except KeyboardInterrupt:
        pass  # Ctrl-C: asyncio cancelled main(), which closed the connection on its way out
    except avirt.errors.AvirtError as e:
        sys.exit(f"error: {e}")
