"""The elements of ``<metadata>``, by namespace: libvirt's virDomainGetMetadata/SetMetadata as pure functions.

A domain's ``<metadata>`` holds at most one element per XML namespace (``DomainConfig.metadata``, each
element as text). Applications own a namespace each and read or replace only their own element::

    stored = element("http://app/1", "<app><owner>ops</owner></app>", prefix="app")
    # '<app:app xmlns:app="http://app/1"><app:owner>ops</app:owner></app:app>'
    items = replace(cfg.metadata, "http://app/1", stored)    # a new list; None as the element removes it
    find(items, "http://app/1")                              # '<app><owner>ops</owner></app>'

As in libvirt, the caller writes the element without caring for namespaces: :func:`element` puts it in
the namespace ``uri`` under ``prefix``, and :func:`find` gives it back the same way, with that namespace
taken off again (so what is set is what is read). Elements the caller put in a third namespace stay in it.

Errors: :class:`~avirt.errors.InvalidXMLError` for text that is not one well-formed element,
``InvalidArgumentError`` (a ``ValueError``) for a bad ``uri`` or ``prefix``. Nothing here raises lxml's
own exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lxml import etree

from avirt.errors import InvalidArgumentError, InvalidXMLError

#: Namespaces that XML itself owns: no application's metadata can live in them.
_RESERVED = frozenset({"http://www.w3.org/XML/1998/namespace", "http://www.w3.org/2000/xmlns/"})


def check_uri(uri: str) -> None:
    """A namespace URI that can name a metadata element (``InvalidArgumentError`` otherwise)."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgumentError("a metadata namespace URI must be a non-empty string")
    if uri in _RESERVED:
        raise InvalidArgumentError(f"{uri!r} is reserved by XML and cannot hold metadata")
    try:
        etree.Element(f"{{{uri}}}x")
    except ValueError:
        raise InvalidArgumentError(f"{uri!r} is not a valid XML namespace URI") from None


def check_prefix(prefix: str) -> None:
    """A namespace prefix: an XML name without a colon, not ``xml``/``xmlns`` (``InvalidArgumentError``)."""
    if not isinstance(prefix, str) or prefix.lower() in ("xml", "xmlns"):
        raise InvalidArgumentError(f"{prefix!r} cannot be a namespace prefix")
    if not prefix.isascii():
        raise InvalidArgumentError(f"{prefix!r}: a metadata namespace prefix must be ASCII")
    try:
        etree.Element("x", nsmap={prefix: "urn:avirt:prefix-check"})
    except ValueError:
        raise InvalidArgumentError(
            f"{prefix!r} is not an XML name, so it cannot be a namespace prefix") from None


def namespace_of(item: str) -> str | None:
    """The namespace of a stored metadata element."""
    return etree.QName(etree.fromstring(item)).namespace


def find(items: Sequence[str], uri: str) -> str | None:
    """The element in namespace ``uri``, with that namespace taken off (libvirt's form); None if absent."""
    check_uri(uri)
    for item in items:
        root = etree.fromstring(item)
        if etree.QName(root).namespace == uri:
            return _text(_unbind(root, uri))
    return None


def element(uri: str, xml: str, prefix: str) -> str:
    """The element to store for ``xml``: one element, moved into namespace ``uri`` under ``prefix``.

    The root element, and every element or attribute written unqualified, in the root's own namespace or
    already in ``uri``, end up in ``uri``; unqualified attributes stay unqualified (XML's rule). Elements
    and attributes in any other namespace keep it. Comments and processing instructions are dropped, as
    the domain XML parser drops them.
    """
    check_uri(uri)
    check_prefix(prefix)
    source = _parse_one(xml)
    _check_names(source)
    ours = {None, etree.QName(source).namespace, uri}
    root = _copy(source, None, ours, uri, prefix)
    etree.cleanup_namespaces(root)
    return _text(root)


def replace(items: Sequence[str], uri: str, new: str | None) -> list[str]:
    """``items`` with the element in namespace ``uri`` replaced by ``new`` (an :func:`element` result), in
    its place, or added at the end; with ``new=None``, removed. The input list is left as it was."""
    check_uri(uri)
    if new is not None and namespace_of(new) != uri:
        raise InvalidArgumentError(f"the new element is not in namespace {uri!r}")
    kept: list[str] = []
    placed = False
    for item in items:
        if namespace_of(item) != uri:
            kept.append(item)
        elif new is not None and not placed:
            kept.append(new)
            placed = True
    if new is not None and not placed:
        kept.append(new)
    return kept


