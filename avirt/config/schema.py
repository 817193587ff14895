"""Declarative tables for libvirt XML: one table per kind of element drives checking, reading and writing.

Each kind of element (a disk, a controller, one of ``<clock>``'s timers...) is described once, as a
:class:`Kind`: the dataclass it becomes and, field by field, where each value sits in the XML and which
values are allowed::

    RNG = Kind(RNG, (
        Field("model", "@model", Choice(("virtio",), {"virtio-transitional", ...}), required=True),
        Field("backend", "backend", Text(PATH)),          # the text of <backend>
        Field("rate_bytes", "rate/@bytes", Int(1)),
        Sub("address", "address", ADDRESS),
    ))

From that one table come the three things that must agree with each other: the structure check (an
attribute or element the table does not name is *unsupported*, reported by XPath), the reader, and the
writer. What is read is therefore exactly what is written back, and ``parse(serialize(cfg)) == cfg`` holds
by construction rather than by care.

Values are judged three ways, as everywhere in ``config/``: one of ``supported`` is accepted; one that
libvirt knows (``known``) but avirt does not implement is recorded as unsupported; anything else is an
:class:`InvalidXMLError`, raised at once with the element's line.

Paths are small XPath-like strings relative to the element: ``"@model"`` (an attribute), ``"driver/@cache"``
(an attribute of a child, created on write), ``"serial"`` (the text of a child), ``"."`` (the element's
own text). A :class:`Flag` field is a child whose presence is the value (``<readonly/>``).

Speed: a definition has a few hundred elements and attributes and each table names many more places than
one element fills, so what the engine would otherwise work out on every call is worked out once, when a
table is made: each path is split into its steps (``Field.holder``...), and each :class:`Kind` gets a
:class:`_ReadPlan` saying which entries an attribute or a child can feed. Every answer from lxml builds new
Python objects (a string per tag and attribute name, a proxy per element), so each element is asked once
for its attributes' names and its children (:func:`children_by_tag`, not one ``find()`` per field: lxml
parses its path argument on every call), by the structure check, the one walk over the whole document,
which keeps the answers for the readers (:meth:`Ctx.shape`); reading judges only the entries those feed.
Each shape's steps are worked out once per kind and carry all that reading them needs (where the value
is, its entry, and the strings that entry already found valid, so ``0x00`` or ``virtio`` met again is a
dictionary lookup, not a second judgement). XPaths are computed only for what is reported. Writing
pays no lxml call per element and per attribute: each table is regrouped for writing on its kind's first
write (``writers.py``), so that a write does not ask every entry of the table what it is, and written
straight to text as lxml would write it (:meth:`Kind.text`), or into plain
:class:`~avirt.config.nodes.Node` objects rendered once (``nodes.py``) where the text is added to.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, NoReturn, TypeVar, cast

from lxml import etree

from avirt.config.nodes import Node, render
from avirt.errors import InvalidXMLError

if TYPE_CHECKING:
    from avirt.config.writers import Writer

__all__ = [
    "ANY", "Choice", "CpuSet", "Ctx", "Field", "Flag", "Int", "Kind", "Many", "Node", "Spec", "Sub", "Text",
    "child", "children_by_tag", "cpus_of", "first", "kib", "line_of", "read_document", "render", "text_of",
    "unique",
]

El = etree._Element
T = TypeVar("T")


# -- structure ----------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """What one element may contain; anything else is reported as unsupported."""

    attrs: set[str] = field(default_factory=set)
    children: dict[str, Spec] = field(default_factory=dict)
    text: bool = False  # carries a text value (otherwise non-blank text is unsupported content)
    multiple: bool = False  # may repeat under its parent (otherwise a repeat is InvalidXMLError)
    anything: bool = False  # output-only content, accepted whatever it holds

    def child(self, tag: str) -> Spec:
        return self.children.setdefault(tag, Spec())

    def merge(self, other: Spec) -> None:
        self.attrs |= other.attrs
        self.text |= other.text
        self.multiple |= other.multiple
        self.anything |= other.anything
        for tag, spec in other.children.items():
            self.child(tag).merge(spec)


ANY = Spec(anything=True)


# -- values -------------------------------------------------------------------------------------------------


class Value:
    """How one attribute or text is read from its raw string and written back."""

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
        """The value of ``raw``; None only once it was recorded as unsupported (``ctx.unsupported_at``)."""
        raise NotImplementedError

    def write(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Choice(Value):
    """One of a fixed set. ``known=None``: libvirt takes free-form values, so any other is unsupported."""

    supported: tuple[str, ...]
    known: Collection[str] | None = ()

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
        if raw in self.supported:
            return raw
        if self.known is None or raw in self.known:
            ctx.unsupported_at(el, attr)
            return None
        ctx.invalid(el, f"unknown value {raw!r}", attr)


YES_NO = Choice(("yes", "no"))
ON_OFF = Choice(("on", "off"))


@dataclass(frozen=True)
class Text(Value):
    """Free text, optionally held to a pattern (values that reach QEMU's command line must be safe there)."""

    pattern: str | None = None
    what: str = ""
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)  # ``pattern``, compiled once

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", None if self.pattern is None else re.compile(self.pattern))

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
        if self.regex is not None and not self.regex.fullmatch(raw):
            ctx.invalid(el, f"{raw!r} is not {self.what or 'valid here'}", attr)
        return raw


