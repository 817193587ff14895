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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avirt.config.nodes import _ATTR_SPECIAL, Node
from avirt.config.schema import _FLAG, Field, Kind, Sub, Value

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
        return Writer(kind.unbuild, tuple(runs))

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
