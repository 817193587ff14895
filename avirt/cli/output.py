"""Plain text output, shaped like virsh's so that eyes and scripts used to virsh feel at home.

* :func:`table`: columns padded to their widest cell, a rule under the header::

       Id      Name   State
      --------------------------
       40211   web1   running
       -       web2   shut off

* :func:`key_values`: ``Key:   value`` lines with the values aligned (``dominfo``).
* :func:`state_label`: virsh's words for states ("shut off", "in shutdown").
* :func:`event_record` / :func:`event_line`: an event as a JSON-ready dict or as one line of text;
  :func:`timestamp`: virsh's time prefix for such a line (``event --timestamp``).

Nothing here imports the library at module level: events and states are read through their attributes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avirt.events.model import Event, EventKind
    from avirt.models import DomainState

#: virsh's wording, keyed by ``DomainState.value``.
_STATE_LABELS = {
    "running": "running",
    "paused": "paused",
    "shutdown": "in shutdown",
    "shutoff": "shut off",
    "crashed": "crashed",
    "pmsuspended": "pmsuspended",
}


def state_label(state: DomainState) -> str:
    return _STATE_LABELS.get(state.value, state.value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A virsh-style table: one leading space, three between columns, a dashed rule under the header."""
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return (" " + "   ".join(padded)).rstrip()

    header = line(headers)
    body = [line(row) for row in rows]
    rule = "-" * (max(len(text) for text in [header, *body]) + 1)
    return "\n".join([header, rule, *body]) + "\n"


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """``Key: value`` lines, values aligned one column past the longest key."""
    width = max(len(key) for key, _ in pairs) + 2
    return "".join(f"{key + ':':<{width}}{value}\n" for key, value in pairs)


# -- events ------------------------------------------------------------------------------------------------


def kind_name(kind: EventKind) -> str:
    """The command-line name of an event kind: ``EventKind.IO_ERROR`` -> ``io-error``."""
    return kind.name.lower().replace("_", "-")


def event_record(event: Event) -> dict[str, Any]:
    """The event as a flat dict ready for ``json.dumps``: the common fields first, then its own.

    Enums become their values (``"stopped"``, ``"commit"``), the kind its command-line name.
    """
    record: dict[str, Any] = {
        "seq": event.seq,
        "timestamp": event.timestamp,
        "kind": kind_name(event.kind),
        "domain": event.domain,
        "uuid": event.uuid,
    }
    for f in dataclasses.fields(event):
        if f.name not in record:
            value = getattr(event, f.name)
            record[f.name] = value.value if isinstance(value, enum.Enum) else value
    return record


def event_json(event: Event) -> str:
    return json.dumps(event_record(event), sort_keys=False, default=str)


def event_line(event: Event) -> str:
    """One line of text: domain, kind, and what the event says (no time, as virsh: see :func:`timestamp`).

    ``web1 lifecycle: stopped (failed)``
    ``web1 io-error: disk=vda action=stop reason='No space left on device'``
    """
    record = event_record(event)
    head = f"{event.domain} {record['kind']}"
    own = {k: v for k, v in record.items() if k not in ("seq", "timestamp", "kind", "domain", "uuid")}
    if set(own) == {"type", "detail"}:  # lifecycle: the most common line, in the words of the API docs
        return f"{head}: {own['type']}" + (f" ({own['detail']})" if own["detail"] else "")
    if set(own) == {"name", "data"}:  # raw QMP
        return f"{head}: {own['name']} {json.dumps(own['data'], default=str)}"
    if not own:
        return head
    return f"{head}: " + " ".join(f"{k}={_value(v)}" for k, v in own.items())


def timestamp(seconds: float) -> str:
    """virsh's ``event --timestamp`` prefix: UTC with milliseconds, ``2025-06-01 12:00:03.120+0000``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+0000"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and value.isprintable() and " " not in value else repr(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)
