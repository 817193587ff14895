"""Each table's writer, worked out once: the table regrouped into the few kinds of work that writing does.

Why: writing an object by walking its table asks the same questions of every entry on every call - is it
a Field or a Sub, is the value an attribute, of this element or of one below, does its Value write strings
as they are - and answers each with attribute lookups and branches, for every entry, present or not (a
disk's table has thirty entries, a disk fills a dozen). The answers depend on the table alone, so they are
worked out on a kind's first write, into a :class:`Writer`: a short list of *runs*, each one kind of work
with its entries as plain tuples. Most of a table is runs of attributes of one element (the disk's own, its
``<driver>``'s, its ``<target>``'s), and a run is a tight loop that finds its element once, and only if
one of its values is present.

What a writer does is exactly what :meth:`Kind.fill <avirt.config.schema.Kind.fill>` describes: the
entries in table order, None and False skipped, an element on the way made where absent (``Node.at``),
each value written by its Value (``str()`` unless the Value says otherwise) and escaped by ``Node.set``.
Nothing here is generated source: a first write costs a few list appends per entry, which matters to a
command that writes one definition and exits.

Most tables can also be written straight to text (:meth:`Writer.emit`), without a
:class:`~avirt.config.nodes.Node` per element to build and then render: where each element of the table
comes out does not depend on which values are present when each element's entries (and, below it, each of
its children's) are consecutive in the table. Such a table is compiled into a :class:`_Element` plan, the
element's attributes, text and children in the order a Node tree would hold them, and written by walking
the plan. A table whose layout could depend on its values (entries of one element apart, an element that
a nested object and its parent both write into) keeps the Node way, so the text is the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avirt.config.nodes import _ATTR_SPECIAL, _TAGS, Node, attr_value, check_tag, render_into, text_value
from avirt.config.schema import _FLAG, Entry, Field, Int, Kind, Many, Sub, Value

__all__ = ["Writer"]

_special = _ATTR_SPECIAL.search

#: The kinds of work (the first item of a run).
_ATTRS, _TEXT, _FLAG_CHILD, _SUB, _MANY = "attributes", "text", "flag", "sub", "many"

#: One attribute of a run: the entry's name, the attribute's name, and the Value's own writer (None: str()).
_Attr = tuple[str, str, Callable[[Any], str] | None]


@dataclass(frozen=True)
class Writer:
    """A kind's table as runs: ``(_ATTRS, holder, attributes)`` for consecutive attributes of one element
    (``holder`` is its path below the node, () for the node itself), and one run per other entry:
    ``(_TEXT, holder, (name, write))``, ``(_FLAG_CHILD, holder, name)``, ``(_SUB, path, (name, kind))``,
    ``(_MANY, path, (name, kind))``."""

    unbuild: Callable[[Any], dict[str, Any]] | None
    runs: tuple[tuple[str, tuple[str, ...], Any], ...]
    plan: _Element | None  # the table as text to write, where its layout allows (see the module's doc)

    @staticmethod
    def of(kind: Kind[Any]) -> Writer:
        runs: list[tuple[str, tuple[str, ...], Any]] = []
        for entry in kind.entries:
            if isinstance(entry, Field):
                write = None if type(entry.value).write is Value.write else entry.value.write
                if entry.attr is not None:
                    Node("probe").set(entry.attr, "")  # the name held to lxml's rules, as Node.set does first
                    attr: _Attr = (entry.name, entry.attr, write)
                    if runs and runs[-1][0] is _ATTRS and runs[-1][1] == entry.holder:
                        runs[-1] = (_ATTRS, entry.holder, (*runs[-1][2], attr))
                    else:
                        runs.append((_ATTRS, entry.holder, (attr,)))
                elif entry.how is _FLAG:
                    runs.append((_FLAG_CHILD, entry.holder, entry.name))
                else:
                    runs.append((_TEXT, entry.holder, (entry.name, entry.value.write)))
            else:
                runs.append((_SUB if isinstance(entry, Sub) else _MANY, entry.path, (entry.name, entry.kind)))
        return Writer(kind.unbuild, tuple(runs), _plan([(entry, _path(entry)) for entry in kind.entries]))

    def emit(self, tag: str, obj: object, indent: str, out: list[str]) -> None:
        """``obj`` as the element ``tag``, written onto ``out`` as :func:`~avirt.config.nodes.render` would
        write it (``indent``: a newline and the spaces before the element's own line)."""
        if tag not in _TAGS:
            check_tag(tag)
        if self.plan is None:
            node = Node(tag)
            self.fill(node, obj)
            render_into(node, indent, out)
            return
        values = self.unbuild(obj) if self.unbuild is not None else vars(obj)
        _emit(self.plan, values.get, "<" + tag, tag, indent, out, True)

    def fill(self, node: Node, obj: object) -> None:
        values = self.unbuild(obj) if self.unbuild is not None else vars(obj)
        get = values.get
        for how, holder, what in self.runs:
            if how is _ATTRS:
                target = None  # found (or made) once, when the first value of the run is present
                for name, attr, write in what:
                    value = get(name)
                    if value is None or value is False:
                        continue
                    if target is None:
                        target = node.at(holder) if holder else node
                    text = write(value) if write is not None else value if type(value) is str else str(value)
                    if text.isalnum() or not _special(text):  # Node.set's common case, without the call
                        target.attrs[attr] = text
                    else:
                        target.set(attr, text)  # escaped there (or refused, with lxml's error)
                continue
            if how is _FLAG_CHILD:
                value = get(what)
                if value is not None and value is not False:
                    node.at(holder)  # a Flag is its element
                continue
            name, other = what
            value = get(name)
            if value is None or value is False:
                continue
            if how is _TEXT:
                (node.at(holder) if holder else node).set_text(other(value))
            elif how is _SUB:
                other.fill(node.at(holder), value)
            elif value:  # a Many; no element on the way for an empty list
                target = node.at(holder[:-1])
                for item in value:
                    other.write(target, holder[-1], item)


# -- writing text straight from a plan ----------------------------------------------------------------------

#: How a child of a planned element is written (the first item of a block).
_EL, _ONE, _ITEMS = "element", "nested object", "items"


@dataclass(frozen=True)
class _Element:
    """One element of a table, as it is written: its attributes, its text or flags (an element whose
    presence is the value), and its children in order: ``(_EL, tag, _Element)`` for an element of the
    same table, ``(_ONE, tag, (name, kind))`` for a Sub, ``(_ITEMS, tag, (name, kind))`` for a Many's
    items. ``names`` are the entries written in the element or below it (a child element that none of them
    has a value for is not written: most are absent, and are passed over without a call)."""

    attrs: tuple[tuple[str, str, Callable[[Any], str] | None], ...]  # (entry name, attribute, write)
    text: tuple[str, Callable[[Any], str]] | None
    flags: tuple[str, ...]
    blocks: tuple[tuple[str, str, Any], ...]
    names: tuple[str, ...]


def _writer(value: Value) -> Callable[[Any], str] | None:
    """How a value is written as text: None for ``str()``; an integer in hex by its format's ``%`` (in C,
    as :meth:`Int.write <avirt.config.schema.Int.write>` does it, without a Python call)."""
    if isinstance(value, Int):
        return value.hex_form.__mod__ if value.hex_width else None
    return None if type(value).write is Value.write else value.write


def _path(entry: Entry) -> tuple[str, ...]:
    """Where an entry writes, below its table's element (a Field's holder; a Sub's or Many's path)."""
    return entry.holder if isinstance(entry, Field) else entry.path


def _plan(items: list[tuple[Entry, tuple[str, ...]]]) -> _Element | None:
    """The element that ``items`` (each entry with its path below this element) write, or None when where
    its children come out would depend on which values are present."""
    attrs: list[tuple[str, str, Callable[[Any], str] | None]] = []
    text: tuple[str, Callable[[Any], str]] | None = None
    flags: list[str] = []
    groups: list[tuple[str, list[tuple[Entry, tuple[str, ...]]]]] = []  # consecutive entries per child tag
    for entry, rest in items:
        if not rest:  # this element's own value (a Field: a Sub or Many always has a path)
            assert isinstance(entry, Field)
            write = _writer(entry.value)
            if entry.attr is not None:
                attrs.append((entry.name, entry.attr, write))
            elif entry.how is _FLAG:
                flags.append(entry.name)
            else:
                text = (entry.name, entry.value.write)
            continue
        if groups and groups[-1][0] == rest[0]:
            groups[-1][1].append((entry, rest))
        elif any(tag == rest[0] for tag, _ in groups):
            return None  # this child's entries are apart: it comes out where its first present value is
        else:
            groups.append((rest[0], [(entry, rest)]))
    blocks: list[tuple[str, str, Any]] = []
    for tag, group in groups:
        check_tag(tag)
        nested = [e for e, r in group if len(r) == 1 and isinstance(e, Sub | Many)]
        if nested and len(group) > 1:
            return None  # a nested object's element that other entries write into too
        if nested:
            only = nested[0]
            assert isinstance(only, Sub | Many)
            blocks.append((_ONE if isinstance(only, Sub) else _ITEMS, tag, (only.name, only.kind)))
            continue
        inner = _plan([(e, r[1:]) for e, r in group])
        if inner is None:
            return None
        blocks.append((_EL, tag, inner))
    names = [entry.name for entry, _ in items]
    return _Element(tuple(attrs), text, tuple(flags), tuple(blocks), tuple(dict.fromkeys(names)))


def _emit(plan: _Element, get: Callable[[str], Any], start: str, tag: str, indent: str, out: list[str],
          always: bool) -> bool:
    """Write the element ``tag`` (``start`` is ``"<" + tag``) onto ``out``; False (with nothing written)
    when none of its values is present and it is not ``always`` written."""
    mark = len(out)
    out.append(start)
    for name, attr, write in plan.attrs:
        value = get(name)
        if value is None or value is False:
            continue
        text = write(value) if write is not None else value if type(value) is str else str(value)
        if not text.isalnum() and _special(text):  # attr_value's common case, without the call
            text = attr_value(text)
        out.append(f' {attr}="{text}"')
    present = len(out) > mark + 1
    if plan.text is not None:
        name, write_text = plan.text
        value = get(name)
        if value is not None and value is not False:
            out.append(f">{text_value(write_text(value))}</{tag}>")
            return True
    for name in plan.flags:
        value = get(name)
        if value is not None and value is not False:
            present = True
    if plan.blocks:
        out.append(">")
        children = len(out)
        inner = indent + "  "
        for how, child, what in plan.blocks:
            if how is _EL:
                for name in what.names:
                    value = get(name)
                    if value is not None and value is not False:
                        break
                else:
                    continue  # nothing to write in it
                out.append(inner)
                if not _emit(what, get, "<" + child, child, inner, out, False):
                    out.pop()  # the indent of the child that was not written
                continue
            name, kind = what
            value = get(name)
            if value is None or value is False:
                continue
            writer = kind.writer or kind.writer_of()
            if how is _ONE:
                out.append(inner)
                writer.emit(child, value, inner, out)
            else:
                for item in value:
                    out.append(inner)
                    writer.emit(child, item, inner, out)
        if len(out) > children:
            out.append(f"{indent}</{tag}>")
            return True
        out.pop()  # the ">" of an element that has no children after all
    if not present and not always:
        del out[mark:]
        return False
    out.append("/>")
    return True