@dataclass(frozen=True)
class Int(Value):
    """An integer, decimal or ``0x`` hex as libvirt reads it; ``hex_width`` > 0 writes it as libvirt's hex."""

    minimum: int = 0
    maximum: int | None = None
    hex_width: int = 0
    hex_form: str = field(init=False, repr=False, compare=False)  # how hex is written, for the % operator

    def __post_init__(self) -> None:
        object.__setattr__(self, "hex_form", f"0x%0{self.hex_width}x" if self.hex_width else "")

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
        if raw.isascii() and raw.isdigit():  # plain decimal, as most are: no need to look further
            number = int(raw)
            if number >= self.minimum and (self.maximum is None or number <= self.maximum):
                return number
        text = raw.strip()
        try:
            value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            value = None
        if value is None or "_" in text or value < self.minimum or (
                self.maximum is not None and value > self.maximum):
            bound = f" and <= {self.maximum}" if self.maximum is not None else ""
            ctx.invalid(el, f"expected an integer >= {self.minimum}{bound}, got {raw!r}", attr)
        return value

    def write(self, value: Any) -> str:
        # The hex format is worked out once: an f-string with a nested spec costs twice as much.
        return self.hex_form % value if self.hex_width else str(value)


@dataclass(frozen=True)
class CpuSet(Value):
    """libvirt's CPU list syntax (``0-3,^2,6``), kept as written; it must name at least one CPU."""

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
        if not cpus_of(raw):
            ctx.invalid(el, f"{raw!r} is not a CPU list such as '0-3' or '0,2'", attr)
        return raw


_CPU_LIST = re.compile(r"\^?[0-9]+(-[0-9]+)?(,\^?[0-9]+(-[0-9]+)?)*")


def cpus_of(text: str) -> set[int]:
    """The CPUs a libvirt cpuset names (empty when the text is not one)."""
    if not _CPU_LIST.fullmatch(text.replace(" ", "")):
        return set()
    cpus: set[int] = set()
    excluded: set[int] = set()
    for item in text.replace(" ", "").split(","):
        into = excluded if item.startswith("^") else cpus
        first, _, last = item.lstrip("^").partition("-")
        if last and int(last) < int(first):
            return set()
        into.update(range(int(first), int(last or first) + 1))
    return cpus - excluded


class Flag(Value):
    """A child element whose presence is the value: ``<readonly/>`` -> True."""


# -- tables -------------------------------------------------------------------------------------------------

# Where a Field's value sits, from the last step of its path: an attribute, the element's own text, the text
# of a child, or a child whose presence is the value.
_ATTR, _TEXT, _CHILD, _FLAG = "attribute", "text", "child", "flag"


def _steps(at: str) -> tuple[tuple[str, ...], str]:
    *parents, last = at.split("/")
    return tuple(parents), last


@dataclass(frozen=True)
class Field:
    """One value at ``at``; the rest is derived from ``at`` once, here, not on every read and write."""

    name: str
    at: str
    value: Value
    required: bool = False
    parents: tuple[str, ...] = field(init=False, repr=False, compare=False)  # the elements on the way
    last: str = field(init=False, repr=False, compare=False)  # "@attr", ".", or a child's tag
    how: str = field(init=False, repr=False, compare=False)  # _ATTR, _TEXT, _CHILD or _FLAG
    attr: str | None = field(init=False, repr=False, compare=False)  # the attribute's name, for _ATTR
    holder: tuple[str, ...] = field(init=False, repr=False, compare=False)  # the element holding the value

    def __post_init__(self) -> None:
        parents, last = _steps(self.at)
        attr = None
        if last.startswith("@"):
            how, attr, holder = _ATTR, last[1:], parents
        elif last == ".":
            how, holder = _TEXT, parents
        else:
            how, holder = (_FLAG if isinstance(self.value, Flag) else _CHILD), (*parents, last)
        # Tables are frozen constants; these are computed once, as part of constructing the Field.
        for name, derived in (("parents", parents), ("last", last), ("how", how), ("attr", attr),
                              ("holder", holder)):
            object.__setattr__(self, name, derived)


