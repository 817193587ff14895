"""The tree a definition is written into, and its text: what writing XML costs, kept small.

Writing builds plain :class:`Node` objects rather than lxml elements, because each lxml call crosses into
C and checks its arguments (a microsecond or so per element and per attribute); plain objects rendered in
one pass (:func:`render`) undercut that, character for character as lxml's pretty printer writes. What
lxml would refuse (a control character, a lone surrogate, a name that is not XML) is refused here with
lxml's own error, at the moment the value is set: each distinct name is put to lxml once per process.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree

__all__ = ["Node", "attr_value", "render", "render_into", "text_value"]


class Node:
    """An element being written: its tag, attributes in the order they were set, and text or children.

    Writing builds these rather than lxml elements because each lxml call crosses into C and checks its
    arguments (a microsecond or so per element and per attribute), which plain objects rendered in one pass
    undercut. :func:`render` writes the tree out character for character as lxml's pretty printer does.
    Each value is held to lxml's rules and escaped as it is set, so a value lxml refuses (a control
    character, a lone surrogate, not a string) fails here with lxml's own error, at the same point.
    """

    __slots__ = ("attrs", "children", "content", "raw", "tag")

    def __init__(self, tag: str, attrs: dict[str, str] | None = None, text: str | None = None) -> None:
        if tag not in _TAGS:
            _check_name(tag, _TAGS, lambda: etree.Element(tag))
        self.tag = tag
        self.attrs: dict[str, str] = {}  # name -> the value as written out (escaped)
        self.children: list[Node] = []
        self.content: str | None = None  # the text as written out (escaped); None: no text
        self.raw: str | None = None  # the whole element, already serialised by lxml: written as it is
        if attrs:
            for name, value in attrs.items():
                self.set(name, value)
        if text is not None:
            self.set_text(text)

    def set(self, name: str, value: str) -> None:
        if name not in _ATTRS:
            check_attr_name(name)
        self.attrs[name] = attr_value(value)

    def set_text(self, value: str) -> None:
        self.content = text_value(value)

    def add(self, tag: str, attrs: dict[str, str] | None = None, text: str | None = None) -> Node:
        """A new last child."""
        child = Node(tag, attrs, text)
        self.children.append(child)
        return child

    def at(self, path: tuple[str, ...]) -> Node:
        """The element at ``path`` (the last child of each tag on the way), made where there is none."""
        node = self
        for tag in path:
            for child in reversed(node.children):
                if child.tag == tag:
                    node = child
                    break
            else:
                node = node.add(tag)
        return node

    def find(self, tag: str) -> Node | None:
        """The first child ``tag``."""
        return next((child for child in self.children if child.tag == tag), None)

    def add_raw(self, tag: str, text: str) -> None:
        """A new last child ``tag`` already written out (:meth:`Kind.text <avirt.config.schema.Kind.text>`),
        rendered as it is."""
        child = Node(tag)
        child.raw = text
        self.children.append(child)

    def insert(self, index: int, child: Node) -> None:
        """``child`` at ``index`` among the children (as lxml's ``insert``)."""
        self.children.insert(index, child)


#: Names lxml accepted as element tags / attribute names: each is checked with lxml once per process.
_TAGS: set[str] = set()
_ATTRS: set[str] = set()


def check_tag(tag: str) -> None:
    """Raise lxml's error for a tag that is not an XML name (each name is put to lxml once)."""
    if tag not in _TAGS:
        _check_name(tag, _TAGS, lambda: etree.Element(tag))


def check_attr_name(name: str) -> None:
    """Raise lxml's error for an attribute name that is not an XML name (each is put to lxml once)."""
    if name not in _ATTRS:
        _check_name(name, _ATTRS, lambda: etree.Element("probe").set(name, ""))


def attr_value(value: str) -> str:
    """``value`` as written in an attribute (escaped), or lxml's error for a value it refuses."""
    if type(value) is not str or (not value.isalnum() and _ATTR_SPECIAL.search(value)):  # isalnum: cheap
        value = _ATTR_SPECIAL.sub(_escape, _as_lxml_stores(value, "value"))
    return value


def text_value(value: str) -> str:
    """``value`` as written as an element's text (escaped), or lxml's error for a value it refuses."""
    if type(value) is not str or (not value.isalnum() and _TEXT_SPECIAL.search(value)):
        value = _TEXT_SPECIAL.sub(_escape, _as_lxml_stores(value, None))
    return value


def _check_name(name: str, known: set[str], check: Callable[[], object]) -> None:
    check()  # raises lxml's error for a name that is not an XML name
    if name.startswith("{"):
        raise ValueError(f"{name!r}: namespaced names are not written here")  # rendering writes plain names
    known.add(name)


# What needs a second look in a value: what libxml2 escapes (in attribute values also quotes and the
# whitespace that parsing would normalise away), and what lxml refuses (control characters, surrogates...).
_NOT_XML = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_ATTR_SPECIAL = re.compile(f'[&<>"\n\r\t{_NOT_XML}]')
_TEXT_SPECIAL = re.compile(f"[&<>\r{_NOT_XML}]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES[match[0]]


def _as_lxml_stores(value: str, attr: str | None) -> str:
    """``value`` as lxml stores it (bytes, say, decoded), or the error lxml raises for it."""
    probe = etree.Element("probe")
    if attr is not None:
        probe.set(attr, value)
        return probe.get(attr, "")
    probe.text = value
    return probe.text or ""


def render(root: Node) -> str:
    """``root`` as ``etree.tostring(el, encoding="unicode", pretty_print=True)`` writes its lxml twin after
    ``etree.indent(el, space="  ")``: each child on a line of its own, two spaces deeper than its parent,
    attributes in double quotes. No element has both text and children (a table that would write one is
    refused when it is made); a ``raw`` element is written as it is.
    """
    out: list[str] = []
    render_into(root, "\n", out)
    out.append("\n")
    return "".join(out)


def render_into(node: Node, indent: str, out: list[str]) -> None:
    """``node``'s text onto ``out``; ``indent`` is a newline and the spaces before the node's own line."""
    if node.raw is not None:
        out.append(node.raw)
        return
    out.append("<" + node.tag)
    for name, value in node.attrs.items():
        out.append(f' {name}="{value}"')
    if node.children:
        if node.content is not None:
            raise ValueError(f"<{node.tag}> has both text and children")  # see render()
        out.append(">")
        inner = indent + "  "
        for child in node.children:
            out.append(inner)
            render_into(child, inner, out)
        out.append(f"{indent}</{node.tag}>")
    elif node.content is None:
        out.append("/>")
    else:
        out.append(f">{node.content}</{node.tag}>")
