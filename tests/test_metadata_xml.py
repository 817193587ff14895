"""avirt.config.metadata: metadata elements by namespace, as pure functions (no driver, no QEMU)."""

from __future__ import annotations

import pytest

from avirt.config import domain_to_xml, parse_domain_xml
from avirt.config.metadata import check_prefix, check_uri, element, find, namespace_of, replace
from avirt.errors import InvalidXMLError

APP = "http://app/1"


def test_the_element_is_put_in_the_namespace_under_the_prefix() -> None:
    assert element(APP, "<app><owner>ops</owner></app>", "app") == (
        '<app:app xmlns:app="http://app/1"><app:owner>ops</app:owner></app:app>')


@pytest.mark.parametrize("written", [
    "<o:app xmlns:o='http://old'><o:owner>ops</o:owner></o:app>",   # another namespace, prefixed
    "<app xmlns='http://old'><owner>ops</owner></app>",              # another namespace, by default
    "<x:app xmlns:x='http://app/1'><x:owner>ops</x:owner></x:app>",  # the same one, another prefix
    "<app:app xmlns:app='http://app/1'><owner>ops</owner></app:app>",  # partly qualified
])
def test_whatever_namespace_the_caller_wrote(written: str) -> None:
    assert element(APP, written, "app") == (
        '<app:app xmlns:app="http://app/1"><app:owner>ops</app:owner></app:app>')


def test_third_namespaces_are_kept_and_attributes_follow_xml_rules() -> None:
    written = ("<o:app xmlns:o='http://old' xmlns:f='http://f' o:level='1' size='2'>"
               "<o:x f:y='3'/><f:z><w/></f:z></o:app>")
    assert element(APP, written, "app") == (
        '<app:app xmlns:app="http://app/1" xmlns:f="http://f" app:level="1" size="2">'
        '<app:x f:y="3"/><f:z><app:w/></f:z></app:app>')


def test_a_prefix_the_caller_used_for_another_namespace_does_not_capture_it() -> None:
    stored = element(APP, "<app xmlns:app='http://clash'><app:x/></app>", "app")
    assert namespace_of(stored) == APP
    assert find([stored], APP) is not None
    inner = find([stored], APP)
    assert inner is not None and "http://clash" in inner  # <x> stays in its own namespace


def test_comments_and_processing_instructions_go_whitespace_stays() -> None:
    written = "<?xml version='1.0'?>\n<!-- top --><app>\n  <!-- inner --><?pi x?>\n  <a>1</a>\n</app>"
    assert element(APP, written, "p") == '<p:app xmlns:p="http://app/1">\n  \n  <p:a>1</p:a>\n</p:app>'


def test_find_gives_back_what_was_set() -> None:
    for written in ("<app><owner>ops</owner></app>", "<app/>", '<cfg level="2">text<b/>tail</cfg>',
                    '<app note="café">naïve ☃ &amp; &lt;x&gt;</app>',
                    '<app xmlns:f="http://f"><f:z a="1"/></app>'):
        assert find([element(APP, written, "q")], APP) == written
    assert find([element(APP, "<app/>", "q")], "http://other") is None
    assert find([], APP) is None


def test_find_unqualifies_attributes_unless_a_plain_one_has_the_name() -> None:
    stored = '<a:app xmlns:a="http://app/1" a:x="1" a:y="2" y="3"/>'
    assert find([stored], APP) == '<app xmlns:a="http://app/1" x="1" a:y="2" y="3"/>'


def test_replace_in_place_append_and_remove() -> None:
    one, two = element("urn:one", "<a>1</a>", "o"), element("urn:two", "<b/>", "t")
    items = [one, two]
    new_one = element("urn:one", "<a>new</a>", "o")
    assert replace(items, "urn:one", new_one) == [new_one, two]
    three = element("urn:three", "<c/>", "c")
    assert replace(items, "urn:three", three) == [one, two, three]
    assert replace(items, "urn:one", None) == [two]
    assert replace(items, "urn:nothing", None) == [one, two]
    assert items == [one, two]  # the input is left as it was
    with pytest.raises(ValueError, match="not in namespace"):
        replace(items, "urn:two", new_one)


def test_stored_elements_survive_the_domain_xml_unchanged() -> None:
    """What is stored is what the domain XML parser keeps: a definition re-read (a controller restart,
    live.xml) holds exactly the same text."""
    items = [element(APP, "<app>\n  <owner a='1'>ops</owner>\n</app>", "app"),
             element("urn:two", "<o:b xmlns:o='urn:old' xmlns:f='http://f'><f:c/></o:b>", "t")]
    cfg = parse_domain_xml("<domain type='qemu'><name>m</name><memory>65536</memory>"
                           "<os><type>hvm</type></os></domain>")
    cfg.metadata = items
    again = parse_domain_xml(domain_to_xml(cfg))
    assert again.metadata == items
    assert parse_domain_xml(domain_to_xml(again)).metadata == items


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("<a/><b/>", "one element, not 2"),
    ("<a/>\n<b/>\n<c/>", "one element, not 3"),
    ("<a>", "malformed"),
    ("<a></b>", "malformed"),
    ("text", "malformed"),
    ("<a/>text", "malformed"),
    ("<a>&undefined;</a>", "malformed"),
    ("<!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>", "DOCTYPE"),
    ("<p:a/>", "malformed"),  # an undeclared prefix
    ("<a>\ud800</a>", "Unicode"),
    # Non-ASCII names: the domain XML parser could not re-read them (text and values are fine).
    ("<a><é/></a>", "ASCII"),
    ("<a é='1'/>", "ASCII"),
])
def test_bad_xml_is_an_invalid_xml_error(text: str, message: str) -> None:
    with pytest.raises(InvalidXMLError, match=message):
        element(APP, text, "p")


def test_an_error_names_the_line() -> None:
    with pytest.raises(InvalidXMLError) as caught:
        element(APP, "<a>\n<b>\n</a>", "p")
    assert caught.value.line == 3


@pytest.mark.parametrize("prefix", ["", "1a", "a:b", "a b", "xml", "XMLNS", "-a", "é"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        check_prefix(prefix)
    with pytest.raises(ValueError):
        element(APP, "<a/>", prefix)


@pytest.mark.parametrize("prefix", ["a", "app", "a1", "_x", "a-b", "a.b", "A"])
def test_good_prefixes(prefix: str) -> None:
    check_prefix(prefix)
    assert namespace_of(element(APP, "<a/>", prefix)) == APP


@pytest.mark.parametrize("uri", ["", "   ", "a b", "<>", "http://www.w3.org/XML/1998/namespace",
                                 "http://www.w3.org/2000/xmlns/"])
def test_bad_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        check_uri(uri)
    with pytest.raises(ValueError):
        element(uri, "<a/>", "p")
    with pytest.raises(ValueError):
        find([], uri)
    with pytest.raises(ValueError):
        replace([], uri, None)


@pytest.mark.parametrize("uri", ["http://app/1", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "app"])
def test_good_uris(uri: str) -> None:
    check_uri(uri)