@dataclass(frozen=True)
class _Nested:
    name: str
    at: str
    kind: Kind[Any]
    path: tuple[str, ...] = field(init=False, repr=False, compare=False)  # ``at``, split once

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", tuple(self.at.split("/")))


@dataclass(frozen=True)
class Sub(_Nested):
    """A nested object in a child element (``<address .../>``); None when the child is absent."""


@dataclass(frozen=True)
class Many(_Nested):
    """Repeated nested objects (``<timer>`` under ``<clock>``, ``bios/entry`` under ``<sysinfo>``)."""


Entry = Field | Sub | Many


def _element_path(entry: Entry) -> tuple[str, ...]:
    return entry.holder if isinstance(entry, Field) else entry.path


@dataclass(frozen=True)
class Kind(Generic[T]):
    """One element kind: its dataclass and where each field lives.

    ``ignore`` names output-only children or attributes (``alias``, ``@id``) accepted and dropped.
    ``build`` turns the values read into the object (default: the dataclass called with the values that
    are present, so its own defaults apply); ``unbuild`` is its inverse for writing (default: attributes).
    """

    cls: Callable[..., T]
    entries: tuple[Entry, ...]
    ignore: dict[str, Spec] = field(default_factory=dict)
    build: Callable[[Ctx, El, dict[str, Any]], T | None] | None = None
    unbuild: Callable[[T], dict[str, Any]] | None = None
    # Derived from the entries once (see __post_init__):
    plan: _ReadPlan = field(init=False, repr=False, compare=False)
    writer: Writer | None = field(init=False, default=None, repr=False, compare=False)  # made on first use

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", _ReadPlan.of(self.entries))
        if mixed := self._texts() & self._parents():
            # Neither libvirt's schema nor render() has an element with both: it would be mixed content.
            raise ValueError(f"{self.cls}: <{'/'.join(min(mixed)) or '.'}> would hold both text and children")

    def _texts(self) -> set[tuple[str, ...]]:
        """The paths of the elements whose text this table writes."""
        paths: set[tuple[str, ...]] = set()
        for entry in self.entries:
            if isinstance(entry, Field) and entry.how in (_TEXT, _CHILD):
                paths.add(entry.holder)
            elif isinstance(entry, Sub):
                paths |= {entry.path + path for path in entry.kind._texts()}
        return paths

    def _parents(self) -> set[tuple[str, ...]]:
        """The paths of the elements that this table gives children."""
        paths: set[tuple[str, ...]] = set()
        for entry in self.entries:
            path = _element_path(entry)
            paths |= {path[:depth] for depth in range(len(path))}
            if isinstance(entry, Sub):
                paths |= {entry.path + path for path in entry.kind._parents()}
        return paths

    def spec(self) -> Spec:
        """What this kind's element may hold: a new Spec on each call, which the caller may adjust (parse.py
        builds the document's once, at import)."""
        root = Spec()
        for entry in self.entries:
            spec = root
            if isinstance(entry, Field):
                for tag in entry.parents:
                    spec = spec.child(tag)
                if entry.how is _ATTR:
                    spec.attrs.add(entry.last[1:])
                elif entry.how is _TEXT:
                    spec.text = True
                elif entry.how is _FLAG:
                    spec.child(entry.last)
                else:
                    spec.child(entry.last).text = True
            else:
                for tag in entry.path[:-1]:
                    spec = spec.child(tag)
                child = entry.kind.spec()
                child.multiple = isinstance(entry, Many)
                spec.child(entry.path[-1]).merge(child)
        for path, ignored in self.ignore.items():
            parents, last = _steps(path)
            spec = root
            for tag in parents:
                spec = spec.child(tag)
            if last.startswith("@"):
                spec.attrs.add(last[1:])
            else:
                spec.child(last).merge(ignored)
        return root

    def read(self, ctx: Ctx, el: El) -> T | None:
        """The object for ``el`` (None once an unsupported value made it meaningless)."""
        values: dict[str, Any] = {}
        broken = False
        # el's attributes' names and children by tag, as the structure check found them, and its attributes'
        # values in one call rather than one get() each.
        shape = ctx.shapes.get(el)  # as ctx.shape(el), without the call for what the structure check kept
        names, kids = ctx.shape(el) if shape is None else shape
        own: list[str] = el.values() if names else []  # type: ignore[assignment]  # stubs allow bytes
        plan = self.plan
        steps = plan.shapes.get((names, tuple(kids)))  # as plan.steps(), without the call once worked out
        if steps is None:
            steps = plan.steps(names, kids)
        for how, name, where, attr, seen, entry in steps:
            if how is _OWN:  # an attribute of el: most often
                raw = own[where]
                value = seen.get(raw)
                if value is None:
                    value, refused = _judge(ctx, el, kids, el, entry, attr, raw, seen)
                    broken |= refused
            elif how is _KID:  # an attribute of a child
                target = kids[where][0]
                raw = target.get(attr)
                if raw is None:
                    if not entry.required:
                        continue  # a child's optional attribute that it does not have: nothing to judge
                    value, refused = _judge(ctx, el, kids, target, entry, attr, raw, seen)
                    broken |= refused
                else:
                    value = seen.get(raw)
                    if value is None:
                        value, refused = _judge(ctx, el, kids, target, entry, attr, raw, seen)
                        broken |= refused
            elif how is _OTHER:
                before = len(ctx.unsupported)
                value = _read_field(ctx, el, kids, entry)
                broken |= value is None and len(ctx.unsupported) > before
            elif how is _SUB:
                child = kids[where[0]][0] if len(where) == 1 and where[0] in kids else _first(el, kids, where)
                value = None if child is None else entry.kind.read(ctx, child)
            else:
                value = [obj for c in _all(kids, where) if (obj := entry.kind.read(ctx, c)) is not None]
            if value is not None:
                values[name] = value
        if broken:
            return None  # the element means something avirt does not implement: judge nothing more
        return self.build(ctx, el, values) if self.build is not None else self.cls(**values)

    def write(self, parent: Node, tag: str, obj: T) -> Node:
        """``obj`` as a new last child ``tag`` of ``parent``."""
        node = parent.add(tag)
        self.fill(node, obj)
        return node

    def fill(self, node: Node, obj: T) -> None:
        """Write the fields of ``obj`` into ``node`` (children it already has are found, not repeated): each
        entry in table order, None and False skipped, an element on the way made where absent.

        The table is regrouped for writing on the kind's first write (:mod:`avirt.config.writers`).
        """
        self.writer_of().fill(node, obj)

    def text(self, tag: str, obj: T, indent: str) -> str:
        """``obj`` as the element ``tag``, written out as :func:`render` would write it in a tree where the
        element's line starts with ``indent`` (a newline and spaces): for :meth:`Node.add_raw`."""
        out: list[str] = []
        self.writer_of().emit(tag, obj, indent, out)
        return "".join(out)

    def writer_of(self) -> Writer:
        """The kind's writer, made on its first use (a table regrouped for writing: ``writers.py``)."""
        writer = self.writer
        if writer is not None:
            return writer
        from avirt.config.writers import Writer  # it builds on this module

        writer = Writer.of(self)
        object.__setattr__(self, "writer", writer)
        return writer


