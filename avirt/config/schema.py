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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar, cast

from lxml import etree

from avirt.errors import InvalidXMLError

__all__ = [
    "ANY", "Choice", "CpuSet", "Ctx", "Field", "Flag", "Int", "Kind", "Many", "Spec", "Sub", "Text", "child",
    "children_by_tag", "cpus_of", "first", "kib", "line_of", "text_of", "unique",
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

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
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
        return f"0x{value:0{self.hex_width}x}" if self.hex_width else str(value)


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
class Sub:
    """A nested object in a child element (``<address .../>``); None when the child is absent."""

    name: str
    at: str
    kind: Kind[Any]
    path: tuple[str, ...] = field(init=False, repr=False, compare=False)  # ``at``, split once

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", tuple(self.at.split("/")))


@dataclass(frozen=True)
class Many:
    """Repeated nested objects (``<timer>`` under ``<clock>``, ``bios/entry`` under ``<sysinfo>``)."""

    name: str
    at: str
    kind: Kind[Any]
    path: tuple[str, ...] = field(init=False, repr=False, compare=False)  # ``at``, split once

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", tuple(self.at.split("/")))


Entry = Field | Sub | Many


def _element_path(entry: Entry) -> tuple[str, ...]:
    return entry.holder if isinstance(entry, Field) else entry.path


def _overlapping(entries: tuple[Entry, ...]) -> bool:
    """Whether an entry reaches into the element of a Sub or the items of a Many.

    No table does today. If one did, an element could gain children that one fill does not see being made
    (the Sub's own table writes them), so writing falls back to looking each path up in the tree.
    """
    for outer in entries:
        if isinstance(outer, Field):
            continue
        for inner in entries:
            path = _element_path(inner)
            if inner is not outer and path[:len(outer.path)] == outer.path and (
                    len(path) > len(outer.path) or isinstance(outer, Many) or not isinstance(inner, Field)):
                return True
    return False


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
    overlapping: bool = field(init=False, repr=False, compare=False)  # see _overlapping

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", _ReadPlan.of(self.entries))
        object.__setattr__(self, "overlapping", _overlapping(self.entries))

    def spec(self) -> Spec:
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
        unsupported = ctx.unsupported
        broken = False
        # el's children by tag, gathered in one pass (lxml's find() parses its path on every call).
        kids = children_by_tag(el) if self.plan.nested else _NO_CHILDREN
        for index in self.plan.candidates(el, kids):
            entry = self.entries[index]
            before = len(unsupported)
            if isinstance(entry, Field):
                value = _read_field(ctx, el, kids, entry)
                broken |= value is None and len(unsupported) > before  # the value is known but unsupported
            elif isinstance(entry, Sub):
                child = _first(el, kids, entry.path)
                value = None if child is None else entry.kind.read(ctx, child)
            else:
                value = [obj for c in _all(kids, entry.path) if (obj := entry.kind.read(ctx, c)) is not None]
            if value is not None:
                values[entry.name] = value
        if broken:
            return None  # the element means something avirt does not implement: judge nothing more
        return self.build(ctx, el, values) if self.build is not None else self.cls(**values)

    def write(self, parent: El, tag: str, obj: T) -> El:
        el = etree.SubElement(parent, tag)
        self._fill(el, obj, fresh=True)
        return el

    def fill(self, el: El, obj: T) -> None:
        """Write ``obj`` into ``el``, which may already have children (they are found, not repeated)."""
        self._fill(el, obj, fresh=False)

    def _fill(self, el: El, obj: T, fresh: bool) -> None:
        values = self.unbuild(obj) if self.unbuild is not None else vars(obj)
        # The elements made during this fill, by path. When ``el`` was made just now, and no entry reaches
        # into a Sub's element or a Many's items, a path that is not here does not exist yet: it is made
        # without a search. Otherwise (None) every path is looked up in the tree, as the table is written.
        made: dict[tuple[str, ...], El] | None = {(): el} if fresh and not self.overlapping else None
        for entry in self.entries:
            value = values.get(entry.name)
            if value is None or value is False or value == []:
                continue
            if isinstance(entry, Field):
                how = entry.how
                if how is _ATTR:
                    _ensure(el, entry.parents, made).set(entry.last[1:], entry.value.write(value))
                elif how is _FLAG:
                    _ensure(el, entry.holder, made)
                else:  # _TEXT or _CHILD: the text of the element at ``holder``
                    _ensure(el, entry.holder, made).text = entry.value.write(value)
            elif isinstance(entry, Sub):
                entry.kind._fill(_ensure(el, entry.path, made), value, fresh=made is not None)
            else:
                target = _ensure(el, entry.path[:-1], made)
                for item in value:
                    entry.kind.write(target, entry.path[-1], item)


@dataclass(frozen=True)
class _ReadPlan:
    """Which entries of a table may have a value in one element, asked of the element.

    A table names every place where its values may sit, and one element fills few of them: reading looks
    at the attributes and children the element has and judges only the entries that these can feed, in
    table order, with those judged whatever the element holds (a required field is missing, a Many with no
    items is an empty list, the element's own text). The others would be None, with nothing to report.
    """

    always: tuple[int, ...]
    attrs: dict[str, int]  # an attribute of the element -> the entry reading it
    child_attrs: dict[str, dict[str, int]]  # a child's tag -> its attribute -> the entry reading it
    inside: dict[str, tuple[int, ...]]  # a child's tag -> the other entries within that child
    nested: bool  # whether any entry lies below the element (else its children need no look)

    @staticmethod
    def of(entries: tuple[Entry, ...]) -> _ReadPlan:
        always: list[int] = []
        attrs: dict[str, int] = {}
        child_attrs: dict[str, dict[str, int]] = {}
        inside: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            path = _element_path(entry)
            optional = not isinstance(entry, Many) and not (isinstance(entry, Field) and entry.required)
            if optional and isinstance(entry, Field) and entry.attr is not None and len(path) <= 1:
                by_name = child_attrs.setdefault(path[0], {}) if path else attrs
                if entry.attr not in by_name:
                    by_name[entry.attr] = index
                    continue
            elif optional and path:
                inside.setdefault(path[0], []).append(index)
                continue
            always.append(index)  # required, a Many, the element's text, or a second reader of an attribute
        return _ReadPlan(tuple(always), attrs, child_attrs, {tag: tuple(i) for tag, i in inside.items()},
                         any(_element_path(entry) for entry in entries))

    def candidates(self, el: El, kids: dict[str, list[El]]) -> list[int]:
        """The indexes of the entries to judge for ``el``, in table order."""
        todo = set(self.always)
        if self.attrs:
            for name in cast("list[str]", el.keys()):  # lxml's stubs allow bytes; names read are str
                index = self.attrs.get(name)
                if index is not None:
                    todo.add(index)
        for tag, found in kids.items():
            inside = self.inside.get(tag)
            if inside is not None:
                todo.update(inside)
            by_name = self.child_attrs.get(tag)
            if by_name is not None:
                for name in cast("list[str]", found[0].keys()):
                    index = by_name.get(name)
                    if index is not None:
                        todo.add(index)
        return sorted(todo)


_NO_CHILDREN: dict[str, list[El]] = {}


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


def _ensure(el: El, path: tuple[str, ...], made: dict[tuple[str, ...], El] | None) -> El:
    """The element at ``path`` below ``el`` (the last child of each tag), made where there is none."""
    if made is not None:
        found = made.get(path)
        if found is None:
            parent = _ensure(el, path[:-1], made)
            made[path] = found = etree.SubElement(parent, path[-1])
        return found
    for tag in path:
        last = next(el.iterchildren(tag, reversed=True), None)
        el = etree.SubElement(el, tag) if last is None else last
    return el


# -- reading ------------------------------------------------------------------------------------------------


class Ctx:
    """Reads one document: collects unsupported XPaths and raises on the first invalid value."""

    def __init__(self, tree: etree._ElementTree) -> None:
        self.tree = tree
        self.unsupported: list[str] = []

    def path(self, el: El, attr: str | None = None) -> str:
        base = self.tree.getpath(el)
        return base if attr is None else f"{base}/@{_attr_name(el, attr)}"

    def invalid(self, el: El, message: str, attr: str | None = None) -> NoReturn:
        raise InvalidXMLError(f"{self.path(el, attr)}: {message}", line_of(el))

    def unsupported_at(self, el: El, attr: str | None = None) -> None:
        self.unsupported.append(self.path(el, attr))

    def intact(self, el: El) -> bool:
        """Whether nothing in ``el`` was refused so far (a rule may then trust what was read from it)."""
        path = self.path(el)
        return not any(item == path or item.startswith(path + "/") for item in self.unsupported)

    def check_structure(self, el: El, spec: Spec) -> None:
        """Record every attribute and child of ``el`` that ``spec`` does not allow (recursively)."""
        if spec.anything:
            return
        attrs, children = spec.attrs, spec.children
        for attr in el.keys():
            if attr not in attrs:
                self.unsupported_at(el, str(attr))
        # Text where none belongs (around the children too) is reported once for the element.
        stray = not spec.text and bool((text := el.text) and not text.isspace())
        seen: set[str] = set()
        for item in el:
            if not stray and (tail := item.tail) and not tail.isspace():
                stray = True
            tag = item.tag
            if not isinstance(tag, str):
                continue
            spec_child = children.get(tag)
            if spec_child is None:
                self.unsupported_at(item)
                continue
            if tag in seen and not spec_child.multiple:
                self.invalid(item, f"<{tag}> may appear only once here")
            seen.add(tag)
            self.check_structure(item, spec_child)
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
