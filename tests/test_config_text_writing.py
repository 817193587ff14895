"""Tables written straight to text are what the Node tree renders: the same bytes, the same refusals.

Writing a table's element as text (``Kind.text``, what ``domain_to_xml`` does for every device) skips
building a :class:`~avirt.config.nodes.Node` per element; the Node way stays for what the text way cannot
write (a disk's live-only parts). Both must agree for every device of the corpus and for values that need
escaping, or that lxml refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from avirt.config import Disk, parse_domain_xml
from avirt.config.nodes import Node, render_into
from avirt.config.schema import Field, Int, Kind, Many, Sub, Text
from avirt.config.tables import DEVICE_KINDS, DISK
from avirt.errors import AvirtError


def _through_nodes(kind: Kind[Any], tag: str, obj: object) -> str:
    node = Node(tag)
    kind.fill(node, obj)
    out: list[str] = []
    render_into(node, "\n    ", out)
    return "".join(out)


def test_devices_written_straight_as_text_are_what_nodes_render() -> None:
    corpus = Path(__file__).parent / "data" / "corpus"
    written = 0
    for path in sorted(corpus.glob("*.xml")):
        try:
            cfg = parse_domain_xml(path.read_bytes())
        except AvirtError:
            continue
        for tag, (kind, attr) in DEVICE_KINDS.items():
            items = getattr(cfg, attr)
            for item in items if isinstance(items, list) else [] if items is None else [items]:
                assert kind.text(tag, item, "\n    ") == _through_nodes(kind, tag, item)
                written += 1
    assert written > 100


@pytest.mark.parametrize("source", ["/img/a&b<c>\"d'\t.qcow2", "/img/caf\u00e9 x.raw", "/img/a\x01b"])
def test_values_written_as_text_are_escaped_or_refused_as_through_nodes(source: str) -> None:
    disk = Disk(source=source, target="vda", bus="virtio", serial="S 1", readonly=True)
    try:
        expected: object = _through_nodes(DISK, "disk", disk)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: object = DISK.text("disk", disk, "\n    ")
    except ValueError as exc:
        got = str(exc)
    assert got == expected


def test_special_characters_are_escaped() -> None:
    text = DISK.text("disk", Disk(source="/a&b<c>\"d'\t", target="vda"), "\n")
    assert "&amp;b&lt;c&gt;&quot;d'&#9;" in text


@dataclass
class _Part:
    a: str | None = None
    b: int | None = None


@dataclass
class _Thing:
    x: str | None = None
    y: str | None = None
    z: str | None = None
    part: _Part | None = None
    parts: list[_Part] = field(default_factory=list)


_PART = Kind(_Part, (Field("a", "@a", Text()), Field("b", "@b", Int(0, hex_width=2))))
#: Tables whose layout depends on their values (the Node way), and one that does not (the plan).
_APART = Kind(_Thing, (Field("x", "c/@x", Text()), Field("y", "d/@y", Text()), Field("z", "c/@z", Text())))
_SHARED = Kind(_Thing, (Field("x", "p/@x", Text()), Sub("part", "p", _PART)))
_PLANNED = Kind(_Thing, (Field("x", "@x", Text()), Field("y", "c/d/@y", Text()), Field("z", "c/e", Text()),
                         Sub("part", "c/p", _PART), Many("parts", "q/part", _PART)))


@pytest.mark.parametrize("kind", [_APART, _SHARED, _PLANNED])
@pytest.mark.parametrize("thing", [
    _Thing(), _Thing(x="1"), _Thing(y="2", z="3"), _Thing(x="1", y="2", z="<3>"),
    _Thing(part=_Part()), _Thing(x="1", part=_Part("a", 10), parts=[_Part(b=1), _Part("c")]),
])
def test_every_layout_writes_as_nodes_do(kind: Kind[_Thing], thing: _Thing) -> None:
    assert kind.text("thing", thing, "\n    ") == _through_nodes(kind, "thing", thing)


def test_only_tables_whose_layout_is_fixed_are_planned() -> None:
    assert _APART.writer_of().plan is None
    assert _SHARED.writer_of().plan is None
    assert _PLANNED.writer_of().plan is not None