# How a reading step finds its value (see _Step).
_OWN, _KID, _OTHER, _SUB, _MANY = "own attribute", "child's attribute", "other field", "sub", "many"


class _Step(NamedTuple):
    """One entry to judge in an element of a given shape, with all that reading it needs at hand."""

    how: str  # _OWN, _KID, _OTHER (a Field read by _read_field), _SUB or _MANY
    name: str  # the entry's name: the key of its value
    where: Any  # _OWN: the attribute's position among el's; _KID: the child's tag; _SUB, _MANY: the path
    attr: str  # _OWN, _KID: the attribute's name (otherwise "")
    seen: dict[str, object]  # _OWN, _KID: raw strings already judged valid -> their value (see _judge)
    entry: Any  # the Field, Sub or Many


#: An element's attribute names and its children's tags, in document order.
_Shape = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class _ReadPlan:
    """Which entries of a table may have a value in one element, asked of the element.

    A table names every place where its values may sit, and one element fills few of them: reading looks
    at the attributes and children the element has and judges only the entries that these can feed, in
    table order, with those judged whatever the element holds (a required field is missing, a Many with no
    items is an empty list, the element's own text). The others would be None, with nothing to report.

    Each entry read from an attribute also gets a memory of the raw strings it has found valid and what
    they became (``_Step.seen``, prefilled with a Choice's supported values): the same few strings come
    back in every definition (``0x00``, ``virtio``, ``qcow2``...), and a dictionary lookup costs less than
    judging the string again. Only values that read without a word to the context are kept, so a string
    that is invalid, blank or unsupported is judged, and reported, every time.
    """

    entries: tuple[Entry, ...]
    always: tuple[int, ...]
    attrs: dict[str, tuple[int, ...]]  # an attribute of the element -> the entries reading it
    child_attrs: dict[str, dict[str, int]]  # a child's tag -> its attribute -> the entry reading it
    inside: dict[str, tuple[int, ...]]  # a child's tag -> the other entries within that child
    seen: tuple[dict[str, object], ...]  # per entry: the strings it found valid (shared by its steps)
    shapes: dict[_Shape, tuple[_Step, ...]] = field(default_factory=dict, compare=False)  # filled as met

    @staticmethod
    def of(entries: tuple[Entry, ...]) -> _ReadPlan:
        always: list[int] = []
        attrs: dict[str, tuple[int, ...]] = {}
        child_attrs: dict[str, dict[str, int]] = {}
        inside: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            path = _element_path(entry)
            judged = isinstance(entry, Many) or (isinstance(entry, Field) and entry.required)
            if isinstance(entry, Field) and entry.attr is not None and not path:
                # Its value is gathered with the element's other attributes (by each entry reading it).
                attrs[entry.attr] = (*attrs.get(entry.attr, ()), index)
                if not judged:
                    continue
            elif isinstance(entry, Field) and entry.attr is not None and len(path) == 1:
                by_name = child_attrs.setdefault(path[0], {})
                if entry.attr not in by_name:
                    by_name[entry.attr] = index  # its value is gathered with the child's other attributes
                    if not judged:
                        continue
            elif path and not judged:
                inside.setdefault(path[0], []).append(index)
                continue
            always.append(index)  # required, a Many, the element's text, or another reader of a child's attr
        inside_entries = {tag: tuple(indexes) for tag, indexes in inside.items()}
        seen = tuple(_valid_choices(entry) for entry in entries)
        return _ReadPlan(entries, tuple(always), attrs, child_attrs, inside_entries, seen)

    def steps(self, names: tuple[str, ...], kids: dict[str, list[El]]) -> tuple[_Step, ...]:
        """The entries to judge for an element with the attributes ``names`` and the children ``kids``, in
        table order.

        They depend only on which attributes the element has and which children's tags, in a few shapes
        per kind across all documents; each shape's steps are worked out once (up to ``_SHAPES_KEPT``).
        """
        shape = (names, tuple(kids))
        steps = self.shapes.get(shape)
        if steps is None:
            steps = self._steps(names, kids)
            if len(self.shapes) < _SHAPES_KEPT:
                self.shapes[shape] = steps
        return steps

    def _steps(self, names: tuple[str, ...], kids: dict[str, list[El]]) -> tuple[_Step, ...]:
        todo = set(self.always)
        found: dict[int, tuple[str, object, str]] = {}
        for position, name in enumerate(names):
            for index in self.attrs.get(name, ()):
                found[index] = (_OWN, position, name)
        for tag in kids:
            inside = self.inside.get(tag)
            if inside is not None:
                todo.update(inside)
            # A child's attributes are not part of the shape: each one it may have is a step, skipped
            # at once when the child lacks it.
            for name, index in self.child_attrs.get(tag, {}).items():
                found[index] = (_KID, tag, name)
        todo.update(found)
        steps = []
        for index in sorted(todo):
            entry = self.entries[index]
            if index in found:
                how, where, attr = found[index]
                steps.append(_Step(how, entry.name, where, attr, self.seen[index], entry))
            elif isinstance(entry, Field):
                steps.append(_Step(_OTHER, entry.name, None, "", self.seen[index], entry))
            else:
                steps.append(_Step(_SUB if isinstance(entry, Sub) else _MANY, entry.name, entry.path, "",
                                   self.seen[index], entry))
        return tuple(steps)


