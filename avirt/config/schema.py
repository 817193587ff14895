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
from typing import Any, Generic, NoReturn, TypeVar

from lxml import etree

from avirt.errors import InvalidXMLError

__all__ = [
    "ANY", "Choice", "CpuSet", "Ctx", "Field", "Flag", "Int", "Kind", "Many", "Spec", "Sub", "Text", "child",
    "cpus_of", "kib", "line_of", "text_of", "unique",
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

    def read(self, ctx: Ctx, el: El, attr: str | None, raw: str) -> object:
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
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


def cpus_of(text: str) -> set[int]:
    """The CPUs a libvirt cpuset names (empty when the text is not one)."""
    if not re.fullmatch(r"\^?[0-9]+(-[0-9]+)?(,\^?[0-9]+(-[0-9]+)?)*", text.replace(" ", "")):
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


@dataclass(frozen=True)
class Field:
    name: str
    at: str
    value: Value
    required: bool = False


@dataclass(frozen=True)
class Sub:
    """A nested object in a child element (``<address .../>``); None when the child is absent."""

    name: str
    at: str
    kind: Kind[Any]


@dataclass(frozen=True)
class Many:
    """Repeated nested objects (``<timer>`` under ``<clock>``, ``bios/entry`` under ``<sysinfo>``)."""

    name: str
    at: str
    kind: Kind[Any]


Entry = Field | Sub | Many


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

    def spec(self) -> Spec:
        root = Spec()
        for entry in self.entries:
            *parents, last = entry.at.split("/")
            spec = root
            for tag in parents:
                spec = spec.child(tag)
            if isinstance(entry, Field):
                if last.startswith("@"):
                    spec.attrs.add(last[1:])
                elif last == ".":
                    spec.text = True
                elif isinstance(entry.value, Flag):
                    spec.child(last)
                else:
                    spec.child(last).text = True
            else:
                child = entry.kind.spec()
                child.multiple = isinstance(entry, Many)
                spec.child(last).merge(child)
        for path, ignored in self.ignore.items():
            *parents, last = path.split("/")
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
        for entry in self.entries:
            if isinstance(entry, Field):
                value = ctx.field(el, entry)
                broken |= value is None and ctx.last_was_unsupported
            elif isinstance(entry, Sub):
                child = _find(el, entry.at)
                value = None if child is None else entry.kind.read(ctx, child)
            else:
                value = [obj for c in _findall(el, entry.at) if (obj := entry.kind.read(ctx, c)) is not None]
            if value is not None:
                values[entry.name] = value
        if broken:
            return None  # the element means something avirt does not implement: judge nothing more
        return self.build(ctx, el, values) if self.build is not None else self.cls(**values)

    def write(self, parent: El, tag: str, obj: T) -> El:
        el = etree.SubElement(parent, tag)
        self.fill(el, obj)
        return el

    def fill(self, el: El, obj: T) -> None:
        values = self.unbuild(obj) if self.unbuild is not None else vars(obj)
        for entry in self.entries:
            value = values.get(entry.name)
            if value is None or value is False or value == []:
                continue
            *parents, last = entry.at.split("/")
            target = el
            for tag in parents:
                target = _ensure(target, tag)
            if isinstance(entry, Field):
                if last.startswith("@"):
                    target.set(last[1:], entry.value.write(value))
                elif last == ".":
                    target.text = entry.value.write(value)
                elif isinstance(entry.value, Flag):
                    _ensure(target, last)
                else:
                    _ensure(target, last).text = entry.value.write(value)
            elif isinstance(entry, Sub):
                entry.kind.fill(_ensure(target, last), value)
            else:
                for item in value:
                    entry.kind.write(target, last, item)


def _find(el: El, path: str) -> El | None:
    return el.find(path)


def _findall(el: El, path: str) -> list[El]:
    return list(el.findall(path))


def _ensure(parent: El, tag: str) -> El:
    """The last child ``tag`` of ``parent``, created at the end when there is none."""
    found = parent.findall(tag)
    return found[-1] if found else etree.SubElement(parent, tag)


# -- reading ------------------------------------------------------------------------------------------------


class Ctx:
    """Reads one document: collects unsupported XPaths and raises on the first invalid value."""

    def __init__(self, tree: etree._ElementTree) -> None:
        self.tree = tree
        self.unsupported: list[str] = []
        self.last_was_unsupported = False

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
        for attr in el.attrib:
            if str(attr) not in spec.attrs:
                self.unsupported_at(el, str(attr))
        stray_text = [el.text] if not spec.text else []
        seen: set[str] = set()
        for child in el:
            stray_text.append(child.tail)
            tag = child.tag
            if not isinstance(tag, str):
                continue
            spec_child = spec.children.get(tag)
            if spec_child is None:
                self.unsupported_at(child)
                continue
            if tag in seen and not spec_child.multiple:
                self.invalid(child, f"<{tag}> may appear only once here")
            seen.add(tag)
            self.check_structure(child, spec_child)
        if any(t and t.strip() for t in stray_text):
            self.unsupported.append(f"{self.path(el)}/text()")

    def field(self, el: El, entry: Field) -> object:
        """The value of one table field of ``el``: None when absent or unsupported."""
        self.last_was_unsupported = False
        *parents, last = entry.at.split("/")
        target: El | None = el
        for tag in parents:
            target = None if target is None else target.find(tag)
        if target is None:
            if entry.required:
                self.invalid(el, f"<{'/'.join(parents)}> is required")
            return None
        attr: str | None = None
        if last.startswith("@"):
            attr = last[1:]
            raw = target.get(attr)
        elif last == ".":
            raw = text_of(target)
        else:
            child = target.find(last)
            if isinstance(entry.value, Flag):
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
        before = len(self.unsupported)
        value = entry.value.read(self, target, attr, raw)
        self.last_was_unsupported = len(self.unsupported) > before
        return value

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
    found = el.find(tag)
    return el if found is None else found


def line_of(el: El) -> int | None:
    line = el.sourceline
    return line if isinstance(line, int) else None


def text_of(el: El) -> str:
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
