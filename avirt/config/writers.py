"""Each table's writer, compiled once: a function made from the table, as dataclasses makes ``__init__``.

Why: writing an object by walking its table asks the same questions of every entry on every call - is it
a Field or a Sub, is the value an attribute, of this element or of one below, does its Value write strings
as they are - and answers each with attribute lookups and branches, for every entry, present or not (a
disk's table has thirty, a disk fills a dozen). The answers depend on the table alone, so they are worked
out once, on a kind's first write, into straight-line source with the names, paths and writers as
constants::

    def fill(node, obj):
        values = unbuild(obj)
        get = values.get
        v = get('format')
        if v is not None and v is not False:
            s = v if type(v) is str else str(v)
            target = node.at(('driver',))
            if s.isalnum() or not special(s):
                target.attrs['type'] = s
            else:
                target.set('type', s)
        ...

What the function does is exactly what :meth:`Kind.fill <avirt.config.schema.Kind.fill>` describes: the
entries in table order, None and False skipped, an element on the way made where absent (``Node.at``),
a value escaped as :meth:`Node.set <avirt.config.schema.Node.set>` does (a value that needs escaping, or
that lxml would refuse, goes through ``Node.set`` itself, so its error is lxml's, at the same point). The
attribute names are checked against lxml's rules when the function is made, which is what ``Node.set``
would do on their first use. :func:`fill_source` shows the source made for a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avirt.config.schema import _ATTR_SPECIAL, _FLAG, Field, Kind, Node, Sub, Value

__all__ = ["compile_fill", "fill_source"]

Filler = Callable[[Node, Any], None]


def compile_fill(kind: Kind[Any]) -> Filler:
    """The function that writes an object of ``kind`` into a node (see the module's docstring)."""
    source, env = _source(kind)
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<fill {getattr(kind.cls, '__name__', kind.cls)}>", "exec"), env, namespace)
    filler: Filler = namespace["fill"]
    return filler


def fill_source(kind: Kind[Any]) -> str:
    """The source :func:`compile_fill` makes for ``kind`` (to read, or to debug a table)."""
    return _source(kind)[0]


def _source(kind: Kind[Any]) -> tuple[str, dict[str, Any]]:
    env: dict[str, Any] = {"special": _ATTR_SPECIAL.search, "unbuild": kind.unbuild}
    lines = ["def fill(node, obj):",
             "    values = unbuild(obj)" if kind.unbuild is not None else "    values = vars(obj)",
             "    get = values.get"]
    for index, entry in enumerate(kind.entries):
        lines += [f"    v = get({entry.name!r})", "    if v is not None and v is not False:"]
        if isinstance(entry, Field):
            if type(entry.value).write is Value.write:  # str(): a string is written as it is
                convert = "v if type(v) is str else str(v)"
            else:
                env[f"write{index}"] = entry.value.write
                convert = f"write{index}(v)"
            target = f"node.at({entry.holder!r})" if entry.holder else "node"
            if entry.attr is not None:
                Node("probe").set(entry.attr, "")  # lxml's rules for the name, as on its first use
                lines += [f"        s = {convert}",
                          f"        target = {target}",
                          "        if s.isalnum() or not special(s):",
                          f"            target.attrs[{entry.attr!r}] = s",
                          "        else:",
                          f"            target.set({entry.attr!r}, s)"]
            elif entry.how is _FLAG:
                lines.append(f"        {target}")  # a Flag is its element
            else:
                lines.append(f"        {target}.set_text({convert})")
        else:
            env[f"fill{index}"] = entry.kind.writer()  # nested kinds' writers, made first
            if isinstance(entry, Sub):
                lines.append(f"        fill{index}(node.at({entry.path!r}), v)")
            else:  # Many: no element on the way for an empty list
                lines += ["        if v:",
                          f"            target = node.at({entry.path[:-1]!r})",
                          "            for item in v:",
                          f"                fill{index}(target.add({entry.path[-1]!r}), item)"]
    return "\n".join(lines) + "\n", env