def _valid_choices(entry: Entry) -> dict[str, object]:
    """What an entry's ``seen`` starts with: a Choice's supported values are valid as they are."""
    if isinstance(entry, Field) and isinstance(entry.value, Choice):
        return {value: value for value in entry.value.supported if value.strip()}
    return {}


def _judge(ctx: Ctx, el: El, kids: dict[str, list[El]], target: El, entry: Field, attr: str,
           raw: str | None, seen: dict[str, object]) -> tuple[object, bool]:
    """An attribute's value not met before (or absent but required, or blank), and whether it was refused
    as unsupported; a valid value is remembered in ``seen`` (up to ``_SEEN_KEPT``)."""
    if raw is not None and raw.strip():
        value = entry.value.read(ctx, target, attr, raw)
        if value is None:
            return None, True  # known but unsupported (see Value.read)
        if len(seen) < _SEEN_KEPT:
            seen[raw] = value
        return value, False
    before = len(ctx.unsupported)
    value = _read_field(ctx, el, kids, entry)
    return value, value is None and len(ctx.unsupported) > before


#: How many valid strings each attribute's entry remembers (beyond that, new ones are judged each time).
_SEEN_KEPT = 64

#: How many element shapes a kind keeps the reading steps of (documents with unusual shapes beyond that
#: are read just as well, with the steps worked out each time).
_SHAPES_KEPT = 256


