"""What the fuzz tests are made of: hostile inputs, a guard for each call, and a picture of a state directory.

The contract the fuzz tests check is the one every caller relies on: a call either succeeds or raises an
:class:`~avirt.errors.AvirtError` subclass; it never raises anything else, never hangs, and a refused
call leaves the state directory exactly as it was. Inputs are mostly *mutations of real definitions*
(the corpus of virt-install and dumpxml output), because a random string almost never gets past the
XML parser, while a real document with one element dropped, duplicated or renamed, or one value
replaced by something hostile, reaches every table and rule of the config layer.

Hostile values: empty and blank strings, huge, negative and fractional numbers, control characters
and NUL bytes (which XML cannot carry at all), lone surrogates (what ``os.fsdecode`` makes of bytes
that are not UTF-8), path tricks (``/``, ``..``, 300 characters), and arbitrary generated text.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from lxml import etree

from avirt.errors import AvirtError
from tests import xmls

#: A budget, not a search: reproducible in CI (derandomized, no example database) and short.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
#: The richest input (mutated definitions) on the cheapest call gets a larger budget.
FUZZ_MORE = settings(FUZZ, max_examples=200)

#: Longest any single call may take before it counts as a hang (the slowest is a define with QEMU's
#: machine list probed at first use).
CALL_TIMEOUT = 20.0

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"

#: Real definitions to mutate: the corpus, and the small firmware-only guest the tests use everywhere.
SEEDS: list[str] = [p.read_text() for p in sorted(CORPUS.glob("*.xml"))] + [
    xmls.XMLFactory("qemu")("fuzz-seed", disks=[("vda", "/vm/fuzz.qcow2", "qcow2")],
                            kernel="/vm/vmlinuz", initrd="/vm/initrd", cmdline="console=ttyS0",
                            serial_file="/vm/serial.log")]

#: Every element and attribute name the seeds use, so that a rename lands on a name the tables know.
TAGS = sorted({el.tag for doc in SEEDS for el in etree.fromstring(doc.encode()).iter()
               if isinstance(el.tag, str) and not el.tag.startswith("{")})
ATTRS = sorted({a for doc in SEEDS for el in etree.fromstring(doc.encode()).iter() for a in el.attrib
                if not a.startswith("{")})

#: Values that have broken parsers before: sizes, indices and paths at and past their limits.
NASTY = [
    "", " ", "\t\n", "0", "-1", "-0", "+1", "1.5", "1e3", "0x10", "010", "nan", "inf", "-inf",
    str(2**31), str(2**32), str(2**63), str(2**64), str(-(2**63) - 1), "9" * 400,
    "\uff11\uff12", "\u0663",  # full-width and Arabic-Indic digits
    "/", "..", ".", "./x", "../../etc/passwd", "a/b", "//", "~", "-rf", "--help", "x" * 200, "y" * 300,
    "yes", "no", "on", "off", "true", "default", "none", "null", "auto", "0000:00:01.0", "0x", "0x1g",
    "\x00", "a\x00b", "\x01", "\x1b[31m", "\x7f", "\ufffe", "\U0001f600", "\u202e", "é",
    "\udcff", os.fsdecode(b"\xff\xfe/x"), "\ud800",  # lone surrogates, as from os.fsdecode
    "&", "&amp;", "&#0;", "&#x1;", "&unknown;", "<", "<x/>", "]]>", "'", '"', "\\",
]


def nasty_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NASTY), st.integers().map(str), st.floats().map(repr),
                     st.text(max_size=40), st.text(st.characters(codec="ascii"), max_size=12))


def weird_names() -> st.SearchStrategy[str]:
    """Domain names, disk targets and namespace URIs as a caller might pass them."""
    return st.one_of(st.sampled_from(NASTY), st.text(max_size=30),
                     st.from_regex(r"[A-Za-z0-9_.+\-]{0,70}", fullmatch=True))


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;").replace("'", "&apos;")


@st.composite
def mutated_definitions(draw: st.DrawFn) -> str:
    """A seed definition with one to four mutations of its elements, attributes and values."""
    root = etree.fromstring(draw(st.sampled_from(SEEDS)).encode())
    values: dict[str, str] = {}

    def hostile() -> str:
        # Placeholders survive lxml (which refuses NUL and control characters) and are replaced by the
        # value afterwards: escaped, it is data in a well-formed document; raw, it may break the document.
        token = f"\ue000{len(values)}\ue001"
        value = draw(nasty_text())
        values[token] = _escape(value) if draw(st.booleans()) else value
        return token

    for _ in range(draw(st.integers(1, 4))):
        elements = [el for el in root.iter() if isinstance(el.tag, str)]
        el = draw(st.sampled_from(elements))
        parent = el.getparent()
        op = draw(st.sampled_from(["drop", "duplicate", "rename", "move", "attr-drop", "attr-set",
                                   "attr-rename", "text", "child"]))
        if op == "drop" and parent is not None:
            parent.remove(el)
        elif op == "duplicate" and parent is not None:
            el.addnext(copy.deepcopy(el))
        elif op == "rename":
            el.tag = draw(st.one_of(st.sampled_from(TAGS),
                                    st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)))
        elif op == "move" and parent is not None:
            target = draw(st.sampled_from(elements))
            if el not in target.iterancestors() and target is not el:
                target.append(el)
        elif op == "attr-drop" and el.attrib:
            del el.attrib[draw(st.sampled_from(sorted(el.attrib)))]
        elif op == "attr-set":
            el.set(draw(st.sampled_from([*sorted(el.attrib), *ATTRS])), hostile())
        elif op == "attr-rename" and el.attrib:
            old = draw(st.sampled_from(sorted(el.attrib)))
            value = el.attrib.pop(old)
            el.set(draw(st.sampled_from(ATTRS)), value)
        elif op == "text":
            el.text = hostile()
        elif op == "child":
            etree.SubElement(el, draw(st.sampled_from(TAGS))).text = hostile()
    text = etree.tostring(root, encoding="unicode")
    for token, value in values.items():
        text = text.replace(token, value)
    return text


def xmlish_text() -> st.SearchStrategy[str]:
    """Random text made of XML's punctuation and the domain vocabulary, and cut-off real documents."""
    alphabet = st.sampled_from(["<", ">", "/", "=", "'", '"', " ", "&", ";", "<!--", "-->", "<?xml", "?>",
                                "<!DOCTYPE", "]", "[", "domain", "name", "memory", "devices", "disk", "x",
                                "1", "\x00", "\n", "\udcff", "é"])
    cut = st.tuples(st.sampled_from(SEEDS), st.integers(0, 4000)).map(
        lambda s: s[0][:min(s[1], len(s[0]) - 2)])
    return st.one_of(st.lists(alphabet, max_size=60).map("".join), cut)