# -- helpers ------------------------------------------------------------------------------------------------


def _parse_one(xml: str) -> etree._Element:
    """``xml`` as exactly one element; InvalidXMLError (with the line) for anything else."""
    if not isinstance(xml, str):
        raise TypeError(f"metadata XML must be a str, not {type(xml).__name__}")
    if not xml.strip():
        raise InvalidXMLError("metadata XML is empty: one element is needed")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             remove_comments=True, remove_pis=True, encoding="utf-8")
    try:
        data = xml.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidXMLError(f"metadata XML is not valid Unicode: {exc.reason}") from exc
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        roots = _count_roots(data)
        if roots is not None and roots > 1:
            raise InvalidXMLError(f"metadata XML must be one element, not {roots}") from exc
        raise InvalidXMLError(f"malformed metadata XML: {exc.msg}", exc.lineno) from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise InvalidXMLError("DOCTYPE declarations are not accepted in metadata", 1)
    return root


def _check_names(root: etree._Element) -> None:
    """Element and attribute names must be ASCII: the domain XML parser re-reads each metadata element
    through an ASCII serialisation, where other names cannot be written (text and values can)."""
    for el in root.iter(etree.Element):
        for name in (el.tag, *el.attrib):
            if not str(name).isascii():
                line = el.sourceline
                raise InvalidXMLError(f"metadata names must be ASCII, not {etree.QName(name).localname!r}",
                                      line if isinstance(line, int) else None)


def _count_roots(data: bytes) -> int | None:
    """How many top-level elements a text that failed to parse as a document holds (None: not that)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=False)
    try:
        wrapper = etree.fromstring(b"<wrapper>" + data + b"</wrapper>", parser)
    except etree.XMLSyntaxError:
        return None
    return sum(1 for child in wrapper if isinstance(child.tag, str))


def _copy(source: etree._Element, parent: etree._Element | None, ours: set[str | None], uri: str,
          prefix: str) -> etree._Element:
    """A copy of ``source`` (and below) with our elements and attributes moved into ``uri``."""
    qname = etree.QName(source)
    tag = f"{{{uri}}}{qname.localname}" if qname.namespace in ours else qname.text
    attrib: dict[str, str] = {}
    for key, value in source.attrib.items():
        name = etree.QName(key)
        attrib[f"{{{uri}}}{name.localname}" if name.namespace in ours - {None} else name.text] = str(value)
    # Declarations of third namespaces travel with the element that made them; ours are replaced. (A
    # default namespace has the prefix None, which lxml's type hints do not admit: hence Any.)
    inherited = parent.nsmap if parent is not None else {}
    declared: dict[Any, str] = {p: u for p, u in source.nsmap.items()
                                if u not in ours and p != prefix and inherited.get(p) != u}
    if parent is None:
        copy = etree.Element(tag, attrib, nsmap={prefix: uri, **declared})
    else:
        copy = etree.SubElement(parent, tag, attrib, nsmap=declared)
    copy.text, copy.tail = source.text, source.tail if parent is not None else None
    for child in source:
        _copy(child, copy, ours, uri, prefix)
    return copy


def _unbind(root: etree._Element, uri: str) -> etree._Element:
    """A copy of ``root`` whose elements (and attributes, where no unqualified one has the name) in
    ``uri`` are unqualified, and which no longer declares ``uri``."""
    copy = etree.fromstring(etree.tostring(root, encoding="utf-8"))
    for el in copy.iter(etree.Element):
        qname = etree.QName(el)
        if qname.namespace == uri:
            el.tag = qname.localname
        attributes = list(el.attrib.items())
        if any(etree.QName(key).namespace == uri for key, _ in attributes):
            plain = {key for key, _ in attributes if "}" not in key}
            el.attrib.clear()
            for key, value in attributes:
                name = etree.QName(key)
                unbound = name.namespace == uri and name.localname not in plain
                el.set(name.localname if unbound else key, value)
    etree.cleanup_namespaces(copy)
    return copy


def _text(root: etree._Element) -> str:
    """One element as text, the way the domain XML parser keeps a metadata element (a fixed point)."""
    copy = etree.fromstring(etree.tostring(root, encoding="utf-8"))
    copy.tail = None
    etree.cleanup_namespaces(copy)
    return etree.tostring(copy, encoding="unicode")