def children_by_tag(el: El) -> dict[str, list[El]]:
    """The child elements of ``el`` by tag, each list in document order (one pass over the children).

    ``kids[tag][0]`` is what ``el.find(tag)`` returns and ``kids[tag]`` what ``el.findall(tag)`` does.
    """
    kids: dict[str, list[El]] = {}
    for item in el:
        tag = item.tag
        if isinstance(tag, str):  # not a comment or processing instruction
            found = kids.get(tag)
            if found is None:
                kids[tag] = [item]
            else:
                found.append(item)
    return kids


def first(kids: dict[str, list[El]], tag: str) -> El | None:
    """The first child ``tag`` in ``kids`` (from :func:`children_by_tag`), as ``el.find(tag)``."""
    found = kids.get(tag)
    return None if found is None else found[0]


def _first(el: El, kids: dict[str, list[El]], path: tuple[str, ...]) -> El | None:
    """The element at ``path`` below ``el``, taking the first child at each step (as ``find`` does)."""
    if not path:
        return el
    found = kids.get(path[0])
    if found is None:
        return None
    target = found[0]
    for tag in path[1:]:
        below = next(target.iterchildren(tag), None)
        if below is None:
            return None
        target = below
    return target


def _all(kids: dict[str, list[El]], path: tuple[str, ...]) -> list[El]:
    """Every element at ``path`` (as ``findall`` returns them: through every element on the way)."""
    found = kids.get(path[0], [])
    for tag in path[1:]:
        found = [item for parent in found for item in parent.iterchildren(tag)]
    return found


def _read_field(ctx: Ctx, el: El, kids: dict[str, list[El]], entry: Field) -> object:
    """The value of one field of ``el``, or None; the common cases here, the rest in :meth:`Ctx.field`."""
    target = _first(el, kids, entry.holder)
    if target is None:
        return ctx.field(el, entry) if entry.required else None
    if entry.how is _FLAG:
        return True
    raw = target.get(entry.attr) if entry.attr is not None else text_of(target)
    if raw is None:
        return ctx.field(el, entry) if entry.required else None
    if not raw.strip():
        return ctx.field(el, entry)  # blank: required, kept as "", or refused, by the rules there
    return entry.value.read(ctx, target, entry.attr, raw)


# -- reading ------------------------------------------------------------------------------------------------


#: The children of every leaf (shared: what Ctx.children returns is not to be changed).
_NO_KIDS: dict[str, list[El]] = {}