def uris() -> st.SearchStrategy[str]:
    """Connection URIs: libvirt's grammar with each part replaced now and then by something hostile."""
    scheme = st.one_of(st.sampled_from(["qemu", "test", "qemu+ssh", "qemu+tcp", "qemu+unix", "xen", "lxc",
                                        "QEMU", "test+ssh", "", "q emu", "qemu+", "+ssh"]), nasty_text())
    authority = st.one_of(st.sampled_from(["", "user@", "@", ":", ":0", ":99999", ":-1", "[::1", "[::1]:22",
                                           "user@:22", "%00"]), nasty_text())
    path = st.one_of(st.sampled_from(["/session", "/system", "/default", "/", "", "//session", "/session/",
                                      "/x"]), nasty_text())
    query = st.one_of(st.just(""), st.lists(st.tuples(
        st.sampled_from(["keyfile", "known_hosts", "state_dir", "x", ""]), nasty_text()), max_size=3).map(
            lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)))
    built = st.tuples(scheme, authority, path, query, st.sampled_from(["", "#", "#frag"])).map(
        lambda p: f"{p[0]}://{p[1]}{p[2]}{p[3]}{p[4]}")
    return st.one_of(built, nasty_text())


# -- running calls and checking what they leave behind ---------------------------------------------


@dataclass
class Outcome:
    """What one call did: its value, or the AvirtError it raised (anything else fails the test)."""

    value: Any = None
    error: AvirtError | None = None


async def guarded(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Outcome:
    """Run ``call``; an AvirtError is an outcome, any other exception propagates, and a hang fails."""
    with anyio.move_on_after(CALL_TIMEOUT):
        try:
            return Outcome(value=await call(*args, **kwargs))
        except AvirtError as e:
            return Outcome(error=e)
    raise AssertionError(f"{getattr(call, '__name__', call)} did not answer within {CALL_TIMEOUT} s")


def picture(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: a file's bytes, a directory (None), a link's target, with modes."""
    seen: dict[str, bytes | None] = {}
    if not os.path.lexists(root):
        return seen
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = f"{path.relative_to(root)} {path.lstat().st_mode:o}"
            seen[key] = (os.readlink(path).encode() if path.is_symlink() else
                         None if path.is_dir() else path.read_bytes())
    return seen