class Ctx:
    """Reads one document: collects unsupported XPaths and raises on the first invalid value."""

    def __init__(self, tree: etree._ElementTree) -> None:
        self.tree = tree
        self.unsupported: list[str] = []
        self.accounted = 0  # the characters, blanks aside, of the text that belongs (see check_structure)
        # Each element's attribute names and children by tag, as the structure check found them: each
        # answer from lxml builds new Python strings (and element proxies), so it is asked once.
        self.shapes: dict[El, tuple[tuple[str, ...], dict[str, list[El]]]] = {}

    def shape(self, el: El) -> tuple[tuple[str, ...], dict[str, list[El]]]:
        """``el``'s attribute names, in document order, and its children by tag (:func:`children_by_tag`)."""
        found = self.shapes.get(el)
        if found is None:
            found = self.shapes[el] = (cast("tuple[str, ...]", tuple(el.keys())), children_by_tag(el))
        return found

    def child(self, el: El, tag: str) -> El:
        """As :func:`child`, from the children the structure check kept (no lxml iterator per call)."""
        found = self.shape(el)[1].get(tag)
        return el if found is None else found[0]

    def children(self, el: El) -> dict[str, list[El]]:
        """``el``'s children by tag (:func:`children_by_tag`): do not change what it returns."""
        return self.shape(el)[1]

    def path(self, el: El, attr: str | None = None) -> str:
        base = self.tree.getpath(el)
        return base if attr is None else f"{base}/@{_attr_name(el, attr)}"

    def invalid(self, el: El, message: str, attr: str | None = None) -> NoReturn:
        raise InvalidXMLError(f"{self.path(el, attr)}: {message}", line_of(el))

    def unsupported_at(self, el: El, attr: str | None = None) -> None:
        self.unsupported.append(self.path(el, attr))

    def intact(self, el: El) -> bool:
        """Whether nothing in ``el`` was refused so far (a rule may then trust what was read from it)."""
        if not self.unsupported:
            return True  # as usual: no XPath to work out
        path = self.path(el)
        return not any(item == path or item.startswith(path + "/") for item in self.unsupported)

    def check_structure(self, root: El, spec: Spec) -> None:
        """Record every attribute and child of ``root`` that ``spec`` does not allow (recursively).

        This is the one walk over the whole document: what it learns of each element on the way (its
        attributes' names and its children by tag) is kept for the readers (:meth:`shape`).

        Text where none belongs is reported once per element, after what is inside it. Asking every
        element for its text and every child for its tail would build a Python string for each (nearly
        all of them the blanks that indent the document), so the walk first counts only the text that
        belongs (that of elements which carry text, and whatever output-only content holds) and compares
        it with all the text of the document, read in one call: when no character is left over, nothing
        is out of place. Otherwise the document is walked again, asking each element, to report where.
        """
        self.accounted = 0
        self._walk(root, spec, False)
        if _solid(etree.tostring(root, method="text", encoding="unicode")) != self.accounted:
            self.unsupported.clear()
            self.shapes.clear()
            self._walk(root, spec, True)

    def _walk(self, el: El, spec: Spec, texts: bool) -> None:
        """:meth:`check_structure` for ``el``: with ``texts``, each element's text and children's tails are
        looked at; without, the text that belongs is counted (``accounted``)."""
        if spec.anything:
            if not texts:
                inner = etree.tostring(el, method="text", encoding="unicode", with_tail=False)
                self.accounted += _solid(inner)
            return
        names: tuple[str, ...] = tuple(el.keys())  # type: ignore[arg-type]  # lxml's stubs allow bytes
        if names and not spec.attrs.issuperset(names):
            attrs = spec.attrs
            for attr in names:
                if attr not in attrs:
                    self.unsupported_at(el, attr)
        stray = False
        if texts:
            # Text where none belongs (around the children too) is reported once for the element.
            stray = not spec.text and bool((text := el.text) and not text.isspace())
        elif spec.text and (text := el.text):
            self.accounted += _solid(text)
        if not len(el):  # a leaf, as most are: len() costs less than an iterator over no children
            self.shapes[el] = (names, _NO_KIDS)
            if stray:
                self.unsupported.append(f"{self.path(el)}/text()")
            return
        children = spec.children
        kids: dict[str, list[El]] = {}
        for item in el[:]:  # type: ignore[index]  # a list in one call costs less than an iterator
            if texts and not stray and (tail := item.tail) and not tail.isspace():
                stray = True
            tag = item.tag
            if not isinstance(tag, str):
                continue
            same = kids.get(tag)
            if same is None:
                kids[tag] = [item]
            else:
                same.append(item)
            spec_child = children.get(tag)
            if spec_child is None:
                self.unsupported_at(item)
                continue
            if same is not None and not spec_child.multiple:
                self.invalid(item, f"<{tag}> may appear only once here")
            self._walk(item, spec_child, texts)
        self.shapes[el] = (names, kids)
        if stray:
            self.unsupported.append(f"{self.path(el)}/text()")

    def field(self, el: El, entry: Field) -> object:
        """The value of one table field of ``el``: None when absent or unsupported.

        All the rules, and the messages of what is missing or blank; :meth:`Kind.read` takes the common
        cases (absent, or a plain value) itself and comes here for the rest.
        """
        target: El | None = el
        for tag in entry.parents:
            target = None if target is None else target.find(tag)
        if target is None:
            if entry.required:
                self.invalid(el, f"<{'/'.join(entry.parents)}> is required")
            return None
        last = entry.last
        attr: str | None = None
        if entry.how is _ATTR:
            attr = entry.attr
            raw = target.get(last[1:])
        elif entry.how is _TEXT:
            raw = text_of(target)
        else:
            child = target.find(last)
            if entry.how is _FLAG:
                return child is not None or None
            if child is None:
                if entry.required:
                    self.invalid(target, f"<{last}> is required")
                return None
            target, raw = child, text_of(child)
        if raw is None or raw.strip() == "":
            if entry.required:
                self.invalid(target, "is required", attr)
            if raw == "" and attr is None and isinstance(entry.value, Text) and entry.value.pattern is None:
                return raw  # <title/> stays "" so that "" round-trips
            if raw is not None and raw != "":
                self.invalid(target, "must not be blank", attr)
            return None
        return entry.value.read(self, target, attr, raw)

    def choose(self, el: El, attr: str | None, supported: tuple[str, ...], known: Collection[str] | None,
               default: str | None = None) -> str | None:
        """Validate an enumerated attribute (or the text when ``attr`` is None) outside any table."""
        raw = el.get(attr) if attr is not None else text_of(el).strip()
        if raw is None or raw == "":
            if default is None:
                self.invalid(el, "is required", attr)
            return default
        value = Choice(supported, known).read(self, el, attr, raw)
        return value if isinstance(value, str) else None

    def integer(self, el: El, raw: str | None, minimum: int, attr: str | None = None) -> int:
        value = Int(minimum).read(self, el, attr, raw or "")
        assert isinstance(value, int)
        return value

    def required(self, el: El, attr: str) -> str:
        value = el.get(attr)
        if not value:
            self.invalid(el, "is required", attr)
        return value


def _solid(text: str) -> int:
    """How many characters of ``text`` are not blanks (as ``str.isspace`` counts them)."""
    return len("".join(text.split()))


def _attr_name(el: El, attr: str) -> str:
    if not attr.startswith("{"):
        return attr
    ns, _, local = attr[1:].partition("}")
    if ns == "http://www.w3.org/XML/1998/namespace":
        return f"xml:{local}"
    prefix = next((p for p, uri in el.nsmap.items() if uri == ns and p), None)
    return f"{prefix}:{local}" if prefix else f"*[local-name()='{local}']"


_POWERS = "kmgtpe"


def kib(ctx: Ctx, el: El, amount: int, unit: str | None) -> int:
    """``amount`` in ``unit`` as KiB, rounded up; units follow libvirt's virScaleInteger (any case).

    ``KB``/``MB``/... are powers of 1000 and ``K``/``KiB``/... powers of 1024; no unit means KiB.
    """
    name = (unit or "KiB").lower()
    if name in ("b", "bytes"):
        scale = 1
    elif name[:1] in _POWERS and name[1:] in ("", "ib", "b"):
        scale = (1000 if name[1:] == "b" else 1024) ** (_POWERS.index(name[0]) + 1)
    else:
        ctx.invalid(el, f"unknown unit {unit!r}", "unit")
    return -(-amount * scale // 1024)  # integer ceiling: floats would lose precision on large sizes


def child(el: El, tag: str) -> El:
    """The child ``tag`` of ``el`` that a reported value came from (``el`` itself if it has none)."""
    found = next(el.iterchildren(tag), None)  # as el.find(tag), without parsing a path
    return el if found is None else found


def read_document(xml: str | bytes, *, what: str = "document",
                  error: type[InvalidXMLError] = InvalidXMLError) -> El:
    """The root element of ``xml``, read as every definition is: no DTD, entity or network access,
    comments and processing instructions dropped, a str taken as already decoded (its encoding
    declaration not applied again). Text that is not Unicode (lone surrogates, as ``os.fsdecode`` makes of
    undecodable bytes), malformed XML or a DOCTYPE is ``error``, naming ``what`` was read."""
    parser = _parser(isinstance(xml, str))
    try:
        data = xml.encode("utf-8") if isinstance(xml, str) else xml
    except UnicodeEncodeError as exc:
        raise error(f"the {what} is not valid Unicode: {exc.reason}", None) from exc
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise error(f"malformed {'XML' if what == 'document' else what}: {exc.msg}", exc.lineno) from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise error("DOCTYPE declarations are not accepted", 1)
    return root


#: Each thread's two parsers (for text, for bytes): a parser may be used for one document at a time, and
#: making one per document costs more than the check that a small document needs.
_PARSERS = threading.local()


def _parser(text: bool) -> etree.XMLParser:
    parsers: dict[bool, etree.XMLParser] | None = getattr(_PARSERS, "parsers", None)
    if parsers is None:
        parsers = _PARSERS.parsers = {}
    parser = parsers.get(text)
    if parser is None:
        parser = parsers[text] = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True, remove_pis=True,
            encoding="utf-8" if text else None)
    return parser


def line_of(el: El) -> int | None:
    line = el.sourceline
    return line if isinstance(line, int) else None


def text_of(el: El) -> str:
    """All the text inside ``el``, its children's included."""
    if len(el) == 0:
        return el.text or ""  # the usual case, without itertext's iterator
    return "".join(str(part) for part in el.itertext())


def unique(ctx: Ctx, items: Iterable[tuple[El, object]], what: str) -> None:
    """Raise on the second element that repeats a key (a disk target, a controller index...)."""
    seen: set[object] = set()
    for el, key in items:
        if key is None:
            continue
        if key in seen:
            ctx.invalid(el, f"duplicate {what} {key!r}")
        seen.add(key)
